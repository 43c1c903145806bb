"""Models parkfleet ships for tests, demos and benchmarks (built locally, never downloaded)."""

from parkfleet.models.convnet import ConvNetModel, build_convnet, load_convnet_model
from parkfleet.models.digits import DigitsModel, build_digits, load_digits_model

__all__ = [
    "ConvNetModel",
    "DigitsModel",
    "build_convnet",
    "build_digits",
    "load_convnet_model",
    "load_digits_model",
]
