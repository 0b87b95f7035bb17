"""The synthesis engine: pure PyTorch, no Ray, no CLI; usable as a library.

>>> from nst_engine.engine import Stylizer, SynthesisConfig, load_weights
>>> stylizer = Stylizer(load_weights("embedded"))
>>> result = stylizer.synthesize("photo.jpg", ["painting.jpg"], SynthesisConfig(size=256))
>>> result.save("out.png")
"""

from nst_engine.engine.choices import ColorMode, Optimizer, Pooling, Precision
from nst_engine.engine.config import CONTENT_LAYERS, STYLE_LAYERS, SynthesisConfig
from nst_engine.engine.images import load_image, read_png_metadata, save_png
from nst_engine.engine.losses import StyleTargets, gram_matrix
from nst_engine.engine.normalization import normalize_weights
from nst_engine.engine.stats import SynthesisStats
from nst_engine.engine.synthesis import Stylizer, SynthesisResult, resolve_device
from nst_engine.engine.vgg import LAYER_NAMES, VGG19Features
from nst_engine.engine.weights import VGGWeights, load_weights, random_weights
from nst_engine.errors import ConfigError, ImageInputError, NSTError, WeightsError

__all__ = [
    "CONTENT_LAYERS",
    "LAYER_NAMES",
    "STYLE_LAYERS",
    "ColorMode",
    "ConfigError",
    "ImageInputError",
    "NSTError",
    "Optimizer",
    "Pooling",
    "Precision",
    "StyleTargets",
    "Stylizer",
    "SynthesisConfig",
    "SynthesisResult",
    "SynthesisStats",
    "VGG19Features",
    "VGGWeights",
    "WeightsError",
    "gram_matrix",
    "load_image",
    "load_weights",
    "normalize_weights",
    "random_weights",
    "read_png_metadata",
    "resolve_device",
    "save_png",
]
