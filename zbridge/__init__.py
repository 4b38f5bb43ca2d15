"""zbridge: keep Python tools warm in daemon processes and call them fast over ZeroMQ."""

__version__ = "0.1.0"

from .errors import (BridgeError, CallTimeout, Cancelled, ConnectionLost, InternalError, InvalidParams,  # noqa: E402
                     InvalidRequest, Overloaded, ParseError, PoolUnavailable, ToolError,
                     ToolNotFound, WorkerLost)
from .tools import startup, tool  # noqa: E402
from .usertypes import register_type  # noqa: E402

__all__ = [
    "__version__", "tool", "startup", "register_type", "Bridge", "Client", "AsyncBridge", "AsyncClient",
    "BridgeError", "CallTimeout", "Cancelled", "ConnectionLost", "InternalError", "InvalidParams",
    "InvalidRequest", "Overloaded", "ParseError", "PoolUnavailable", "ToolError",
    "ToolNotFound", "WorkerLost",
]


def __getattr__(name: str):
    # Bridge/Client import zmq; keep `import zbridge` cheap for tool modules and daemons.
    if name == "Bridge":
        from .bridge import Bridge
        return Bridge
    if name == "Client":
        from .client import Client
        return Client
    if name in ("AsyncBridge", "AsyncClient"):
        from . import aio
        return getattr(aio, name)
    raise AttributeError(f"module 'zbridge' has no attribute {name!r}")
