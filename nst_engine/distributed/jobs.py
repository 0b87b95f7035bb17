"""Ray Jobs: the same render, submitted to a cluster's head and run there.

A job file (YAML) names a manifest, a cluster address, an output and a retry policy;
reruns are idempotent because finished items are recognised by their ids.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nst_engine.engine.errors import NSTError

JOB_KEYS = {
    "manifest",
    "address",
    "output",
    "retries",
    "workers",
    "skip_bad_inputs",
    "force",
    "checkpoint_every",
}
#: ``workers:`` keys of a job file -> ``nst render`` options (values passed as given).
WORKER_OPTIONS = {
    "count": "--workers",  # N or MIN:MAX
    "start_timeout": "--worker-start-timeout",
    "cpu_actors": "--cpu-actors",
    "threads_per_actor": "--threads-per-actor",
    "max_in_flight": "--max-in-flight",
}


@dataclass
class JobSpec:
    manifest: str
    address: str | None = None
    output: str | None = None
    render_args: list[str] = field(default_factory=list)


def is_job_file(path: Path) -> bool:
    """A YAML file with a top-level 'manifest' key is a job file, not a manifest."""
    if path.suffix.lower() not in (".yaml", ".yml"):
        return False
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "manifest" in data


def load_job(path: Path) -> JobSpec:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise NSTError(f"{path}: not a readable job file ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data.get("manifest"):
        raise NSTError(f"{path}: a job file is a mapping with at least 'manifest: PATH'")
    problems = [
        f"{path}: {key}: unknown field; use {', '.join(sorted(JOB_KEYS))}" for key in set(data) - JOB_KEYS
    ]
    manifest = (path.parent / str(data["manifest"])).resolve()
    if not manifest.is_file():
        problems.append(f"{path}: manifest: {manifest} not found")
    args: list[str] = []
    retries: dict[str, Any] = data.get("retries") or {}
    for key in ("max_attempts", "max_worker_failures"):
        if key in retries:
            args += [f"--{key.replace('_', '-')}", str(int(retries[key]))]
    workers: dict[str, Any] = data.get("workers") or {}
    for key in set(workers) - set(WORKER_OPTIONS) - {"gpus"}:
        known = ", ".join([*sorted(WORKER_OPTIONS), "gpus"])
        problems.append(f"{path}: workers.{key}: unknown field; use {known}")
    for key, option in WORKER_OPTIONS.items():
        if key in workers:
            args += [option, str(workers[key])]  # nst render checks the value before anything starts
    if "checkpoint_every" in data:
        args += ["--checkpoint-every", str(data["checkpoint_every"])]
    if "gpus" in workers:
        args.append("--gpus" if workers["gpus"] else "--no-gpus")
    if data.get("skip_bad_inputs"):
        args.append("--skip-bad-inputs")
    if data.get("force"):
        args.append("--force")
    if problems:
        raise NSTError("; ".join(problems))
    output = data.get("output")
    if output and "://" not in str(output):
        output = str((path.parent / str(output)).resolve())
    return JobSpec(str(manifest), data.get("address"), output, args)


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
                f"--address {address}: the cluster wants a token ({first}); set RAY_AUTH_MODE=token "
                "and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) as on the cluster"
            ) from None
        raise NSTError(
            f"--address {address}: cannot reach the Ray dashboard ({first}); is the cluster up?"
        ) from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
                raise NSTError(f"submitting to {address}: {_first_line(exc)}") from None
            time.sleep(2)


def status(address: str, job_id: str) -> str:
    return str(_call(f"job {job_id}", lambda: _client(address).get_job_status(job_id)))


def logs(address: str, job_id: str) -> str:
    return _call(f"job {job_id}", lambda: _client(address).get_job_logs(job_id))


def cancel(address: str, job_id: str) -> bool:
    return bool(_call(f"job {job_id}", lambda: _client(address).stop_job(job_id)))
