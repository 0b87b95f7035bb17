"""Weight sources: embedded, torchvision hub cache, user files, random; and refusal of bad files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from nst_engine.engine.vgg import CAFFE, CONV_NAMES, TORCHVISION, conv_shapes
from nst_engine.engine.weights import (
    TORCHVISION_CONV_INDICES,
    TORCHVISION_FILE,
    load_weights,
    random_weights,
)
from nst_engine.errors import WeightsError

VGG19_SHAPES = conv_shapes()


def _features_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in ``vgg19().features`` layout with VGG-19's shapes."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for index, shape in zip(TORCHVISION_CONV_INDICES, VGG19_SHAPES, strict=True):
        state[f"{index}.weight"] = torch.randn(shape, generator=gen)
        state[f"{index}.bias"] = torch.randn(shape[0], generator=gen)
    return state


@pytest.fixture(scope="module")
def features_state() -> dict[str, torch.Tensor]:
    return _features_state()


def _assert_same_tensors(convs: list, state: dict[str, torch.Tensor], prefix: str = "") -> None:
    assert len(convs) == 16
    for index, (weight, bias) in zip(TORCHVISION_CONV_INDICES, convs, strict=True):
        assert torch.equal(weight, state[f"{prefix}{index}.weight"])
        assert torch.equal(bias, state[f"{prefix}{index}.bias"])


def _message(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


# ----------------------------------------------------------------------------- embedded


def test_embedded_weights() -> None:
    start = time.perf_counter()
    weights = load_weights("embedded")
    seconds = time.perf_counter() - start
    assert seconds < 5.0  # about 0.6 s; generous for loaded CI machines
    assert len(weights.convs) == 16
    for name, (weight, bias), shape in zip(CONV_NAMES, weights.convs, VGG19_SHAPES, strict=True):
        assert tuple(weight.shape) == shape, name
        assert tuple(bias.shape) == (shape[0],), name
        assert weight.dtype == torch.float32 and bias.dtype == torch.float32
        assert torch.isfinite(weight).all() and weight.abs().sum() > 0, name
    assert weights.preprocessing == CAFFE
    assert "embedded" in weights.source
    assert weights.widths == (64, 128, 256, 512, 512)

    again = load_weights("embedded")
    assert again.digest == weights.digest and len(weights.digest) == 16
    assert torch.equal(again.convs[15][0], weights.convs[15][0])


# ----------------------------------------------------------------------------- torchvision


def test_torchvision_from_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, features_state) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = Path(torch.hub.get_dir())
    assert hub.is_relative_to(tmp_path)
    path = hub / "checkpoints" / TORCHVISION_FILE
    path.parent.mkdir(parents=True)
    # full vgg19() layout: features.* plus a classifier that must be ignored
    state = {f"features.{k}": v for k, v in features_state.items()}
    state["classifier.0.weight"] = torch.zeros(3, 4)
    state["classifier.0.bias"] = torch.zeros(3)
    torch.save(state, path)

    weights = load_weights("torchvision")
    _assert_same_tensors(weights.convs, state, prefix="features.")
    assert weights.preprocessing == TORCHVISION
    assert "torchvision" in weights.source and str(path) in weights.source


def test_torchvision_missing_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as exc:
        load_weights("torchvision", allow_download=False)
    message = _message(exc)
    assert exc.value.field == "allow_download" and message.startswith("allow_download: ")
    assert "--" not in message
    assert str(tmp_path) in message
    assert not (tmp_path / "hub" / "checkpoints").exists()  # nothing created, nothing fetched


# ----------------------------------------------------------------------------- user files


def test_user_file_features_layout(tmp_path: Path, features_state) -> None:
    path = tmp_path / "vgg.pth"
    torch.save(features_state, path)
    weights = load_weights(str(path))
    _assert_same_tensors(weights.convs, features_state)
    assert weights.preprocessing == TORCHVISION
    assert str(path) in weights.source

    caffe = load_weights(str(path), preprocessing="caffe")
    assert caffe.preprocessing == CAFFE
    assert caffe.digest == weights.digest  # same tensors, same digest

    explicit = load_weights(str(path), preprocessing="torchvision")
    assert explicit.preprocessing == TORCHVISION


def test_user_file_bad_preprocessing_name(tmp_path: Path, features_state) -> None:
    path = tmp_path / "vgg.pth"
    torch.save(features_state, path)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path), preprocessing="bgr")
    message = _message(exc)
    assert exc.value.field == "preprocessing" and "bgr" in message and "caffe, torchvision" in message
    assert "--" not in message


def test_wrong_shape_names_file_and_layer(tmp_path: Path, features_state) -> None:
    state = dict(features_state)
    state["2.weight"] = torch.zeros(65, 64, 3, 3)  # conv1_2 with one filter too many
    path = tmp_path / "wide.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path))
    message = _message(exc)
    assert str(path) in message and "conv1_2" in message and "65" in message


def test_wrong_bias_shape(tmp_path: Path, features_state) -> None:
    state = dict(features_state)
    state["34.bias"] = torch.zeros(511)
    path = tmp_path / "bias.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path))
    assert "conv5_4" in _message(exc)


def test_missing_key(tmp_path: Path, features_state) -> None:
    state = dict(features_state)
    del state["21.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path))
    message = _message(exc)
    assert str(path) in message and "21.weight" in message


def test_value_that_is_not_a_tensor(tmp_path: Path, features_state) -> None:
    state = dict(features_state)
    state["0.weight"] = [1.0, 2.0]
    path = tmp_path / "list.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path))
    assert str(path) in _message(exc)


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path))
    message = _message(exc)
    assert str(path) in message and "Tensor" in message


def test_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("definitely not a checkpoint\n" * 10)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path))
    assert str(path) in _message(exc)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.pth"
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path))
    message = _message(exc)
    assert str(path) in message and exc.value.field == "source" and "--" not in message


def _write_marker(path: str) -> str:
    Path(path).write_text("code ran while unpickling")
    return "payload"


class Payload:
    """Unpickling this calls ``_write_marker``: arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (_write_marker, (str(self.marker),))


def test_pickled_code_is_not_executed(tmp_path: Path, features_state) -> None:
    marker = tmp_path / "pwned.txt"
    state = dict(features_state)
    state["evil"] = Payload(marker)
    path = tmp_path / "evil.pth"
    torch.save(state, path)
    assert not marker.exists()

    with pytest.raises(WeightsError) as exc:
        load_weights(str(path))
    assert str(path) in _message(exc)
    assert not marker.exists()

    # control: the payload is live, a full unpickle would have run it
    control = tmp_path / "control.txt"
    torch.save({"evil": Payload(control)}, tmp_path / "control.pth")
    loaded = torch.load(tmp_path / "control.pth", weights_only=False)
    assert loaded["evil"] == "payload" and control.exists()


# ----------------------------------------------------------------------------- random


def test_random_weights_are_seeded() -> None:
    a, b, c = random_weights(seed=1), random_weights(seed=1), random_weights(seed=2)
    assert a.digest == b.digest != c.digest
    assert all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a.convs, b.convs, strict=True)
    )
    assert not torch.equal(a.convs[0][0], c.convs[0][0])
    assert [tuple(w.shape) for w, _ in a.convs] == conv_shapes((4, 8, 8, 16, 16))
    assert a.preprocessing == TORCHVISION


def test_random_spec_with_seed() -> None:
    assert load_weights("random:7").digest == random_weights(seed=7).digest
    assert load_weights("random").digest == random_weights(seed=0).digest
    assert load_weights("random:7").digest != load_weights("random:8").digest
