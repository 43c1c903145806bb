"""The energy a task costs a car's owner, as both ends of the car link model it.

Pure logic, no I/O, like ``parkfleet.policy``: the agent models a task's energy with it
when the car has no power reader, and the gateway keeps its own account with it (its
ledger is the authority; the car's figure is only a cross-check).

The model: while a task holds the car awake, the car draws its awake base (computer,
cooling, DC-DC: ``awake_base_w``) plus the GPU under load (``gpu_power_w``); that energy
reaches the car through its charger, so the owner pays ``1 / charging_efficiency`` of it
at the socket (a car on its battery pays the same later, when it charges). A car kept
awake for compute draws 250-350 W in all, so the GPU alone is a fraction of the cost.

One time base: the seconds a task ran on the wall clock, the clock its items/s count on
(the simulator's sped-up clock moves only when cars park, drive and charge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from parkfleet.protocol import carlink_pb2 as pb
from parkfleet.protocol.claims import MIN_CHARGING_EFFICIENCY

__all__ = [
    "DEFAULT_AWAKE_BASE_W",
    "DEFAULT_CHARGING_EFFICIENCY",
    "DEFAULT_GPU_POWER_W",
    "CarPower",
]

# A car's defaults when its owner states nothing else: a 60 W inference GPU in a car
# whose awake draw is 240 W more (300 W in all), charged at 90 % efficiency.
DEFAULT_GPU_POWER_W = 60.0
DEFAULT_AWAKE_BASE_W = 240.0
DEFAULT_CHARGING_EFFICIENCY = 0.9


@dataclass(frozen=True, slots=True)
class CarPower:
    """What a car draws for a task, as its agent declares it.

    Attributes:
        gpu_power_w: The GPU's draw under load.
        awake_base_w: The rest of the car kept awake for the task.
        charging_efficiency: Share of the socket's energy that reaches the car, [0.5, 1].
    """

    gpu_power_w: float = DEFAULT_GPU_POWER_W
    awake_base_w: float = DEFAULT_AWAKE_BASE_W
    charging_efficiency: float = DEFAULT_CHARGING_EFFICIENCY

    def __post_init__(self) -> None:
        for name in ("gpu_power_w", "awake_base_w"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        eff = self.charging_efficiency
        if not math.isfinite(eff) or not MIN_CHARGING_EFFICIENCY <= eff <= 1:
            raise ValueError(
                f"charging_efficiency must be in [{MIN_CHARGING_EFFICIENCY:g}, 1], got {eff!r}"
            )

    @classmethod
    def from_capabilities(cls, caps: pb.Capabilities) -> CarPower:
        """The model of a car from its Hello (checked by ``protocol.claims`` first).

        A figure the car leaves at 0 (an older agent, or one that says nothing) takes
        the default: no car computes on 0 W, and the owner's budget is counted with it.
        """
        gpu, base, eff = caps.gpu_power_w, caps.awake_base_w, caps.charging_efficiency
        return cls(
            gpu_power_w=gpu if gpu > 0 else DEFAULT_GPU_POWER_W,
            awake_base_w=base if base > 0 else DEFAULT_AWAKE_BASE_W,
            charging_efficiency=(
                eff if MIN_CHARGING_EFFICIENCY <= eff <= 1 else DEFAULT_CHARGING_EFFICIENCY
            ),
        )

    @property
    def socket_w(self) -> float:
        """What a running task costs at the socket, in watts."""
        return (self.gpu_power_w + self.awake_base_w) / self.charging_efficiency

    def task_wh(self, seconds: float) -> float:
        """The energy of ``seconds`` of a task at the socket, in Wh."""
        return self.socket_w * max(0.0, seconds) / 3600.0
