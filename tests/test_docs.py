"""The documentation site: built with ``mkdocs build --strict``, then read in a real browser.

The site is built once per module into a temporary folder, by the same command as
``make docs``. The build is checked without a browser first (strict: a warning, a broken
link or a missing anchor fails it; the generated tables hold the code's columns). Then a
headless Chromium opens every page the way a reader does, from a small HTTP server on
127.0.0.1, through a checker page written into the temporary site (not part of the docs):
each page must load with its heading, the theme's script and its images, every link and
anchor within the site must resolve, every page of the navigation must be reachable from
the home page, and no page may fetch anything from outside the site.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from nst_engine.results.runs import RunRecord
from nst_engine.results.schema import COLUMNS
from tests.browser import chromium
from tests.browser import flags as browser_flags

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (
    "stylize",
    "stylize-video",
    "render",
    "plan",
    "submit",
    "status",
    "logs",
    "cancel",
    "report",
    "estimate",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-5000:]
    assert "WARNING" not in built.stderr, built.stderr[-5000:]
    return folder


def nav_pages() -> list[str]:
    """The built paths of the pages in mkdocs.yml's navigation, in order."""
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)  # no !relative

    def walk(entry: object) -> Iterator[str]:
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, dict):
            for value in entry.values():
                yield from walk(value)
        elif isinstance(entry, list):
            for value in entry:
                yield from walk(value)

    return [re.sub(r"\.md$", ".html", page) for page in walk(config["nav"])]


def table_first_cells(page: str) -> list[list[str]]:
    """The first cell of every body row, per table, of an HTML page (no browser needed)."""
    tables = []
    for table in re.findall(r"<table>(.*?)</table>", page, re.S):
        body = table.split("</thead>", 1)[-1]
        cells = re.findall(r"<tr>\s*<td[^>]*>(.*?)</td>", body, re.S)
        tables.append([html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in cells])
    return tables


def test_site_builds_strictly_with_tables_generated_from_the_code(site: Path) -> None:
    for page in nav_pages():
        assert (site / page).is_file(), f"{page} in the navigation was not built"
    # the schema page: the result columns in order (four groups), then the runs columns
    tables = table_first_cells((site / "schema.html").read_text(encoding="utf-8"))
    assert len(tables) == 5
    assert [name for table in tables[:4] for name in table] == [c.name for c in COLUMNS]
    assert tables[4] == [f.name for f in dataclasses.fields(RunRecord)]
    schema = (site / "schema.html").read_text(encoding="utf-8")
    assert "<code>list&lt;item: string&gt;</code>" in schema  # a type, not a swallowed tag
    # the command reference: every command's own help
    reference = (site / "cli.html").read_text(encoding="utf-8")
    for command in (*COMMANDS, "bench scaling"):
        assert f'id="nst-{command.replace(" ", "-")}"' in reference, command
    assert "--max-batch" in reference and "--checkpoint-every" in reference
    # files included from the repository, their links pointed at the site
    measurements = (site / "benchmarks" / "measurements.html").read_text(encoding="utf-8")
    assert 'src="../quality-256.png"' in measurements
    assert 'href="recipes.html"' in (site / "clusters" / "scheduled.html").read_text(encoding="utf-8")
    assert "max_images_per_entry: 1000000" in html.unescape(
        re.sub(r"<[^>]+>", "", (site / "manifests.html").read_text(encoding="utf-8"))
    )


def test_included_files_link_to_the_site_or_stop_the_build() -> None:
    spec = importlib.util.spec_from_file_location("docs_hook", REPO / "docs" / "hooks" / "generate.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    pages = {"jobs/README.md": "clusters/scheduled.md", "cluster/README.md": "clusters/recipes.md"}
    text = (
        "[jobs](../jobs/README.md#cron), ![plot](../docs/scaling-cpu.png), [web](https://ray.io), [here](#a)"
    )
    assert hook._relink(text, "cluster/README.md", "clusters/recipes.md", pages) == (
        "[jobs](scheduled.md#cron), ![plot](../scaling-cpu.png), [web](https://ray.io), [here](#a)"
    )
    with pytest.raises(hook.PluginError, match="has no page on the site"):
        hook._relink("[script](../benchmarks/plumbing.py)", "cluster/README.md", "clusters/recipes.md", pages)
    with pytest.raises(hook.PluginError, match="no generator 'nope'"):
        hook.on_page_markdown(
            "<!-- nst:generate nope -->",
            page=SimpleNamespace(file=SimpleNamespace(src_path="x.md")),
            config=None,
            files=None,
        )


def test_readme_links_resolve() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link for link in links if not re.match(r"^[a-z]+:", link)]
    assert local, "the README links into the docs"
    for link in local:
        path = link.split("#", 1)[0]
        assert (REPO / path).exists(), f"README.md links to {link}, which does not exist"
    assert len(readme.splitlines()) <= 230, "the README stays short: details go to docs/"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


