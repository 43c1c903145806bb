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


def test_import_image_needs_a_cluster_with_a_node(tmp_path: Path) -> None:
    cluster = devcluster.LocalCluster(
        directory=tmp_path, kubeconfig=tmp_path / "k", server="https://x", pid=1, ready_seconds=1
    )
    with pytest.raises(devcluster.ClusterError, match="no real node"):
        devcluster.import_image(cluster, tmp_path / "image.tar")


def test_stop_cleans_up_a_node_its_killed_supervisor_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A state file still there means the supervisor died before removing its node.
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "state.json").write_text("{}")
    fake = tmp_path / "pf-controlplane"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/called\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PARKFLEET_CONTROLPLANE", str(fake))
    assert devcluster.stop(tmp_path) is False
    assert (tmp_path / "called").read_text().split() == ["node-clean", "--dir", str(tmp_path)]


def _fake_binary(tmp_path: Path, script: str) -> Path:
    fake = tmp_path / "pf-controlplane"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    return fake


def test_restart_component_passes_the_request_and_reads_the_answer(tmp_path: Path) -> None:
    answer = (
        '{"component":"kube-scheduler","ok":true,"pid_before":10,"pid":11,'
        '"restarts":2,"stopped_s":0.1,"ready_s":1.2}'
    )
    fake = _fake_binary(tmp_path, f"echo \"$@\" > {tmp_path}/called\necho '{answer}'\n")
    done = devcluster.restart_component(tmp_path, "kube-scheduler", timeout=5, binary=fake)
    assert done == devcluster.ComponentRestart(
        component="kube-scheduler",
        pid_before=10,
        pid=11,
        restarts=2,
        stopped_seconds=0.1,
        ready_seconds=1.2,
    )
    called = (tmp_path / "called").read_text().split()
    assert called == ["restart", f"--dir={tmp_path.resolve()}", "--timeout=5s", "kube-scheduler"]


def test_restart_component_failure_carries_the_supervisors_reason(tmp_path: Path) -> None:
    fake = _fake_binary(
        tmp_path, "echo 'restart kubelet: unknown component \"kubelet\"' >&2\nexit 1\n"
    )
    with pytest.raises(devcluster.ClusterError, match='unknown component "kubelet"'):
        devcluster.restart_component(tmp_path, "kubelet", binary=fake)


def test_restart_component_without_the_binary_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(devcluster.ClusterError, match="make controlplane"):
        devcluster.restart_component(tmp_path, "kube-apiserver", binary=tmp_path / "nope")
