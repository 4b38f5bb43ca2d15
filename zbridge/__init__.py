"""zbridge: keep Python tools warm in daemon processes and call them fast over ZeroMQ.

``import zbridge`` stays cheap (tool modules and pipe daemons import it): the clients,
which import zmq, load on first use.
"""

__version__ = "0.1.0"

from .errors import (BridgeError, CallTimeout, Cancelled, ConnectionLost, DidNotRun,  # noqa: E402
                     InternalError, Interrupted, InvalidParams, InvalidRequest, MayHaveRun, Overloaded,
                     ParseError, PoolUnavailable, ToolError, ToolNotFound, WorkerLost)
from .tools import startup, tool  # noqa: E402

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the pipe daemon's start
if TYPE_CHECKING:
    from .aio import AsyncBridge, AsyncClient
    from .bridge import Bridge
    from .client import Client
    from .context import current_call

__all__ = [
    "__version__", "tool", "startup", "current_call", "Bridge", "Client", "AsyncBridge", "AsyncClient",
    "BridgeError", "DidNotRun", "MayHaveRun", "Interrupted",
    "CallTimeout", "Cancelled", "ConnectionLost", "InternalError", "InvalidParams",
    "InvalidRequest", "Overloaded", "ParseError", "PoolUnavailable", "ToolError",
    "ToolNotFound", "WorkerLost",
]

_LAZY = {"Bridge": ".bridge", "Client": ".client", "AsyncBridge": ".aio", "AsyncClient": ".aio",
         "current_call": ".context"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zbridge' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
