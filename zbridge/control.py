"""The hub's side of live control: CONTROL messages (``scale``, ``reload``, ``stacks``;
capability ``control``, docs/PROTOCOL.md §10.1), from any client the frontend admits.

Runs on the hub thread, as the rest of ``Hub._on_client`` does. The decisions are the
broker's (``set_workers``, ``reload``), taken under the pool's lock; replies, spawns and
signals are carried out after it. A stack dump is asked for here (a truncate and a signal),
but waited for on a short thread of its own, whose reply comes back through the hub's
events socket: the hub never sleeps while a daemon writes.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from . import rollout, stacks
from .actions import Action, Spawn, ToClient
from .errors import BridgeError, InternalError, InvalidParams, InvalidRequest
from .protocol import Control, Header, decode_control, encode_error, encode_result

if TYPE_CHECKING:
    from .hub import Hub


class Controls:
    """CONTROL messages for one hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._dumps: dict[int, list[tuple[bytes, int]]] = {}  # pid: callers awaiting its dump
        self._lock = threading.Lock()

    def on_message(self, client: bytes, header: Header, frame: bytes, now: float) -> None:
        """One CONTROL from ``client``: answered by one REPLY with its id (a reload's when
        the reload ends)."""
        try:
            control = decode_control(frame, header)
            if control.op == "scale":
                self._scale(client, control, now)
            elif control.op == "reload":
                self._reload(client, control, now)
            else:
                self._stacks(client, control)
        except BridgeError as exc:
            self._apply([ToClient(client, encode_error(header.id, exc))])

    def _apply(self, actions: list[Action]) -> None:
        self.hub._apply(actions)

    def _scale(self, client: bytes, control: Control, now: float) -> None:
        hub = self.hub
        with hub.guard:
            was = hub.broker.s.workers
            actions = hub.broker.set_workers(control.workers, now)
        reply = {"workers": control.workers, "was": was}
        self._apply(actions + [ToClient(client, encode_result(control.id, reply))])

    def _reload(self, client: bytes, control: Control, now: float) -> None:
        hub = self.hub
        with hub.guard:
            actions = hub.broker.reload(client, control.id, now)
        if any(isinstance(action, Spawn) for action in actions):
            hub.supervisor.reload_template()  # before the first new daemon starts
        self._apply(actions)

    def _stacks(self, client: bytes, control: Control) -> None:
        hub = self.hub
        if not hub.broker.expose_errors:
            raise InvalidRequest("this hub shows its callers no tracebacks (expose_tracebacks), so "
                                 "no stacks either; set expose_tracebacks=true to allow them")
        with hub.guard:
            daemon = rollout.find(hub.broker.daemons.values(), control.daemon)
            found = (daemon.ident, daemon.name, daemon.pid) if daemon is not None else None
        if found is None:
            raise InvalidParams(f"no daemon {control.daemon!r}: give an id or a pid that "
                                f"`zbridge status` shows")
        ident, name, pid = found
        if pid is None or hub.supervisor.process_state(ident) is None:
            raise InvalidRequest(f"daemon {name} runs on another host: stacks are only for "
                                 f"daemons this hub spawned (run py-spy or faulthandler there)")
        if not stacks.armed(hub.private_dir, pid):
            raise InvalidRequest(f"daemon {name} (pid {pid}) cannot dump its stacks yet: its "
                                 f"interpreter is still starting; try again")
        with self._lock:
            waiting = self._dumps.setdefault(pid, [])
            waiting.append((client, control.id))
            if len(waiting) > 1:
                return  # it shares the dump under way
        try:
            stacks.request(hub.private_dir, pid)
        except OSError as exc:
            with self._lock:
                self._dumps.pop(pid, None)
            raise InternalError(f"cannot ask daemon {name} (pid {pid}) for its stacks: {exc}") from None
        threading.Thread(target=self._collect, args=(name, pid), daemon=True,
                         name=f"zbridge-stacks-{name}").start()

    def _collect(self, name: str, pid: int) -> None:
        """Off the hub thread: wait for the dump, then hand each waiter's REPLY to the hub."""
        text = stacks.collect(self.hub.private_dir, pid)
        with self._lock:
            waiting = self._dumps.pop(pid, [])
        for client, id in waiting:
            if text:
                frame = encode_result(id, {"daemon": name, "pid": pid, "stacks": text})
            else:
                frame = encode_error(id, InternalError(
                    f"daemon {name} (pid {pid}) wrote no stacks within {stacks.WAIT}s: it exited, "
                    f"or a tool replaced the {stacks.SIGNAL.name} handler"))
            self.hub.send_later(client, frame)

    def daemon_exited(self, ident: bytes) -> None:
        """Before the broker forgets an exited daemon: its stack file goes."""
        with self.hub.guard:
            daemon = self.hub.broker.daemons.get(ident)
            pid = daemon.pid if daemon is not None else None
        if pid is not None:
            stacks.forget(self.hub.private_dir, pid)
