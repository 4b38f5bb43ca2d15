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
    assert protocol.capabilities() == ["stream", "prewarm", "trace"]
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
