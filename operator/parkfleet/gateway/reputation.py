"""Each car's reputation: agreements and strikes from the votes on redundant copies.

Pure bookkeeping, no I/O. The node agent's lifecycle core votes on a unit's copies and
tells the gateway, through the port, which copies agreed with the kept result; the
gateway turns that into a verdict on the cars that delivered each copy's results.

The rule (:class:`ReputationRule`), with ``a`` agreements and ``s`` strikes:

- **quarantined** once ``s >= quarantine_strikes`` and ``s >= quarantine_ratio * (a + s)``:
  a liar is out after two strikes, while an honest car with a long record survives the odd
  disagreement (GPU results are not bit-identical). Quarantine sticks until the record
  is forgotten; a quarantined car gets no more offers.
- **trusted** once ``a >= trusted_after * (1 + s)``: every strike costs another
  ``trusted_after`` agreements before the car is trusted again.
- **new** otherwise (every car starts so).

Memory is bounded: at most ``max_cars`` records, the least recently judged forgotten
first (a car with no record is new).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DEFAULT_MAX_CARS",
    "REPUTATION_STATES",
    "Reputation",
    "ReputationRule",
    "ReputationState",
]

ReputationState = Literal["new", "trusted", "quarantined"]
REPUTATION_STATES: tuple[ReputationState, ...] = ("new", "trusted", "quarantined")
DEFAULT_MAX_CARS = 100_000  # records kept; a few tens of bytes each


@dataclass(frozen=True, slots=True)
class ReputationRule:
    """When a car is quarantined or trusted (see the module docstring).

    Attributes:
        quarantine_strikes: Strikes a car needs at least to be quarantined.
        quarantine_ratio: ...and the share of its verdicts they must be at least.
        trusted_after: Agreements (per strike, plus one) that make a car trusted.
    """

    quarantine_strikes: int = 2
    quarantine_ratio: float = 0.1
    trusted_after: int = 10

    def state(self, agreements: int, strikes: int) -> ReputationState:
        """The state a record of ``agreements`` and ``strikes`` is in."""
        verdicts = agreements + strikes
        if strikes >= max(1, self.quarantine_strikes) and strikes >= (
            self.quarantine_ratio * verdicts
        ):
            return "quarantined"
        if agreements >= self.trusted_after * (1 + strikes):
            return "trusted"
        return "new"


class _Record:
    __slots__ = ("agreements", "state", "strikes")

    def __init__(self) -> None:
        self.agreements = 0
        self.strikes = 0
        self.state: ReputationState = "new"


class Reputation:
    """Agreements and strikes per car id, the least recently judged forgotten first.

    Args:
        rule: When a car is quarantined or trusted.
        max_cars: Records kept at most.
    """

    def __init__(
        self, rule: ReputationRule | None = None, max_cars: int = DEFAULT_MAX_CARS
    ) -> None:
        self.rule = rule or ReputationRule()
        self.max_cars = max(1, max_cars)
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def state(self, car_id: str) -> ReputationState:
        """The car's state ("new" when it has no record)."""
        record = self._records.get(car_id)
        return record.state if record is not None else "new"

    def counts(self, car_id: str) -> tuple[int, int]:
        """The car's (agreements, strikes)."""
        record = self._records.get(car_id)
        return (record.agreements, record.strikes) if record is not None else (0, 0)

    def record(self, car_id: str, agreed: bool) -> tuple[ReputationState, ReputationState]:
        """Counts one verdict on the car.

        Returns:
            Its state before and after.
        """
        record = self._records.get(car_id)
        if record is None:
            record = self._records[car_id] = _Record()
            if len(self._records) > self.max_cars:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(car_id)
        before = record.state
        if agreed:
            record.agreements += 1
        else:
            record.strikes += 1
        if before != "quarantined":  # quarantine sticks until the record is forgotten
            record.state = self.rule.state(record.agreements, record.strikes)
        return before, record.state