#: Every page of the site in an iframe of one checker page. The page's load event waits for
#: every iframe and everything each one loads (scripts, styles, images), so the load handler
#: sees every page as a reader would, and describes each in JSON in #result before Chromium
#: dumps the DOM. No timers, no virtual time: it is done when the pages are.
CHECKER = """<!doctype html><meta charset="utf-8"><title>check</title>
<body><pre id="result"></pre>
FRAMES
<script>
addEventListener("load", () => {
  const pages = {};
  for (const frame of document.querySelectorAll("iframe")) {
    const win = frame.contentWindow, doc = frame.contentDocument;
    pages[win.location.href] = {
      h1: (doc.querySelector("article h1") || {}).textContent || "",
      scripted: typeof win.document$ !== "undefined",
      nav: [...doc.querySelectorAll("nav.md-nav--primary a.md-nav__link[href]")].map((a) => a.href),
      ids: [...doc.querySelectorAll("[id]")].map((element) => element.id),
      links: [...doc.querySelectorAll("a[href]")].map((a) => a.href),
      images: [...doc.images].map((img) => [img.src, img.complete && img.naturalWidth > 0]),
      cells: [...doc.querySelectorAll("article table tbody tr")].map((r) => r.cells[0].textContent.trim()),
      resources: win.performance.getEntriesByType("resource").map((entry) => entry.name),
    };
  }
  document.getElementById("result").textContent = JSON.stringify(pages);
  document.body.dataset.done = "1";
});
</script>
"""


def test_site_in_a_real_browser(site: Path, tmp_path: Path) -> None:
    browser = chromium()
    built = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    frames = "\n".join(f'<iframe src="{page}" width="1280" height="900"></iframe>' for page in built)
    (site / "_check.html").write_text(CHECKER.replace("FRAMES", frames), encoding="utf-8")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    nothing_outside = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"  # only this site resolves
    flags = browser_flags(tmp_path / "profile", nothing_outside)
    try:
        dom = subprocess.run(
            [browser, *flags, "--dump-dom", f"{origin}/_check.html"],
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
    finally:
        server.shutdown()
        server.server_close()
    assert 'data-done="1"' in dom, dom[-2000:]
    pages = json.loads(html.unescape(re.search(r'<pre id="result">(.*?)</pre>', dom, re.S).group(1)))
    assert sorted(pages) == sorted(f"{origin}/{page}" for page in built)

    # every page loaded with its heading and the theme's script
    for url, page in pages.items():
        assert page["h1"].strip(), f"{url}: no heading"
        assert page["scripted"], f"{url}: the theme's script did not run"
    # every link within the site resolves, to a page and its anchor or to a file
    for url, page in pages.items():
        for link in page["links"]:
            if not link.startswith(origin + "/"):
                continue
            target, _, anchor = link.partition("#")
            if target in pages:
                assert not anchor or unquote(anchor) in pages[target]["ids"], f"{url}: no anchor {link}"
            else:
                assert (site / unquote(urlsplit(target).path).lstrip("/")).is_file(), f"{url}: broken {link}"
        for src, loaded in page["images"]:
            assert loaded, f"{url}: image {src} did not load"
        outside = [r for r in page["resources"] if not r.startswith(origin + "/")]
        assert not outside, f"{url} fetched from outside the site: {outside}"
    # the navigation: on every page, it links every page of mkdocs.yml's nav, and every page
    # of the site is reached from the home page by following links
    navigation = {f"{origin}/{path}" for path in nav_pages()}
    for url, page in pages.items():
        assert navigation <= {link.split("#")[0] for link in page["nav"]}, f"{url}: navigation incomplete"
    reached, queue = set(), [f"{origin}/index.html"]
    while queue:
        url = queue.pop()
        if url in pages and url not in reached:
            reached.add(url)
            queue += [link.split("#")[0] for link in pages[url]["links"]]
    assert navigation <= reached
    # the generated schema, as the browser shows it: the result columns, then the runs columns
    names = [c.name for c in COLUMNS] + [f.name for f in dataclasses.fields(RunRecord)]
    assert pages[f"{origin}/schema.html"]["cells"] == names
