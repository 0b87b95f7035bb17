"""Resolution-versus-time scaling per device, fitted from result rows.

time per iteration = a + b · pixels^k   (the paper predicts k ≈ 1: cost linear in pixels)
peak memory        = c + d · pixels

k is found by profiling: for each k on a fine grid, (a, b) solve a weighted linear
least-squares problem (weights 1/t², so every size counts by its relative error); the
95% interval holds the k whose fit is not worse than the best by the likelihood-ratio
bound n·ln(SSE(k)/SSE_min) ≤ 3.84.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from nst_engine.engine.config import SynthesisConfig
from nst_engine.engine.memory import SAFETY_MARGIN, MemoryModel, optimizer_state_bytes
from nst_engine.engine.placement import place
from nst_engine.engine.tiles import TILED_PASS_COST, tile_areas
from nst_engine.results.schema import columns

#: The result columns the fits read.
FIT_COLUMNS = columns(
    "status",
    "error",
    "device_name",
    "device_type",
    "pixels",
    "seconds_per_iteration",
    "peak_memory_bytes",
    "device_memory_bytes",
    "batch_size",
    "tile",
)
K_GRID = np.round(np.arange(0.3, 2.5001, 0.001), 4)
CHI2_95 = 3.841


@dataclass
class DeviceFit:
    device: str  # device_name: the GPU or CPU model
    device_type: str
    points: int
    a: float
    b: float
    k: float
    k_low: float
    k_high: float
    mem_c: float
    mem_d: float
    memory_bytes: int | None
    largest_ok_pixels: int
    oom_pixels: int | None  # smallest size that ran out of memory, if any

    def tile(self, height: int, width: int, config: SynthesisConfig) -> int | None:
        """The tile side a ``height`` × ``width`` synthesis would run in on this device: 0
        for the whole image at once, None when it would not fit even in tiles. As the
        engine decides (``placement.place``), with the fit standing in for the measured
        model: the budget is ``SAFETY_MARGIN`` of what fits (``max_pixels``), and the
        activations' share of the fit's bytes per pixel is what remains after this
        config's optimizer state (approximate: the fit was measured with its runs' own
        history size)."""
        limit = self.max_pixels()
        activations = max(self.mem_d - optimizer_state_bytes(config.optimizer_settings(), 1), 1.0)
        budget = int(SAFETY_MARGIN * (limit or 0) * self.mem_d)  # 0: no memory known, never tiles
        try:
            fitted = MemoryModel(budget, bytes_per_pixel=activations, floor=0.0)  # measured peaks: no floor
            return place(height, width, config, fitted).tile
        except MemoryError:
            return None

    def predict_tiled_seconds(
        self, height: int, width: int, config: SynthesisConfig, tile: int | None
    ) -> float:
        """``predict_seconds`` of a synthesis in ``tile`` px tiles (as ``tile()`` says; 0 or
        None: whole): each tile, halo included, costs an iteration at its own size, times
        ``TILED_PASS_COST``."""
        if not tile:
            return self.predict_seconds(height * width, config.iterations)
        areas = tile_areas(height, width, tile, config.loss_layers)
        return config.iterations * TILED_PASS_COST * sum(self.seconds_per_iteration(a) for a in areas)

    def seconds_per_iteration(self, pixels: float) -> float:
        return self.a if math.isnan(self.k) else self.a + self.b * pixels**self.k

    def peak_memory(self, pixels: float) -> float:
        return self.mem_c + self.mem_d * pixels

    def max_pixels(self) -> float | None:
        """Largest pixel count whose predicted peak memory fits the device."""
        if not self.memory_bytes or self.mem_d <= 0:
            return None
        limit = (self.memory_bytes - self.mem_c) / self.mem_d
        if self.oom_pixels is not None:
            limit = min(limit, self.oom_pixels)
        return max(limit, 0.0)

    def max_square_side(self) -> int | None:
        pixels = self.max_pixels()
        return math.isqrt(int(pixels)) if pixels is not None else None

    def predict_seconds(self, pixels: float, iterations: int) -> float:
        return iterations * self.seconds_per_iteration(pixels)


def format_k(fit: DeviceFit) -> str:
    if math.isnan(fit.k):
        return "k = n/a (time did not grow with pixels)"
    return f"k = {fit.k:.2f} [{fit.k_low:.2f}, {fit.k_high:.2f}]"


def _fit_power(pixels: np.ndarray, seconds: np.ndarray) -> tuple[float, float, float, float, float]:
    """(a, b, k, k_low, k_high) for seconds ≈ a + b·pixels^k with a, b ≥ 0."""
    weights = 1.0 / seconds
    sse = np.full(K_GRID.shape, np.inf)
    params = np.zeros((K_GRID.size, 2))
    scale = pixels.max()
    x = pixels / scale  # conditioning: pixels^k spans many orders of magnitude
    for i, k in enumerate(K_GRID):
        design = np.stack([np.ones_like(x), x**k], axis=1) * weights[:, None]
        target = seconds * weights
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        if coef[0] < 0:  # constrain a ≥ 0: refit through the origin
            coef = np.array([0.0, float(np.dot(design[:, 1], target) / np.dot(design[:, 1], design[:, 1]))])
        if coef[1] <= 0:
            continue
        params[i] = coef
        sse[i] = float(np.sum((design @ coef - target) ** 2))
    if not np.isfinite(sse).any():  # time does not grow with pixels in these points
        return float(np.median(seconds)), 0.0, math.nan, math.nan, math.nan
    best = int(np.argmin(sse))
    n = len(pixels)
    floor = max(sse[best], 1e-300)
    inside = np.where(n * np.log(np.maximum(sse, 1e-300) / floor) <= CHI2_95)[0]
    k = float(K_GRID[best])
    a, b_scaled = params[best]
    return float(a), float(b_scaled / scale**k), k, float(K_GRID[inside.min()]), float(K_GRID[inside.max()])


def fit_devices(rows: pa.Table | list[dict], min_points: int = 3) -> list[DeviceFit]:
    """One fit per device with at least ``min_points`` distinct sizes of ok rows.

    Render and bench rows both count, so scaling can be read off ordinary jobs too.
    """
    if isinstance(rows, pa.Table):
        # a table made before a column was added lacks it: its rows read as null there
        rows = rows.select([c for c in FIT_COLUMNS if c in rows.column_names]).to_pylist()
    fits = []
    for device in sorted({r["device_name"] for r in rows if r.get("device_name")}):
        mine = [r for r in rows if r.get("device_name") == device]
        # a batched synthesis's iterations and memory are its batch's, a tiled one's are
        # its tiles': only lone, untiled ones fit
        ok = [
            r
            for r in mine
            if r["status"] == "ok"
            and r.get("seconds_per_iteration")
            and r.get("pixels")
            and (r.get("batch_size") or 1) == 1
            and not r.get("tile")
        ]
        by_pixels: dict[int, list[dict]] = {}
        for r in ok:
            by_pixels.setdefault(int(r["pixels"]), []).append(r)
        if len(by_pixels) < min_points:
            continue
        pixels = np.array(sorted(by_pixels), dtype=np.float64)
        seconds = np.array(
            [np.median([r["seconds_per_iteration"] for r in by_pixels[int(p)]]) for p in pixels]
        )
        memory = np.array([max(r.get("peak_memory_bytes") or 0 for r in by_pixels[int(p)]) for p in pixels])
        a, b, k, k_low, k_high = _fit_power(pixels, seconds)
        d, c = np.polyfit(pixels, memory, 1)
        oom = [
            int(r["pixels"])
            for r in rows
            if r.get("device_name") == device
            and r["status"] == "failed"
            and (r.get("error") or "").startswith("out of memory")
            and r.get("pixels")
        ]
        fits.append(
            DeviceFit(
                device=device,
                device_type=ok[0].get("device_type") or "",
                points=len(pixels),
                a=a,
                b=b,
                k=k,
                k_low=k_low,
                k_high=k_high,
                mem_c=float(c),
                mem_d=float(d),
                memory_bytes=max((r.get("device_memory_bytes") or 0) for r in ok) or None,
                largest_ok_pixels=int(pixels.max()),
                oom_pixels=min(oom) if oom else None,
            )
        )
    return fits
