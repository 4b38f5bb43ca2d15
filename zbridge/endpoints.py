"""Private ipc directories: created 0700, marked with the owning hub's pid, removed on close.

A hub that is SIGKILLed cannot clean up, so its daemons do it when their lifeline breaks
(``remove_if_orphaned``), and every new hub sweeps directories whose owner is dead.

The default endpoint of ``zbridge serve`` lives in a per-user directory that outlives any
one hub (``default_endpoint``): clients find it without being told, other users cannot.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import socket
import stat
import tempfile

PREFIX = "zbridge-"
PID_FILE = "hub.pid"
HUB_SOCKET = "hub.sock"


def base_dir() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return runtime
    return tempfile.gettempdir()


def _runtime_dir() -> str | None:
    """$XDG_RUNTIME_DIR if it is a directory of ours we may write in (systemd makes it 0700)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime or not os.path.isdir(runtime) or not os.access(runtime, os.W_OK | os.X_OK):
        return None
    return runtime if os.stat(runtime).st_uid == os.getuid() else None


def user_dir() -> str:
    """The per-user directory of the default hub socket (not created here)."""
    runtime = _runtime_dir()
    if runtime:
        return os.path.join(runtime, "zbridge")
    # not PREFIX + random: sweep_stale only removes directories holding a dead hub's pid file
    return os.path.join(tempfile.gettempdir(), f"{PREFIX}{os.getuid()}")


def ensure_private(directory: str) -> str:
    """Create ``directory`` 0700, or accept it only if it is already ours and 0700.

    In a shared temp dir anyone may create the path first: a directory of another user (or
    a symlink to one) could hold a fake hub that reads every caller's arguments.
    """
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode):
        raise PermissionError(f"refusing {directory}: it is a symlink, not a private directory")
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"refusing {directory}: it is not a directory")
    if info.st_uid != os.getuid():
        raise PermissionError(f"refusing {directory}: it belongs to uid {info.st_uid}, not to us "
                              f"(uid {os.getuid()}); another user may be posing as the hub")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise PermissionError(f"refusing {directory}: mode {stat.S_IMODE(info.st_mode):04o} lets other "
                              f"users in (run `chmod 700 {directory}` if you trust its contents)")
    return directory


def default_endpoint() -> str:
    """Where `zbridge serve` listens and `Client()` connects when given no endpoint."""
    return f"ipc://{os.path.join(ensure_private(user_dir()), HUB_SOCKET)}"


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
    ours = [os.path.join(directory, pattern)  # (stacks-*: daemons' stack dumps, zbridge/stacks.py)
            for pattern in ("*.sock", "*.key", "*.key_secret", "stacks-*.txt", "stacks-*.txt.new")]
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


def is_loopback(host: str) -> bool:
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
        if not is_loopback(host) and not authenticated:
            raise ValueError(f"refusing to bind {endpoint} without CURVE keys: a non-loopback tcp "
                             "endpoint would let any host that reaches it run tools "
                             "(bind 127.0.0.1, or give --curve-secret and --curve-clients)")
    elif endpoint.startswith("ipc://"):
        if ipc_in_use(ipc_path(endpoint) or ""):
            raise ValueError(f"refusing to bind {endpoint}: a live process already serves it")
    elif not endpoint.startswith("inproc://"):
        raise ValueError(f"unsupported endpoint {endpoint!r}: use ipc://PATH or tcp://127.0.0.1:PORT")


def check_frontend(endpoint: str, *, curve: bool, allow_local_users: bool) -> None:
    """Refuse a tcp client endpoint without CURVE: even on loopback, every local user can
    connect to it and run tools as us, unless that is asked for by name."""
    if not endpoint.startswith("tcp://") or curve:
        return
    if not allow_local_users:
        raise ValueError(f"refusing to bind {endpoint} without CURVE keys: any local user could "
                         "connect and run tools as you (use the default ipc endpoint, give "
                         "--curve-secret and --curve-clients, or --allow-local-users on loopback)")
    check_bindable(endpoint)  # loopback only: the flag opens the hub to users, not to hosts


def check_daemon_bind(endpoint: str, *, curve: bool) -> None:
    """A daemon socket without CURVE would let anyone who reaches it pose as a daemon: read
    callers' arguments and forge their results. No exception, loopback included."""
    if not curve:
        raise ValueError(f"refusing to bind {endpoint} for daemons without CURVE keys: anyone who "
                         "reaches it could receive calls and forge results (give --curve-secret "
                         "and --curve-daemons)")
    check_bindable(endpoint, authenticated=True)


ENDPOINT_FORMS = "ipc:///path/to/socket, tcp://HOST:PORT (e.g. tcp://127.0.0.1:5555) or inproc://NAME"


def check_endpoint(endpoint: str | None) -> None:
    """Refuse a malformed endpoint before zmq sees it (zmq only says "Invalid argument").

    None passes: it means "no endpoint" to the callers that accept one.
    """
    if endpoint is None:
        return
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str such as {ENDPOINT_FORMS}, not {type(endpoint).__name__}")
    scheme, sep, address = endpoint.partition("://")
    problem = None
    if not sep:
        problem = "it has no scheme"
    elif scheme not in ("ipc", "tcp", "inproc"):
        problem = f"scheme {scheme!r} is not ipc, tcp or inproc"
    elif not address:
        problem = "the address after :// is empty"
    elif scheme == "tcp":
        host, colon, port = address.rpartition(":")
        if not colon or not host:
            problem = "a tcp endpoint needs HOST:PORT"
        elif not (port == "*" or (port.isdigit() and 0 < int(port) < 65536)):
            problem = f"port {port!r} is not a number from 1 to 65535"
    if problem:
        raise ValueError(f"invalid endpoint {endpoint!r}: {problem}; use {ENDPOINT_FORMS}")
