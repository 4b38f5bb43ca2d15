"""Receivers never amplify, one reading of a message, sizes bounded before encoding (pure)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import zbridge
from zbridge import codec, pickling, protocol
from zbridge.calls import result_of
from zbridge.errors import InvalidParams, InvalidRequest, ParseError
from zbridge.sizing import lower_bound


def ref(index: int, kind: str = "b", meta=None) -> msgpack.ExtType:
    return msgpack.ExtType(codec.EXT_BUFFER, msgpack.packb([index, kind, meta]))


def test_each_buffer_frame_may_be_referenced_once():
    frame = b"\0" * 100
    for body in ([ref(0), ref(0)], {"a": ref(0), "b": [ref(0)]}, [ref(0), (ref(0),)]):
        with pytest.raises(codec.BufferReferenceError, match="referenced more than once"):
            codec.unpack_value(msgpack.packb(body), [frame])
    assert codec.unpack_value(msgpack.packb([ref(1), ref(0)]), [b"a", b"b"]) == [b"b", b"a"]


def test_a_reference_is_the_frame_itself_or_a_view():
    frame = b"\1" * 70000
    assert codec.unpack_value(msgpack.packb([ref(0)]), [frame])[0] is frame  # no copy
    array = np.arange(10_000, dtype="<f8")  # 80 KB: out of band
    body, buffers = codec.pack_value([array])
    received = bytearray(memoryview(buffers[0]).cast("B"))
    got = codec.unpack_value(body, [memoryview(received)])[0]
    assert np.shares_memory(got, np.frombuffer(received, dtype="<f8"))


def test_references_are_bounded_by_frames_in_requests_and_replies():
    request = protocol.encode_request(1, "f", [ref(0), ref(0)])
    with pytest.raises(InvalidParams, match="referenced more than once"):
        protocol.decode_request(request, buffers=[b"x"])
    reply = protocol.encode_result(1, [ref(0), ref(0)])
    with pytest.raises(zbridge.InternalError, match="referenced more than once"):  # it ran: not -32700
        result_of(reply, protocol.DEFAULT_MAX_MESSAGE, [b"x"])


def test_duplicate_keys_are_refused_at_any_depth():
    for raw in (b"\x82\xa1a\x01\xa1a\x02", b"\x91\x82\xa1k\x01\xa1k\x01", b"\x81\xa1x\x82\xa1a\x01\xa1a\x02"):
        with pytest.raises(codec.DuplicateKeyError):
            codec.unpackb(raw)
    dup_method = (b"\x82" + msgpack.packb("method") + msgpack.packb("a")
                  + msgpack.packb("method") + msgpack.packb("b"))
    with pytest.raises(InvalidRequest, match="'method' appears more than once"):
        protocol.decode_request(protocol.pack_header(protocol.Kind.REQUEST, 1) + dup_method)
    reply = protocol.pack_header(protocol.Kind.REPLY, 1) + b"\x82\xa6result\x01\xa6result\x02"
    with pytest.raises(zbridge.InternalError, match="more than once"):
        result_of(reply, protocol.DEFAULT_MAX_MESSAGE)
    assert codec.unpackb(msgpack.packb({"a": {"b": 1}, "c": [{}]})) == {"a": {"b": 1}, "c": [{}]}


def test_max_message_size_bounds_a_message_with_its_buffer_frames():
    body = msgpack.packb({"method": "f", "params": [ref(0), ref(1)]})
    frame = protocol.pack_header(protocol.Kind.REQUEST, 1) + body
    with pytest.raises(ParseError, match="exceeds the 1000-byte limit .body and 2 buffer frames"):
        protocol.decode_request(frame, max_size=1000, buffers=[b"x" * 500, b"y" * 500])
    assert protocol.decode_request(frame, max_size=1000 + len(body), buffers=[b"x" * 500, b"y" * 500])


def test_pickle_is_decoded_only_where_this_very_decode_asked_for_it(monkeypatch):
    monkeypatch.setattr(pickling, "_allowed", True)
    reply = protocol.encode_result(1, {1, 2}, protocol.FLAG_PICKLE)
    assert protocol.decode_reply_body(reply, pickle=True)["result"] == {1, 2}
    with pytest.raises(InvalidRequest, match="did not ask for pickle"):
        protocol.decode_reply_body(reply)
    assert pickling.foreign_pickle(protocol.encode_request(1, "f"), reply)
    assert not pickling.foreign_pickle(protocol.encode_request(1, "f", pickle=True), reply)
    with pytest.raises(ValueError, match="tcp://h:2"):
        pickling.refuse_remote("pickle", "ipc:///x", None, "tcp://h:2")


values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner) | st.tuples(inner, inner) | st.dictionaries(st.text(), inner),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(values)
def test_the_size_bound_never_exceeds_the_encoded_size(value):
    """What lower_bound says a value needs is at most what it takes: nothing that fits is
    refused before encoding."""
    encoded = len(codec.packb(value))
    assert lower_bound(value, 2**62) <= encoded
    assert lower_bound(value, 0) <= max(1, encoded)


def test_the_size_bound_fails_fast_on_large_values():
    assert lower_bound(["x" * 10_000_000], 1000) > 1000
    assert lower_bound([np.zeros(1 << 20)], 1000) > 1000
    assert lower_bound([list(range(10**6))], 1000) > 1000
    assert lower_bound({"k": [b"y" * 5000]}, 1000) > 1000
