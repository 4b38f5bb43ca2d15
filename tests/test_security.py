"""CURVE over tcp loopback, keys, tracebacks, endpoint safety."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys

import pytest

import zbridge
from zbridge.endpoints import check_bindable, default_endpoint
from helpers import wait_until
from test_cli import ZBRIDGE, free_port, zb


@pytest.fixture
def keys(tmp_path):
    for directory, name in [("hub", "server"), ("clients", "alice"), ("strangers", "mallory"),
                            ("daemons", "d1"), ("strangers", "rogue")]:
        out = zb("keygen", str(tmp_path / directory), "--name", name)
        assert out.returncode == 0, out.stderr
    return tmp_path


def key(keys, directory, name, secret=False):
    return str(keys / directory / (name + (".key_secret" if secret else ".key")))


def test_keygen_secret_is_private(keys):
    assert stat.S_IMODE(os.stat(key(keys, "hub", "server", True)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key(keys, "hub", "server")).st_mode) == 0o644


@pytest.fixture
def curve_hub(keys, basic_tools):
    port, daemon_port, beat_port = free_port(), free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(ZBRIDGE + [
        "serve", "--tools", basic_tools, "--bind", endpoint, "--workers", "1",
        "--curve-secret", key(keys, "hub", "server", True), "--curve-clients", str(keys / "clients"),
        "--curve-daemons", str(keys / "daemons"), "--daemon-bind", f"tcp://127.0.0.1:{daemon_port}",
        "--heartbeat-bind", f"tcp://127.0.0.1:{beat_port}", "--heartbeat-interval", "0.2"],
        stderr=subprocess.DEVNULL)
    good = dict(curve_server_key=key(keys, "hub", "server"), curve_secret=key(keys, "clients", "alice", True))
    try:
        assert wait_until(lambda: _status(endpoint, good), timeout=20)
        yield endpoint, good, daemon_port, beat_port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def _status(endpoint, curve):
    try:
        with zbridge.Client(endpoint, fallback=False, connect_timeout=0.5, **curve) as c:
            return c.status(timeout=2)
    except zbridge.BridgeError:
        return None


def test_right_keys_work_over_tcp(curve_hub):
    endpoint, good, *_ = curve_hub
    with zbridge.Client(endpoint, fallback=False, **good) as client:
        assert client.call("add", [20, 22]) == 42


@pytest.mark.parametrize("who", ["stranger", "plaintext", "wrong server key"])
def test_unknown_or_plaintext_clients_are_refused(curve_hub, keys, who):
    endpoint, good, *_ = curve_hub
    curve = {"stranger": dict(good, curve_secret=key(keys, "strangers", "mallory", True)),
             "plaintext": {},
             "wrong server key": dict(good, curve_server_key=key(keys, "strangers", "rogue"))}[who]
    with zbridge.Client(endpoint, fallback=False, connect_timeout=1.0, **curve) as client:
        with pytest.raises((zbridge.PoolUnavailable, zbridge.CallTimeout)):
            client.call("add", [1, 1], timeout=2)


def remote_daemon(keys, basic_tools, daemon_port, beat_port, name, directory, *extra):
    return subprocess.Popen([
        sys.executable, "-m", "zbridge_daemon", "--connect", f"tcp://127.0.0.1:{daemon_port}",
        "--heartbeat", f"tcp://127.0.0.1:{beat_port}", "--heartbeat-interval", "0.2",
        "--curve-secret", key(keys, directory, name, True), "--curve-server-key", key(keys, "hub", "server"),
        "--tools", basic_tools, *extra], stderr=subprocess.DEVNULL)


def test_daemon_with_a_known_key_joins_over_tcp(curve_hub, keys, basic_tools):
    endpoint, good, daemon_port, beat_port = curve_hub
    proc = remote_daemon(keys, basic_tools, daemon_port, beat_port, "d1", "daemons")
    try:
        with zbridge.Client(endpoint, fallback=False, **good) as client:
            assert wait_until(lambda: proc.pid in {d["pid"] for d in client.status()["daemons"]}, timeout=20)
            assert wait_until(lambda: proc.pid in {client.call("pid") for _ in range(6)}, timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_daemon_with_an_unknown_key_is_refused_and_leaves(curve_hub, keys, basic_tools):
    endpoint, good, daemon_port, beat_port = curve_hub
    proc = remote_daemon(keys, basic_tools, daemon_port, beat_port, "rogue", "strangers",
                         "--exit-on-hub-loss")
    try:
        assert proc.wait(timeout=20) == 0  # never heard the hub: exits by itself
        with zbridge.Client(endpoint, fallback=False, **good) as client:
            assert proc.pid not in {d["pid"] for d in client.status()["daemons"]}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_tracebacks_hidden_from_tcp_clients_shown_locally(curve_hub, bridge_factory, basic_tools):
    endpoint, good, *_ = curve_hub
    with zbridge.Client(endpoint, fallback=False, **good) as client:
        with pytest.raises(zbridge.ToolError) as remote:
            client.call("boom")
    assert remote.value.data["type"] == "ValueError" and "traceback" not in remote.value.data
    with pytest.raises(zbridge.ToolError) as local:
        bridge_factory(basic_tools).call("boom")
    assert "raise ValueError" in local.value.data["traceback"]


def test_endpoint_rules():
    with pytest.raises(ValueError, match="without CURVE"):
        check_bindable("tcp://0.0.0.0:5555")
    with pytest.raises(ValueError, match="without CURVE"):
        check_bindable("tcp://192.168.1.10:5555")
    check_bindable("tcp://0.0.0.0:5555", authenticated=True)
    check_bindable("tcp://127.0.0.1:5555")
    check_bindable("tcp://[::1]:5555")
    with pytest.raises(ValueError, match="unsupported"):
        check_bindable("udp://x")


def test_private_dir_is_0700_and_under_umask_077(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    bridge.call("pid")
    directory = bridge.private_dir
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    for entry in os.listdir(directory):
        assert stat.S_IMODE(os.stat(os.path.join(directory, entry)).st_mode) & 0o077 == 0, entry


# --- safe defaults (issue 11) -------------------------------------------------------------

@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    """A private XDG_RUNTIME_DIR for this test, seen by us and by every process we start."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


