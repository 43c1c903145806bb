"""A car's own network: a network namespace joined to this one by a veth pair, and a cut
of that link that sends nothing at all (no FIN, no RST), as a car out of Wi-Fi range.

Root only (:func:`unavailable` says why not). Nothing outlives :func:`car_link`: the
namespace, the veth pair, and ``/run/netns`` when its first ``ip netns add`` made it
(as the local cluster's node does, ``hack/controlplane/node.go``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RUN_NETNS = Path("/run/netns")
# 203.0.113.0/24 (TEST-NET-3), in /30 links: apart from the local cluster's pods, links
# (198.18.0.0/16) and Services (198.19.0.0/16).
_SUBNET = "203.0.113"
_SLOTS = 64
# Drops every packet in and out of the namespace, both rules at once: a dropped packet
# gets no answer, so the far end hears nothing (REJECT would send a reset).
_CUT_RULES = "*filter\n-A INPUT -j DROP\n-A OUTPUT -j DROP\nCOMMIT\n"


def _sh(*argv: str, stdin: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def unavailable() -> str | None:
    """Why a car link cannot be made here (a skip reason), or None when it can."""
    if os.geteuid() != 0:
        return "needs root: it makes a network namespace, a veth pair and iptables rules"
    for tool in ("ip", "iptables", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"needs {tool}, which is not installed"
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return f"`ip netns` is unavailable: {proc.stderr.strip()}"
    return None


@dataclass(frozen=True)
class CarLink:
    """A namespace for one car and its veth pair to this (the gateway's) namespace.

    Attributes:
        netns: The namespace's name (``ip netns``).
        host_dev: This side's end of the pair.
        host_ip: Its address: where the gateway listens.
        car_ip: The namespace's end (``eth0``).
    """

    netns: str
    host_dev: str
    host_ip: str
    car_ip: str

    def wrap(self) -> list[str]:
        """The prefix that runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.netns]

    def cut(self) -> None:
        """Drops everything in and out of the namespace from now on: nothing is sent."""
        _sh(*self.wrap(), "iptables-restore", stdin=_CUT_RULES)

    def mend(self) -> None:
        """Takes the cut away."""
        _sh(*self.wrap(), "iptables", "-F")

    def host_counters(self) -> tuple[int, int]:
        """Bytes and packets through this side's end so far, both ways (Ethernet frames,
        the kernel's counters)."""
        stats = Path("/sys/class/net") / self.host_dev / "statistics"

        def both(unit: str) -> int:
            return sum(int((stats / f"{d}_{unit}").read_text()) for d in ("rx", "tx"))

        return both("bytes"), both("packets")


def _is_mount_point(path: Path) -> bool:
    # os.path.ismount misses a bind mount within one filesystem (what `ip netns` makes).
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    return any(line.split()[4] == str(path) for line in mounts)


def _free_slot() -> int:
    used = _sh("ip", "-o", "-4", "addr", "show")
    for slot in range(_SLOTS):
        if f" {_SUBNET}.{4 * slot + 1}/" not in used:
            return slot
    raise RuntimeError(f"no free /30 in {_SUBNET}.0/24: see `ip -4 addr` for links left behind")


@contextmanager
def car_link(tag: str = "car") -> Iterator[CarLink]:
    """A fresh namespace and veth pair, removed on exit (whatever still runs in it).

    Args:
        tag: Part of the names (a few letters), to tell the links of tests apart.
    """
    slot = _free_slot()
    name = f"pf-{tag}-{os.getpid()}-{slot}"
    link = CarLink(
        netns=name,
        host_dev=f"pf{tag[:4]}{os.getpid() % 100_000}{slot}"[:15],
        host_ip=f"{_SUBNET}.{4 * slot + 1}",
        car_ip=f"{_SUBNET}.{4 * slot + 2}",
    )
    new_run_netns = not RUN_NETNS.exists()
    run_netns_mounted = _is_mount_point(RUN_NETNS)
    inside = ["ip", "-n", name]
    pair = ["type", "veth", "peer", "name", "eth0", "netns", name]
    try:
        _sh("ip", "netns", "add", name)
        for step in (
            ["ip", "link", "add", link.host_dev, *pair],
            ["ip", "addr", "add", f"{link.host_ip}/30", "dev", link.host_dev],
            ["ip", "link", "set", link.host_dev, "up"],
            [*inside, "link", "set", "lo", "up"],
            [*inside, "addr", "add", f"{link.car_ip}/30", "dev", "eth0"],
            [*inside, "link", "set", "eth0", "up"],
        ):
            _sh(*step)
        yield link
    finally:
        # Both ends go with the host's end, even while a process still holds the namespace.
        if Path("/sys/class/net", link.host_dev).exists():
            _sh("ip", "link", "delete", link.host_dev)
        if (RUN_NETNS / name).exists():
            _sh("ip", "netns", "delete", name)
        if not run_netns_mounted and _is_mount_point(RUN_NETNS) and not any(RUN_NETNS.iterdir()):
            _sh("umount", "--lazy", str(RUN_NETNS))
        if new_run_netns and RUN_NETNS.exists() and not any(RUN_NETNS.iterdir()):
            RUN_NETNS.rmdir()
