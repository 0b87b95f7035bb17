"""The published JSON Schemas: current, named by every shipped file, and checked by a real validator.

``nst schema manifest`` and ``nst schema job`` print the schemas of the pydantic models that
check manifests and job files; the checked-in copies must be that output. Every shipped
manifest and job file names its schema on its first line (for editors with a YAML language
server) and validates against it with ``jsonschema`` (Draft 2020-12), as an editor would
check it; invalid documents are refused by the schema and by the loaders alike.

Editors read YAML 1.2, where ``1e-3`` is a number and ``2:4`` is text; PyYAML reads YAML 1.1
(``1e-3`` is text there, which the loaders accept as a number). The shipped files are
therefore parsed here with YAML 1.2's numbers, as an editor sees them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from nst_engine.cli.main import app
from nst_engine.distributed.jobs import JobFile, JobLoader, is_job_file, load_job
from nst_engine.planning.manifest import load_manifest
from nst_engine.planning.manifest_model import ManifestFile

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = {"manifest": REPO / "manifests" / "manifest.schema.json", "job": REPO / "jobs" / "job.schema.json"}
MANIFESTS = sorted(p for p in (REPO / "manifests").rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
MANIFESTS = [p for p in MANIFESTS if not p.name.endswith(".schema.json")]
JOB_FILES = sorted(p for p in (REPO / "jobs").rglob("*") if p.suffix in (".yaml", ".yml") and is_job_file(p))


class Yaml12Loader(JobLoader):
    """YAML 1.2's numbers: JobLoader's integers, and floats that need no dot (``1e-3``)."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in JobLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def read(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=Yaml12Loader)  # a SafeLoader


def validator(name: str) -> Draft202012Validator:
    schema = yaml.safe_load(SCHEMAS[name].read_text(encoding="utf-8"))  # JSON is YAML
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def problems(name: str, document: Any) -> list[tuple[str, str]]:
    """(dotted path, JSON Schema keyword) of every error the schema finds, those that made
    an ``anyOf``/``oneOf`` fail included (``x | None`` is an ``anyOf``)."""
    found: list[tuple[str, str]] = []
    errors = list(validator(name).iter_errors(document))
    while errors:
        error = errors.pop()
        found.append((".".join(map(str, error.absolute_path)), str(error.validator)))
        errors += error.context or []
    return sorted(found)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_the_checked_in_schemas_are_the_commands_output(name: str) -> None:
    result = CliRunner().invoke(app, ["schema", name])
    assert result.exit_code == 0, result.output
    assert result.stdout == SCHEMAS[name].read_text(encoding="utf-8"), (
        f"{SCHEMAS[name].relative_to(REPO)} is out of date: run "
        f"nst schema {name} > {SCHEMAS[name].relative_to(REPO)}"
    )


def test_the_shipped_files_are_found() -> None:
    assert {p.relative_to(REPO).as_posix() for p in MANIFESTS} >= {
        "manifests/demo.yaml",
        "manifests/examples/all-features.yaml",
    }
    assert [p.relative_to(REPO).as_posix() for p in JOB_FILES] == ["jobs/nightly.yaml"]


@pytest.mark.parametrize(
    ("path", "name"),
    [(p, "manifest") for p in MANIFESTS] + [(p, "job") for p in JOB_FILES],
    ids=lambda value: value.relative_to(REPO).as_posix() if isinstance(value, Path) else value,
)
def test_every_shipped_file_names_its_schema_and_validates(path: Path, name: str) -> None:
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    relative = Path(os.path.relpath(SCHEMAS[name], path.parent)).as_posix()
    assert first_line == f"# yaml-language-server: $schema={relative}"
    assert problems(name, read(path)) == []
    if name == "manifest":  # and the loader agrees
        assert load_manifest(path).items
    else:
        assert load_job(path).manifest


