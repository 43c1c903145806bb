"""Fan-out of task events to every subscriber of :meth:`Gateway.events`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from parkfleet.taskport import TaskEvent

__all__ = ["EventBus"]


class EventBus:
    """Delivers each published event to every current subscriber, in order.

    Subscribers that are not reading accumulate events; task events are per task
    state change (not per item), so the volume stays modest.
    """

    def __init__(self) -> None:
        self._subscribers: list[asyncio.Queue[TaskEvent | None]] = []
        self._closed = False

    def publish(self, event: TaskEvent) -> None:
        """Queues ``event`` for every subscriber."""
        for q in self._subscribers:
            q.put_nowait(event)

    def close(self) -> None:
        """Ends every subscription (their iterators finish)."""
        self._closed = True
        for q in self._subscribers:
            q.put_nowait(None)

    def subscribe(self) -> AsyncIterator[TaskEvent]:
        """A new subscription: events published from now on.

        The subscription starts when this is called (not at the first ``anext``), so
        events published between subscribing and iterating are not missed.
        """
        q: asyncio.Queue[TaskEvent | None] = asyncio.Queue()
        if self._closed:
            q.put_nowait(None)
        self._subscribers.append(q)
        return self._drain(q)

    async def _drain(self, q: asyncio.Queue[TaskEvent | None]) -> AsyncIterator[TaskEvent]:
        try:
            while True:
                event = await q.get()
                if event is None:
                    return
                yield event
        finally:
            if q in self._subscribers:
                self._subscribers.remove(q)
