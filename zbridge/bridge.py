"""``Bridge``: an embedded hub (background thread) plus a client, in one object."""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import Any

from . import shield
from .client import Client
from .config import Settings, load_settings
from .direct import DirectTransport
from .errors import PoolUnavailable
from .hub import Hub, start_embedded
from .tools import tool_specs

DRAIN_TIMEOUT = 10.0
_open = 0  # bridges of this process not closed yet (the last one puts SIGINT back)
_open_lock = threading.Lock()


class Bridge(Client):
    """Warm daemons for ``tools``, owned by this process.

    ``tools`` is a module name, a path to a ``.py`` file, a module object, or a list of
    them. Daemons start on the first call (or at once with ``prewarm=True``). Use as a
    context manager or call ``close()``; daemons also exit if this process dies.

    Plain calls take the embedded direct route (``zbridge/direct.py``): the calling thread
    borrows an idle daemon and talks to it over the daemon's own channel; with
    ``direct=False`` they go through the hub thread like a served client's.
    """

    def __init__(self, tools: Any = None, workers: int | None = None, *,
                 settings: Settings | None = None, **overrides: Any) -> None:
        global _open
        settings = settings or load_settings(workers=workers, **overrides)
        specs = tool_specs(tools)
        self._hub, self._thread, context, endpoint = start_embedded(settings, specs)
        super().__init__(endpoint, tools=specs, settings=settings, context=context)
        self._bridge_lock = threading.Lock()  # (the context is the hub's too: ended in close())
        if self._hub is not None and self._hub.direct:
            self._transport = DirectTransport(self._hub, settings.timeout, self._is_closed)
            shield.ensure()
        with _open_lock:
            _open += 1
        atexit.register(_close_at_exit, weakref.ref(self))

    def _check(self) -> None:
        super()._check()
        hub = self._hub
        if hub is not None and hub.broker.broken is not None:
            raise PoolUnavailable(f"the pool is broken: {hub.broker.broken}", {"cause": "broken"})

    def close(self, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """Refuse new calls, let running ones finish (up to drain_timeout), stop daemons.

        From a signal or logging handler running on top of one of this thread's own calls,
        close() cannot wait for that call: it asks the hub to stop at once and returns."""
        global _open
        if self._forked():
            self._closed = True  # a forked child's copy: the daemons are the parent's
            return
        if shield.inside():
            if self._hub is not None:
                self._hub.request_stop(0.0)  # the rest when close() is called again, or at exit
            return
        with self._bridge_lock:
            hub = self._hub
            if hub is not None and self._thread is not None:
                hub.request_stop(drain_timeout)
                self._thread.join()
                self._hub = None
            first = not self._closed
            super().close()
            self.context.destroy(linger=0)  # the hub's sockets and ours are closed by now
        if first:
            with _open_lock:
                _open -= 1
                if not _open:
                    shield.release()

    def _is_closed(self) -> bool:
        return self._closed

    @property
    def private_dir(self) -> str | None:
        return self._hub.private_dir if self._hub else None

    @property
    def hub(self) -> Hub | None:
        """The embedded hub (None once closed, or with the pool disabled)."""
        return self._hub


def _close_at_exit(ref: weakref.ref[Bridge]) -> None:
    bridge = ref()
    if bridge is not None:
        bridge.close(drain_timeout=0.0)
