"""The real ``nst stylize`` in subprocesses: a good run, and one-line errors for bad input.

Each subprocess spends ~2-3 s importing torch, so all cases are started together by one
module-scoped fixture (a few at a time) and the parametrized tests only check the results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst_engine.engine.weights import TORCHVISION_CONV_INDICES

REPO = Path(__file__).resolve().parents[1]
FAST = ["--weights", "random", "--no-normalize", "--size", "32", "--iterations", "2", "--device", "cpu", "-q"]


@dataclass(frozen=True)
class Case:
    """A bad invocation; ``names`` must appear in the error line.

    Both may use the placeholders {content} {style} {text} {truncated} {wide} {out} {dir}.
    """

    args: tuple[str, ...]
    names: tuple[str, ...]


def _write_png(path: Path, seed: int, size: int = 32) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _stylize(*args: str) -> list[str]:
    return [sys.executable, "-m", "nst_engine.cli.main", "stylize", *args]


GOOD_ARGS = ("{content}", "{style}", "-o", "{out}", *FAST, "--stats-json", "{dir}/stats.json")
BASE = ("{content}", "{style}", "-o", "{out}", *FAST)

CASES: dict[str, Case] = {
    "missing-content": Case(("{dir}/missing.png", "{style}", "-o", "{out}", *FAST), ("{dir}/missing.png",)),
    "text-style": Case(("{content}", "{text}", "-o", "{out}", *FAST), ("{text}",)),
    "truncated-content": Case(("{truncated}", "{style}", "-o", "{out}", *FAST), ("{truncated}",)),
    "size-0": Case((*BASE, "--size", "0"), ("error: --size: ",)),
    "size-huge": Case((*BASE, "--size", "100000"), ("--size", "100000")),
    "size-too-small": Case((*BASE, "--size", "8"), ("--size", "conv5_1")),
    "style-layer": Case((*BASE, "--style-layers", "conv1_1,conv9_9"), ("error: --style-layers: ", "conv9_9")),
    "content-layer": Case((*BASE, "--content-layers", "bogus"), ("error: --content-layers: ", "bogus")),
    "weights-wrong-shape": Case((*BASE, "--weights", "{wide}"), ("{wide}", "conv1_1")),
    "weights-missing": Case(
        (*BASE, "--weights", "/does/not/exist.pth"), ("error: --weights: /does/not/exist.pth",)
    ),
    "ratio-negative": Case((*BASE, "--ratio", "-1"), ("error: --ratio: ", "-1")),
    "tv-weight-negative": Case((*BASE, "--tv-weight", "-1"), ("error: --tv-weight: ", "-1")),
    "output-not-png": Case(("{content}", "{style}", "-o", "{dir}/out.jpg", *FAST), ("--output", "out.jpg")),
    "layer-weights": Case(
        (*BASE, "--style-layer-weights", "1,x"), ("error: --style-layer-weights: ", "'1,x'")
    ),
    # unwritable targets are refused before the synthesis runs
    "output-under-a-file": Case(("{content}", "{style}", "-o", "{text}/out.png", *FAST), ("{text}",)),
    "stats-json-is-a-dir": Case((*BASE, "--stats-json", "{dir}"), ("--stats-json",)),
    "init-missing": Case((*BASE, "--init", "bogus"), ("error: --init: ", "bogus")),
    "snapshot-negative": Case((*BASE, "--snapshot-every", "-1"), ("--snapshot-every",)),
    "threads-zero": Case((*BASE, "--threads", "0"), ("--threads",)),
    "random-seed-not-a-number": Case((*BASE, "--weights", "random:abc"), ("error: --weights: random:abc",)),
    "preprocessing-without-file": Case(
        (*BASE, "--weights", "embedded", "--weights-preprocessing", "caffe"),
        ("error: --weights-preprocessing: ",),
    ),
}

#: A value outside a choice option's choices: click refuses it before the command runs.
CHOICE_CASES: dict[str, Case] = {
    "color": Case(
        (*BASE, "--color", "purple"), ("'--color'", "'purple'", "'none', 'histogram', 'luminance'")
    ),
    "optimizer": Case((*BASE, "--optimizer", "sgd"), ("'--optimizer'", "'sgd'", "'lbfgs', 'adam'")),
    "precision": Case((*BASE, "--precision", "fp16"), ("'--precision'", "'fp16'", "'bf16'")),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("cli")
    content = _write_png(folder / "content.png", 1)
    style = _write_png(folder / "style.png", 2)
    text = folder / "style.png.txt.png"
    text.write_text("not an image\n")
    data = _write_png(folder / "whole.png", 3).read_bytes()
    truncated = folder / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    # every key present, conv1_1 with the wrong shape (cheaper than a full 80 MB VGG-19)
    wide = folder / "wide.pth"
    torch.save(
        {f"{i}.{p}": torch.zeros(2) for i in TORCHVISION_CONV_INDICES for p in ("weight", "bias")}, wide
    )
    return {
        "content": str(content),
        "style": str(style),
        "text": str(text),
        "truncated": str(truncated),
        "wide": str(wide),
        "dir": str(folder),
    }


def _format(parts: tuple[str, ...], paths: dict[str, str], out: str) -> list[str]:
    return [part.format(out=out, **paths) for part in parts]


@pytest.fixture(scope="module")
def results(files: dict[str, str]) -> dict[str, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1"}
    jobs = {"good": _format(GOOD_ARGS, files, f"{files['dir']}/good.png")}
    for name, case in {**CASES, **CHOICE_CASES}.items():
        jobs[name] = _format(case.args, files, f"{files['dir']}/{name}.png")

    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            _stylize(*args), capture_output=True, text=True, timeout=180, env=env, cwd=files["dir"]
        )

    workers = max(2, min(6, (os.cpu_count() or 2) + 1))
    with ThreadPoolExecutor(workers) as pool:
        done = dict(zip(jobs, pool.map(run, jobs.values()), strict=True))
    return done


def test_good_run(results: dict[str, subprocess.CompletedProcess], files: dict[str, str]) -> None:
    proc = results["good"]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "error:" not in proc.stderr
    out = Path(files["dir"]) / "good.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (32, 32) and img.mode == "RGB"
        assert img.text  # parameters stored as PNG text
    stats = json.loads((Path(files["dir"]) / "stats.json").read_text())
    assert stats["iterations"] == 2
    assert stats["height"] == 32 and stats["width"] == 32
    assert f"wrote {out}" in proc.stderr


@pytest.mark.parametrize(
    "name",
    list(CASES),
)
def test_bad_input_is_a_one_line_error(
    name: str, results: dict[str, subprocess.CompletedProcess], files: dict[str, str]
) -> None:
    proc = results[name]
    stderr = proc.stderr
    assert "Traceback" not in stderr, stderr
    assert proc.returncode not in (0, None), stderr
    assert "error:" in stderr, stderr
    assert not stderr.startswith("\n"), repr(stderr)  # no empty line from a bar never shown
    error_lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1, stderr
    out = f"{files['dir']}/{name}.png"
    for expected in _format(CASES[name].names, files, out):
        assert expected in error_lines[0], stderr
    assert not Path(out).exists()


@pytest.mark.parametrize("name", list(CHOICE_CASES))
def test_a_value_outside_the_choices_is_a_usage_error(
    name: str, results: dict[str, subprocess.CompletedProcess], files: dict[str, str]
) -> None:
    proc = results[name]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # one line, like every other error
    assert line.startswith("error: Invalid value") and "nst stylize --help" in line, proc.stderr
    for expected in CHOICE_CASES[name].names:
        assert expected in line, proc.stderr
    assert not Path(f"{files['dir']}/{name}.png").exists()


# ----------------------------------------------------------------------------- derived options


def _stylize_command():  # the click command typer builds
    import typer

    from nst_engine.cli.main import app

    return typer.main.get_command(app).commands["stylize"]


def test_help_lists_every_engine_field_as_an_option() -> None:
    from dataclasses import fields

    from typer.testing import CliRunner

    from nst_engine.cli.main import app
    from nst_engine.engine.config import SynthesisConfig

    result = CliRunner().invoke(app, ["stylize", "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    options = {opt for param in _stylize_command().params for opt in (*param.opts, *param.secondary_opts)}
    for f in fields(SynthesisConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in options and flag in result.output, f.name
        assert f.metadata["help"][:25] in result.output, f.name
    assert "--channels-last" in options and "--no-channels-last" in options
    assert "fp32|tf32|bf16" in result.output  # the choices, bf16 included
    assert "none|histogram|luminance" in result.output


def test_options_become_a_config() -> None:
    from nst_engine.cli.options import config_from_options
    from nst_engine.engine.config import ColorMode, Precision, SynthesisConfig

    command = _stylize_command()
    args = ["c.png", "s.png", "--no-channels-last", "--precision", "bf16", "--color", "luminance"]
    args += ["--style-layers", "conv1_1, conv3_1", "--style-layer-weights", "0.5,0.5", "--ratio", "1e-2"]
    context = command.make_context("stylize", args)
    engine = {name: context.params[name] for name in SynthesisConfig.__dataclass_fields__}
    config = config_from_options(engine)
    assert config.channels_last is False and config.precision is Precision.BF16
    assert config.color is ColorMode.LUMINANCE and config.ratio == 1e-2
    assert config.style_layers == ("conv1_1", "conv3_1") and config.style_layer_weights == (0.5, 0.5)
    defaults = command.make_context("stylize", ["c.png", "s.png"]).params
    assert config_from_options({name: defaults[name] for name in engine}) == SynthesisConfig()


def test_render_reports_a_manifest_field_error_before_ray(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nst_engine.cli.main import app

    _write_png(tmp_path / "c.png", 1)
    _write_png(tmp_path / "s.png", 2)
    source = tmp_path / "demo.yaml"
    source.write_text("contents: [c.png]\nstyles: [s.png]\nsizes: [32]\nparams: {ratio: -1}\n")
    result = CliRunner().invoke(app, ["render", str(source), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"{source}:4: params.ratio: " in result.stderr
    assert "--ratio" not in result.stderr


def test_too_large_even_in_tiles_is_one_line(files: dict[str, str]) -> None:
    """Under a 6 GiB address space, 100 L-BFGS pairs of a 2048 px image (7.5 GB) cannot
    fit however the image is tiled: one line saying so and what to lower, exit 2, and no
    output file."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))

    out = Path(files["dir"]) / "print.png"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run(
        _stylize(files["content"], files["style"], "-o", str(out), "--size", "2048", "-q"),
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        preexec_fn=cap,
    )
    assert proc.returncode == 2, proc.stderr
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "does not fit even in tiles" in error and "lower history_size" in error, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
