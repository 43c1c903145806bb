"""A long-running process stops on SIGTERM within its grace, also when its stop hangs."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from parkfleet.stopping import run_until_signalled


def _sigterm_soon(loop: asyncio.AbstractEventLoop) -> None:
    # Sent once the handlers are in place (run_until_signalled installs them at once).
    loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)


async def test_a_clean_stop_returns_when_main_does() -> None:
    stop = asyncio.Event()
    called: list[str] = []

    async def main() -> None:
        await stop.wait()
        called.append("stopped")

    _sigterm_soon(asyncio.get_running_loop())
    await asyncio.wait_for(
        run_until_signalled(main(), stop, name="t", on_signal=lambda: called.append("signal")),
        timeout=5,
    )
    assert called == ["signal", "stopped"]


async def test_a_hanging_stop_is_cancelled_after_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    cancelled = asyncio.Event()

    async def main() -> None:
        await stop.wait()
        try:
            await asyncio.Event().wait()  # a stop that never ends: retries against a gone API
        except asyncio.CancelledError:
            cancelled.set()
            raise

    _sigterm_soon(asyncio.get_running_loop())
    with caplog.at_level(logging.WARNING, logger="parkfleet.stopping"):
        await asyncio.wait_for(run_until_signalled(main(), stop, name="t", grace_s=0.2), timeout=5)
    assert cancelled.is_set()
    assert "t did not stop within 0.2 s of the signal" in caplog.text


async def test_a_second_signal_cancels_at_once() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def main() -> None:
        await stop.wait()
        loop.call_soon(os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.Event().wait()

    _sigterm_soon(loop)
    started = loop.time()
    await asyncio.wait_for(run_until_signalled(main(), stop, name="t", grace_s=60), timeout=5)
    assert loop.time() - started < 30


async def test_an_error_of_main_is_not_swallowed() -> None:
    async def main() -> None:
        raise TimeoutError("main's own")

    with pytest.raises(TimeoutError, match="main's own"):
        await run_until_signalled(main(), asyncio.Event(), name="t")