def test_serve_defaults_to_a_private_ipc_socket_that_clients_find(runtime_dir, basic_tools):
    proc = subprocess.Popen(ZBRIDGE + ["serve", "--tools", basic_tools], stderr=subprocess.DEVNULL)
    sock = runtime_dir / "zbridge" / "hub.sock"
    try:
        assert wait_until(lambda: zb("status").returncode == 0, timeout=20)
        assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
        out = zb("call", "add", "--args", "[2, 3]")
        assert out.returncode == 0 and out.stdout.strip() == "5", out.stderr
        with zbridge.Client(fallback=False) as client:
            assert client.endpoint == f"ipc://{sock}" and client.call("add", [1, 1]) == 2

        async def twin():
            async with zbridge.AsyncClient(fallback=False) as client:
                return client.endpoint, await client.call("add", [2, 2])
        assert asyncio.run(twin()) == (f"ipc://{sock}", 4)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert not sock.exists()  # serve removes its socket file on exit


def test_default_dir_falls_back_to_a_per_user_temp_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert default_endpoint() == f"ipc://{tmp_path}/zbridge-{os.getuid()}/hub.sock"
    assert stat.S_IMODE(os.stat(tmp_path / f"zbridge-{os.getuid()}").st_mode) == 0o700


@pytest.mark.parametrize("how", ["loose mode", "other owner", "symlink"])
def test_default_dir_is_refused_unless_private_and_ours(runtime_dir, tmp_path, how):
    directory = runtime_dir / "zbridge"
    if how == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        directory.symlink_to(tmp_path / "elsewhere")
    else:
        directory.mkdir(mode=0o700)
        if how == "loose mode":
            directory.chmod(0o755)
        elif os.getuid() == 0:
            os.chown(directory, 65534, 65534)
        else:
            pytest.skip("changing a directory's owner needs root")
    with pytest.raises(PermissionError, match="refusing"):
        default_endpoint()
    for args in (["status"], ["serve", "--workers", "0"]):
        out = zb(*args, timeout=30)
        assert out.returncode != 0 and "refusing" in out.stderr, out.stderr


def test_tcp_bind_needs_curve_even_on_loopback(basic_tools):
    out = zb("serve", "--tools", basic_tools, "--bind", f"tcp://127.0.0.1:{free_port()}", timeout=30)
    assert out.returncode != 0 and "without CURVE" in out.stderr and "--allow-local-users" in out.stderr


def test_allow_local_users_serves_loopback_tcp_with_a_warning(basic_tools):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(ZBRIDGE + ["serve", "--tools", basic_tools, "--bind", endpoint,
                                       "--allow-local-users"], stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: zb("status", "--endpoint", endpoint).returncode == 0, timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        stderr = proc.stderr.read()
        proc.stderr.close()
    assert "every local user can run the tools" in stderr
    out = zb("serve", "--bind", "tcp://0.0.0.0:5999", "--allow-local-users", timeout=30)
    assert out.returncode != 0 and "without CURVE" in out.stderr  # users, never other hosts


def test_daemon_bind_needs_curve_even_on_loopback(basic_tools, tmp_path):
    out = zb("serve", "--tools", basic_tools, "--bind", f"ipc://{tmp_path}/hub.sock",
             "--daemon-bind", f"tcp://127.0.0.1:{free_port()}",
             "--heartbeat-bind", f"tcp://127.0.0.1:{free_port()}", timeout=30)
    assert out.returncode != 0 and "for daemons without CURVE" in out.stderr


def test_serve_removes_its_ipc_socket_file_on_exit(basic_tools, tmp_path):
    sock = tmp_path / "hub.sock"
    proc = subprocess.Popen(ZBRIDGE + ["serve", "--tools", basic_tools, "--bind", f"ipc://{sock}"],
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: zb("status", "--endpoint", f"ipc://{sock}").returncode == 0, timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert not sock.exists()


def test_keygen_refuses_to_overwrite_without_force(keys):
    secret = key(keys, "hub", "server", True)
    before = open(secret).read()
    out = zb("keygen", str(keys / "hub"), "--name", "server")
    assert out.returncode != 0 and "refusing to overwrite" in out.stderr and "--force" in out.stderr
    assert open(secret).read() == before
    out = zb("keygen", str(keys / "hub"), "--name", "server", "--force")
    assert out.returncode == 0 and open(secret).read() != before
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
