"""The fleet simulator: many real agents with simulated sensors in one process."""

from parkfleet.sim.fleet import FleetConfig, FleetStats, SimulatedFleet
from parkfleet.sim.sensors import SimClock, TraceSensors
from parkfleet.sim.traces import CarTrace, Segment, TraceState, fleet_traces, generate_trace

__all__ = [
    "CarTrace",
    "FleetConfig",
    "FleetStats",
    "Segment",
    "SimClock",
    "SimulatedFleet",
    "TraceSensors",
    "TraceState",
    "fleet_traces",
    "generate_trace",
]
