"""Ray Jobs: the same render, submitted to a cluster's head and run there.

A job file (YAML) names a manifest, a cluster address, an output and a retry policy;
reruns are idempotent because finished items are recognised by their ids. A job file is
checked like a manifest, every problem at once, before anything is submitted: each value
must be one its ``nst render`` option takes, else the job would fail on the cluster. What
a job file may say is the pydantic model ``JobFile``, built from the option tables below,
which also gives its JSON Schema (``nst schema job``, checked in as ``jobs/job.schema.json``).
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, StrictBool, ValidationError, create_model

from nst_engine.distributed.options import parse_checkpoint_every, parse_max_batch, parse_workers
from nst_engine.errors import NSTError, one_line
from nst_engine.planning.yaml_files import AliasRefused, NoAliasLoader, problem_of
from nst_engine.results.cost import parse_budget, parse_prices
from nst_engine.storage.uris import check_location, redact
from nst_engine.validation import Section, message, path_of

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class RenderOption:
    """A job-file field passed to ``nst render`` as ``flag TEXT`` (the value as written), and
    the values that option takes: its own parser, or a number >= its ``min=``."""

    flag: str
    parse: Callable[[str], object] | None = None  # raises ValueError with a message for people
    minimum: int = 1
    whole: bool = True  # a whole number (the option is an int) or any number (a float)

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, or None when ``nst render`` takes it."""
        text = str(value)  # a bool becomes "True", which no option takes
        if self.parse is not None:
            try:
                self.parse(text)
            except ValueError as exc:  # parse_workers names its flag; the caller names the field
                return str(exc).removeprefix(f"{self.flag}: ")
            return None
        try:
            number: float = int(text) if self.whole else float(text)
        except ValueError:
            number = float("nan")
        if not number >= self.minimum:  # NaN included
            return f"expected a {'whole number' if self.whole else 'number'} >= {self.minimum}, got {value!r}"
        return None

    def as_field(self) -> Any:
        """This option as a field of the job file's model: an empty value is the option's
        default; the type and range are the schema's, for editors; ``problem`` is the check,
        so a job file takes exactly what ``nst render`` takes."""

        def check(value: Any) -> Any:
            problem = self.problem(value)
            if problem:
                raise ValueError(problem)
            return value

        kind: Any = (
            int | float | str
            if self.parse
            else Annotated[int if self.whole else float, Field(ge=self.minimum)]
        )
        described = Field(None, description=f"nst render {self.flag}")
        return Annotated[kind, BeforeValidator(check)] | None, described


#: ``retries:`` and ``workers:`` fields of a job file -> the ``nst render`` options they
#: become; the minimums are ``nst render``'s ``min=`` (tests/test_job_files.py compares them).
RETRY_OPTIONS = {
    "max_attempts": RenderOption("--max-attempts"),
    "max_worker_failures": RenderOption("--max-worker-failures"),
    "max_node_failures": RenderOption("--max-node-failures"),
}
WORKER_OPTIONS = {
    "count": RenderOption("--workers", parse=parse_workers),  # N or MIN:MAX
    "start_timeout": RenderOption("--worker-start-timeout", whole=False),
    "cpu_actors": RenderOption("--cpu-actors"),
    "threads_per_actor": RenderOption("--threads-per-actor"),
    "max_in_flight": RenderOption("--max-in-flight"),
    "max_batch": RenderOption("--max-batch", parse=parse_max_batch),  # N or auto
    "per_gpu": RenderOption("--workers-per-gpu"),
}
CHECKPOINT_EVERY = RenderOption("--checkpoint-every", parse=parse_checkpoint_every)
#: top-level fields with a value -> the ``nst render`` options they become
TOP_OPTIONS = {
    "checkpoint_every": CHECKPOINT_EVERY,
    "price": RenderOption("--price", parse=parse_prices),  # cuda=2.50/h,cpu=0.05/h
    "budget": RenderOption("--budget", parse=parse_budget),  # money (40) or device-hours (12h)
}
#: true/false fields -> the ``nst render`` flags for true and for false (None: nothing).
SWITCHES: dict[str, tuple[str, str | None]] = {
    "skip_bad_inputs": ("--skip-bad-inputs", None),
    "force": ("--force", None),
    "wait": ("--wait", None),  # a nightly job that finds the root busy waits for it
    "verify_outputs": ("--verify-outputs", None),
}
WORKER_SWITCHES: dict[str, tuple[str, str | None]] = {"gpus": ("--gpus", "--no-gpus")}
#: What a mapping field looks like, for its problem line.
MAPPING_EXAMPLES = {
    "retries": "{max_attempts: 3, max_worker_failures: 3}",
    "workers": "{count: 2, max_in_flight: 2}",
}


