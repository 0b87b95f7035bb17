"""Item ids are a promise: results rendered once are recognised by their ids in every later run.

The ids below were computed by the code before ``SynthesisConfig`` became a pydantic model
(commit d043adb) and are hard-coded, so any change to how parameters are read, coerced or
serialized for hashing (``to_params``) that would change an id fails here. The inputs are
the shipped sample images (fixed bytes in the repository), not images encoded by the
installed Pillow, so the ids do not depend on the environment.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nst_engine.engine.config import SynthesisConfig
from nst_engine.planning.items import expand, item_id
from nst_engine.planning.manifest import load_manifest
from nst_engine.samples import __file__ as samples_init

SAMPLES = Path(samples_init).parent

#: manifest file name -> its text; values are written as users write them (YAML 1.1 reads
#: ``1e-3`` as text, ints stand for floats, a comma-separated layer list, ``yes``, ``ADAM``)
MANIFESTS = {
    "defaults.yaml": """\
contents: [img/tubingen.jpg, img/the_scream.jpg]
styles: [img/starry_night.jpg, img/shipwreck.jpg]
sizes: [64, 128]
""",
    "params.yaml": """\
contents: [img/tubingen.jpg]
styles: [img/starry_night.jpg]
sizes: [96]
params:
  iterations: 120
  ratio: 1e-3
  seed: 7
  optimizer: ADAM
  learning_rate: 0.05
  pooling: max
  color: luminance
  precision: bf16
  channels_last: no
  tv_weight: 1
  tolerance: 0
  history_size: 5
  line_search: yes
  style_scale: 0.5
  content_layers: "conv4_2, conv5_2"
  content_layer_weights: [1, 2]
  style_layers: [conv1_1, conv3_1]
  style_layer_weights: [0.5, 1.5]
""",
    "styles.yaml": """\
contents: [img/tubingen.jpg]
styles:
  - img/the_scream.jpg
  - {name: wreck, image: img/shipwreck.jpg}
  - name: blend
    images:
      - {path: img/starry_night.jpg, weight: 0.7}
      - {path: img/shipwreck.jpg, weight: 0.3}
  - images: [img/starry_night.jpg, {path: img/the_scream.jpg, weight: 2}]
sizes: [80, 160]
params: {ratio: 1e-2}
""",
    "style_weights.yaml": """\
contents: [img/the_scream.jpg]
styles:
  - images: [img/starry_night.jpg, img/shipwreck.jpg]
sizes: [64]
params: {style_weights: [1, 3], ratio: 0.001}
""",
    "inits.yaml": """\
contents: [img/tubingen.jpg, img/the_scream.jpg]
styles: [img/starry_night.jpg]
sizes: [64, 128]
params: {init: content}
overrides:
  - match: {content: "the_scream*"}
    params: {init: style}
  - match: {size: 128}
    params: {init: img/shipwreck.jpg}
  - match: {size: 64, content: "tubingen*"}
    params: {init: noise, seed: 3}
""",
    "later.yaml": """\
contents: [img/tubingen.jpg]
styles: [img/starry_night.jpg]
sizes: [128, 256]
params: {scales: 1, scale_factor: 2, scale_iterations: null, tile: 0, ratio: 1}
overrides:
  - match: {size: 256}
    params: {scales: 2, scale_factor: 1.5, scale_iterations: 20, tile: 64}
""",
    "weights.json": """\
{"contents": ["img/tubingen.jpg"], "styles": ["img/the_scream.jpg"], "sizes": [64],
 "params": {"iterations": 10, "ratio": 0.5}, "weights": {"source": "random:3"}}
""",
    "table.csv": """\
content,style,size,ratio,iterations,style_weights,init,channels_last,scales
img/tubingen.jpg,img/starry_night.jpg,64,1e-3,5,,,,
img/the_scream.jpg,img/starry_night.jpg;img/shipwreck.jpg,128,0.01,7,0.25;0.75,content,false,2
img/tubingen.jpg,img/shipwreck.jpg,96,1,300,,img/the_scream.jpg,yes,1
""",
}

#: manifest file name -> the ids of its items, in order, as computed before the change
EXPECTED_IDS = {
    "defaults.yaml": [
        "8b4dd290c789c9841bc5",
        "2fbeb06095634f6f3901",
        "9937bc84bd766c739cf8",
        "30602ee05b5e7d707f50",
        "58fac2e2a14a708c9a98",
        "303096e713deb502686d",
        "ea37d27d5afb25c08ffb",
        "a9d47f2769262a37af1e",
    ],
    "params.yaml": [
        "f97f23763788012b1152",
    ],
    "styles.yaml": [
        "950076157c08ad36a9bc",
        "e783bd8382a7898eaf7e",
        "216e61f20f5b02abcbe4",
        "bb4919e770a42ae51c55",
        "6740ab36709977ef4625",
        "88ee8260ca1c1133c1c9",
        "f3ccbe7d7f1d413eaddb",
        "5c62ec2d1360608a7807",
    ],
    "style_weights.yaml": [
        "a07a78e800b442f2ef52",
    ],
    "inits.yaml": [
        "3498988a9ce261c2a144",
        "de288d57ef0ee9098fec",
        "619de48aca76366a5887",
        "d41d2982dfc3ab7f4013",
    ],
    "later.yaml": [
        "37832b7e5e7e40755d28",
        "82d5d51fa49a72993e01",
    ],
    "weights.json": [
        "f7370db715f1bd1392c6",
    ],
    "table.csv": [
        "75db0155377ee8337695",
        "dc07ba0fc6a2a8764412",
        "b31c191f161a1fb0e625",
    ],
}

#: (config, init image hash) -> id, for configs built in Python with fixed input hashes
CONFIGS = {
    "default": SynthesisConfig(),
    "scales": SynthesisConfig(size=256, scales=3, scale_factor=1.5, scale_iterations=50, tile=32),
    "layers": SynthesisConfig(
        content_layers=("conv3_2",),
        style_layers=("conv1_1", "conv2_1"),
        style_layer_weights=(0.25, 0.75),
        optimizer="adam",
        color="histogram",
        precision="tf32",
        learning_rate=0.1,
    ),
}
EXPECTED_CONFIG_IDS = {
    "default": "1a5c196feac222e49993",
    "scales": "e283db95eeb7c38a2f1d",
    "layers": "9db935558e86d2332328",
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for image in SAMPLES.glob("*.jpg"):
        shutil.copy(image, tmp_path / "img" / image.name)
    for name, text in MANIFESTS.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_manifest_item_ids_are_those_computed_before(folder: Path, name: str) -> None:
    manifest = load_manifest(folder / name, output=str(folder / "out"))
    ids = [item.item_id for item in expand(manifest)]
    assert ids == EXPECTED_IDS[name]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_item_ids_are_those_computed_before(name: str) -> None:
    weights = {"source": "embedded", "preprocessing": None, "normalize": False, "calibration": []}
    ident = item_id("c" * 64, ("s" * 64, "t" * 64), (0.5, 0.5), CONFIGS[name], weights)
    assert ident == EXPECTED_CONFIG_IDS[name]
