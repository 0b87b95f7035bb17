"""Job files are checked like manifests before anything is submitted: every problem at once,
one line each naming the job file and the field, exit code 2, no traceback.

The bad inputs go through the real CLI (``nst submit``), all started at once since each
process spends seconds importing; the address given is one nothing listens on, so a job
that got past the checks would fail with "cannot reach" instead.
"""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer
import yaml

from nst_engine.cli.main import app
from nst_engine.distributed.jobs import (
    RETRY_OPTIONS,
    WORKER_OPTIONS,
    JobFileError,
    entrypoint,
    load_job,
)
from tests.conftest import write_image

REPO = Path(__file__).resolve().parents[1]
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing answers there


def write_manifest(folder: Path, truncated: bool = False) -> Path:
    """A valid one-item manifest, or one whose content image is cut short."""
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / "content.png", 24, 20, seed=1)
    write_image(folder / "style.png", 20, 24, seed=2)
    if truncated:
        data = (folder / "content.png").read_bytes()
        (folder / "content.png").write_bytes(data[: len(data) // 2])
    manifest = folder / "manifest.yaml"
    manifest.write_text(
        "contents: [content.png]\nstyles: [style.png]\nsizes: [16]\n"
        "params: {iterations: 1}\nweights: {source: random}\noutput: out\n"
    )
    return manifest


#: name -> (job file body after "manifest: ...", fields that must be named, problem count)
BAD_JOBS = {
    "max_attempts_abc": ("retries: {max_attempts: abc}\n", ["retries.max_attempts"], 1),
    "count_zero": ("workers: {count: '0'}\n", ["workers.count"], 1),
    "count_reversed": ("workers: {count: '5:2'}\n", ["workers.count"], 1),
    "start_timeout_negative": ("workers: {start_timeout: -1}\n", ["workers.start_timeout"], 1),
    "checkpoint_soon": ("checkpoint_every: soon\n", ["checkpoint_every"], 1),
    "retries_not_a_mapping": ("retries: 3\n", ["retries"], 1),
    "unknown_keys": ("retry: {max_attempts: 2}\nworkers: {cuont: 2}\n", ["retry", "workers.cuont"], 2),
    "several": (
        "retries: {max_attempts: abc, max_worker_failures: 0}\n"
        "workers: {count: '5:2', start_timeout: -1, threads_per_actor: 1.5, gpus: 'yes'}\n"
        "checkpoint_every: soon\nskip_bad_inputs: 'no'\nforce: 1\naddress: 8265\n",
        [
            "retries.max_attempts",
            "retries.max_worker_failures",
            "workers.count",
            "workers.start_timeout",
            "workers.threads_per_actor",
            "workers.gpus",
            "checkpoint_every",
            "skip_bad_inputs",
            "force",
            "address",
        ],
        10,
    ),
}
#: what the problem line says, per case (the first field's line)
MESSAGES = {
    "max_attempts_abc": "retries.max_attempts: expected a whole number >= 1, got 'abc'",
    "count_zero": "workers.count: need 0 <= MIN <= MAX and MAX >= 1, got '0'",
    "count_reversed": "workers.count: need 0 <= MIN <= MAX and MAX >= 1, got '5:2'",
    "start_timeout_negative": "workers.start_timeout: expected a number >= 1, got -1",
    "checkpoint_soon": "checkpoint_every: give auto or a number of seconds (0: off), got 'soon'",
    "retries_not_a_mapping": (
        "retries: expected a mapping such as {max_attempts: 3, max_worker_failures: 3}, got 3"
    ),
    "unknown_keys": "retry: unknown field; use address, budget, checkpoint_every, force, manifest,",
    "several": "workers.gpus: expected true or false, got 'yes'",
}


def write_jobs(tmp_path: Path) -> dict[str, tuple[Path, list[str], int]]:
    """Every bad job file, plus the missing manifest and the truncated image cases."""
    good = write_manifest(tmp_path / "good")
    bad_image = write_manifest(tmp_path / "bad-image", truncated=True)
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    cases = {}
    for name, (body, fields, count) in BAD_JOBS.items():
        path = jobs_dir / f"{name}.yaml"
        path.write_text(f"manifest: {good}\n{body}")
        cases[name] = (path, fields, count)
    missing = jobs_dir / "missing_manifest.yaml"
    missing.write_text("manifest: ../nowhere/manifest.yaml\n")
    cases["missing_manifest"] = (missing, ["manifest"], 1)
    truncated = jobs_dir / "truncated_image.yaml"
    truncated.write_text(f"manifest: {bad_image}\nskip_bad_inputs: false\n")
    cases["truncated_image"] = (truncated, [], 1)
    skipped = jobs_dir / "truncated_image_skipped.yaml"
    skipped.write_text(f"manifest: {bad_image}\nskip_bad_inputs: true\n")
    cases["truncated_image_skipped"] = (skipped, [], 0)
    return cases


@pytest.fixture(scope="module")
def submitted(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[tuple[Path, list[str], int], subprocess.CompletedProcess]]:
    """``nst submit JOB --address UNREACHABLE`` for every case, run concurrently."""
    tmp_path = tmp_path_factory.mktemp("job-files")
    cases = write_jobs(tmp_path)
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "nst_engine.cli.main", "submit", str(path), "--address", UNREACHABLE],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for name, (path, _, _) in cases.items()
    }
    results = {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        results[name] = (cases[name], subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


def assert_refused(result: subprocess.CompletedProcess) -> list[str]:
    """Exit code 2, exactly one ``error:`` line, no traceback, nothing submitted."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "cannot reach" not in result.stderr and "submitted" not in result.stderr
    assert result.stdout == ""
    return lines


@pytest.mark.parametrize("name", [*BAD_JOBS, "missing_manifest"])
def test_bad_job_files_are_refused_with_every_problem(submitted, name: str) -> None:
    (path, fields, count), result = submitted[name]
    lines = assert_refused(result)
    noun = "problem" if count == 1 else "problems"
    assert lines[0] == f"error: {count} {noun} in the job file:", result.stderr
    problems = lines[1:]
    assert len(problems) == count, result.stderr
    assert all(line.startswith(f"{path}: ") for line in problems), result.stderr
    named = [line.removeprefix(f"{path}: ").split(": ")[0] for line in problems]
    assert sorted(named) == sorted(fields)
    if name in MESSAGES:
        assert any(line.startswith(f"{path}: {MESSAGES[name]}") for line in problems), result.stderr


def test_a_job_whose_manifest_has_a_truncated_image_is_refused(submitted) -> None:
    (path, _, _), result = submitted["truncated_image"]
    lines = assert_refused(result)
    assert lines[0].startswith("error: 1 problem in the manifest"), result.stderr
    assert "content.png" in result.stderr and str(path.parent.parent / "bad-image") in result.stderr


def test_skip_bad_inputs_of_the_job_lets_it_through_to_the_cluster(submitted) -> None:
    """The same manifest with skip_bad_inputs: true is planned, then submitted: the unreachable
    address is the only error."""
    _, result = submitted["truncated_image_skipped"]
    assert result.returncode == 2 and "cannot reach the Ray dashboard" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def render_option_minimums() -> dict[str, tuple[float | None, bool]]:
    """``nst render``'s options: flag -> (its min=, whether it takes whole numbers)."""
    render = typer.main.get_command(app).commands["render"]
    out = {}
    for param in render.params:
        annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        whole = annotation is int or int in typing.get_args(annotation)
        for flag in param.opts:
            out[flag] = (getattr(param, "min", None), whole)
    return out


def test_job_file_limits_are_nst_renders() -> None:
    """Every numeric job field accepts exactly the values of its nst render option."""
    minimums = render_option_minimums()
    for option in [*RETRY_OPTIONS.values(), *WORKER_OPTIONS.values()]:
        if option.parse is None:
            assert minimums[option.flag] == (option.minimum, option.whole), option.flag


@pytest.mark.parametrize(
    "workers",
    [{"count": 3}, {"count": "0:4"}, {"start_timeout": 1}, {"start_timeout": 2.5}, {"gpus": False}],
)
def test_good_values_pass_as_written(tmp_path: Path, workers: dict) -> None:
    manifest = write_manifest(tmp_path / "m")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"manifest": str(manifest), "workers": workers, "checkpoint_every": 0}))
    args = load_job(job).render_args
    for key, value in workers.items():
        if key == "gpus":
            assert "--no-gpus" in args
        else:
            flag = WORKER_OPTIONS[key].flag
            assert args[args.index(flag) + 1] == str(value)
    assert args[args.index("--checkpoint-every") + 1] == "0"


