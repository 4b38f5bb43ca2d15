"""Protocol versions with teeth: a client of another version gets one clear error frame.

A version-1 client (written from PROTOCOL.md before buffer frames and extension types)
used to be served by a hub that had changed under it: large replies arrived as two frames
and the client read every later answer one message late. Its exchange is replayed here
with a bare DEALER, byte for byte as such a client sends it.
"""

from __future__ import annotations

import struct

import msgpack
import pytest

from helpers import raw_dealer, served

HEADER = struct.Struct("!2sBBB3xIQ")  # the same 20 bytes in versions 1 and 2
REQUEST, REPLY, STATUS = 1, 2, 6


def v1(kind: int, id: int, body: object, timeout_ms: int = 0) -> bytes:
    return HEADER.pack(b"ZB", 1, kind, 0, timeout_ms, id) + msgpack.packb(body, use_bin_type=True)


def read_one_message(sock) -> list[bytes]:
    assert sock.poll(10_000), "no reply: the old client would wait for ever"
    return sock.recv_multipart()


def assert_version_refusal(frames: list[bytes], version: int, id: int) -> None:
    assert len(frames) == 1, f"a {len(frames)}-frame answer: an old client would desync"
    magic, got_version, kind, flags, timeout_ms, got_id = HEADER.unpack_from(frames[0])
    assert (magic, got_version, kind, flags, got_id) == (b"ZB", version, REPLY, 0, id)
    body = msgpack.unpackb(frames[0][HEADER.size:], raw=False)
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == -32600
    assert error["data"] == {"versions": [2]}
    assert f"protocol version {version} is not served here" in error["message"]
    assert "speaks version 2" in error["message"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from helpers import TOOLSETS
    with served(tmp_path_factory.mktemp("versions"), "--tools", str(TOOLSETS / "basic.py"),
                "--workers", "1") as (endpoint, _proc):
        yield endpoint


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """The module's hub outlives single tests; served() checks it stopped."""
    yield


def test_a_version_1_client_gets_one_clear_error_per_message(hub):
    with raw_dealer(hub) as sock:
        # what the old clients did first: STATUS as a ping and version check
        sock.send(v1(STATUS, 1, None))
        assert_version_refusal(read_one_message(sock), 1, 1)
        # then calls, among them one whose result is large enough for buffer frames
        sock.send(v1(REQUEST, 2, {"method": "add", "params": [1, 2]}, 10_000))
        sock.send(v1(REQUEST, 3, {"method": "echo", "params": [b"\x00" * 200_000]}, 10_000))
        sock.send(v1(REQUEST, 4, {"method": "add", "params": [3, 4]}, 10_000))
        for id in (2, 3, 4):
            assert_version_refusal(read_one_message(sock), 1, id)
        assert not sock.poll(300), "nothing may follow the error frames"


def test_other_versions_get_their_own_version_byte_back(hub):
    with raw_dealer(hub) as sock:
        for version, id in ((0, 5), (3, 6), (255, 7)):
            frame = HEADER.pack(b"ZB", version, REQUEST, 0, 1000, id) + msgpack.packb(
                {"method": "add", "params": [1, 2]})
            sock.send(frame)
            assert_version_refusal(read_one_message(sock), version, id)


def test_the_same_connection_is_served_once_it_speaks_version_2(hub):
    with raw_dealer(hub) as sock:
        sock.send(v1(REQUEST, 1, {"method": "add", "params": [1, 2]}, 10_000))
        assert_version_refusal(read_one_message(sock), 1, 1)
        sock.send(HEADER.pack(b"ZB", 2, STATUS, 0, 0, 2) + msgpack.packb(None))
        [frame] = read_one_message(sock)
        status = msgpack.unpackb(frame[HEADER.size:], raw=False)["result"]
        assert status["protocol"] == 2
        assert status["capabilities"] == ["stream", "prewarm", "trace", "control", "lease"]  # an ipc hub lends daemons
        sock.send(HEADER.pack(b"ZB", 2, REQUEST, 0, 10_000, 1) + msgpack.packb(
            {"method": "add", "params": [1, 2]}))
        [frame] = read_one_message(sock)
        assert HEADER.unpack_from(frame)[1] == 2
        assert msgpack.unpackb(frame[HEADER.size:], raw=False) == {"result": 3}
