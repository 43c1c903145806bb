"""The local control plane's start/stop helpers, without starting one."""

from __future__ import annotations

from pathlib import Path

import pytest

from parkfleet import devcluster


def test_missing_binary_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(devcluster.ClusterError, match="make controlplane"):
        devcluster.start(tmp_path / "c", binary=tmp_path / "nope")


def test_stop_without_a_running_cluster_is_a_no_op(tmp_path: Path) -> None:
    assert devcluster.stop(tmp_path) is False


def test_binary_that_exits_early_reports_its_logs(tmp_path: Path) -> None:
    fake = tmp_path / "pf-controlplane"
    fake.write_text("#!/bin/sh\necho 'etcd: cannot bind' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(devcluster.ClusterError, match=r"exited with 3(.|\n)*cannot bind"):
        devcluster.start(tmp_path / "c", binary=fake, timeout=10)
