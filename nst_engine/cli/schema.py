"""``nst schema``: the JSON Schema of manifests and job files, for editors and CI checks."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from nst_engine.cli.app import app


class Document(StrEnum):
    MANIFEST = "manifest"
    JOB = "job"


def schema_of(document: Document) -> dict[str, Any]:
    """The schema, from the models that check these files (imported here, not at start-up:
    a manifest's parameters are the engine's, and the engine imports PyTorch)."""
    if document is Document.MANIFEST:
        from nst_engine.planning.manifest_model import manifest_schema

        return manifest_schema()
    from nst_engine.distributed.jobs import job_schema

    return job_schema()


def schema_text(document: Document) -> str:
    """What ``nst schema`` prints, and what the checked-in copies hold."""
    return json.dumps(schema_of(document), indent=2, ensure_ascii=False) + "\n"


@app.command()
def schema(
    document: Annotated[Document, typer.Argument(help="Which file's schema.", show_default=False)],
) -> None:
    """Print the JSON Schema (draft 2020-12) of a YAML or JSON manifest, or of a job file.

    manifests/manifest.schema.json and jobs/job.schema.json are this output; an editor with a
    YAML language server completes and checks a file whose first line names one:
    # yaml-language-server: $schema=manifest.schema.json
    """
    typer.echo(schema_text(document), nl=False)
