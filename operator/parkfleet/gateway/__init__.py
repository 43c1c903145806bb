"""The fleet gateway: the cars' gRPC server, their registry by cell, task placement.

Use :class:`Gateway` in-process or run it with ``parkfleet gateway``.
"""

from parkfleet.gateway.api import Gateway, GatewayConfig
from parkfleet.gateway.spec import (
    ArrayInput,
    CellCapacity,
    InputSource,
    MemorySink,
    ModelRef,
    ResultSink,
    TaskEvent,
    TaskSpec,
    TaskStatus,
)

__all__ = [
    "ArrayInput",
    "CellCapacity",
    "Gateway",
    "GatewayConfig",
    "InputSource",
    "MemorySink",
    "ModelRef",
    "ResultSink",
    "TaskEvent",
    "TaskSpec",
    "TaskStatus",
]
