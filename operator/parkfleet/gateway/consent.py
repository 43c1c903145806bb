"""Where the gateway keeps the owners' consent: who withdrew their car, and each change.

A withdrawal is final: the gateway that serves the car's cell refuses the car's identity
from then on, also after a restart, so the book must outlive the process (the owner
ledger implements :class:`ConsentBook` on disk). Without a data directory the gateway
keeps it in memory (:class:`MemoryConsentBook`): then a withdrawal lasts as long as the
process, and the car's own agent (which will not start again while its settings say
withdrawn) is what keeps it out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ConsentBook", "ConsentChange", "MemoryConsentBook"]


class ConsentBook(Protocol):
    """The gateway's record of owners' consent.

    Both methods run on the gateway's event loop, in the path of a car's messages: they
    must be cheap and must not block (an implementation on disk buffers its writes).
    """

    def is_withdrawn(self, car_id: str) -> bool:
        """Whether the car's owner withdrew it (it is refused at Hello)."""
        ...

    def is_paused(self, car_id: str) -> bool:
        """Whether the car's last recorded consent is ``paused`` (also from before a
        gateway restart: a car that reconnects active is then a change)."""
        ...

    def record_consent(
        self, car_id: str, pool: str, owner: str, consent: str, unix_ms: int
    ) -> None:
        """Records a change of a car's consent (``active``, ``paused`` or ``withdrawn``).

        Args:
            car_id: The car (from its certificate).
            pool: Its pool when it changed.
            owner: Its owner (from its certificate).
            consent: The new consent.
            unix_ms: When the gateway heard of it (its own clock, not the car's).
        """
        ...


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """One recorded change, as :meth:`ConsentBook.record_consent` took it."""

    car_id: str
    pool: str
    owner: str
    consent: str
    unix_ms: int


class MemoryConsentBook:
    """A :class:`ConsentBook` in memory: withdrawals for the process's life.

    Args:
        keep: How many recent changes :attr:`changes` keeps (withdrawals are all kept).
    """

    def __init__(self, keep: int = 1024) -> None:
        self._withdrawn: set[str] = set()
        # Cars whose last consent is "paused" (bounded by the cars paused).
        self._paused: set[str] = set()
        #: Recent changes, oldest first.
        self.changes: deque[ConsentChange] = deque(maxlen=keep)

    def is_withdrawn(self, car_id: str) -> bool:
        """Whether the car's owner withdrew it."""
        return car_id in self._withdrawn

    def is_paused(self, car_id: str) -> bool:
        """Whether the car's last recorded consent is ``paused``."""
        return car_id in self._paused

    def record_consent(
        self, car_id: str, pool: str, owner: str, consent: str, unix_ms: int
    ) -> None:
        """Records a change; a withdrawal is kept for good."""
        self.changes.append(ConsentChange(car_id, pool, owner, consent, unix_ms))
        if consent == "paused":
            self._paused.add(car_id)
        else:
            self._paused.discard(car_id)
        if consent == "withdrawn":
            self._withdrawn.add(car_id)
