"""The wire codec and the error tree, without sockets."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import zbridge
from zbridge import errors, protocol
from zbridge.protocol import Kind

json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20)


@given(id=st.integers(0, protocol.MAX_ID), method=st.text(min_size=1),
       params=st.none() | st.lists(json_like, max_size=4) | st.dictionaries(st.text(), json_like, max_size=4),
       timeout_ms=st.integers(0, protocol.MAX_TIMEOUT_MS), idempotent=st.booleans())
def test_request_round_trip(id, method, params, timeout_ms, idempotent):
    frame = protocol.encode_request(id, method, params, timeout_ms=timeout_ms, idempotent=idempotent)
    req = protocol.decode_request(frame)
    assert (req.id, req.method, req.params, req.timeout_ms) == (id, method, params, timeout_ms)
    assert protocol.read_header(frame).idempotent is idempotent


@given(id=st.integers(0, protocol.MAX_ID), result=json_like)
def test_result_round_trip(id, result):
    frame = protocol.encode_result(id, result)
    assert protocol.read_header(frame) == protocol.Header(Kind.REPLY, id)
    assert protocol.decode_reply_body(frame) == {"result": result}


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_errors(data):
    for decode in (protocol.decode_request, protocol.read_header, protocol.decode_reply_body,
                   protocol.decode_ready):
        try:
            decode(data)
        except zbridge.BridgeError:
            pass


@given(st.binary(max_size=200))
def test_valid_header_with_arbitrary_body_raises_only_protocol_errors(body):
    frame = protocol.pack_header(Kind.REQUEST, 1) + body
    try:
        protocol.decode_request(frame)
    except zbridge.BridgeError:
        pass


@pytest.mark.parametrize("frame, error", [
    (b"", errors.ParseError),
    (b"XX" + bytes(18), errors.ParseError),
    (protocol.HEADER.pack(b"ZB", 9, 1, 0, 0, 1), errors.InvalidRequest),
    (protocol.HEADER.pack(b"ZB", protocol.VERSION, 99, 0, 0, 1), errors.InvalidRequest),
    (protocol.pack_header(Kind.REQUEST, 1) + msgpack.packb([1, 2]), errors.InvalidRequest),
    (protocol.pack_header(Kind.REQUEST, 1) + msgpack.packb({"method": 3}), errors.InvalidRequest),
    (protocol.pack_header(Kind.REQUEST, 1) + msgpack.packb({"method": "m", "params": 3}), errors.InvalidRequest),
    (protocol.pack_header(Kind.REQUEST, 1) + b"\x91" * 100000, errors.ParseError),
    (protocol.pack_header(Kind.REQUEST, 1) + b"\xdb\xff\xff\xff\xff", errors.ParseError),
    (protocol.pack_header(Kind.REPLY, 1) + msgpack.packb({"method": "m"}), errors.InvalidRequest),
])
def test_malformed_requests(frame, error):
    with pytest.raises(error):
        protocol.decode_request(frame)


@pytest.mark.parametrize("version", [0, 1, 3, 255])
def test_another_version_is_refused_in_its_own_layout(version):
    frame = protocol.HEADER.pack(b"ZB", version, 1, 0, 10000, 7) + b"\x80"
    with pytest.raises(errors.InvalidRequest) as caught:
        protocol.read_header(frame)
    reply = protocol.refusal(frame, caught.value)
    magic, reply_version, kind, flags, timeout_ms, id = protocol.HEADER.unpack_from(reply)
    assert (magic, reply_version, kind, flags, timeout_ms, id) == (b"ZB", version, Kind.REPLY, 0, 0, 7)
    error = msgpack.unpackb(reply[protocol.HEADER_SIZE:])["error"]
    assert error["code"] == -32600 and error["data"] == {"versions": [protocol.VERSION]}
    assert f"protocol version {version} is not served" in error["message"]
    assert f"speaks version {protocol.VERSION}" in error["message"]


def test_the_version_is_judged_before_the_reserved_bytes():
    """A later version may use bytes 5-7: its messages get the version error, not another."""
    frame = protocol.HEADER.pack(b"ZB", 3, 1, 0, 0, 7)
    frame = frame[:5] + b"\x01\x02\x03" + frame[8:]
    with pytest.raises(errors.InvalidRequest, match="version 3"):
        protocol.read_header(frame)


@pytest.mark.parametrize("frame", [b"", b"ZB\x01", b"XX" + bytes(18),
                                   protocol.pack_header(Kind.REQUEST, 5)[:5] + b"\x01\x00\x00" + bytes(12)])
def test_other_unreadable_headers_are_refused_with_id_0_in_this_version(frame):
    with pytest.raises(errors.BridgeError) as caught:
        protocol.read_header(frame)
    reply = protocol.refusal(frame, caught.value)
    assert protocol.read_header(reply) == protocol.Header(Kind.REPLY, 0)
    assert protocol.decode_reply_body(reply)["error"]["code"] == caught.value.code


def test_capabilities():
    assert protocol.capabilities() == ["stream", "prewarm", "trace", "control"]
    assert "pickle" in protocol.capabilities(pickle=True)


def test_body_over_limit_is_refused():
    frame = protocol.encode_request(1, "m", ["x" * 1000])
    with pytest.raises(errors.ParseError, match="exceeds"):
        protocol.decode_request(frame, max_size=100)


def test_request_maps_must_have_string_keys():
    frame = protocol.pack_header(Kind.REQUEST, 1) + msgpack.packb({"method": "m", "params": {1: 2}})
    with pytest.raises(errors.ParseError):
        protocol.decode_request(frame)


@pytest.mark.parametrize("cls", [errors.ParseError, errors.InvalidRequest, errors.ToolNotFound,
                                 errors.InvalidParams, errors.InternalError, errors.ToolError,
                                 errors.CallTimeout, errors.WorkerLost, errors.Overloaded,
                                 errors.PoolUnavailable, errors.Cancelled, errors.ConnectionLost])
def test_errors_convert_both_ways(cls):
    err = cls("message", {"k": 1})
    back = errors.error_from_wire(err.to_wire())
    assert type(back) is cls and back.code == cls.code and back.data == {"k": 1}
    assert isinstance(back, zbridge.BridgeError)


def _leaves(cls):
    for sub in cls.__subclasses__():
        if sub in (errors.DidNotRun, errors.MayHaveRun):
            yield from _leaves(sub)
        else:
            yield sub


def test_error_codes_are_distinct_and_documented():
    leaves = list(_leaves(errors.BridgeError))
    codes = {cls.code for cls in leaves}
    assert len(codes) == len(leaves)
    assert {-32700, -32600, -32601, -32602, -32603}.issubset(codes)


def test_errors_are_grouped_by_what_a_caller_can_do():
    did_not_run = {errors.ParseError, errors.InvalidRequest, errors.ToolNotFound,
                   errors.InvalidParams, errors.Overloaded, errors.PoolUnavailable}
    may_have_run = {errors.CallTimeout, errors.WorkerLost, errors.Cancelled, errors.ConnectionLost}
    assert all(issubclass(c, errors.DidNotRun) and not issubclass(c, errors.MayHaveRun) for c in did_not_run)
    assert all(issubclass(c, errors.MayHaveRun) and not issubclass(c, errors.DidNotRun) for c in may_have_run)
    assert issubclass(errors.CallTimeout, TimeoutError)
    assert not issubclass(errors.Interrupted, Exception)  # a tool's `except Exception` lets it through


def test_unknown_and_malformed_error_objects():
    err = errors.error_from_wire({"code": -31999, "message": "custom"})
    assert type(err) is errors.BridgeError and err.code == -31999
    assert isinstance(errors.error_from_wire("garbage"), errors.InternalError)


def test_the_worked_examples_of_protocol_md_are_what_the_codec_writes():
    """PROTOCOL.md §12.2 shows each extension type in hex: the codec must write exactly that."""
    import datetime as dt
    import uuid
    from decimal import Decimal
    from pathlib import Path

    import numpy as np

    from zbridge import codec

    doc = "".join((Path(__file__).parent.parent / "docs" / "PROTOCOL.md").read_text().split())
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    examples = [
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "d6 ff 695735a5"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc), "d7 ff 00005dc0 695735a5"),
        (dt.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=dt.timezone.utc),
         "c7 0c ff 1dcd6500 ffffffffffffffff"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=ist),
         "c7 20 01 323032362d30312d30325430333a30343a30352e3030303030362b30353a3330"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, 6), "c7 1a 02 323032362d30312d30325430333a30343a30352e303030303036"),
        (dt.date(2026, 1, 2), "c7 0a 03 323032362d30312d3032"),
        (dt.time(3, 4, 5, 6), "c7 0f 04 30333a30343a30352e303030303036"),
        (dt.time(3, 4, 5, tzinfo=ist), "c7 0e 04 30333a30343a30352b30353a3330"),
        (Decimal("-1.50E+3"), "d7 05 2d312e3530452b33"),
        (uuid.UUID("12345678-1234-5678-1234-567812345678"), "d8 06 12345678123456781234567812345678"),
        ((1, "a"), "d6 07 92 01 a161"),
        ({1, 2}, "c7 03 08 92 01 02"),
        (frozenset({"x"}), "c7 03 09 91 a178"),
        (np.arange(6, dtype="<i4").reshape(2, 3), "c7 28 0a 0000000a 93a33c6934920203a143 0000 "
         "00000000 01000000 02000000 03000000 04000000 05000000"),
        (np.asfortranarray(np.arange(6, dtype="<i4").reshape(2, 3)), "c7 28 0a 0000000a "
         "93a33c6934920203a146 0000 00000000 03000000 01000000 04000000 02000000 05000000"),
    ]
    for value, shown in examples:
        assert codec.packb(value).hex() == "".join(shown.split()), value
        assert "".join(shown.split()) in doc, f"PROTOCOL.md no longer shows {shown}"
    body, buffers = codec.pack_value(np.zeros((300, 256), dtype=np.uint8))
    shown = "c7 12 0b 93 00 a1 61 93 a3 7c7531 92 cd012c cd0100 a1 43"
    assert body.hex() == "".join(shown.split()) and len(buffers) == 1 and "".join(shown.split()) in doc
    body, buffers = codec.pack_value(bytes(70000))
    assert body.hex() == "c7050b9300a162c0" and "c7050b9300a162c0" in doc
