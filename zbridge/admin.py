"""Live control of a running pool from any client: ``scale(n)``, ``reload()``, ``stacks(daemon)``.

Each is a plan (``plans.py``: both twins drive it) that first checks the hub lists the
``control`` capability in STATUS (an older hub would refuse the CONTROL kind with id 0,
which no call could be matched to), then asks the hub itself (``Ask``, like STATUS). The
methods come from mixins, ``SyncControl`` for ``Client``/``Bridge`` and ``AsyncControl``
for ``AsyncClient``/``AsyncBridge``, so the clients' own code is untouched.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, TypedDict, cast

from . import plans
from .calls import ClientCore
from .errors import CallTimeout, InvalidRequest, PoolUnavailable
from .protocol import encode_control
from .rollout import CONTROL_TIMEOUT, RELOAD_TIMEOUT


class Scaled(TypedDict):
    workers: int   # the pool's size from now on (STATUS ``workers``)
    was: int


class Reloaded(TypedDict):
    generation: int   # the reload count; STATUS shows each daemon's (``generation``)
    replaced: int     # daemons replaced
    took_s: float


# --- plans -------------------------------------------------------------------------------

def _control(core: ClientCore, frame_of: Callable[[int], bytes], timeout: float,
             late: str | None = None) -> plans.Plan:
    """One CONTROL, on a hub that offers it; ``frame_of(id)`` builds the frame; ``late``:
    what a CallTimeout waiting for its answer says instead of "no reply"."""
    core._check()
    if not core.settings.pool_enabled:
        raise PoolUnavailable("the pool is disabled (pool_enabled=false): there is no daemon to "
                              "control", {"cause": "disabled"})
    status = yield from plans.status(core, min(timeout, CONTROL_TIMEOUT))
    if "control" not in status.get("capabilities", []):
        raise InvalidRequest(f"the hub at {core.endpoint} (protocol {status.get('protocol')}) offers "
                             f"no live control: STATUS lists no 'control' capability (an older zbridge)")
    try:
        return (yield plans.Ask(frame_of(next(core._ids)), timeout))
    except CallTimeout:
        if late is None:
            raise
        raise CallTimeout(late) from None


def scale(core: ClientCore, workers: int, timeout: float) -> plans.Plan:
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int, not {type(workers).__name__}")
    return (yield from _control(core, lambda id: encode_control(id, "scale", workers=workers), timeout))


def reload(core: ClientCore, timeout: float) -> plans.Plan:
    return (yield from _control(core, lambda id: encode_control(id, "reload"), timeout,
                                late=f"the reload did not finish within {timeout}s; it goes on in "
                                     f"the hub (STATUS `reload` shows its progress)"))


def stacks(core: ClientCore, daemon: str | int, timeout: float) -> plans.Plan:
    if isinstance(daemon, bool) or not isinstance(daemon, (str, int)):
        raise TypeError(f"daemon must be an id like 'w3' or a pid, not {type(daemon).__name__}")
    reply = yield from _control(core, lambda id: encode_control(id, "stacks", daemon=daemon), timeout)
    return reply["stacks"]


# --- the methods -------------------------------------------------------------------------

class SyncDriver(Protocol):
    def _drive(self, plan: plans.Plan) -> Any: ...


class AsyncDriver(Protocol):
    async def _drive(self, plan: plans.Plan) -> Any: ...


class SyncControl:
    def scale(self, workers: int, *, timeout: float = CONTROL_TIMEOUT) -> Scaled:
        """Run ``workers`` daemons from now on: new ones start now; extras leave, an idle
        one at once, a busy one after its running call (never during it)."""
        return cast(Scaled, cast(SyncDriver, self)._drive(scale(cast(ClientCore, self), workers, timeout)))

    def reload(self, *, timeout: float = RELOAD_TIMEOUT) -> Reloaded:
        """Replace every daemon by one that loads the tools afresh (new code on disk), one
        at a time, each after its running call: no call fails or runs twice. The first new
        daemon must start before any old one goes; if it cannot, ReloadFailed names why
        and the old daemons serve on."""
        return cast(Reloaded, cast(SyncDriver, self)._drive(reload(cast(ClientCore, self), timeout)))

    def stacks(self, daemon: str | int, *, timeout: float = CONTROL_TIMEOUT) -> str:
        """The Python stacks of every thread of ``daemon`` (its id, "w3", or its pid), as
        ``faulthandler`` writes them: where a stuck call is stuck. Local daemons only."""
        return cast(str, cast(SyncDriver, self)._drive(stacks(cast(ClientCore, self), daemon, timeout)))


class AsyncControl:
    async def scale(self, workers: int, *, timeout: float = CONTROL_TIMEOUT) -> Scaled:
        """See ``Client.scale``."""
        return cast(Scaled, await cast(AsyncDriver, self)._drive(scale(cast(ClientCore, self), workers, timeout)))

    async def reload(self, *, timeout: float = RELOAD_TIMEOUT) -> Reloaded:
        """See ``Client.reload``."""
        return cast(Reloaded, await cast(AsyncDriver, self)._drive(reload(cast(ClientCore, self), timeout)))

    async def stacks(self, daemon: str | int, *, timeout: float = CONTROL_TIMEOUT) -> str:
        """See ``Client.stacks``."""
        return cast(str, await cast(AsyncDriver, self)._drive(stacks(cast(ClientCore, self), daemon, timeout)))
