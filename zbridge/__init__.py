"""zbridge: keep Python tools warm in daemon processes and call them fast over ZeroMQ."""

from .errors import (BridgeError, CallTimeout, Cancelled, ConnectionLost, InternalError, InvalidParams,  # noqa: E402
                     InvalidRequest, Overloaded, ParseError, PoolUnavailable, ToolError,
                     ToolNotFound, WorkerLost)
from .tools import startup, tool  # noqa: E402

__all__ = [
    "__version__", "tool", "startup", "Bridge", "Client", "AsyncBridge", "AsyncClient",
    "BridgeError", "CallTimeout", "Cancelled", "ConnectionLost", "InternalError", "InvalidParams",
    "InvalidRequest", "Overloaded", "ParseError", "PoolUnavailable", "ToolError",
    "ToolNotFound", "WorkerLost",
]


def _read_version() -> str:
    """The installed distribution's version: pyproject.toml is the one place it is written."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("zbridge")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+unknown"


def __getattr__(name: str):
    # computed on first use: importlib.metadata would slow the pipe daemon's start
    if name == "__version__":
        value = _read_version()
        globals()["__version__"] = value
        return value
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
