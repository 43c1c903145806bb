"""Models parkfleet ships for tests, demos and benchmarks (built locally, never downloaded)."""

from parkfleet.models.digits import DigitsModel, build_digits, load_digits_model

__all__ = ["DigitsModel", "build_digits", "load_digits_model"]
