"""MkDocs hook: the pages and tables that come from the code and from files outside docs/.

Written once, elsewhere, so that the site cannot drift from them:

* a marker line ``<!-- nst:generate NAME -->`` in a page is replaced at build time by the
  output of ``GENERATORS[NAME]``: the result and run columns (from
  ``nst_engine.results.schema`` and ``nst_engine.results.runs``, the same code that writes
  the Parquet files) and the ``--help`` of every ``nst`` command (from the typer app);
* ``INCLUDED`` pages are files that live next to what they describe (BENCHMARKS.md at the
  root, cluster/README.md, jobs/README.md), copied into the site with their relative links
  pointed at the site's pages.

An unknown marker, or a relative link of an included file that has no page on the site,
stops the build: a hook that skipped it would publish a page with a hole or a dead link.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- nst:generate ([\w-]+) -->$", re.MULTILINE)
#: A Markdown link or image target: ``[text](target)`` or ``![alt](target)``.
LINK = re.compile(r"(\]\()([^)\s]+)(\))")

#: Site page -> repository file it is made from.
INCLUDED = {
    "benchmarks/measurements.md": "BENCHMARKS.md",
    "clusters/recipes.md": "cluster/README.md",
    "clusters/scheduled.md": "jobs/README.md",
}


def _table(rows: list[tuple[str, object, str]]) -> str:
    """A Markdown table of (column, Arrow type, meaning); types as code, since ``list<item:
    string>`` would otherwise be read as an HTML tag."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("<", "&lt;")

    lines = ["| column | type | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | `{kind}` | {cell(meaning)} |" for name, kind, meaning in rows]
    return "\n".join(lines)


def results_schema() -> str:
    """The result columns in their four groups, each where its values come from."""
    from nst_engine.results import schema

    groups = {
        "Identity and outcome": schema.RUN_COLUMNS,
        "The work item": schema.ITEM_COLUMNS,
        "The synthesis (the fields of `SynthesisStats`)": schema.STATS_COLUMNS,
        "The worker's attempt": schema.ATTEMPT_COLUMNS,
    }
    if [c.name for group in groups.values() for c in group] != [c.name for c in schema.COLUMNS]:
        raise PluginError("results.schema.COLUMNS has columns outside the groups this hook shows")
    return "\n\n".join(
        f"### {title}\n\n" + _table([(c.name, c.type, c.meaning) for c in columns])
        for title, columns in groups.items()
    )


def runs_schema() -> str:
    """The runs columns: the fields of ``RunRecord`` with their meanings."""
    import dataclasses

    from nst_engine.results.runs import RUNS_SCHEMA, RunRecord

    fields = dataclasses.fields(RunRecord)
    return _table([(f.name, RUNS_SCHEMA.field(f.name).type, f.metadata["meaning"]) for f in fields])


def _commands(group: Any, context: Any, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every command under ``group`` in the order of ``nst --help``, sub-groups expanded."""
    found = []
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if hasattr(command, "list_commands"):
            found += _commands(command, context, (*path, name))
        else:
            found.append((*path, name))
    return found


def cli_reference() -> str:
    """``nst COMMAND --help`` of every command, in click's plain layout (80 columns, no boxes:
    it reads better on a page than the terminal's panels). typer reads ``TYPER_USE_RICH``
    when it is first imported, which in a docs build is here."""
    os.environ["TYPER_USE_RICH"] = "0"
    import typer.main
    from typer.testing import CliRunner

    from nst_engine.cli.main import app

    group = typer.main.get_command(app)
    context = group.make_context("nst", [], resilient_parsing=True)
    sections = []
    for path in _commands(group, context, ()):
        done = CliRunner().invoke(app, [*path, "--help"], prog_name="nst", env={"NO_COLOR": "1"})
        if done.exit_code != 0:
            raise PluginError(f"nst {' '.join(path)} --help failed: {done.output}")
        text = "\n".join(line.rstrip() for line in done.output.strip("\n").splitlines())
        sections.append(f"## nst {' '.join(path)}\n\n```text\n{text}\n```")
    return "\n\n".join(sections)


GENERATORS: dict[str, Callable[[], str]] = {
    "results-schema": results_schema,
    "runs-schema": runs_schema,
    "cli-reference": cli_reference,
}


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Document the checkout being built, not whichever ``nst_engine`` is installed (an
    editable install may point at another worktree); mkdocstrings reads the same tree
    (``paths: [.]``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return config


def _relink(text: str, source: str, page: str, pages: dict[str, str]) -> str:
    """``text`` of repository file ``source`` with its relative links made relative to the
    site page ``page``: to a file under docs/ (an image), or to the page of an included file."""

    def target(match: re.Match[str]) -> str:
        link = match.group(2)
        if re.match(r"^([a-z][a-z0-9+.-]*:|#)", link):  # a URL, mailto: or an anchor of this page
            return match.group(0)
        path, _, anchor = link.partition("#")
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        if repo_path in pages:
            site_path = pages[repo_path]
        elif repo_path.startswith("docs/"):
            site_path = repo_path.removeprefix("docs/")
        else:
            raise PluginError(f"{source}: the link to {link} has no page on the site; add it to INCLUDED")
        relative = posixpath.relpath(site_path, posixpath.dirname(page))
        return f"{match.group(1)}{relative}{'#' + anchor if anchor else ''}{match.group(3)}"

    return LINK.sub(target, text)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    pages = {source: page for page, source in INCLUDED.items()}
    for page, source in INCLUDED.items():
        text = (ROOT / source).read_text(encoding="utf-8")
        files.append(File.generated(config, page, content=_relink(text, source, page, pages)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    def generate(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise PluginError(f"{page.file.src_path}: no generator {name!r} (known: {', '.join(GENERATORS)})")
        return GENERATORS[name]()

    return MARKER.sub(generate, markdown)


def on_serve(server: Any, config: MkDocsConfig, builder: Callable[..., Any]) -> Any:
    """``mkdocs serve`` rebuilds when the included files or the code change."""
    for path in (*INCLUDED.values(), "nst_engine"):
        server.watch(os.fspath(ROOT / path))
    return server
