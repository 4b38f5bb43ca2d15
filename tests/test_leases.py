"""A served hub's local clients borrow its daemons (issue 21, zbridge/leasedesk.py and
zbridge/leased.py): the hub lends a daemon's channel per call, the client reads its reply
there, and the hub stays the one judge (deadlines, kills, WorkerLost, cancel, queue order)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import zbridge
from helpers import TOOLSETS, served, wait_until

BASIC = str(TOOLSETS / "basic.py")


@pytest.fixture
def hub(tmp_path):
    with served(tmp_path, "--tools", BASIC, "--workers", "1", "--prewarm", "--kill-grace", "30") as (endpoint, _):
        yield endpoint


def client(endpoint: str, **options) -> zbridge.Client:
    made = zbridge.Client(endpoint, fallback=False, **options)
    made.wait_ready(timeout=30)
    return made


def _requests_through_the_frontend(endpoint: str) -> int:
    with zbridge.Client(endpoint, direct=False) as c:
        return c.status()["counters"]["accepted"]


def test_a_local_client_borrows_daemons_instead_of_routing_through_the_hub(hub):
    with client(hub) as c:
        assert type(c._transport).__name__ == "LeaseTransport"
        assert [c.call("echo", [i]) for i in range(50)] == list(range(50))
        assert c.call("add", [2, 3]) == 5
        assert list(c.stream("count", [3])) == [0, 1, 2]  # streams keep the hub's route
        counters = c.status()["counters"]
    assert counters["completed"] >= 52 and counters["lost"] == 0


def test_direct_false_keeps_the_hubs_route(hub):
    with client(hub, direct=False) as c:
        assert type(c._transport).__name__ == "HubTransport"
        assert c.call("echo", ["x"]) == "x"


def test_a_leased_call_past_its_deadline_times_out_and_the_daemon_comes_back_warm(hub):
    with client(hub) as c:
        pid = c.call("pid")
        with pytest.raises(zbridge.CallTimeout):
            c.call("span", [1.0, "late"], timeout=0.2)
        # the hub reads the late reply on its own end of the channel: the daemon is freed, not killed
        assert c.call("pid", timeout=10) == pid
        counters = c.status()["counters"]
    assert counters["timeouts"] == 1 and counters["kills"] == 0


def test_cancelling_a_leased_call_interrupts_it(hub, tmp_path):
    with client(hub) as c:
        pid = c.call("pid")
        future = c.submit("interruptible", [30, str(tmp_path / "marker")], timeout=60)
        assert wait_until(lambda: c.status()["daemons"][0]["state"] == "busy")
        assert future.cancel()
        with pytest.raises(zbridge.Cancelled):
            future.result(timeout=10)
        assert c.call("pid", timeout=10) == pid


def test_a_daemon_killed_during_a_leased_call_gives_worker_lost_naming_the_signal(hub):
    with client(hub) as c:
        victim = c.call("pid")
        future = c.submit("span", [30, "doomed"], timeout=60)
        assert wait_until(lambda: c.status()["daemons"][0]["state"] == "busy")
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(zbridge.WorkerLost, match="SIGKILL"):
            future.result(timeout=10)
        assert c.call("pid", timeout=30) != victim


def test_queued_borrowers_are_lent_the_daemon_in_order(hub, tmp_path):
    log = tmp_path / "order"
    with client(hub) as c:
        first = c.submit("span", [0.3, "first"])
        assert wait_until(lambda: c.status()["daemons"][0]["state"] == "busy")
        futures = []
        for i in range(4):
            futures.append(c.submit("record", [str(log), str(i)]))
            assert wait_until(lambda: c.status()["queue_depth"] == i + 1)
        assert [f.result(timeout=30) for f in futures] == [str(i) for i in range(4)]
        assert first.result(timeout=30)["nonce"] == "first"
    assert log.read_text().split() == [str(i) for i in range(4)]


def test_large_requests_take_the_hubs_zero_copy_route_and_small_ones_borrow_again(hub):
    payload = os.urandom(300_000)  # a buffer frame: the hub forwards it without a copy
    with client(hub) as c:
        assert c.call("echo", [payload]) == payload
        assert c.call("echo", ["x" * 100_000]) == "x" * 100_000  # in band, over 64 KiB
        assert c.call("echo", ["small"]) == "small"
        assert c._transport._local.desk is not None


def test_leased_and_routed_clients_share_one_pool(hub):
    wrong: list[object] = []

    def calls(c: zbridge.Client, tag: str) -> None:
        for i in range(300):
            if c.call("echo", [[tag, i]]) != [tag, i]:
                wrong.append((tag, i))

    with client(hub) as leased, client(hub, direct=False) as routed:
        threads = [threading.Thread(target=calls, args=(c, tag)) for c, tag in
                   ((leased, "a"), (leased, "b"), (routed, "c"), (routed, "d"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert wrong == []


VANISHING = """
    import sys, zbridge
    client = zbridge.Client(sys.argv[1], fallback=False)
    print(client.call("pid"), flush=True)
    client.call("span", [1.5, "abandoned"], timeout=60)
