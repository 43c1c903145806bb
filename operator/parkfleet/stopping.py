"""How parkfleet's long-running processes stop: on SIGTERM or SIGINT, within a bounded grace.

A process asked to stop gets ``grace_s`` to do it cleanly (close streams, tell the API
server); whatever is left then, typically calls retried against an API server that is
already gone, is cancelled, and a line in the log says so. A second signal cancels at once.
The operator and the gateway both stop this way, so ``make demo-down`` and a Kubernetes
``terminationGracePeriodSeconds`` can count on it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable

__all__ = ["STOP_GRACE_S", "run_until_signalled"]

log = logging.getLogger(__name__)

# Long enough for a clean stop (the gateway gives open car streams 5 s of it, Kopf its
# handlers 5 s); short enough that a process exits well within 10 s of SIGTERM.
STOP_GRACE_S = 8.0

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run_until_signalled(
    main: Awaitable[None],
    stop: asyncio.Event,
    *,
    name: str,
    grace_s: float = STOP_GRACE_S,
    on_signal: Callable[[], None] | None = None,
) -> None:
    """Awaits ``main``; SIGTERM or SIGINT set ``stop`` and give it ``grace_s`` more.

    ``main`` should return soon after ``stop`` is set. If it has not within ``grace_s``
    of the signal (or at a second signal), it is cancelled and this returns normally,
    with a warning. Signals are only handled in the main thread (elsewhere this just
    awaits ``main``: whoever runs it there sets ``stop``). ``main`` runs in the caller's
    task, so it may rely on :func:`asyncio.current_task` being that task.

    Args:
        main: The process's work, including its clean stop.
        stop: The event ``main`` watches.
        name: What the log lines call the process.
        grace_s: Seconds from the first signal until what is left is cancelled.
        on_signal: Called at the first signal, just before ``stop`` is set.
    """
    loop = asyncio.get_running_loop()
    in_main = threading.current_thread() is threading.main_thread()
    try:
        async with asyncio.timeout(None) as deadline:

            def signalled(sig: signal.Signals) -> None:
                if deadline.when() is not None:
                    log.warning("%s again: %s cancels what is left of its stop", sig.name, name)
                    deadline.reschedule(loop.time())
                    return
                log.info(
                    "%s: %s stops; what is left after %g s is cancelled", sig.name, name, grace_s
                )
                if on_signal is not None:
                    on_signal()
                stop.set()
                deadline.reschedule(loop.time() + grace_s)

            if in_main:
                for sig in _SIGNALS:
                    loop.add_signal_handler(sig, signalled, sig)
            await main
    except TimeoutError:
        if not deadline.expired():
            raise
        log.warning(
            "%s did not stop within %g s of the signal (is the API server gone?): "
            "cancelled what was left",
            name,
            grace_s,
        )
    finally:
        if in_main:
            for sig in _SIGNALS:
                loop.remove_signal_handler(sig)
