"""Loaded by pytest before any test module: parkfleet first, so that its gRPC settings
(fork support off, see ``parkfleet/__init__.py``) hold before any test imports gRPC."""

import parkfleet  # noqa: F401
