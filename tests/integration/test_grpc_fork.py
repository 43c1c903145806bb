"""A process with gRPC running starts children, as the dev stack and the tests do.

With gRPC's fork support on, a child between fork and exec restarted gRPC's poller, whose
epoll fd ``close_fds`` had just closed, and aborted: about 1 spawn in 20 here, once the
operator of a whole ``make test``. ``import parkfleet`` turns it off before gRPC loads.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SPAWNER = """
import asyncio, ctypes, subprocess
import parkfleet  # first: gRPC's settings
import grpc

def die_with_parent():  # Python code between fork and exec, as DevStack runs
    ctypes.CDLL("libc.so.6").prctl(1, 15)

async def main():
    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # a channel trying: the poller busy
    codes = []
    for _ in range(120):
        done = await asyncio.to_thread(
            subprocess.run, ["/bin/true"], preexec_fn=die_with_parent, capture_output=True
        )
        codes.append(done.returncode)
    await channel.close()
    await server.stop(0)
    print("failed", sum(1 for c in codes if c != 0))

asyncio.run(main())
"""


def test_children_of_a_process_running_grpc_start_every_time() -> None:
    env = {"PATH": "/usr/bin:/bin"}  # no GRPC_ENABLE_FORK_SUPPORT: parkfleet's default
    done = subprocess.run(
        [sys.executable, "-c", SPAWNER], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "failed 0" in done.stdout, done.stdout + done.stderr[-2000:]
