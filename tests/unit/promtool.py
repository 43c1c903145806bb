"""Prometheus' promtool for the metric tests, and what a parkfleet metric name looks like."""

from __future__ import annotations

import re
import shutil

import pytest

__all__ = ["METRIC", "promtool"]

METRIC = re.compile(r"\bparkfleet_[a-z0-9_]+")


def promtool() -> str:
    """The promtool binary (make test installs it; a test fails saying so when missing)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: run hack/prometheus.sh (make test does)")
    return path
