"""How long a task will run: each job's items/s per car, measured by the gateway itself.

Pure logic, no I/O. A car's own ``items_per_second`` is only its claim; the gateway
counts the items it received from an attempt over that attempt's seconds on its own
clock (from acceptance to the attempt's end, model load included: the estimate errs
long, which only makes placement more careful). Per job, a mean weighted by seconds
that forgets older attempts (each new attempt's weight is ``1 - DECAY`` of the total's),
so a job whose inputs get slower later is followed. A task's remaining run time is its
remaining items over that rate: unknown before the job's first attempt ended.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from parkfleet.taskport import TaskSpec

__all__ = ["DECAY", "MAX_JOBS", "JobRates", "job_key"]

DECAY: Final[float] = 0.8
# Jobs remembered (least recently measured dropped first): bounded memory.
MAX_JOBS: Final[int] = 4096


def job_key(spec: TaskSpec) -> str:
    """What a task's rate is measured under: its job, else (a plain pod) its model and
    batch size, which set a car's rate as much as anything does."""
    if spec.job:
        return "job:" + spec.job
    return f"model:{spec.model.sha256}:{spec.batch_size}"


class JobRates:
    """Items/s per car of each job, as the gateway measured them.

    Args:
        max_jobs: Jobs remembered.
    """

    def __init__(self, max_jobs: int = MAX_JOBS) -> None:
        self._max = max(1, max_jobs)
        # key -> (decayed items, decayed seconds)
        self._sums: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def record(self, key: str, items: int, seconds: float) -> None:
        """One attempt delivered ``items`` in ``seconds`` (the gateway's clock); an
        attempt that delivered nothing (it never got going) says nothing of the rate."""
        if items <= 0 or not seconds > 0:
            return
        old_items, old_seconds = self._sums.pop(key, (0.0, 0.0))
        self._sums[key] = (old_items * DECAY + items, old_seconds * DECAY + seconds)
        while len(self._sums) > self._max:
            self._sums.popitem(last=False)

    def rate(self, key: str) -> float | None:
        """Items/s per car of the job; None before its first measured attempt."""
        sums = self._sums.get(key)
        if sums is None or sums[1] <= 0:
            return None
        return sums[0] / sums[1]

    def remaining_s(self, key: str, items_left: int) -> float | None:
        """Estimated seconds for a car to do ``items_left`` more items of the job."""
        rate = self.rate(key)
        if rate is None or rate <= 0:
            return None
        return max(0, items_left) / rate
