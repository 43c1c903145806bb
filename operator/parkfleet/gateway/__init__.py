"""The fleet gateway: the cars' gRPC server, their registry by cell, task placement.

Use :class:`Gateway` in-process or run it with ``parkfleet gateway``. The node agent
sees it only through :class:`parkfleet.taskport.TaskPort`.
"""

from parkfleet.gateway.api import Gateway, GatewayConfig
from parkfleet.gateway.consent import ConsentBook, MemoryConsentBook
from parkfleet.gateway.inmemory import ArrayInput, MemorySink
from parkfleet.taskport import (
    InputSource,
    ModelInfo,
    ModelNotFound,
    ModelRef,
    ResultSink,
    TaskEvent,
    TaskPort,
    TaskSpec,
    TaskStatus,
    TensorSpec,
)

__all__ = [
    "ArrayInput",
    "ConsentBook",
    "Gateway",
    "GatewayConfig",
    "InputSource",
    "MemoryConsentBook",
    "MemorySink",
    "ModelInfo",
    "ModelNotFound",
    "ModelRef",
    "ResultSink",
    "TaskEvent",
    "TaskPort",
    "TaskSpec",
    "TaskStatus",
    "TensorSpec",
]
