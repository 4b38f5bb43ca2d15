"""Issue 15 phase 2: large arrays and bytes travel as buffer frames after the message's
frame, without copies in the hub (docs/PROTOCOL.md §2 and §12)."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import zbridge
from zbridge import codec, protocol
from zbridge.actions import ToClient, ToDaemon
from zbridge.broker import Broker
from zbridge.config import Settings
from zbridge.protocol import Header, Kind, encode_result, read_header

from conftest import TOOLSETS
from helpers import raw_dealer, reset_peak_rss, served, status_kib

VALUES_TOOLS = str(TOOLSETS / "values.py")
BIG = codec.OOB_THRESHOLD  # bytes: from here a value is its own frame


def big_arrays() -> dict[str, np.ndarray]:
    n = BIG // 4 + 16
    base = np.arange(4 * n, dtype=np.float64)
    return {
        "float64 C": base.copy(),
        "float32 2-D C": np.arange(n, dtype=np.float32).reshape(-1, 16),
        "int16 big-endian": np.arange(2 * n, dtype=">i2"),
        "uint8": np.arange(BIG + 1, dtype=np.uint8),
        "complex128 F": np.asfortranarray(base.astype(np.complex128).reshape(-1, 64)),
        "bool 3-D": (np.arange(BIG * 2) % 3 == 0).reshape(4, -1, 2),
        "float64 non-contiguous": base.reshape(-1, 8)[:, ::2],
        "structured": np.zeros(BIG // 8, dtype=[("a", "<f4"), ("b", "<i2"), ("c", "u1", (2,))]),
        "datetime64": np.arange(BIG // 8).astype("datetime64[s]"),
    }


def same_array(sent: np.ndarray, got: object) -> None:
    assert isinstance(got, np.ndarray), type(got)
    assert got.dtype == sent.dtype and got.shape == sent.shape
    assert np.array_equal(got, sent)
    if sent.flags.f_contiguous and not sent.flags.c_contiguous:
        assert got.flags.f_contiguous  # F order is kept, not converted


def nested(array: np.ndarray) -> dict:
    return {"a": [array, (array[::2].copy(), {"deep": array})], "b": b"x" * BIG,
            "small": np.arange(3), "t": (bytearray(b"y" * (BIG + 1)),)}


def check_nested(sent: np.ndarray, got: dict) -> None:
    same_array(sent, got["a"][0])
    same_array(sent[::2], got["a"][1][0])
    same_array(sent, got["a"][1][1]["deep"])
    assert got["b"] == b"x" * BIG and type(got["b"]) is bytes
    assert got["t"] == (b"y" * (BIG + 1),)
    same_array(np.arange(3), got["small"])


# --- the codec, without sockets ----------------------------------------------------------

@pytest.mark.parametrize("name", list(big_arrays()))
def test_pack_value_sends_large_arrays_out_of_band(name):
    array = big_arrays()[name]
    body, buffers = codec.pack_value([array])
    assert len(buffers) == 1 and len(body) < 200  # the data is not in the body
    got = codec.unpack_value(body, [memoryview(b) for b in buffers])[0]
    same_array(array, got)
    assert not got.flags.writeable  # like in-band arrays: a view of the received frame


def test_contiguous_arrays_are_not_copied_to_be_sent():
    array = np.arange(BIG, dtype=np.float64)
    fortran = np.asfortranarray(array.reshape(-1, 16))
    _, (buffer,) = codec.pack_value(array)
    _, (fbuffer,) = codec.pack_value(fortran)
    assert np.shares_memory(buffer, array) and np.shares_memory(fbuffer, fortran)


def test_received_arrays_view_the_frame():
    array = np.arange(BIG, dtype=np.float64)
    body, buffers = codec.pack_value(array)
    frame = bytearray(memoryview(buffers[0]).cast("B"))
    got = codec.unpack_value(body, [frame])
    assert np.shares_memory(got, np.frombuffer(frame, dtype=np.uint8))


def test_small_values_stay_in_band_and_packb_is_unchanged():
    value = {"x": np.arange(10), "b": b"z" * (BIG - 1), "t": (1, 2)}
    body, buffers = codec.pack_value(value)
    assert buffers == [] and body == codec.packb(value)
    assert codec.unpackb(codec.packb(np.zeros(BIG))).shape == (BIG,)  # packb: all in band


def test_zero_dimensional_and_empty_arrays():
    for array in (np.array(2.5), np.zeros((0, 3)), np.zeros((0, BIG))):
        body, buffers = codec.pack_value(array)
        same_array(array, codec.unpack_value(body, buffers))


def test_many_buffers_and_the_limit():
    arrays = [np.full(BIG // 8, i, dtype=np.float64) for i in range(codec.MAX_BUFFERS + 3)]
    body, buffers = codec.pack_value(arrays)
    assert len(buffers) == codec.MAX_BUFFERS  # the rest went in band
    got = codec.unpack_value(body, [memoryview(b) for b in buffers])
    for sent, received in zip(arrays, got):
        same_array(sent, received)


def test_buffer_references_are_checked():
    body, buffers = codec.pack_value(np.zeros(BIG))
    with pytest.raises(codec.ValueDecodeError, match="buffer reference 0 but the message has 0"):
        codec.unpack_value(body, [])  # also: no buffers given at all
    with pytest.raises(codec.ValueDecodeError, match="needs"):
        codec.unpack_value(body, [b"short"])
    with pytest.raises(codec.ValueDecodeError, match="buffer reference"):
        codec.unpackb(body)


def test_large_bytes_are_found_at_depth_and_beyond_the_walk_budget_stay_in_band():
    data = b"q" * BIG
    body, buffers = codec.pack_value({"k": [1, (2, [data])]})
    assert len(buffers) == 1 and buffers[0] is data
    assert codec.unpack_value(body, buffers) == {"k": [1, (2, [data])]}
    many = list(range(codec.WALK_BUDGET + 10)) + [data]
    body, buffers = codec.pack_value(many)
    assert buffers == [] and codec.unpackb(body) == many


# --- the broker: buffers are opaque extras ------------------------------------------------

def test_broker_carries_extras_and_counts_their_bytes():
    broker = Broker(Settings(workers=1, max_queue_bytes=10 * BIG), rng=random.Random(0),
                    new_ident=lambda n: b"w%d" % n)
    extra = (b"\0" * (4 * BIG), b"\1" * (4 * BIG))
    frame = protocol.encode_request(1, "t", [])
    broker.submit(b"c", read_header(frame), frame, 0.0, extra)
    assert broker.queued_bytes == len(frame) + 8 * BIG
    frame2 = protocol.encode_request(2, "t", [])
    refused = broker.submit(b"c", read_header(frame2), frame2, 0.0, extra)
    assert [type(a) for a in refused if isinstance(a, ToClient)] == [ToClient]  # over max_queue_bytes
    sends = [a for a in broker.daemon_ready(b"w1", {"pid": 1, "tools": ["t"]}, 0.0)
             if isinstance(a, ToDaemon)]
    assert sends == [ToDaemon(b"w1", frame, extra)]
    assert broker.jobs[(b"c", 1)].extra == ()  # given away with the send, not held till the reply
    out = [a for a in broker.daemon_reply(b"w1", Header(Kind.REPLY, 1), encode_result(1, None), 0.1,
                                          (b"r",)) if isinstance(a, ToClient)]
    assert out[0].client == b"c" and out[0].extra == (b"r",)


# --- end to end ---------------------------------------------------------------------------

def test_bridge_round_trips_large_arrays_and_bytes(bridge_factory):
    bridge = bridge_factory(VALUES_TOOLS, workers=1)
    for name, array in big_arrays().items():
        same_array(array, bridge.call("echo", [array]))
    array = np.arange(BIG, dtype=np.float64)
    check_nested(array, bridge.call("echo", [nested(array)]))
    assert bridge.call("echo", [memoryview(b"m" * BIG)]) == b"m" * BIG
    info = bridge.call("describe", [np.asfortranarray(array.reshape(-1, 8))])
    assert info["f_contiguous"] and info["shape"] == [BIG // 8, 8]
    many = [np.full(BIG // 8, i, dtype=np.float64) for i in range(70)]  # over MAX_BUFFERS
    assert [a[0] for a in bridge.call("echo", [many])] == list(range(70))
    futures = bridge.call_many([("echo", [array + i]) for i in range(3)])
    for i, got in enumerate(futures):
        same_array(array + i, got)


def test_async_bridge_round_trips_large_arrays():
    array = np.arange(BIG, dtype=np.float32).reshape(-1, 4)

    async def main() -> None:
        async with zbridge.AsyncBridge(VALUES_TOOLS, workers=1) as bridge:
            same_array(array, await bridge.call("echo", [array]))
            check_nested(array, await bridge.call("echo", [nested(array)]))
            got = await asyncio.gather(*(bridge.call("echo", [array + i]) for i in range(4)))
            for i, out in enumerate(got):
                same_array(array + i, out)
            items = [item async for item in bridge.astream("ramps", [3, BIG])]
            assert [x[0] for x in items] == [0.0, 1.0, 2.0] and items[2].shape == (BIG,)
    asyncio.run(main())


def test_serve_and_client_round_trip_and_a_raw_client(tmp_path):
    array = np.asfortranarray(np.arange(BIG, dtype="<u2").reshape(256, -1))
    with served(tmp_path, "--tools", VALUES_TOOLS) as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            same_array(array, client.call("echo", [array]))
            check_nested(array, client.call("echo", [nested(array)]))
            items = list(client.stream("ramps", [2, BIG, "int32"]))
            assert [x[-1] for x in items] == [BIG - 1, BIG] and items[0].dtype == np.int32
        with raw_dealer(endpoint) as peer:  # what a client in another language sends
            buffers: list = []
            frame = protocol.encode_request(7, "echo", [array], timeout_ms=10_000, oob=buffers)
            peer.send_multipart([frame, *buffers], copy=False)
            parts = peer.recv_multipart(copy=False)
            assert len(parts) == 2 and read_header(parts[0].bytes).id == 7
            body = protocol.decode_reply_body(parts[0].bytes, buffers=[parts[1].buffer])
            same_array(array, body["result"])


def test_too_many_buffer_frames_are_refused_and_the_hub_carries_on(tmp_path):
    with served(tmp_path, "--tools", VALUES_TOOLS) as (endpoint, _):
        with raw_dealer(endpoint) as peer:
            frame = protocol.encode_request(1, "echo", [1], timeout_ms=10_000)
            peer.send_multipart([frame] + [b"x" * 10] * (protocol.MAX_BUFFERS + 1))
            reply = peer.recv()
            error = protocol.decode_reply_body(reply)["error"]
            assert read_header(reply).id == 0 and error["code"] == -32600
            assert "got 66" in error["message"]
            peer.send(protocol.encode_request(2, "echo", ["fine"], timeout_ms=10_000))
            assert protocol.decode_reply_body(peer.recv())["result"] == "fine"


def test_pipe_fallback_carries_large_arrays(bridge_factory):
    bridge = bridge_factory(VALUES_TOOLS, pool_enabled=False)
    array = np.arange(BIG, dtype=np.float64).reshape(-1, 2).T
    check_nested(array, bridge.call("echo", [nested(array)]))
    items = list(bridge.stream("ramps", [2, BIG]))
    assert [x[1] for x in items] == [1.0, 2.0]


def test_streamed_arrays_through_bridge(bridge_factory):
    bridge = bridge_factory(VALUES_TOOLS, workers=1)
    items = list(bridge.stream("ramps", [5, BIG // 2, "float64"]))
    assert [x[0] for x in items] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(x.shape == (BIG // 2,) and x.dtype == np.float64 for x in items)


def test_a_message_over_max_message_size_is_refused_before_sending(bridge_factory):
    """The limit bounds the whole message: the body and every buffer frame together."""
    bridge = bridge_factory(VALUES_TOOLS, workers=1, max_message_size=4 * BIG)
    with pytest.raises(zbridge.InvalidRequest, match="before encoding"):
        bridge.call("echo", [np.zeros(BIG)])  # 8 x BIG bytes in one frame
    with pytest.raises(zbridge.InvalidRequest, match="before encoding"):
        bridge.call("echo", [[np.zeros(BIG // 4)] * 3])  # each frame fits, not all three
    for got in bridge.call("echo", [[np.zeros(BIG // 8)] * 3]):  # 3 x BIG bytes in all
        same_array(np.zeros(BIG // 8), got)


def test_the_hub_does_not_copy_a_large_array(tmp_path):
    """Peak RSS of the `zbridge serve` process during a 64 MiB round trip: one message's
    worth at most in flight (a copying hub holds two or more)."""
    size = 64 << 20
    array = np.random.default_rng(0).random(size // 8)
    with served(tmp_path, "--tools", VALUES_TOOLS, "--max-message-size", str(2 * size)) as (endpoint, proc):
        with zbridge.Client(endpoint, fallback=False, timeout=120, max_message_size=2 * size) as client:
            client.call("echo", [np.zeros(BIG)])  # daemon up, numpy loaded, paths warmed
            idle = status_kib(proc.pid, "VmRSS")
            reset_peak_rss(proc.pid)
            same_array(array, client.call("echo", [array]))
            peak = status_kib(proc.pid, "VmHWM")
    grew = (peak - idle) * 1024
    assert grew < 1.2 * size, f"hub grew by {grew / size:.2f} x 64 MiB"


def test_large_bytes_among_the_body_values_skip_the_in_band_pass(monkeypatch):
    calls = []
    real = codec._pack
    monkeypatch.setattr(codec, "_pack", lambda obj, sink: calls.append(1) or real(obj, sink))
    data = b"d" * BIG
    body, buffers = codec.pack_value({"method": "t", "params": [data]})
    assert buffers == [data] and len(calls) == 1  # found before packing: packed once
    calls.clear()
    body, buffers = codec.pack_value({"result": {"deep": [data]}})
    assert buffers == [data] and len(calls) == 2  # deeper: found after the in-band pass


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(dtype=st.sampled_from([np.float64, np.int8, ">u4", np.complex64, np.bool_]),
                  shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=80)),
       st.sampled_from(["C", "F", "strided"]))
def test_pack_value_round_trips_any_array_either_side_of_the_threshold(array, layout):
    big = np.tile(array, 1 + BIG // max(1, array.nbytes)) if array.ndim == 1 else array
    for sent in (array, big):
        if layout == "F":
            sent = np.asfortranarray(sent)
        elif layout == "strided":
            sent = sent[::2]
        body, buffers = codec.pack_value({"v": [sent]})
        assert bool(buffers) == (sent.nbytes >= BIG)
        got = codec.unpack_value(body, [memoryview(b) for b in buffers])["v"][0]
        assert got.dtype == sent.dtype and got.shape == sent.shape
        assert np.array_equal(got, sent, equal_nan=sent.dtype.kind in "fc")


def test_pickle_bodies_carry_large_arrays_as_buffer_frames(bridge_factory):
    array = np.arange(BIG, dtype=np.float64).reshape(-1, 4)
    buffers: list = []
    frame = protocol.encode_request(1, "echo", [array, array[:, ::2], b"b" * BIG], pickle=True,
                                    oob=buffers)
    assert len(buffers) == 1 and len(frame) < array.nbytes  # the contiguous array only
    bridge = bridge_factory(VALUES_TOOLS, workers=1, serializer="pickle")
    value = {"a": array, "f": np.asfortranarray(array), "s": array[:, ::2], "n": [array] * 3}
    got = bridge.call("echo", [value])
    for key in ("a", "f", "s"):
        same_array(value[key], got[key])
    assert all(np.array_equal(x, array) for x in got["n"])
