"""``Bridge``: an embedded hub (background thread) plus a client, in one object."""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import Any, Sequence

from . import plans
from .calls import asked_pickle, result_of
from .client import CallFuture, Client
from .direct import Closed, DirectCaller, NoVerdict, Slot
from .protocol import Kind
from .config import Settings, load_settings
from .hub import start_embedded
from .tools import tool_specs

DRAIN_TIMEOUT = 10.0
_REQUEST = int(Kind.REQUEST)


class Bridge(Client):
    """Warm daemons for ``tools``, owned by this process.

    ``tools`` is a module name, a path to a ``.py`` file, a module object, or a list of
    them. Daemons start on the first call (or at once with ``prewarm=True``). Use as a
    context manager or call ``close()``; daemons also exit if this process dies.
    """

    def __init__(self, tools: Any = None, workers: int | None = None, *,
                 settings: Settings | None = None, **overrides: Any) -> None:
        settings = settings or load_settings(workers=workers, **overrides)
        specs = tool_specs(tools)
        self._hub, self._thread, context, endpoint = start_embedded(settings, specs)
        super().__init__(endpoint, tools=specs, settings=settings, context=context)
        self._own_context = True
        self._bridge_lock = threading.Lock()
        hub = self._hub
        self._direct = (DirectCaller(hub, settings.max_message_size)
                        if hub is not None and hub.directory is not None else None)
        atexit.register(_close_at_exit, weakref.ref(self))

    def close(self, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """Refuse new calls, let running ones finish (up to drain_timeout), stop daemons."""
        with self._bridge_lock:
            hub = self._hub
            if hub is not None and self._thread is not None:
                hub.request_stop(drain_timeout)
                self._thread.join()
                self._hub = None
            super().close()
            if hub is not None:
                hub.close_direct()

    def _roundtrip(self, frame: bytes, timeout: float, buffers: Sequence[Any] = ()) -> Any:
        """A plain call: straight to an idle daemon and back (``zbridge/direct.py``)."""
        direct = self._direct
        if direct is None or frame[3] != _REQUEST:  # STATUS goes to the hub thread
            return super()._roundtrip(frame, timeout, buffers)
        tracker: CallFuture | None = getattr(self._local, "tracker", None)
        on_submit = None
        if tracker is not None:  # a submit()'s Future: its cancel() asks the broker itself
            def on_submit(slot: Slot, request_id: int) -> None:
                tracker.bind_cancel(lambda: direct.cancel(slot, request_id))

        try:
            reply, extra = direct.roundtrip(frame, buffers, timeout, self._is_closed, on_submit)
        except NoVerdict:
            raise plans.timed_out(timeout) from None
        except Closed:
            raise plans.closed_while_waiting() from None
        finally:
            if tracker is not None:
                tracker.bind_cancel(None)
        return result_of(reply, self.settings.max_message_size, extra, asked_pickle(frame))

    def _is_closed(self) -> bool:
        return self._closed

    @property
    def private_dir(self) -> str | None:
        return self._hub.private_dir if self._hub else None


def _close_at_exit(ref: weakref.ref[Bridge]) -> None:
    bridge = ref()
    if bridge is not None:
        bridge.close(drain_timeout=0.0)
