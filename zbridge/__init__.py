"""zbridge: keep Python tools warm in daemon processes and call them fast over ZeroMQ.

``import zbridge`` stays cheap (tool modules and pipe daemons import it): the clients,
which import zmq, and the version, which needs importlib.metadata, load on first use.
"""

from .errors import (  # noqa: E402
    BridgeError,
    CallTimeout,
    Cancelled,
    ConnectionLost,
    DidNotRun,
    InternalError,
    Interrupted,
    InvalidParams,
    InvalidRequest,
    MayHaveRun,
    Overloaded,
    ParseError,
    PoolUnavailable,
    ReloadFailed,
    ToolError,
    ToolNotFound,
    WorkerLost,
)
from .tools import startup, tool  # noqa: E402
from .usertypes import register_type  # noqa: E402

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the pipe daemon's start
if TYPE_CHECKING:
    from .aio import AsyncBridge, AsyncClient
    from .bridge import Bridge
    from .client import Client
    from .context import current_call

    __version__: str

__all__ = [
    "__version__", "tool", "startup", "current_call", "register_type", "Bridge", "Client", "AsyncBridge", "AsyncClient",
    "BridgeError", "DidNotRun", "MayHaveRun", "Interrupted",
    "CallTimeout", "Cancelled", "ConnectionLost", "InternalError", "InvalidParams",
    "InvalidRequest", "Overloaded", "ParseError", "PoolUnavailable", "ReloadFailed", "ToolError",
    "ToolNotFound", "WorkerLost",
]

_LAZY = {"Bridge": ".bridge", "Client": ".client", "AsyncBridge": ".aio", "AsyncClient": ".aio",
         "current_call": ".context"}


def _read_version() -> str:
    """The installed distribution's version: pyproject.toml is the one place it is written."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("zbridge")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+unknown"


def __getattr__(name: str) -> object:
    if name == "__version__":
        value: object = _read_version()
    elif name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    else:
        raise AttributeError(f"module 'zbridge' has no attribute {name!r}")
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
