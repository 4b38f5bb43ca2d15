"""Is a hub there? What a client can find out about an endpoint that zmq cannot tell it.

A zmq DEALER connects in the background and retries for ever, so a call to a hub that
does not exist used to wait ``connect_timeout`` (5 s) before failing. The operating system
knows at once: an ipc endpoint without a socket file, or whose socket refuses connections
(a hub that stopped and left it behind), or a loopback tcp port that refuses, has no hub
(``absent``). A client that sees that makes its socket give up on a send after 0.25 s
(``fail_fast``), so the call ends through the usual path: a did-not-run
``PoolUnavailable`` (``cause: unreachable``) that the fallback may serve. That socket
keeps the short wait: a client started before its hub fails in 0.25 s while the hub is
down, and is served once zmq has connected it (within 0.1 s of the hub's start).

A hub that exists but does not answer (stopped by SIGSTOP or a debugger, or stuck) is
named, with its pid, by ``unreachable``: for an ipc endpoint the pid comes from the socket's
owner (``SO_PEERCRED``: the kernel accepts connections for a stopped process), else from a
``hub.pid`` file beside the socket (the private directories of embedded hubs have one).
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from typing import Any

from .endpoints import HUB_SOCKET, PID_FILE, ipc_path, is_loopback, user_dir
from .procinfo import run_state

PROBE_TIMEOUT = 0.5  # seconds a loopback connect may take before we let zmq judge
FAIL_FAST_MS = 250   # a send's wait for a connection when no hub was there (zmq retries every 100 ms)


def _start_hint(endpoint: str) -> str:
    if ipc_path(endpoint) == os.path.join(user_dir(), HUB_SOCKET):
        return "start one with `zbridge serve --tools MODULE`"
    return f"start one with `zbridge serve --tools MODULE --bind {endpoint}`"


def absent(endpoint: str | None) -> str | None:
    """Why no hub can be at ``endpoint`` now (missing or refusing socket), or None when one
    may be there (it accepted a connection, or we cannot tell: inproc, a remote host)."""
    if endpoint is None:
        return None
    path = ipc_path(endpoint)
    if path is not None:
        why = _ipc_absent(path)
    elif endpoint.startswith("tcp://"):
        why = _tcp_absent(endpoint[len("tcp://"):])
    else:
        return None
    return None if why is None else f"no hub at {endpoint} (not reachable): {why}; {_start_hint(endpoint)}"


def _ipc_absent(path: str) -> str | None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"there is no socket file {path}"
    except OSError as exc:
        return f"cannot reach {path}: {exc.strerror}"
    if not stat.S_ISSOCK(mode):
        return f"{path} is not a socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(PROBE_TIMEOUT)
        probe.connect(path)
    except ConnectionRefusedError:
        return f"nothing listens on {path} (left behind by a hub that is gone)"
    except PermissionError:
        return f"permission denied on {path}"
    except OSError:
        return None  # a full backlog, a slow hub: let zmq judge
    finally:
        probe.close()
    return None


def _tcp_absent(address: str) -> str | None:
    host, _, port = address.rpartition(":")
    if not is_loopback(host) or not port.isdigit():
        return None  # another host: a refused probe there proves less, and costs a round trip
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT):
            return None
    except ConnectionRefusedError:
        return f"nothing listens on {address} (connection refused)"
    except OSError:
        return None


def fail_fast(sock: Any, endpoint: str | None) -> None:
    """If no hub is at ``endpoint``, let ``sock`` (a DEALER with ZMQ_IMMEDIATE) wait only
    FAIL_FAST_MS, not ``connect_timeout``, for a connection before a send fails: long
    enough for zmq to connect a hub that appears meanwhile (it retries every 100 ms)."""
    if absent(endpoint) is not None:
        import zmq
        sock.setsockopt(zmq.SNDTIMEO, min(FAIL_FAST_MS, sock.getsockopt(zmq.SNDTIMEO)))


def hub_pid(endpoint: str) -> int | None:
    """The pid of the process serving an ipc endpoint: the socket's owner, else the pid
    file beside it; None for other endpoints or when neither says."""
    path = ipc_path(endpoint)
    if path is None:
        return None
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(PROBE_TIMEOUT)
        probe.connect(path)
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        if pid > 0:
            return int(pid)
    except OSError:
        pass
    finally:
        probe.close()
    try:
        with open(os.path.join(os.path.dirname(path), PID_FILE)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _process_says(pid: int) -> str:
    state = run_state(pid)
    if state is None or state in "ZX":
        return "its process is gone"
    if state in "Tt":
        return (f"its process is stopped (SIGSTOP or a debugger; `kill -CONT {pid}` resumes it, "
                f"`kill {pid}` ends it)")
    if state == "D":
        return "its process is waiting on the disk or the kernel"
    return "its process is running but not answering (overloaded or stuck)"


def unreachable(endpoint: str | None) -> str:
    """Why a call could not be sent to ``endpoint``, as far as the client can tell."""
    why = absent(endpoint)
    if why is not None:
        return f"{why} (the call was not sent)"
    pid = hub_pid(endpoint) if endpoint else None
    if pid is None:
        return f"hub at {endpoint} is not reachable (the call was not sent)"
    return f"hub pid {pid} at {endpoint} did not answer: {_process_says(pid)} (the call was not sent)"


def silent(endpoint: str, waited: float) -> str:
    """A hub that took the request but sent no reply within ``waited`` seconds."""
    pid = hub_pid(endpoint)
    if pid is None:
        return f"hub at {endpoint} did not answer within {waited:g}s"
    return f"hub pid {pid} at {endpoint} did not answer within {waited:g}s: {_process_says(pid)}"