def test_numbers_are_yaml_1_2s(tmp_path: Path) -> None:
    """YAML 1.1 reads an unquoted ``2:4`` as 124 (base 60) and ``0x10`` as 16: a worker
    range or a count typed that way must reach nst render as written, or be refused."""
    manifest = write_manifest(tmp_path / "m")
    job = tmp_path / "job.yaml"
    job.write_text(
        f"manifest: {manifest}\nworkers: {{count: 2:4}}\nretries: {{max_attempts: 3}}\nwait: true\n"
    )
    args = load_job(job).render_args
    assert args[args.index("--workers") + 1] == "2:4" and args[args.index("--max-attempts") + 1] == "3"
    assert "--wait" in args
    job.write_text(f"manifest: {manifest}\nretries: {{max_attempts: 0x10}}\n")
    with pytest.raises(JobFileError, match=r"retries\.max_attempts"):
        load_job(job)


def test_empty_fields_are_the_defaults(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m")
    job = tmp_path / "job.yaml"
    job.write_text(f"manifest: {manifest}\nretries:\nworkers: {{count: }}\ncheckpoint_every:\nforce:\n")
    spec = load_job(job)
    assert spec.render_args == [] and not spec.skip_bad_inputs


def test_the_documented_job_file_and_the_examples_validate(tmp_path: Path) -> None:
    """jobs/README.md's example (its manifest made absolute) and jobs/nightly.yaml."""
    readme = (REPO / "jobs" / "README.md").read_text()
    block = readme.split("## Job files", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    data = yaml.safe_load(block)
    data["manifest"] = str((REPO / "jobs" / data["manifest"]).resolve())
    job = tmp_path / "documented.yaml"
    job.write_text(yaml.safe_dump(data))
    assert "--skip-bad-inputs" in load_job(job).render_args
    nightly = load_job(REPO / "jobs" / "nightly.yaml")
    assert nightly.skip_bad_inputs and entrypoint(nightly).startswith("nst render ")


def test_an_unreadable_job_file_is_one_problem(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("manifest: [unclosed\n")
    with pytest.raises(JobFileError) as info:
        load_job(job)
    (problem,) = info.value.problems
    assert problem.startswith(f"{job}: not a readable job file (")
