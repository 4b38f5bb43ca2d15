"""What a client does, written once for both twins, without doing any I/O.

Each public operation (call, stream, wait_ready, status, call_many) is a *plan*: a generator
that yields the I/O it needs as small operation objects and receives their outcomes (or
has their error thrown into it). ``Client`` drives a plan with blocking sockets,
``AsyncClient`` with ``await``; the retry, fallback, credit, readiness and result rules live
here only, so the twins cannot drift. Plans are tested without sockets by driving them by
hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Generator, Iterable, Union

from . import statusmap
from .calls import (
    HUB_GRACE,
    ClientCore,
    build_request,
    closed_error,
    closed_while_waiting,
    credit_due,
    not_ready_error,
    readiness,
)
from .errors import (
    BridgeError,
    CallTimeout,
    Cancelled,
    InvalidParams,
    InvalidRequest,
    PoolUnavailable,
)
from .policy import Step, after_error
from .protocol import MAX_WINDOW, encode_status_request

# --- the operations a driver performs ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Roundtrip:
    """A call on the client's route: send ``frame`` (request ``id``, then its ``buffers``
    frames) and return the result of its REPLY (or raise its error); CallTimeout after
    ``timeout``."""
    frame: bytes
    timeout: float
    buffers: tuple[Any, ...] = ()
    id: int = 0


@dataclass(frozen=True, slots=True)
class Ask:
    """A question for the hub itself (STATUS): ``frame`` there and the result of its REPLY."""
    frame: bytes
    timeout: float


@dataclass(frozen=True, slots=True)
class OneShot:
    """Run the call in a one-shot pipe subprocess (``ClientCore._one_shot_call``)."""
    tool: str
    args: Any
    timeout: float


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Open:
    """Send a stream's request (and its ``buffers`` frames) on a channel of its own; later
    ops name no channel."""
    frame: bytes
    buffers: tuple[Any, ...] = ()
    id: int = 0


@dataclass(frozen=True, slots=True)
class Receive:
    """The stream's next message as ("item", value), ("end", None) or ("error", exc); the
    driver raises CallTimeout at ``deadline`` (time.monotonic())."""
    deadline: float
    timeout: float


@dataclass(frozen=True, slots=True)
class Credit:
    n: int


@dataclass(frozen=True, slots=True)
class Item:
    """Hand one streamed value to the consumer (the driver yields it)."""
    value: Any


@dataclass(frozen=True, slots=True)
class OneShotItems:
    """Hand the consumer every item of a one-shot pipe stream."""
    tool: str
    args: Any
    timeout: float


Op = Union[Roundtrip, Ask, OneShot, Sleep, Open, Receive, Credit, Item, OneShotItems]
Plan = Generator[Op, Any, Any]


def advance(plan: Plan, outcome: Any, error: BaseException | None) -> tuple[bool, Any]:
    """Hand a plan its last operation's outcome (or throw in its error): (True, the plan's
    result) when it ends, else (False, its next operation). The one step both drivers take."""
    try:
        return False, (plan.send(outcome) if error is None else plan.throw(error))
    except StopIteration as done:
        return True, done.value
    except BridgeError as exc:
        # The frames it passed are the client's own machinery (driver, plan, sockets); the
        # caller's traceback starts here, so an error fits on a screen with its message.
        raise exc.with_traceback(None) from exc.__cause__


# --- plans -------------------------------------------------------------------------------

def call(core: ClientCore, tool: str, args: Any, timeout: float | None,
         idempotent: bool, traceparent: str | None = None) -> Plan:
    """One call: the pool, retried if idempotent and lost, else the pipe fallback when the
    pool cannot serve a call that never ran."""
    core._check()
    timeout = core.timeout_of(timeout)
    if not core.settings.pool_enabled:
        return (yield OneShot(tool, args, timeout))
    attempt = 0
    while True:
        buffers: list[Any] = []
        request_id = next(core._ids)
        frame = build_request(core.settings, request_id, tool, args, timeout, idempotent,
                              trace=traceparent, oob=buffers)
        try:
            return (yield Roundtrip(frame, timeout, tuple(buffers), request_id))
        except BridgeError as exc:
            step = after_error(exc, attempt=attempt, idempotent=idempotent,
                               retries=core.settings.retries, can_fallback=core._can_fallback())
            if step is Step.RAISE:
                raise
            if step is Step.FALLBACK:
                return (yield OneShot(tool, args, timeout))
            attempt += 1


def status(core: ClientCore, timeout: float, prewarm: bool = False) -> Plan:
    core._check()
    if not core.settings.pool_enabled:
        return statusmap.disabled(core.settings.workers)
    return (yield Ask(encode_status_request(next(core._ids), prewarm), timeout))


def wait_ready(core: ClientCore, timeout: float, count: int | None) -> Plan:
    """Until ``count`` daemons (default: ``workers``, at least 1) are up; starts them."""
    wanted = count if count is not None else max(1, core.settings.workers)
    started = time.monotonic()
    current = yield from _status_once_up(core, started, timeout, prewarm=True)
    while (state := readiness(current, wanted, core.settings)) != "ready":
        waited = time.monotonic() - started
        if state == "failed" or waited >= timeout:
            raise not_ready_error(current, wanted, round(waited, 2))
        yield Sleep(0.02)
        current = yield from status(core, 5.0)
    return current


def _status_once_up(core: ClientCore, started: float, timeout: float, prewarm: bool) -> Plan:
    """The hub's status, waiting (within ``timeout`` from ``started``) for a hub that is not
    there yet: one started just before us may not have bound its endpoint."""
    while True:
        try:
            return (yield from status(core, 5.0, prewarm))
        except PoolUnavailable as exc:
            unreachable = isinstance(exc.data, dict) and exc.data.get("cause") == "unreachable"
            if not unreachable or time.monotonic() - started >= timeout:
                raise
        yield Sleep(0.05)


def stream(core: ClientCore, tool: str, args: Any, timeout: float | None, window: int,
           traceparent: str | None = None) -> Plan:
    """A generator tool's items, paced by credit; falls back to the pipe only if nothing was
    yielded and the pool could not serve it. The driver cancels the call whenever this
    plan does not run to its end."""
    core._check()
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"window must be an integer from 1 to {MAX_WINDOW}, not {window!r}")
    timeout = core.timeout_of(timeout)
    if not core.settings.pool_enabled:
        yield OneShotItems(tool, args, timeout)
        return
    buffers: list[Any] = []
    request_id = next(core._ids)
    frame = build_request(core.settings, request_id, tool, args, timeout, False, window,
                          trace=traceparent, oob=buffers)
    try:
        yield Open(frame, tuple(buffers), request_id)
    except BridgeError as exc:  # it never left: the pipe may serve it, as call() would
        if core._can_fallback() and after_error(exc, attempt=0, idempotent=False, retries=0,
                                                can_fallback=True) is Step.FALLBACK:
            yield OneShotItems(tool, args, timeout)
            return
        raise
    deadline = time.monotonic() + timeout + HUB_GRACE
    consumed, yielded = 0, False
    while True:
        kind, value = yield Receive(deadline, timeout)
        if kind == "item":
            yielded = True
            yield Item(value)
            consumed += 1
            if credit_due(consumed, window):
                yield Credit(consumed)
                consumed = 0
        elif kind == "end":
            return
        elif not yielded and core._can_fallback() and after_error(
                value, attempt=0, idempotent=False, retries=0, can_fallback=True) is Step.FALLBACK:
            yield OneShotItems(tool, args, timeout)
            return
        else:
            raise value


# --- many calls --------------------------------------------------------------------------

def needs_another_try(core: ClientCore, outcome: Any, idempotent: bool) -> bool:
    """After a fan-out, which failed calls go through call()'s own retry/fallback rules."""
    if not core.settings.pool_enabled:
        return True
    if not isinstance(outcome, BridgeError) or isinstance(outcome, (InvalidParams, InvalidRequest)):
        return False
    return after_error(outcome, attempt=0, idempotent=idempotent, retries=core.settings.retries,
                       can_fallback=core._can_fallback()) is not Step.RAISE


def settle(outcomes: Iterable[Any], return_exceptions: bool) -> list[Any]:
    """call_many's answer: results in call order, errors in place or the first one raised."""
    outcomes = list(outcomes)
    if not return_exceptions:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
    return outcomes


def timed_out(timeout: float) -> CallTimeout:
    return CallTimeout(f"no reply from the hub within {timeout}s")