def switch_field(flags: tuple[str, str | None]) -> Any:
    """A true/false field: YAML's booleans only (a quoted "yes" is refused)."""
    said = f"true: nst render {flags[0]}" + (f"; false: {flags[1]}" if flags[1] else "")
    return StrictBool | None, Field(None, description=said)


Retries = create_model(
    "Retries",
    __base__=Section,
    __doc__="How hard the render retries.",
    **{name: option.as_field() for name, option in RETRY_OPTIONS.items()},
)
Workers = create_model(
    "Workers",
    __base__=Section,
    __doc__="The worker pool: count is N or MIN:MAX (quoted), max_batch N or auto.",
    **{name: option.as_field() for name, option in WORKER_OPTIONS.items()},
    **{name: switch_field(flags) for name, flags in WORKER_SWITCHES.items()},
)
Text = Annotated[str, Field(pattern=r"\S")]


class JobSection(Section):
    """What a job file says about a value of the wrong form."""

    expected: ClassVar[dict[str, str]] = {
        "manifest": "expected the path of a manifest (relative to the job file)",
        "address": "expected a Ray dashboard address, e.g. http://HEAD:8265",
        "output": "expected a folder or URI",
        **{key: f"expected a mapping such as {example}" for key, example in MAPPING_EXAMPLES.items()},
    }


JobFile = create_model(
    "JobFile",
    __base__=JobSection,
    __doc__="An nst-engine job file: `nst submit JOB_FILE` renders its manifest on a Ray cluster "
    "as a Ray Job. Every key but manifest is optional; an empty one is nst render's default.",
    manifest=(Annotated[str, Field(min_length=1)], Field(description="The manifest, relative to this file.")),
    address=(Text | None, Field(None, description="Ray dashboard / Jobs API, e.g. http://HEAD:8265.")),
    output=(
        Annotated[Text, AfterValidator(check_location)] | None,
        Field(None, description="Output root: a folder or s3://, gs://, file:// URI."),
    ),
    retries=(Retries | None, None),
    workers=(Workers | None, None),
    **{name: option.as_field() for name, option in TOP_OPTIONS.items()},
    **{name: switch_field(flags) for name, flags in SWITCHES.items()},
)


def job_schema() -> dict[str, Any]:
    """The JSON Schema of a job file."""
    return {"$schema": SCHEMA_DIALECT, **JobFile.model_json_schema()}


class JobLoader(NoAliasLoader):
    """YAML with YAML 1.2's integers: PyYAML follows YAML 1.1, where ``count: 2:4`` is 124
    (base 60) and ``0x10`` is 16, so a worker range typed without quotes would silently
    become another number. Here only plain decimal digits are integers; the rest is text.
    A safe loader that refuses aliases, as manifests do (``planning.yaml_files``)."""


JobLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
JobLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))