"""


def test_a_client_that_vanishes_holding_a_lease_frees_the_daemon(hub, tmp_path):
    """kill -9 of a client in the middle of a leased call: the hub reads the reply on its
    own end of the channel, so the daemon is free again (not killed, not held)."""
    script = tmp_path / "vanish.py"
    script.write_text(textwrap.dedent(VANISHING))
    proc = subprocess.Popen([sys.executable, str(script), hub], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    with client(hub) as c:
        assert wait_until(lambda: c.status()["daemons"][0]["state"] == "busy")
        proc.kill()
        proc.wait()
        assert c.call("pid", timeout=30) == pid  # served once the abandoned call ended
        counters = c.status()["counters"]
    assert counters["kills"] == 0


def test_a_client_made_before_its_hub_borrows_once_the_hub_is_up(tmp_path):
    endpoint = f"ipc://{tmp_path / 'hub.sock'}"
    c = zbridge.Client(endpoint, fallback=False, connect_timeout=1.0)
    try:
        with pytest.raises(zbridge.PoolUnavailable):
            c.call("echo", [1])  # no hub yet: the hub's route says so at once
        with served(tmp_path, "--tools", BASIC, "--workers", "1", endpoint=endpoint):
            time.sleep(1.1)  # past the client's pause between tries of the desk
            assert c.call("echo", [2], timeout=10) == 2
            assert c._transport._local.desk is not None
    finally:
        c.close()


def test_the_desk_is_private_and_goes_with_the_hub(tmp_path):
    with served(tmp_path, "--tools", BASIC, "--workers", "1") as (endpoint, _):
        path = Path(endpoint[len("ipc://"):] + ".lease")
        assert path.exists() and (path.stat().st_mode & 0o077) == 0  # only the hub's user
    assert not path.exists()


# --- the asyncio twin (zbridge/leased_async.py) --------------------------------------------

def test_an_async_client_borrows_daemons_too(hub, tmp_path):
    import asyncio

    async def main() -> None:
        async with zbridge.AsyncClient(hub, fallback=False) as c:
            await c.wait_ready(timeout=30)
            assert type(c._transport).__name__ == "AsyncLeaseTransport"
            pid = await c.call("pid")
            assert await asyncio.gather(*(c.call("echo", [i]) for i in range(300))) == list(range(300))
            with pytest.raises(zbridge.CallTimeout):
                await c.call("span", [1.0, "late"], timeout=0.2)
            task = asyncio.ensure_future(c.call("interruptible", [30, str(tmp_path / "m")], timeout=60))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await c.call("pid", timeout=10) == pid  # late replies came back: still warm
            counters = (await c.status())["counters"]
            assert counters["kills"] == 0 and counters["timeouts"] == 1 and counters["cancelled"] == 1

    asyncio.run(main())


def test_an_async_borrower_gets_worker_lost_when_its_daemon_dies(hub):
    import asyncio

    async def main() -> None:
        async with zbridge.AsyncClient(hub, fallback=False) as c:
            await c.wait_ready(timeout=30)
            victim = await c.call("pid")
            task = asyncio.ensure_future(c.call("span", [30, "doomed"], timeout=60))
            for _ in range(200):
                if (await c.status())["daemons"][0]["state"] == "busy":
                    break
                await asyncio.sleep(0.02)
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(zbridge.WorkerLost, match="SIGKILL"):
                await task
            assert await c.call("pid", timeout=30) != victim

    asyncio.run(main())


def test_the_desk_protocol_as_written_in_protocol_md(hub):
    """A client of the desk written from PROTOCOL.md §15 alone: REQUEST, LEASE with the
    channel attached (`send` for a request over 64 KiB), the reply on the channel, the
    report, and a REPLY verdict for a call it gives up on."""
    import socket as sockets
    import struct

    import msgpack

    def frame(kind: int, id: int, body, flags: int = 0, timeout_ms: int = 10_000) -> bytes:
        return struct.pack("!2sBBB3xIQ", b"ZB", 2, kind, flags, timeout_ms, id) + msgpack.packb(body)

    def message(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    def read(sock):
        head = sock.recv(4, sockets.MSG_WAITALL)
        (size,) = struct.unpack(">I", head)
        data = sock.recv(size, sockets.MSG_WAITALL)
        return data

    desk = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    desk.connect(hub[len("ipc://"):] + ".lease")
    desk.settimeout(10)
    try:
        big = "y" * 100_000
        request = frame(1, 7, {"method": "echo", "params": [big]})
        desk.sendall(message(request))
        data, fds, _, _ = sockets.recv_fds(desk, 4 + 200, 1)
        (size,) = struct.unpack(">I", data[:4])
        lease = data[4:4 + size]
        assert lease[3] == 10 and struct.unpack("!Q", lease[12:20])[0] == 7 and len(fds) == 1
        assert msgpack.unpackb(lease[20:]) == {"daemon": "w1", "send": True}
        with sockets.socket(fileno=fds[0]) as channel:
            channel.settimeout(10)
            channel.sendall(message(request))  # ours to send: over 64 KiB
            reply = read(channel)
        assert reply[3] == 2 and msgpack.unpackb(reply[20:]) == {"result": big}
        desk.sendall(message(reply[:20 + 64]))  # the report frees the daemon
        # a call given up on: CANCEL with flag bit 0 (its deadline passed), then the verdict
        desk.sendall(message(frame(1, 8, {"method": "span", "params": [1.0, "slow"]})))
        data, fds, _, _ = sockets.recv_fds(desk, 4 + 200, 1)
        for fd in fds:
            sockets.close(fd)  # never read: the hub reads the late reply
        desk.sendall(message(frame(7, 8, {}, flags=0x01, timeout_ms=0)))
        verdict = read(desk)
        assert verdict[3] == 2 and msgpack.unpackb(verdict[20:])["error"]["code"] == -32001
    finally:
        desk.close()
    with client(hub) as c:
        assert c.call("echo", ["still warm"], timeout=10) == "still warm"
        assert c.status()["counters"]["kills"] == 0
