"""``nst stylize`` as a function: one content image, one or more styles, one PNG."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nst_engine.engine import NSTError, Stylizer, SynthesisConfig, SynthesisResult, load_image
from nst_engine.engine.memory import is_out_of_memory
from nst_engine.engine.optimize import IterationRecord
from nst_engine.engine.problem import synthesis_size
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.errors import one_line
from nst_engine.runs.events import Listener, Silent
from nst_engine.storage.files import probe_writable, write_atomic


@dataclass(frozen=True)
class StylizeRequest:
    """One synthesis: ``content`` as ``styles`` with ``config``, written to ``output``."""

    content: Path
    styles: list[Path]
    output: Path
    config: SynthesisConfig
    weights: WeightsSpec
    device: str = "auto"
    threads: int | None = None
    snapshot_every: int = 0  # also save every k-th iterate next to the output
    stats_json: Path | None = None  # the run's statistics as JSON

    def check(self) -> None:
        """Refuse, before a long synthesis rather than after it, what could not be written."""
        if self.output.suffix.lower() != ".png":
            raise NSTError(
                f"--output {self.output}: must end in .png (the parameters are stored as PNG text)"
            )
        if self.snapshot_every < 0:
            raise NSTError(
                f"must be 0 (off) or a positive number, got {self.snapshot_every}", "snapshot_every"
            )
        if self.threads is not None and self.threads < 1:
            raise NSTError(f"must be at least 1, got {self.threads}", field="threads")
        _check_writable(self.output, "--output")
        if self.stats_json is not None:
            _check_writable(self.stats_json, "--stats-json")


def _check_writable(path: Path, option: str) -> None:
    """The folder is created and a file as long-named as the result's temporary one written,
    renamed and deleted there (creating the folder alone passes a read-only one)."""
    if path.is_dir():
        raise NSTError(f"{option} {path}: is a directory; give a file name")
    probe_writable(str(path.parent), name=f"{option} {path}: folder {path.parent}", like=path.name)


def stylize(
    request: StylizeRequest,
    listener: Listener | None = None,
    on_iteration: Callable[[IterationRecord], None] | None = None,
) -> SynthesisResult:
    """Run ``request`` and write its PNG (and statistics); ``on_iteration`` sees each
    iteration. Running out of memory, even in tiles, is an ``NSTError`` saying so."""
    listener = listener or Silent()
    request.check()
    try:
        result = _synthesize(request, listener, on_iteration)
    except (MemoryError, RuntimeError) as exc:  # too large even in tiles, or an allocation failed
        if not is_out_of_memory(exc):
            raise
        raise NSTError(f"out of memory: {one_line(exc) or 'an allocation failed'}") from None
    _write(request, result)
    return result


def _synthesize(
    request: StylizeRequest, listener: Listener, on_iteration: Callable[[IterationRecord], None] | None
) -> SynthesisResult:
    # decode the images first: a bad file should fail before weights load
    content = load_image(request.content)
    styles = [load_image(path) for path in request.styles]
    loaded, load_seconds = request.weights.load()
    stylizer = Stylizer(loaded, device=request.device, threads=request.threads, load_seconds=load_seconds)
    listener.note(f"weights: {loaded.source}")
    listener.note(f"device: {stylizer.device}")
    _note_tiles(stylizer, content, request.config, listener)
    return stylizer.synthesize(
        content,
        styles,
        request.config,
        on_iteration=(lambda record, _image: on_iteration(record)) if on_iteration else None,
        snapshot_every=request.snapshot_every,
        snapshot_path=lambda i: request.output.with_name(f"{request.output.stem}.iter{i:05d}.png"),
    )


def _note_tiles(stylizer: Stylizer, content: object, config: SynthesisConfig, listener: Listener) -> None:
    """Say so when the output is computed in tiles, and why (``placement.place``)."""
    height, width = synthesis_size(content, config)  # type: ignore[arg-type]
    placement = stylizer.place(height, width, config)
    if placement.tile:
        why = "--tile" if config.tile else "the whole image would not fit in memory"
        tiles = placement.tiles(height, width)
        listener.note(f"tiled: {width}x{height} in {placement.tile} px tiles, {tiles} per evaluation ({why})")


def _write(request: StylizeRequest, result: SynthesisResult) -> None:
    try:
        result.save(request.output)
        if request.stats_json is not None:
            stats = {"params": request.config.to_params(), **result.stats.to_dict()}
            write_atomic(request.stats_json, json.dumps(stats, indent=2).encode())
    except OSError as exc:
        raise NSTError(f"cannot write {exc.filename or request.output}: {exc.strerror or exc}") from None
