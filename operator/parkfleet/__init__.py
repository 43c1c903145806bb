"""parkfleet: a Kubernetes operator that turns parked cars into GPU inference capacity."""

__all__ = ["__version__"]

__version__ = "0.1.0"
