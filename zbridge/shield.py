"""Critical sections that Ctrl-C cannot tear, and calls that cannot re-enter themselves.

The pool's state (``broker``) is shared by the hub thread and every calling thread under
one lock, held only while the broker decides (``Guard``). A decision changes several
records at once, so it must happen whole: a KeyboardInterrupt landing half-way would lose
a daemon or an answer. Python runs signal handlers in the main thread only, between two
bytecodes, so the main thread is the one at risk. As trio's ``_ki.py`` does, zbridge
replaces the *default* SIGINT handler (never one the program installed) with one that
raises KeyboardInterrupt as before, except while the main thread is inside a protected
region: then it only notes the interrupt, and the region raises it once it is left whole.

A blocking call is one protected region (``protected``) with explicit points where Ctrl-C
is delivered: ``waiting`` (a wait that consumes nothing, such as a lock: at once) and
``checkpoint`` (between two slices of a read: a read cannot be a wait point, since an
interrupt landing just after the system call returned would drop the bytes it read). So
a call stuck in a long tool can still be interrupted, within a slice; the interrupt then
unwinds through the call's own clean-up (cancel the call, hand its channel over), which
stays protected: a second Ctrl-C cannot tear that either.

Re-entry: a signal handler or a logging handler that calls the bridge from a thread that
is already inside one of its calls would wait for itself. ``inside()`` says whether this
thread is inside a call, so the client refuses at once instead.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import CodeType, FrameType, TracebackType
from typing import Any, Callable

_MAIN = threading.main_thread().ident
_get_ident = threading.get_ident
_local = threading.local()

# the main thread's state, read by the handler (which runs in the main thread)
_depth = 0          # protected regions the main thread is in
_waiting = False    # the main thread is at a wait point: Ctrl-C goes through now
_deferred = False   # a Ctrl-C arrived inside a protected region
_tried = False      # ensure() looked at the handler already
_SITES: set[CodeType] = set()  # code of the functions that make calls (``call_site``)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _deferred, _waiting
    if _waiting:
        _waiting = False
        raise KeyboardInterrupt
    if _depth:
        _deferred = True
        return
    raise KeyboardInterrupt


def ensure() -> None:
    """Use the deferring SIGINT handler if the program left the default one: once, from the
    main thread (a no-op elsewhere, or when a handler of the program's own is installed)."""
    global _tried
    if not _tried and _get_ident() == _MAIN:
        _tried = True
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_sigint)


def release() -> None:
    """Put the default handler back if ours is still installed (no bridge is left open)."""
    global _tried
    if _get_ident() == _MAIN:
        _tried = False
        if signal.getsignal(signal.SIGINT) is _on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _enter() -> None:
    global _depth
    if _get_ident() == _MAIN:
        _depth += 1


def _leave(raising: bool) -> None:
    global _depth, _deferred
    if _get_ident() == _MAIN:
        _depth -= 1
        if not _depth and _deferred:
            _deferred = False
            if not raising:
                raise KeyboardInterrupt


class Guard:
    """The pool's lock as a protected region: ``with guard: ...`` decides whole."""

    __slots__ = ("lock",)

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        _enter()  # first: an interrupt while blocked on the lock is deferred too
        self.lock.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.lock.release()
        _leave(kind is not None)

    def reset(self) -> None:
        """A forked child's copy: the parent's holder does not exist here."""
        self.lock = threading.Lock()


class protected:
    """A whole blocking operation, interrupted only at its wait points (``waiting``)."""

    __slots__ = ()

    def __enter__(self) -> None:
        _enter()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _leave(kind is not None)


class calling:
    """Marks a call of this thread (``inside``), made by a function registered with
    ``call_site``."""

    __slots__ = ()

    def __enter__(self) -> None:
        _local.calls = getattr(_local, "calls", 0) + 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _local.calls -= 1


def checkpoint() -> None:
    """Inside ``protected``: raise the Ctrl-C that arrived since, if any."""
    global _deferred
    if _deferred and _get_ident() == _MAIN:
        _deferred = False
        raise KeyboardInterrupt


class waiting:
    """A wait point inside ``protected`` that consumes nothing (a lock): Ctrl-C is
    delivered here, at once (one that arrived earlier in the region is raised on entry)."""

    __slots__ = ()

    def __enter__(self) -> None:
        global _waiting, _deferred
        if _get_ident() == _MAIN:
            if _deferred:
                _deferred = False
                raise KeyboardInterrupt
            _waiting = True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        global _waiting
        if _get_ident() == _MAIN:
            _waiting = False


def call_site(function: Callable[..., Any]) -> Callable[..., Any]:
    """Register the function inside which ``calling`` marks a call (``inside`` looks for
    it on the stack when the mark says yes)."""
    _SITES.add(function.__code__)
    return function


def inside() -> bool:
    """Whether this thread is inside a call (a handler running on top of it would wait for
    itself). The mark is a hint, confirmed on the stack: an interrupt that tore the mark
    never leaves a thread unable to call."""
    if not getattr(_local, "calls", 0):
        return False
    if getattr(_local, "internal", False):
        return True
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code in _SITES:
            return True
        frame = frame.f_back
    _local.calls = 0
    return False


def mark_internal() -> None:
    """This thread is one of zbridge's own (the hub's): it must never make a call."""
    _local.calls, _local.internal = 1, True