def test_the_job_files_inside_other_files_validate() -> None:
    """The Kubernetes CronJob's ConfigMap holds a job file; jobs/README.md documents one."""
    cronjob = list(yaml.safe_load_all((REPO / "jobs" / "kubernetes-cronjob.yaml").read_text()))
    (config_map,) = [d for d in cronjob if d and d["kind"] == "ConfigMap"]
    assert problems("job", yaml.load(config_map["data"]["nightly.yaml"], Loader=Yaml12Loader)) == []
    readme = (REPO / "jobs" / "README.md").read_text()
    block = readme.split("## Job files", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert problems("job", yaml.load(block, Loader=Yaml12Loader)) == []


GOOD_MANIFEST = {"contents": ["c.png"], "styles": ["s.png"], "sizes": [64]}

#: name -> (manifest, (path, JSON Schema keyword) the schema must report)
BAD_MANIFESTS = {
    "unknown key": ({**GOOD_MANIFEST, "colour": "red"}, ("", "additionalProperties")),
    "unknown parameter": ({**GOOD_MANIFEST, "params": {"sharpness": 3}}, ("params", "additionalProperties")),
    "unknown key in a style": (
        {**GOOD_MANIFEST, "styles": [{"image": "s.png", "colour": 1}]},
        ("styles.0", "additionalProperties"),
    ),
    "wrong type": ({**GOOD_MANIFEST, "params": {"iterations": "many"}}, ("params.iterations", "type")),
    "size as text": ({**GOOD_MANIFEST, "sizes": ["64"]}, ("sizes.0", "type")),
    "choice": ({**GOOD_MANIFEST, "params": {"precision": "fp16"}}, ("params.precision", "enum")),
    "layer": ({**GOOD_MANIFEST, "params": {"style_layers": ["conv9_9"]}}, ("params.style_layers.0", "enum")),
    "negative ratio": ({**GOOD_MANIFEST, "params": {"ratio": -1}}, ("params.ratio", "exclusiveMinimum")),
    "zero history": ({**GOOD_MANIFEST, "params": {"history_size": 0}}, ("params.history_size", "minimum")),
    "size too large": ({**GOOD_MANIFEST, "sizes": [100_000]}, ("sizes.0", "maximum")),
    "negative blend weight": (
        {**GOOD_MANIFEST, "styles": [{"images": [{"path": "s.png", "weight": -1}]}]},
        ("styles.0.images.0.weight", "minimum"),
    ),
    "no contents": ({"styles": ["s.png"], "sizes": [64]}, ("", "required")),
    "empty sizes": ({**GOOD_MANIFEST, "sizes": []}, ("sizes", "minItems")),
}


def test_a_good_manifest_passes_the_schema() -> None:
    assert problems("manifest", GOOD_MANIFEST) == []
    ManifestFile.model_validate(GOOD_MANIFEST)


@pytest.mark.parametrize("name", list(BAD_MANIFESTS))
def test_invalid_manifests_are_refused_by_the_schema_and_the_model(name: str) -> None:
    document, expected = BAD_MANIFESTS[name]
    assert expected in problems("manifest", document)
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        ManifestFile.model_validate(document)


BAD_JOBS = {
    "unknown key": ({"manifest": "m.yaml", "retry": {"max_attempts": 2}}, ("", "additionalProperties")),
    "unknown worker key": (
        {"manifest": "m.yaml", "workers": {"cuont": 2}},
        ("workers", "additionalProperties"),
    ),
    "wrong type": ({"manifest": "m.yaml", "force": "yes"}, ("force", "type")),
    "out of range": (
        {"manifest": "m.yaml", "retries": {"max_attempts": 0}},
        ("retries.max_attempts", "minimum"),
    ),
    "no manifest": ({"address": "http://head:8265"}, ("", "required")),
}


@pytest.mark.parametrize("name", list(BAD_JOBS))
def test_invalid_job_files_are_refused_by_the_schema_and_the_model(name: str) -> None:
    document, expected = BAD_JOBS[name]
    assert expected in problems("job", document)
    with pytest.raises(ValueError):
        JobFile.model_validate(document)


def test_the_weights_mapping_has_the_keys_of_weights_spec() -> None:
    """``weights:`` is written as a model of its own (with descriptions for editors): it must
    keep the fields of the ``WeightsSpec`` it becomes."""
    from dataclasses import fields

    from nst_engine.engine.weights_spec import WeightsSpec
    from nst_engine.planning.manifest_model import Weights

    assert set(Weights.model_fields) == {f.name for f in fields(WeightsSpec)}
    assert WeightsSpec(**Weights().model_dump()) == WeightsSpec()
