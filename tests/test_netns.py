"""Hub and remote daemons on two hosts, for real: network namespaces joined by veth pairs.

    hub ns  10.251.0.1 ==veth== 10.251.0.2  daemons ns (two daemons, and a rogue one)
            10.252.0.1 ==veth== 10.252.0.2  client ns

The daemons' link is cut for 10 s under load while the clients' link stays up, so what is
measured is how the daemons and the hub cope, not how the client's TCP retransmits.
Needs root and `ip netns`; CI runs it with `python -m pytest -m netns`.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TOOLSETS
from test_cli import zb

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

HERE = Path(__file__).parent
HUB_IP, DAEMON_IP, HUB_CLIENT_IP, CLIENT_IP = "10.251.0.1", "10.251.0.2", "10.252.0.1", "10.252.0.2"
PORTS = {"clients": 5555, "daemons": 5556, "beats": 5557}
BEAT = ["--heartbeat-interval", "0.5", "--heartbeat-misses", "3"]
OUTAGE = 10.0


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs `ip` (iproute2) for network namespaces"
    probe = f"zbprobe-{secrets.token_hex(3)}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "`ip netns add` fails here (no CAP_SYS_ADMIN or no netns support)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Net:
    """Three namespaces, two veth pairs, and every process started in them."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.hub, self.daemons, self.clients = (f"zb{role}-{tag}" for role in ("hub", "dmn", "cli"))
        self.daemon_link = (f"zbh{tag}", f"zbd{tag}")   # (hub end, daemon end)
        self.client_link = (f"zbk{tag}", f"zbc{tag}")   # (hub end, client end)
        self.procs: list[subprocess.Popen] = []

    def create(self) -> None:
        for ns in (self.hub, self.daemons, self.clients):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for (hub_end, far_end), far_ns, hub_ip, far_ip in [
                (self.daemon_link, self.daemons, HUB_IP, DAEMON_IP),
                (self.client_link, self.clients, HUB_CLIENT_IP, CLIENT_IP)]:
            ip("link", "add", hub_end, "type", "veth", "peer", "name", far_end)
            ip("link", "set", hub_end, "netns", self.hub)
            ip("link", "set", far_end, "netns", far_ns)
            ip("-n", self.hub, "addr", "add", f"{hub_ip}/24", "dev", hub_end)
            ip("-n", far_ns, "addr", "add", f"{far_ip}/24", "dev", far_end)
            ip("-n", self.hub, "link", "set", hub_end, "up")
            ip("-n", far_ns, "link", "set", far_end, "up")

    def daemon_link_state(self, state: str) -> None:
        ip("-n", self.hub, "link", "set", self.daemon_link[0], state)
        ip("-n", self.daemons, "link", "set", self.daemon_link[1], state)

    def start(self, ns: str, argv: list[str], **popen) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **popen)  # exec: same pid
        self.procs.append(proc)
        return proc

    def run(self, ns: str, argv: list[str], timeout: float) -> dict:
        proc = self.start(ns, argv, stdout=subprocess.PIPE, text=True)
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"{argv[:3]} exited {proc.returncode}"
        return json.loads(out)

    def destroy(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for ns in (self.hub, self.daemons, self.clients):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
            for pid in pids.split():  # anything they started that is still inside
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # takes its veth along


@pytest.fixture
def net():
    why = _why_not()
    if why:
        pytest.skip(why)
    net = Net()
    try:
        net.create()
        yield net
    finally:
        net.destroy()


@pytest.fixture
def keys(tmp_path):
    for directory, name in [("hub", "hub"), ("clients", "alice"), ("daemons", "d1"), ("daemons", "d2"),
                            ("strangers", "mallory"), ("strangers", "rogue")]:
        out = zb("keygen", str(tmp_path / directory), "--name", name)
        assert out.returncode == 0, out.stderr
    return tmp_path


def _key(keys: Path, directory: str, name: str, secret: bool = False) -> str:
    return str(keys / directory / (name + (".key_secret" if secret else ".key")))


def _daemon(net: Net, keys: Path, directory: str, name: str) -> subprocess.Popen:
    return net.start(net.daemons, [
        sys.executable, "-m", "zbridge_daemon", "--tools", str(TOOLSETS / "ledger.py"),
        "--connect", f"tcp://{HUB_IP}:{PORTS['daemons']}", "--heartbeat", f"tcp://{HUB_IP}:{PORTS['beats']}",
        *BEAT, "--curve-secret", _key(keys, directory, name, True),
        "--curve-server-key", _key(keys, "hub", "hub"), "--no-expose-tracebacks"],
        stderr=subprocess.DEVNULL)


def test_remote_daemons_across_a_network_that_fails(net, keys, tmp_path):
    hub = net.start(net.hub, [
        sys.executable, "-m", "zbridge.cli", "serve", "--workers", "0", *BEAT,
        "--bind", f"tcp://{HUB_CLIENT_IP}:{PORTS['clients']}",
        "--daemon-bind", f"tcp://{HUB_IP}:{PORTS['daemons']}",
        "--heartbeat-bind", f"tcp://{HUB_IP}:{PORTS['beats']}",
        "--curve-secret", _key(keys, "hub", "hub", True), "--curve-clients", str(keys / "clients"),
        "--curve-daemons", str(keys / "daemons")], stderr=subprocess.DEVNULL)
    daemons = [_daemon(net, keys, "daemons", "d1"), _daemon(net, keys, "daemons", "d2")]
    rogue = _daemon(net, keys, "strangers", "rogue")
    ledger = tmp_path / "ledger"
    config = {"endpoint": f"tcp://{HUB_CLIENT_IP}:{PORTS['clients']}", "server_key": _key(keys, "hub", "hub"),
              "secret": _key(keys, "clients", "alice", True), "ledger": str(ledger)}
    client = [sys.executable, str(HERE / "netns_client.py")]

    # calls work through both daemons; a stranger client and a stranger daemon get nothing
    probe = net.run(net.clients, client + ["probe", json.dumps(dict(
        config, daemons=2, wait=30, stranger_secret=_key(keys, "strangers", "mallory", True)))], timeout=60)
    good = {d.pid for d in daemons}
    assert set(probe["served"]) == good and set(probe["status_pids"]) == good
    assert rogue.pid not in probe["status_pids"] and probe["stranger"] != "served"
    assert "stranger" not in ledger.read_text().split()

    # load, and the daemons' link down for OUTAGE seconds in the middle of it
    after = 8.0
    load = net.start(net.clients, client + ["load", json.dumps(dict(
        config, threads=4, seconds=2 + OUTAGE + after, work=0.05, timeout=20))],
        stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    net.daemon_link_state("down")
    time.sleep(OUTAGE)
    net.daemon_link_state("up")
    link_up = time.time()
    out, _ = load.communicate(timeout=60)
    calls = json.loads(out)["calls"]

    # every call answered once, with a result or an error that says what happened
    nonces = [c["nonce"] for c in calls]
    assert len(nonces) == len(set(nonces)) and calls
    outcomes = collections.Counter(c["outcome"] for c in calls)
    assert set(outcomes) <= {"ok", "WorkerLost", "CallTimeout"}, outcomes
    # nothing that was not idempotent ran twice; whatever succeeded ran
    ran = collections.Counter(ledger.read_text().split())
    assert set(ran) - {"probe"} <= set(nonces)
    for c in calls:
        if not c["idempotent"]:
            assert ran[c["nonce"]] <= 1, c
        if c["outcome"] == "ok":
            assert ran[c["nonce"]] >= 1, c
    # both daemons serve again on their own, without a restart
    back = {pid: min((c["done"] - link_up for c in calls
                      if c["pid"] == pid and c["outcome"] == "ok" and c["done"] > link_up), default=None)
            for pid in good}
    print(f"\noutcomes {dict(outcomes)}; ran twice (idempotent only): "
          f"{sum(1 for n, k in ran.items() if k > 1 and n != 'probe')}; "
          "seconds from link up to first call served: "
          + ", ".join(f"pid {pid}: {t:.2f}" if t is not None else f"pid {pid}: never"
                      for pid, t in back.items()))
    assert all(t is not None for t in back.values()), back
    assert all(d.poll() is None for d in daemons) and hub.poll() is None
