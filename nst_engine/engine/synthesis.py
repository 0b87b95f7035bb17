"""One style-transfer synthesis, and the ``Stylizer`` that keeps a network loaded
between syntheses (a batch worker holds one for its lifetime)."""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from nst_engine.engine import color
from nst_engine.engine.config import SynthesisConfig
from nst_engine.engine.errors import ConfigError
from nst_engine.engine.images import ImageLike, load_image, output_size, resize, save_png, to_tensor
from nst_engine.engine.losses import StyleTargets, StyleTransferObjective, gram_matrix
from nst_engine.engine.optimize import IterationRecord, optimize
from nst_engine.engine.stats import PeakMemory, SynthesisStats, device_memory, device_name
from nst_engine.engine.vgg import VGG19Features, deepest, min_side
from nst_engine.engine.weights import VGGWeights

NOISE_STD = 0.1  # white-noise start: Gaussian around mid-grey


@dataclass
class SynthesisResult:
    image: torch.Tensor  # (1, 3, H, W) on CPU, in [0, 1]
    stats: SynthesisStats
    metadata: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """PNG with the full parameter set and weight source as text chunks."""
        return save_png(self.image, path, self.metadata)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device: unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible; use --device cpu")
    return resolved


def image_digest(img: Image.Image) -> str:
    h = hashlib.sha256(f"{img.mode}{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _precision(device: torch.device, precision: str) -> Iterator[None]:
    """fp32: strict float32 everywhere; tf32: TF32 tensor cores (CUDA); bf16: the VGG
    convolutions in bfloat16 by autocast, losses and the optimizer in float32."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    if device.type != "cuda":
        with autocast:
            yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    allow = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    try:
        with autocast:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class Stylizer:
    """VGG-19 weights on one device, reused across syntheses.

    Style targets (blended Gram matrices) are cached by style pixels, size, layers,
    pooling and colour mode, so a style used across a dataset is extracted once.
    """

    def __init__(
        self,
        weights: VGGWeights,
        device: str | torch.device = "auto",
        threads: int | None = None,
        target_cache_size: int = 32,
        load_seconds: float = 0.0,
    ) -> None:
        self.weights = weights
        self.device = resolve_device(device)
        if threads:
            torch.set_num_threads(threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self._networks: dict[tuple[str, str, bool], VGG19Features] = {}
        self._targets: OrderedDict[tuple, StyleTargets] = OrderedDict()
        self._target_cache_size = target_cache_size
        self._pending_load_seconds = load_seconds
        self.target_cache_hits = 0
        self.device_memory = device_memory(self.device)

    def network(self, pooling: str, last_layer: str, channels_last: bool) -> VGG19Features:
        key = (pooling, last_layer, channels_last)
        if key not in self._networks:
            net = VGG19Features(
                self.weights.convs, self.weights.preprocessing, pooling, last_layer, channels_last
            )
            self._networks[key] = net.to(self.device)
        return self._networks[key]

    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        return image.to(self.device).contiguous()

    @torch.no_grad()
    def style_targets(
        self,
        styles: Sequence[Image.Image],
        content: torch.Tensor,
        config: SynthesisConfig,
    ) -> StyleTargets:
        height, width = content.shape[-2:]
        weights = config.style_weights or tuple(1.0 for _ in styles)
        key = (
            tuple(image_digest(s) for s in styles),
            tuple(weights),
            height,
            width,
            config.style_scale,
            config.style_layers,
            config.pooling,
            config.color,
            self.weights.digest,
            # colour modes adapt the style to the content's colours
            hashlib.sha256(content.cpu().numpy().tobytes()).hexdigest() if config.color != "none" else None,
        )
        if key in self._targets:
            self._targets.move_to_end(key)
            self.target_cache_hits += 1
            return self._targets[key]
        network = self.network(config.pooling, deepest(config.style_layers), config.channels_last)
        per_style = []
        smallest = min_side(deepest(config.style_layers))
        for style in styles:
            style_height, style_width = self.style_size(style, height, width, config.style_scale)
            if min(style_height, style_width) < smallest:
                raise ConfigError(
                    f"--style-scale {config.style_scale} gives a {style_width}x{style_height} style "
                    f"image; layer {deepest(config.style_layers)} needs at least {smallest} pixels "
                    "on the shorter side"
                )
            tensor = to_tensor(resize(style, style_height, style_width))
            if config.color == "histogram":
                tensor = color.match_histogram(tensor, content)
            elif config.color == "luminance":
                tensor = color.match_luminance(color.luminance(tensor), color.luminance(content))
            features = network(self._prepare(tensor), config.style_layers)
            per_style.append({k: gram_matrix(v) for k, v in features.items()})
        targets = StyleTargets.blend(per_style, weights)
        self._targets[key] = targets
        while len(self._targets) > self._target_cache_size:
            self._targets.popitem(last=False)
        return targets

    @staticmethod
    def style_size(style: Image.Image, height: int, width: int, style_scale: float | None) -> tuple[int, int]:
        """The paper resizes the style to the content's size; ``style_scale`` instead keeps
        the style's aspect ratio with ``style_scale²`` times the content's pixel count."""
        if style_scale is None:
            return height, width
        sw, sh = style.size
        factor = style_scale * math.sqrt(height * width / (sw * sh))
        return max(1, round(sh * factor)), max(1, round(sw * factor))

    def synthesize(
        self,
        content: ImageLike,
        styles: Sequence[ImageLike],
        config: SynthesisConfig,
        *,
        content_id: str | None = None,
        style_ids: Sequence[str] | None = None,
        on_iteration: Callable[[IterationRecord, torch.Tensor], None] | None = None,
        snapshot_every: int = 0,
        snapshot_path: Callable[[int], Path] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> SynthesisResult:
        """Run one synthesis; ``content``/``styles`` are paths or PIL images."""
        config.validate()
        if not styles:
            raise ConfigError("give at least one style image")
        if config.style_weights is not None and len(config.style_weights) != len(styles):
            raise ConfigError(
                f"--style-weights: give {len(styles)} weights, one per style image, "
                f"got {len(config.style_weights)}"
            )
        started = time.perf_counter()
        content_img = load_image(content)
        style_imgs = [load_image(s) for s in styles]
        height, width = output_size(*content_img.size, config.size)
        smallest = min_side(deepest(config.loss_layers))
        if min(height, width) < smallest:
            raise ConfigError(
                f"--size {config.size} gives a {width}x{height} image; layer {deepest(config.loss_layers)} "
                f"needs at least {smallest} pixels on the shorter side"
            )
        content_rgb = to_tensor(resize(content_img, height, width))
        content_input = color.luminance(content_rgb) if config.color == "luminance" else content_rgb

        with _precision(self.device, config.precision), PeakMemory(self.device) as memory:
            targets_start = time.perf_counter()
            style_targets = self.style_targets(style_imgs, content_rgb, config)
            network = self.network(config.pooling, deepest(config.loss_layers), config.channels_last)
            with torch.no_grad():
                content_features = network(self._prepare(content_input), config.content_layers)
                content_targets = {k: v.clone() for k, v in content_features.items()}
            objective = StyleTransferObjective(
                network,
                content_targets,
                style_targets.to(self.device),
                config.content_weights_by_layer(),
                config.style_weights_by_layer(),
                content_weight=1.0,
                style_weight=1.0 / config.ratio,
                tv_weight=config.tv_weight,
            )
            targets_seconds = time.perf_counter() - targets_start

            image = self._prepare(self._initial_image(config, content_input, style_imgs, height, width))

            def record(rec: IterationRecord, current: torch.Tensor) -> None:
                if on_iteration is not None:
                    on_iteration(rec, current)
                if snapshot_every and snapshot_path is not None and (rec.iteration + 1) % snapshot_every == 0:
                    save_png(self._finish(current, content_rgb, config), snapshot_path(rec.iteration + 1))

            synth_start = time.perf_counter()
            trace = optimize(objective, image, config.optimizer_settings(), record, should_stop)
            final_total, final_content, final_style, final_tv = trace.final
            synthesis_seconds = time.perf_counter() - synth_start
            output = self._finish(image, content_rgb, config)

        load_seconds, self._pending_load_seconds = self._pending_load_seconds, 0.0
        setup_seconds = load_seconds + targets_seconds
        records = trace.records
        stats = SynthesisStats(
            height=height,
            width=width,
            pixels=height * width,
            iterations=trace.iterations,
            loss_evaluations=trace.evaluations,
            stop_reason=trace.stop_reason,
            final_content_loss=final_content,
            final_style_loss=final_style,
            final_tv_loss=final_tv,
            final_total_loss=final_total,
            iteration_seconds=[r.seconds for r in records],
            total_losses=[r.total for r in records],
            content_losses=[r.content for r in records],
            style_losses=[r.style for r in records],
            weights_load_seconds=load_seconds,
            targets_seconds=targets_seconds,
            setup_seconds=setup_seconds,
            synthesis_seconds=synthesis_seconds,
            engine_seconds=time.perf_counter() - started + load_seconds,
            device=str(self.device),
            device_type=self.device.type,
            device_name=device_name(self.device),
            peak_memory_bytes=memory.peak,
            peak_memory_kind=memory.kind,
            device_memory_bytes=self.device_memory,
            weights_source=self.weights.source,
            torch_version=torch.__version__,
        )
        metadata = {
            "Software": "nst-engine",
            "nst:params": config.to_params(),
            "nst:weights": self.weights.source,
            "nst:weights_digest": self.weights.digest,
            "nst:content_id": content_id or image_digest(content_img),
            "nst:style_ids": list(style_ids) if style_ids else [image_digest(s) for s in style_imgs],
            "nst:iterations": stats.iterations,
            "nst:loss_evaluations": stats.loss_evaluations,
            "nst:final_losses": {
                "content": stats.final_content_loss,
                "style": stats.final_style_loss,
                "total": stats.final_total_loss,
            },
        }
        return SynthesisResult(output, stats, metadata)

    def _initial_image(
        self,
        config: SynthesisConfig,
        content: torch.Tensor,
        styles: Sequence[Image.Image],
        height: int,
        width: int,
    ) -> torch.Tensor:
        if config.init == "noise":
            # Gaussian white noise around mid-grey; seeded on the CPU so every device
            # starts from the same image.
            generator = torch.Generator().manual_seed(config.seed)
            return 0.5 + NOISE_STD * torch.randn(1, 3, height, width, generator=generator)
        if config.init == "content":
            return content.clone()
        if config.init == "style":
            image = to_tensor(resize(styles[0], height, width))
        else:
            image = to_tensor(resize(load_image(config.init), height, width))
        return color.luminance(image) if config.color == "luminance" else image

    @staticmethod
    def _finish(image: torch.Tensor, content_rgb: torch.Tensor, config: SynthesisConfig) -> torch.Tensor:
        out = image.detach().float().cpu().contiguous().clamp(0, 1)
        if config.color == "luminance":
            out = color.combine_luminance(out, content_rgb)
        return out
