"""Private ipc directories: created 0700, marked with the owning hub's pid, removed on close.

A hub that is SIGKILLed cannot clean up, so its daemons do it when their lifeline breaks
(``remove_if_orphaned``), and every new hub sweeps directories whose owner is dead.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import socket
import tempfile

PREFIX = "zbridge-"
PID_FILE = "hub.pid"


def base_dir() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return runtime
    return tempfile.gettempdir()


def create_private_dir() -> str:
    """A fresh 0700 directory (mkdtemp creates it so) holding our pid."""
    sweep_stale()
    old = os.umask(0o077)
    try:
        path = tempfile.mkdtemp(prefix=PREFIX, dir=base_dir())
        os.chmod(path, 0o700)
        tmp = os.path.join(path, PID_FILE + ".tmp")
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, os.path.join(path, PID_FILE))  # readers never see a half-written pid
    finally:
        os.umask(old)
    return path


def ipc_endpoint(directory: str, name: str) -> str:
    return f"ipc://{os.path.join(directory, name)}.sock"


def ipc_path(endpoint: str) -> str | None:
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None


def remove_private_dir(directory: str) -> None:
    """Remove our own files, then the directory; never anything we did not create."""
    ours = [os.path.join(directory, pattern) for pattern in ("*.sock", "*.key", "*.key_secret")]
    for path in [p for pattern in ours for p in glob.glob(pattern)] + [os.path.join(directory, PID_FILE)]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(directory)
    except (FileNotFoundError, OSError):
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped by its parent) still answers kill(0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner_alive(directory: str) -> bool:
    """False only when the recorded owner is known to be dead."""
    try:
        with open(os.path.join(directory, PID_FILE)) as f:
            return _pid_alive(int(f.read().strip()))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True


def remove_if_orphaned(endpoint: str) -> None:
    """Called by a daemon whose hub vanished: remove the hub's private dir if it is dead."""
    path = ipc_path(endpoint)
    if path is None:
        return
    directory = os.path.dirname(path)
    if os.path.basename(directory).startswith(PREFIX) and os.path.exists(os.path.join(directory, PID_FILE)) \
            and not owner_alive(directory):
        remove_private_dir(directory)


def sweep_stale() -> None:
    """Remove private dirs left by hubs that died without cleaning up."""
    for directory in glob.glob(os.path.join(base_dir(), PREFIX + "*")):
        if os.path.isdir(directory) and os.stat(directory).st_uid == os.getuid() \
                and os.path.exists(os.path.join(directory, PID_FILE)) and not owner_alive(directory):
            remove_private_dir(directory)


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ipc_in_use(path: str) -> bool:
    """True if something accepts connections on this unix socket path right now."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
        return True
    except OSError:
        return False  # missing, stale (ECONNREFUSED) or not a socket
    finally:
        probe.close()


def check_bindable(endpoint: str, *, authenticated: bool = False) -> None:
    """Refuse to expose the hub to other hosts without CURVE, or to steal a live ipc path."""
    if endpoint.startswith("tcp://"):
        host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
        if not _loopback(host) and not authenticated:
            raise ValueError(f"refusing to bind {endpoint} without CURVE keys: a non-loopback tcp "
                             "endpoint would let any host that reaches it run tools "
                             "(bind 127.0.0.1, or give --curve-secret and --curve-clients)")
    elif endpoint.startswith("ipc://"):
        if ipc_in_use(ipc_path(endpoint)):
            raise ValueError(f"refusing to bind {endpoint}: a live process already serves it")
    elif not endpoint.startswith("inproc://"):
        raise ValueError(f"unsupported endpoint {endpoint!r}: use ipc://PATH or tcp://127.0.0.1:PORT")
