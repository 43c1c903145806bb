"""What a simulated car really draws: its own true power, metered beside the models.

Every car's agent and the gateway model a task's energy from the car's declared
``CarPower`` (nominal, the same for every simulated car). A real car differs from its
declaration, so each simulated car draws its own true parameters, seeded and symmetric
around the nominal (base and GPU load draw each x U(0.85, 1.15), charging efficiency
nominal +- 0.03, at most 1, and an idle GPU draw of 15-25 % of its load draw), and its
``TrueMeter`` integrates its true energy at the socket. Over a fleet the declarations
should be right on average: the benchmark compares the gateway's figure with this one.

How it meters, on the wall clock like the models (one time base):

- the task hold (the agent has a task, ``Agent.running_tasks``) is sampled: the
  fleet calls ``observe`` every ``FleetConfig.true_meter_interval_s`` and the state seen
  holds until the next call (sample and hold: a transition is off by at most one
  interval, by half of one on average, with no bias);
- the GPU under load is event-driven: ``MeteredCompute`` wraps the car's compute and
  tells the meter when an inference call of the car starts and ends; the rest of a
  task's hold (fetching the model, waiting for inputs, sending results) draws the GPU's
  idle power. The declared model counts the load draw for the whole task.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from parkfleet.energymodel import CarPower
from parkfleet.vehicle.compute import Compute, ModelSession, WrappedSession

__all__ = ["MeteredCompute", "TrueMeter", "TruePower"]

_SPREAD = 0.15  # base and GPU draws: nominal x U(1 - spread, 1 + spread)
_EFFICIENCY_SPREAD = 0.03
_IDLE_SHARE = (0.15, 0.25)  # an idle GPU's draw, as a share of its load draw


@dataclass(frozen=True, slots=True)
class TruePower:
    """One car's true draws.

    Attributes:
        gpu_load_w: The GPU while it computes.
        gpu_idle_w: The GPU awake for a task but not computing.
        awake_base_w: The rest of the car kept awake.
        charging_efficiency: Share of the socket's energy that reaches the car, (0, 1].
    """

    gpu_load_w: float
    gpu_idle_w: float
    awake_base_w: float
    charging_efficiency: float

    @classmethod
    def draw(cls, nominal: CarPower, rng: random.Random) -> TruePower:
        """A car's true power around its declared one (seeded by ``rng``)."""
        gpu = nominal.gpu_power_w * rng.uniform(1.0 - _SPREAD, 1.0 + _SPREAD)
        base = nominal.awake_base_w * rng.uniform(1.0 - _SPREAD, 1.0 + _SPREAD)
        eff = nominal.charging_efficiency + rng.uniform(-_EFFICIENCY_SPREAD, _EFFICIENCY_SPREAD)
        return cls(
            gpu_load_w=gpu,
            gpu_idle_w=gpu * rng.uniform(*_IDLE_SHARE),
            awake_base_w=base,
            charging_efficiency=min(1.0, max(0.05, eff)),
        )


class TrueMeter:
    """Integrates one car's true energy at the socket while it holds a task.

    Args:
        power: The car's true draws.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(self, power: TruePower, clock: Callable[[], float] = time.monotonic) -> None:
        self.power = power
        self._clock = clock
        self._last = clock()
        self._held = False
        self._calls = 0  # inference calls in flight
        self._gpu_since = 0.0
        self._gpu_s = 0.0  # GPU seconds under load not yet charged
        self._joules = 0.0  # at the car, before charging losses
        #: Seconds a task was held, and of those the GPU's under load (for reports).
        self.held_s = 0.0
        self.gpu_load_s = 0.0

    def gpu_started(self) -> None:
        """An inference call of the car starts."""
        if self._calls == 0:
            self._gpu_since = self._clock()
        self._calls += 1

    def gpu_ended(self) -> None:
        """An inference call of the car ends."""
        self._calls = max(0, self._calls - 1)
        if self._calls == 0:
            self._gpu_s += self._clock() - self._gpu_since

    def observe(self, held: bool) -> None:
        """Charges the time since the last call at the state seen then; ``held`` holds
        from now on."""
        now = self._clock()
        dt = max(0.0, now - self._last)
        gpu_s = self._gpu_s
        if self._calls:  # a call still in flight: charge its part so far
            gpu_s += now - self._gpu_since
            self._gpu_since = now
        self._gpu_s = 0.0
        p = self.power
        if self._held:
            load_s = min(gpu_s, dt)
            self._joules += p.awake_base_w * dt + p.gpu_load_w * load_s
            self._joules += p.gpu_idle_w * (dt - load_s)
            self.held_s += dt
            self.gpu_load_s += load_s
        elif gpu_s > 0:  # computed before the hold was seen: the car was awake for it
            self._joules += (p.awake_base_w + p.gpu_load_w) * gpu_s
            self.held_s += gpu_s
            self.gpu_load_s += gpu_s
        self._last = now
        self._held = held

    @property
    def computing(self) -> bool:
        """Whether an inference call of the car is in flight."""
        return self._calls > 0

    @property
    def wh(self) -> float:
        """True energy at the socket so far, in Wh (up to the last ``observe``)."""
        return self._joules / 3600.0 / self.power.charging_efficiency


class _MeteredSession(WrappedSession):
    def __init__(self, inner: ModelSession, meter: TrueMeter) -> None:
        super().__init__(inner)
        self._meter = meter

    async def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], batch_size: int
    ) -> list[np.ndarray]:
        self._meter.gpu_started()
        try:
            return await self._inner.infer(inputs, output_names, batch_size)
        finally:
            self._meter.gpu_ended()


class MeteredCompute:
    """One car's view of a shared compute that tells its meter when the GPU works.

    Args:
        inner: The shared compute.
        meter: The car's meter.
    """

    def __init__(self, inner: Compute, meter: TrueMeter) -> None:
        self._inner = inner
        self._meter = meter

    async def session(self, sha256: str, model: bytes) -> ModelSession:
        """The inner session, metered."""
        return _MeteredSession(await self._inner.session(sha256, model), self._meter)
