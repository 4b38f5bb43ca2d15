"""Hostile traffic at the hub's client and daemon sockets, while real callers keep calling.

Every bad message gets an error reply where the sender can be addressed, the hub stays up,
other callers' calls all complete with their own results, and memory stays bounded.
"""

from __future__ import annotations

import threading
import uuid

import msgpack
import pytest
import zmq

import zbridge
from zbridge import protocol
from zbridge.procinfo import rss_bytes
from zbridge.protocol import Kind

MAX = 1024 * 1024


@pytest.fixture
def loaded(bridge_factory, basic_tools):
    """A bridge with two callers hammering it; yields it, then checks the callers were fine."""
    bridge = bridge_factory(basic_tools, workers=2, prewarm=True, max_message_size=MAX)
    stop = threading.Event()
    failures: list = []
    counts = [0, 0]

    def caller(n: int) -> None:
        while not stop.is_set():
            nonce = uuid.uuid4().hex
            try:
                got = bridge.call("echo", [nonce], timeout=20)
                if got != nonce:
                    failures.append(f"caller {n} got {got!r} for {nonce}")
                counts[n] += 1
            except zbridge.BridgeError as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    try:
        yield bridge
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not failures
    assert all(counts), counts


@pytest.fixture
def raw_client(loaded):
    sock = loaded.context.socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 10000
    sock.connect(loaded.endpoint)
    yield sock
    sock.close(0)


def hdr(kind=Kind.REQUEST, id=1, version=protocol.VERSION, magic=protocol.MAGIC):
    return protocol.HEADER.pack(magic, version, kind, 0, 0, id)


def request(id: int, body: object) -> bytes:
    return hdr(Kind.REQUEST, id) + msgpack.packb(body)


def reply_error(sock) -> tuple[int, int]:
    """(id, error code) of the next reply, which may be in the sender's own version."""
    frame = sock.recv()
    _, _, kind, _, _, id = protocol.HEADER.unpack_from(frame)
    assert kind == Kind.REPLY
    body = protocol.decode_reply_body(frame)
    return id, body["error"]["code"]


CASES = {
    "garbage": ([b"\x00garbage\xff" * 3], 0, -32700),
    "empty frame": ([b""], 0, -32700),
    "over 1 + MAX_BUFFERS frames": ([request(5, {"method": "echo"})] + [b"x"] * 65, 0, -32600),
    "three empty frames": ([b"", b"", b""], 0, -32700),
    "buffer frames after a status": ([protocol.encode_status_request(6), b"x"], 6, -32600),
    "bad magic": ([hdr(magic=b"XX") + b"\x80"], 0, -32700),
    "unknown version": ([hdr(version=9) + b"\x80"], 1, -32600),  # its own id: see test_versions.py
    "unknown kind": ([hdr(kind=99) + b"\x80"], 0, -32600),
    "reply from a client": ([hdr(kind=Kind.REPLY, id=3) + msgpack.packb({"result": 1})], 3, -32600),
    "ready from a client": ([hdr(kind=Kind.READY, id=4) + msgpack.packb({"pid": 1})], 4, -32600),
    "body not a map": ([request(11, [1, 2, 3])], 11, -32600),
    "method not a string": ([request(12, {"method": 5})], 12, -32600),
    "params a number": ([request(13, {"method": "echo", "params": 7})], 13, -32600),
    "not msgpack": ([hdr(Kind.REQUEST, 14) + b"\xc1\xc1\xc1"], 14, -32700),
    "deep nesting": ([hdr(Kind.REQUEST, 15) + b"\x91" * 100000 + b"\xc0"], 15, -32700),
    "huge declared length": ([hdr(Kind.REQUEST, 16) + b"\xdb\xff\xff\xff\xf0abc"], 16, -32700),
    "int map keys": ([request(17, {"method": "echo", "params": {1: 2}})], 17, -32700),
    "unknown tool": ([request(18, {"method": "no_such_tool"})], 18, -32601),
    "wrong params": ([request(19, {"method": "echo", "params": {"nope": 1}})], 19, -32602),
}


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_client_traffic_gets_an_error_and_harms_nobody(loaded, raw_client, name):
    frames, id, code = CASES[name]
    raw_client.send_multipart(frames)
    assert reply_error(raw_client) == (id, code)
    raw_client.send(request(99, {"method": "echo", "params": ["still fine"]}))
    frame = raw_client.recv()
    assert protocol.decode_reply_body(frame) == {"result": "still fine"}


def test_oversized_request_is_refused_and_the_hub_carries_on(loaded):
    sock = loaded.context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(loaded.endpoint)
    try:
        sock.send(request(1, {"method": "echo", "params": ["x" * (2 * MAX)]}))
        # inproc has no MAXMSGSIZE (over ipc and tcp libzmq drops the connection): the hub
        # refuses the message itself, and it never reaches a daemon
        assert reply_error(sock) == (1, -32700)
    finally:
        sock.close(0)
    assert loaded.call("echo", ["after"]) == "after"
    with pytest.raises(zbridge.InvalidRequest, match="max_message_size"):
        loaded.call("echo", ["x" * (2 * MAX)])  # our own client refuses before sending


def test_flood_of_garbage_keeps_memory_bounded(loaded, raw_client):
    loaded.call("echo", [1])
    before = rss_bytes()
    for round in range(5):
        for i in range(2000):
            raw_client.send(b"\x01" * 64 + bytes([i % 256]))
        for i in range(2000):
            raw_client.recv()
    assert rss_bytes() - before < 50 * 1024 * 1024


def test_peer_posing_as_a_daemon_delivers_nothing(loaded):
    hub = loaded._hub
    rogue = zmq.Context.instance().socket(zmq.DEALER)
    rogue.linger = 0
    rogue.setsockopt(zmq.IDENTITY, b"w1")  # a plausible daemon name
    rogue.rcvtimeo = 5000
    rogue.connect(hub.backend_endpoint)
    try:
        rogue.send(protocol.encode_ready(4242, ["echo"], "0"))
        assert protocol.read_header(rogue.recv()).kind is Kind.DISCONNECT  # refused
        for id in range(1, 200):  # replies for requests it does not hold
            rogue.send(protocol.encode_result(id, "forged"))
        rogue.send(b"garbage")
        rogue.send_multipart([b"a", b"b"])
        assert all(d["pid"] != 4242 for d in loaded.status()["daemons"])
        assert loaded.call("echo", ["genuine"]) == "genuine"
    finally:
        rogue.close(0)


def test_garbage_on_the_heartbeat_socket_is_ignored(loaded):
    rogue = zmq.Context.instance().socket(zmq.DEALER)
    rogue.linger = 0
    rogue.connect(loaded._hub.heartbeat_endpoint)
    try:
        for frame in (b"junk", protocol.encode_heartbeat({"rss": "lots"}), hdr(Kind.HEARTBEAT) + b"\xc1"):
            rogue.send(frame)
        assert loaded.call("echo", ["ok"]) == "ok"
    finally:
        rogue.close(0)
