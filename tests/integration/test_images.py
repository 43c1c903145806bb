"""The images ``make images`` builds run as the chart runs them.

Each archive is unpacked from its own layers and run as user 10001 with a read-only root
filesystem, a tmpfs ``/tmp`` and no network (in namespaces of its own): the operator's and
the gateway's command and the agent's start; the agent runs the digits model on ONNX
Runtime's CPU provider. The archives are named as the chart's defaults resolve, share
their common layers, and a second build does nothing.

Root only; not part of ``make test`` yet (marker ``node``). The first build takes a few
minutes (``make images``); later ones are cached.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from .images_env import (
    REPO,
    RUN_DIGITS,
    Image,
    Unpacked,
    accuracy,
    build,
    built,
    model_folder,
)

pytestmark = [pytest.mark.integration, pytest.mark.node, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def images() -> dict[str, Image]:
    return built("parkfleet", "agent")


@pytest.fixture(scope="module")
def operator_fs(images: dict[str, Image], tmp_path_factory: pytest.TempPathFactory) -> Unpacked:
    return Unpacked.of(images["parkfleet"], tmp_path_factory.mktemp("operator-image"))


@pytest.fixture(scope="module")
def agent_fs(images: dict[str, Image], tmp_path_factory: pytest.TempPathFactory) -> Unpacked:
    return Unpacked.of(images["agent"], tmp_path_factory.mktemp("agent-image"))


def _chart_image() -> str:
    values = yaml.safe_load((REPO / "helm" / "parkfleet" / "values.yaml").read_text())
    chart = yaml.safe_load((REPO / "helm" / "parkfleet" / "Chart.yaml").read_text())
    image = values["image"]
    return f"{image['repository']}:{image['tag'] or chart['appVersion']}"


def test_archives_are_named_as_the_chart_defaults_resolve(images: dict[str, Image]) -> None:
    # containerd keeps the name the kubelet asks for: a short name in docker.io's form.
    assert images["parkfleet"].ref == f"docker.io/{_chart_image()}"
    assert images["agent"].ref == images["parkfleet"].ref.replace("/parkfleet:", "/agent:")
    pull = yaml.safe_load((REPO / "helm" / "parkfleet" / "values.yaml").read_text())["image"]
    assert pull["pullPolicy"] == "IfNotPresent"


def test_operator_and_agent_share_the_base_and_the_venv(images: dict[str, Image]) -> None:
    operator, agent = images["parkfleet"].record(), images["agent"].record()
    # base, the user, the venv: the same layers; then each image's own steps.
    assert operator["layers"][:3] == agent["layers"][:3]
    assert operator["layers"][3:] != agent["layers"][3:]
    print(
        f"archives {images['parkfleet'].archive_bytes / 1e6:.0f} MB and"
        f" {images['agent'].archive_bytes / 1e6:.0f} MB, unpacked"
        f" {images['parkfleet'].unpacked_bytes / 1e6:.0f} MB each"
    )


def test_a_second_build_does_nothing(images: dict[str, Image]) -> None:
    before = {n: i.record()["key"] for n, i in images.items()}
    again, output = build("parkfleet", "agent")
    assert re.findall(r"\bcached\b", output) == ["cached", "cached"], output
    assert {n: i.record()["key"] for n, i in again.items()} == before
    assert "building" not in output


def test_configs_say_what_the_dockerfiles_say(operator_fs: Unpacked, agent_fs: Unpacked) -> None:
    op, ag = operator_fs.config["config"], agent_fs.config["config"]
    assert op["User"] == ag["User"] == "10001:10001"  # numeric: runAsNonRoot checks it
    assert (op["Entrypoint"], op["Cmd"]) == (["parkfleet"], ["operator"])
    assert (ag["Entrypoint"], ag.get("Cmd")) == (["parkfleet", "agent"], None)
    assert op["WorkingDir"] == "/var/lib/parkfleet"
    assert set(op["ExposedPorts"]) == {"7443/tcp", "8080/tcp", "9090/tcp", "10250/tcp"}
    assert ag["Volumes"] == {"/var/cache/parkfleet": {}}
    env = dict(e.split("=", 1) for e in op["Env"])
    assert env["PATH"].startswith("/opt/parkfleet/bin:")
    assert env["HOME"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_operator_image_runs_both_commands_as_10001_read_only(operator_fs: Unpacked) -> None:
    for command in ("operator", "gateway"):
        proc = operator_fs.run(command, "--help")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"usage: parkfleet {command}" in proc.stdout
    probe = operator_fs.python(
        "import os, json, sys\n"
        "try:\n    open('/var/lib/parkfleet/x', 'w'); wrote = True\n"
        "except OSError as e:\n    wrote = e.strerror\n"
        "open('/tmp/scratch', 'w').write('ok')\n"
        "print(json.dumps({'ids': [os.getuid(), os.getgid()], 'root': wrote,"
        " 'cwd': os.getcwd(), 'python': sys.version.split()[0],"
        " 'exe': sys.executable, 'owner': os.stat('/var/lib/parkfleet').st_uid}))"
    )
    assert probe.returncode == 0, probe.stderr
    facts = json.loads(probe.stdout)
    assert facts["ids"] == [10001, 10001]
    assert facts["root"] == "Read-only file system"
    assert facts["cwd"] == "/var/lib/parkfleet"
    assert facts["owner"] == 10001
    assert facts["exe"] == "/opt/parkfleet/bin/python3"
    assert facts["python"].startswith("3.11.")  # Debian bookworm's


def test_operator_image_has_debians_python_and_no_apt_sources(operator_fs: Unpacked) -> None:
    root = operator_fs.root
    status = (root / "var" / "lib" / "dpkg" / "status").read_text()
    installed = set(re.findall(r"^Package: (\S+)\nStatus: install ok installed", status, re.M))
    assert {"python3", "python3.11", "python3-venv", "ca-certificates", "tzdata"} <= installed
    assert "perl" not in installed  # merged /usr without the usrmerge package
    pyvenv = (root / "opt" / "parkfleet" / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in pyvenv
    # The builder's apt sources went in and out again: no image names a mirror.
    assert not list((root / "etc" / "apt" / "sources.list.d").iterdir())
    assert not (root / "etc" / "apt" / "sources.list").exists()
    assert not (root / "wheels").exists()  # mounted for one step, in no layer
    assert not list((root / "tmp").iterdir())  # no device id of ONNX Runtime's baked in


def test_agent_image_starts_and_runs_a_model_on_the_cpu(agent_fs: Unpacked, tmp_path: Path) -> None:
    proc = agent_fs.run("--help")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "usage: parkfleet agent" in proc.stdout
    run = agent_fs.python(RUN_DIGITS, binds=[(model_folder(tmp_path), "/models")])
    assert run.returncode == 0, run.stdout + run.stderr
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert "CUDAExecutionProvider" not in facts["available"]
    assert facts["selected"] == facts["asked"] == facts["used"] == ["CPUExecutionProvider"]
    assert accuracy(facts["labels"]) > 0.9