class JobFileError(NSTError):
    """All problems of one job file; ``str()`` lists one per line, as ``ManifestError`` does."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{len(problems)} {noun} in the job file:\n" + "\n".join(problems))


@dataclass
class JobSpec:
    manifest: str
    address: str | None = None
    output: str | None = None
    render_args: list[str] = field(default_factory=list)
    skip_bad_inputs: bool = False  # as in render_args: nst submit plans the manifest with it


def is_job_file(path: Path) -> bool:
    """A YAML file with a top-level 'manifest' key is a job file, not a manifest."""
    if path.suffix.lower() not in (".yaml", ".yml"):
        return False
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=NoAliasLoader)  # a SafeLoader
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "manifest" in data


def load_job(path: Path) -> JobSpec:
    """Read and check a job file; ``JobFileError`` lists every problem. A field left empty
    (``count:``) is the option's default."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=JobLoader)  # JobLoader is a SafeLoader
    except AliasRefused as exc:  # before anything is built from the file
        line, problem = problem_of(exc)
        raise JobFileError([f"{path}:{line}: {problem}"]) from None
    except (OSError, yaml.YAMLError) as exc:
        raise JobFileError([f"{path}: not a readable job file ({one_line(exc)})"]) from None
    if not isinstance(data, dict):
        raise JobFileError([f"{path}: a job file is a mapping with at least 'manifest: PATH'"])
    problems = []
    try:
        JobFile.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(f"{path}: {'.'.join(map(str, path_of(error)))}: {message(error, JobFile)}")
    manifest = data.get("manifest")
    if isinstance(manifest, str) and manifest:  # the job's manifest, relative to the job file, must be there
        manifest = str((path.parent / manifest).resolve())
        if not Path(manifest).is_file():
            problems.append(
                f"{path}: manifest: {manifest} not found; check the path (relative to the job file)"
            )
    if problems:
        raise JobFileError(problems)
    output = data.get("output")
    if output and "://" not in output:
        output = str((path.parent / output).resolve())
    args = render_args(data)
    return JobSpec(manifest, data.get("address"), output, args, "--skip-bad-inputs" in args)


def render_args(data: dict[str, Any]) -> list[str]:
    """The ``nst render`` arguments of a checked job file, each value as written."""
    args: list[str] = []
    for key, options, switches in (
        ("retries", RETRY_OPTIONS, {}),
        ("workers", WORKER_OPTIONS, WORKER_SWITCHES),
        ("", TOP_OPTIONS, SWITCHES),
    ):
        values = (data.get(key) if key else data) or {}
        for name, option in options.items():
            if values.get(name) is not None:
                args += [option.flag, str(values[name])]
        for name, flags in switches.items():
            if values.get(name) is not None:
                flag = flags[0] if values[name] else flags[1]
                args += [flag] if flag else []
    return args


def entrypoint(job: JobSpec) -> str:
    """The command the cluster runs: ``nst render`` against the cluster itself."""
    parts = ["nst", "render", job.manifest, "--address", "auto", "--quiet"]
    if job.output:
        parts += ["--output", job.output]
    return shlex.join(parts + job.render_args)


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # connection errors come in many types
        first = _first_line(exc)
        if "authentication" in str(exc).lower():
            raise NSTError(
                f"--address {redact(address)}: the cluster wants a token ({first}); set "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) as on the cluster"
            ) from None
        raise NSTError(
            f"--address {redact(address)}: cannot reach the Ray dashboard ({first}); is the cluster up?"
        ) from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return redact(text.splitlines()[0]) if text else type(exc).__name__


def _call(what: str, action: Callable[[], Any]) -> Any:
    """Run a job-client call; its failures (plain RuntimeErrors) become one-line errors."""
    try:
        return action()
    except NSTError:
        raise
    except Exception as exc:  # the job client raises RuntimeError and friends
        raise NSTError(f"{what}: {_first_line(exc)}") from None


def submit(
    address: str, job: JobSpec, submission_id: str | None = None, wait_for_agent: float = 120.0
) -> str:
    """Submit; a head that has just started may have no job agent yet, so retry for a while."""
    client = _client(address)
    deadline = time.monotonic() + wait_for_agent
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint(job), submission_id=submission_id)
        except Exception as exc:  # the job client raises RuntimeError and friends
            if "try again" not in str(exc) or time.monotonic() > deadline:
                raise NSTError(f"submitting to {redact(address)}: {_first_line(exc)}") from None
            time.sleep(2)


def status(address: str, job_id: str) -> str:
    return str(_call(f"job {job_id}", lambda: _client(address).get_job_status(job_id)))


def logs(address: str, job_id: str) -> str:
    return _call(f"job {job_id}", lambda: _client(address).get_job_logs(job_id))


def cancel(address: str, job_id: str) -> bool:
    return bool(_call(f"job {job_id}", lambda: _client(address).stop_job(job_id)))
