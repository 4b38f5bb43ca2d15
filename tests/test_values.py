"""Values beyond msgpack basics (issue 15, phase 1): extension types, arrays in band, user
codecs, opt-in pickle. Pure codec tests first, then real daemons."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import json
import pickle
import subprocess
import sys
import uuid
from dataclasses import replace
from decimal import Decimal
from enum import Enum, IntEnum
from fractions import Fraction
from collections import OrderedDict, deque, namedtuple
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import zbridge
from zbridge import codec, pickling, protocol, usertypes
from zbridge.errors import InvalidParams, InvalidRequest
from zbridge.protocol import Kind

from conftest import TOOLSETS

VALUES_TOOLS = str(TOOLSETS / "values.py")


def _import_toolset():
    """The test process imports the tools module too: that is how it gets the registrations."""
    spec = importlib.util.spec_from_file_location("zbridge_test_values_toolset", VALUES_TOOLS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    usertypes.unregister_type(module.DaemonOnly)  # only the daemon knows this one
    return module


toolset = _import_toolset()

UTC_PLUS_0530 = dt.timezone(dt.timedelta(hours=5, minutes=30))
SAMPLES = {
    "naive datetime": dt.datetime(2026, 1, 2, 3, 4, 5, 123456),
    "utc datetime": dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.timezone.utc),
    "offset datetime": dt.datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC_PLUS_0530),
    "date": dt.date(2026, 2, 28),
    "time": dt.time(23, 59, 59, 999999),
    "aware time": dt.time(1, 2, 3, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
    "decimal": Decimal("-1234.5678900E-3"),
    "decimal nan": Decimal("NaN"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "tuple": (1, "a", (2.5, None), []),
    "empty tuple": (),
    "set": {1, 2, "three"},
    "frozenset": frozenset({(1, 2), "x"}),
    "nested": {"when": [dt.date(2000, 1, 1)], "ids": (uuid.UUID(int=1),), "tags": {"a"}},
    "user type": toolset.Point(1.5, -2),
    "user type in a tuple": (toolset.Point(0, 0),),
}


def same(a, b) -> bool:
    """Equal, and of the same types all the way down (tuple is not list, Decimal not str)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, Decimal) and a.is_nan():
        return b.is_nan() and str(a) == str(b)
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and a.utcoffset() == b.utcoffset() and a.isoformat() == b.isoformat()
    return a == b


def roundtrip(value, strict_map_key=False):
    return codec.unpackb(codec.packb(value), strict_map_key=strict_map_key)


# --- pure codec ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", SAMPLES)
def test_codec_round_trips_exactly(name):
    assert same(roundtrip(SAMPLES[name]), SAMPLES[name])


def test_utc_datetime_uses_msgpack_timestamp():
    packed = codec.packb(SAMPLES["utc datetime"])
    assert msgpack.unpackb(packed).__class__ is msgpack.Timestamp  # what other languages read


def test_subclasses_pack_as_their_plain_base():
    class Color(str, Enum):
        RED = "red"

    class Level(IntEnum):
        HIGH = 3

    Pair = namedtuple("Pair", "a b")
    out = roundtrip([Color.RED, Level.HIGH, True, OrderedDict(a=1), Pair(1, 2)])
    assert same(out, ["red", 3, True, {"a": 1}, (1, 2)])


def test_numpy_scalars_are_plain_numbers():
    out = roundtrip([np.float64(1.5), np.int32(-7), np.uint8(255), np.bool_(False), np.float32(0.5)])
    assert same(out, [1.5, -7, 255, False, 0.5])


def test_unregistered_type_names_the_type_and_the_fix():
    with pytest.raises(TypeError, match=r"Unregistered.*zbridge.register_type"):
        codec.packb({"x": [toolset.Unregistered()]})
    with pytest.raises(TypeError, match="complex"):
        codec.packb(1 + 2j)


def test_unknown_ext_code_and_unknown_user_type_are_named():
    with pytest.raises(codec.ValueDecodeError, match="extension type 99"):
        codec.unpackb(msgpack.packb(msgpack.ExtType(99, b"")))
    body = msgpack.packb(msgpack.ExtType(codec.EXT_USER, msgpack.packb(["acme.Widget", 1])))
    with pytest.raises(codec.ValueDecodeError, match="'acme.Widget'.*register_type"):
        codec.unpackb(body)
    frame = protocol.pack_header(protocol.Kind.REQUEST, 1) + msgpack.packb(
        {"method": "echo", "params": [msgpack.ExtType(99, b"")]})
    with pytest.raises(InvalidParams, match="99"):
        protocol.decode_request(frame)


def test_malformed_ext_bodies_are_clear_errors():
    for code, body in [(codec.EXT_UUID, b"short"), (codec.EXT_DECIMAL, b"1.2.3"),
                       (codec.EXT_DATE, b"\xff"), (codec.EXT_TUPLE, b"\xc1"),
                       (codec.EXT_NDARRAY, b"\x00\x00\x00\x09junk")]:
        with pytest.raises(codec.ValueDecodeError, match=f"extension type {code}"):
            codec.unpackb(msgpack.packb(msgpack.ExtType(code, body)))


def test_register_type_refuses_native_types_and_replaces_by_name():
    with pytest.raises(ValueError, match="natively"):
        zbridge.register_type(int, str, int)

    class A:
        pass

    class B:
        pass

    zbridge.register_type(A, lambda a: 1, lambda v: A(), name="tests.AB")
    zbridge.register_type(B, lambda b: 2, lambda v: B(), name="tests.AB")
    try:
        assert isinstance(roundtrip(B()), B)
        with pytest.raises(TypeError, match="A"):  # the name now belongs to B
            codec.packb(A())
    finally:
        usertypes.unregister_type(B)


def test_import_zbridge_does_not_import_numpy():
    code = ("import sys, zbridge, zbridge.protocol; zbridge.protocol.packb({'a': (1,)}); "
            "zbridge.Bridge; print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr


# --- arrays, pure ---------------------------------------------------------------------------

DTYPES = ["float64", "int32", "uint8", "bool", "complex128", ">i2", "datetime64[ns]",
          np.dtype([("id", "<i4"), ("xy", "<f8", (2,)), ("tag", "S3")]),
          np.dtype([("a", "u1"), ("b", "<i8")], align=True)]
SHAPES = [(), (0,), (7,), (2, 3, 4), (3, 0, 2)]


def array_cases():
    for dtype in DTYPES:
        for shape in SHAPES:
            base = np.frombuffer(np.random.default_rng(0).bytes(np.dtype(dtype).itemsize * int(np.prod(shape))),
                                 dtype=dtype).reshape(shape) if np.dtype(dtype) != np.bool_ else \
                np.random.default_rng(0).integers(0, 2, shape).astype(bool)
            yield f"{dtype}-{shape}-C", base.copy()
            if len(shape) >= 2:
                yield f"{dtype}-{shape}-F", np.asfortranarray(base)
                yield f"{dtype}-{shape}-slice", base[:, ::2]


def _bytes(array, field):
    return (array if field is None else array[field]).tobytes()


def check_array(sent, got):
    assert isinstance(got, np.ndarray)
    assert got.dtype == sent.dtype and got.shape == sent.shape
    fields = sent.dtype.names or [None]  # field by field: padding bytes between fields are noise
    assert all(_bytes(got, f) == _bytes(sent, f) for f in fields)
    if sent.flags.f_contiguous and not sent.flags.c_contiguous:
        assert got.flags.f_contiguous  # F order kept, not copied into C


@pytest.mark.parametrize("name, array", list(array_cases()), ids=lambda x: x if isinstance(x, str) else "")
def test_array_codec_dtypes_shapes_orders(name, array):
    check_array(array, roundtrip(array))


def test_received_array_views_the_message_without_a_copy():
    got = roundtrip(np.arange(1000, dtype=np.float64))
    assert not got.flags.writeable and not got.flags.owndata  # a view over the received bytes
    assert got.ctypes.data % 16 == 0  # and aligned


def test_object_arrays_are_refused_clearly():
    with pytest.raises(TypeError, match="dtype object.*tolist"):
        codec.packb(np.array([{}, None], dtype=object))


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(dtype=st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes()),
                  shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)),
       st.sampled_from(["C", "F", "slice"]))
def test_arrays_round_trip_property(array, order):
    if order == "F":
        array = np.asfortranarray(array)
    elif order == "slice" and array.ndim:
        array = array[::2]
    check_array(array, roundtrip(array))


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text()
    | st.binary() | st.datetimes() | st.datetimes(timezones=st.just(dt.timezone.utc)) | st.dates()
    | st.times() | st.decimals(allow_nan=False) | st.uuids(),
    lambda inner: st.lists(inner) | st.tuples(inner, inner) | st.frozensets(st.integers(-2**63, 2**63 - 1) | st.text(), max_size=5)
    | st.dictionaries(st.text(), inner), max_leaves=20))
def test_values_round_trip_property(value):
    assert same(roundtrip(value, strict_map_key=True), value)


# --- pickle, pure ------------------------------------------------------------------------

def test_pickle_request_is_refused_unless_allowed(monkeypatch):
    frame = protocol.encode_request(1, "echo", [Fraction(1, 3)], pickle=True)
    monkeypatch.setattr(pickling, "_allowed", False)
    with pytest.raises(InvalidRequest, match="--allow-pickle"):
        protocol.decode_request(frame)
    monkeypatch.setattr(pickling, "_allowed", True)
    assert protocol.decode_request(frame).params == [Fraction(1, 3)]


def test_pickled_reply_is_decoded_only_for_a_request_sent_as_pickle(monkeypatch):
    from zbridge.calls import result_of
    monkeypatch.setattr(pickling, "_allowed", True)  # a daemon with --allow-pickle sends it
    reply = protocol.encode_result(1, Fraction(1, 2), protocol.FLAG_PICKLE)
    monkeypatch.setattr(pickling, "_allowed", False)  # the process's switch plays no part
    with pytest.raises(zbridge.InternalError, match="did not ask for pickle"):
        result_of(reply, protocol.DEFAULT_MAX_MESSAGE)
    assert result_of(reply, protocol.DEFAULT_MAX_MESSAGE, pickle=True) == Fraction(1, 2)
    monkeypatch.setattr(pickling, "_allowed", True)  # a daemon's switch opens no client
    with pytest.raises(zbridge.InternalError, match="did not ask for pickle"):
        result_of(reply, protocol.DEFAULT_MAX_MESSAGE)


def test_daemon_without_allow_pickle_sends_no_pickle(monkeypatch):
    monkeypatch.setattr(pickling, "_allowed", False)
    with pytest.raises(ValueError, match="--allow-pickle"):
        protocol.encode_result(1, Fraction(1, 2), protocol.FLAG_PICKLE)
    with pytest.raises(ValueError, match="--allow-pickle"):
        protocol.encode_partial(1, Fraction(1, 2), protocol.FLAG_PICKLE)


def test_broker_forwards_a_pickled_reply_only_to_a_pickle_request():
    from zbridge.broker import Broker
    from zbridge.config import load_settings
    from zbridge.actions import ToClient
    from zbridge.actions import Spawn
    for asked in (False, True):
        broker = Broker(load_settings(workers=1, prewarm=True))
        [daemon] = [a.daemon for a in broker.start(0.0) if isinstance(a, Spawn)]
        broker.daemon_spawned(daemon, 4242)
        broker.daemon_ready(daemon, {"pid": 4242, "tools": ["f"]}, 0.0)
        request = protocol.encode_request(1, "f", [], pickle=asked)
        broker.submit(b"c", protocol.read_header(request), request, 0.0)
        reply = protocol.pack_header(Kind.REPLY, 1, 0, protocol.FLAG_PICKLE) + pickle.dumps(
            {"result": 1})
        [answer] = [a for a in broker.daemon_reply(daemon, protocol.read_header(reply), reply, 0.1)
                    if isinstance(a, ToClient)]
        if asked:
            assert answer.frame == reply
        else:
            assert answer.frame[4] & protocol.FLAG_PICKLE == 0
            assert protocol.decode_reply_body(answer.frame)["error"]["code"] == -32603


def test_daemon_refuses_allow_pickle_with_tcp():
    out = subprocess.run([sys.executable, "-m", "zbridge_daemon", "--connect", "tcp://127.0.0.1:1",
                          "--allow-pickle"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--allow-pickle" in out.stderr and "tcp" in out.stderr


def test_pickle_is_refused_on_tcp():
    with pytest.raises(ValueError, match="tcp"):
        zbridge.Client("tcp://127.0.0.1:5999", serializer="pickle")
    with pytest.raises(ValueError, match="serializer"):
        zbridge.Client("ipc:///nonexistent", serializer="json")
    from zbridge.config import load_settings
    from zbridge.hub import Hub
    with pytest.raises(ValueError, match="tcp"):
        Hub(load_settings(serializer="pickle", allow_local_users=True), [], frontend="tcp://127.0.0.1:0")


# --- through real daemons ------------------------------------------------------------------

@pytest.fixture
def values_bridge(bridge_factory):
    return bridge_factory(VALUES_TOOLS, max_message_size=64 * 1024 * 1024)


def test_every_value_round_trips_through_bridge(values_bridge):
    for name, value in SAMPLES.items():
        assert same(values_bridge.call("echo", [value]), value), name
    assert values_bridge.call("describe", [(1, 2)]) == {"type": "tuple"}  # a tuple arrives a tuple
    assert values_bridge.call("describe", [toolset.Point(1, 2)]) == {"type": "Point"}
    assert same(values_bridge.call("echo", list(SAMPLES.values())[:1]), SAMPLES["naive datetime"])


def test_every_value_round_trips_through_async_bridge():
    async def main():
        async with zbridge.AsyncBridge(VALUES_TOOLS) as bridge:
            for name, value in SAMPLES.items():
                assert same(await bridge.call("echo", [value]), value), name
            array = np.asfortranarray(np.arange(12.0).reshape(3, 4))
            check_array(array, await bridge.call("echo", [array]))
            assert [x.tolist() async for x in bridge.astream("ramps", [2, 3])] == [[0, 1, 2], [1, 2, 3]]
    asyncio.run(asyncio.wait_for(main(), 120))


def test_arrays_round_trip_through_bridge(values_bridge):
    for name, array in array_cases():
        check_array(array, values_bridge.call("echo", [array]))
    seen = values_bridge.call("describe", [np.asfortranarray(np.ones((2, 3)))])
    assert seen == {"type": "ndarray", "dtype": "float64", "shape": [2, 3], "f_contiguous": True,
                    "writeable": False}
    big = np.random.default_rng(1).random(1024 * 1024 // 8)
    check_array(big, values_bridge.call("echo", [big]))
    assert values_bridge.call("scalar64", [2.5]) == {"f": 2.5, "i": 7, "b": True}


def test_arrays_property_through_bridge(values_bridge):
    @settings(max_examples=40, deadline=None)
    @given(hnp.arrays(dtype=hnp.scalar_dtypes(), shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)))
    def check(array):
        check_array(array, values_bridge.call("echo", [array]))
    check()


def test_generator_streams_arrays(values_bridge):
    items = list(values_bridge.stream("ramps", [5, 1000, "int32"]))
    assert len(items) == 5
    for i, item in enumerate(items):
        check_array(np.arange(1000, dtype="int32") + i, item)


def test_unencodable_values_name_the_type(values_bridge):
    with pytest.raises(zbridge.InvalidParams, match=r"Unregistered.*register_type"):
        values_bridge.call("echo", [toolset.Unregistered()])
    with pytest.raises(zbridge.InternalError, match=r"Unregistered.*register_type"):
        values_bridge.call("unregistered")
    with pytest.raises(zbridge.InternalError, match=r"'zbridge-tests.DaemonOnly'.*register_type"):
        values_bridge.call("daemon_only")  # the caller lacks the daemon's registration
    with pytest.raises(zbridge.InternalError, match="extension type 99"):
        values_bridge.call("unknown_ext")
    assert values_bridge.call("echo", [1]) == 1  # and the daemon carries on


def test_argument_type_unknown_to_the_daemon_is_invalid_params(values_bridge):
    class ClientOnly:
        pass

    zbridge.register_type(ClientOnly, lambda _: 0, lambda _: ClientOnly(), name="tests.ClientOnly")
    try:
        with pytest.raises(zbridge.InvalidParams, match="'tests.ClientOnly'") as info:
            values_bridge.call("echo", [ClientOnly()])
        assert info.value.code == -32602
        with pytest.raises(zbridge.InvalidParams, match="extension type 99"):
            values_bridge.call("echo", [msgpack.ExtType(99, b"")])
    finally:
        usertypes.unregister_type(ClientOnly)


def test_pickle_mode_round_trips_any_object(bridge_factory):
    bridge = bridge_factory(VALUES_TOOLS, serializer="pickle")
    value = {"f": Fraction(1, 3), "c": 2 - 1j, "q": deque([1, (2, 3)]), "ns": SimpleNamespace(a=[1]),
             "r": range(3), "a": np.arange(5.0)}
    out = bridge.call("echo", [value])
    assert out["ns"] == value["ns"] and out["q"] == value["q"] and out["r"] == value["r"]
    assert out["f"] == value["f"] and out["c"] == value["c"] and out["a"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(zbridge.InvalidParams, match="pickle"):
        bridge.call("echo", [lambda: 0])  # still a clear error for what pickle cannot carry


def test_daemon_without_allow_pickle_refuses_a_pickle_request(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)  # msgpack bridge: its daemons lack --allow-pickle
    bridge.settings = replace(bridge.settings, serializer="pickle")
    with pytest.raises(zbridge.InvalidRequest, match="--allow-pickle") as info:
        bridge.call("echo", [1])
    assert info.value.code == -32600


def test_stdio_json_refuses_non_json_values_by_name():
    line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "now"}) + "\n"
    out = subprocess.run([sys.executable, "-m", "zbridge_daemon", "--stdio", "--tools", VALUES_TOOLS],
                         input=line.encode(), capture_output=True, timeout=30)
    reply = json.loads(out.stdout)
    assert reply["error"]["code"] == -32603
    assert "datetime.datetime has no JSON form" in reply["error"]["message"]


def test_values_through_serve_and_client(tmp_path):
    from helpers import served
    with served(tmp_path, "--tools", VALUES_TOOLS, "--serializer", "pickle") as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:  # msgpack caller of a pickle-capable hub
            for name, value in SAMPLES.items():
                assert same(client.call("echo", [value]), value), name
            array = np.arange(24, dtype=">i4").reshape(2, 3, 4)[:, ::2]
            check_array(array, client.call("echo", [array]))
        with zbridge.Client(endpoint, fallback=False, serializer="pickle") as client:
            assert client.call("echo", [Fraction(2, 3)]) == Fraction(2, 3)


def test_values_through_the_pipe_fallback(bridge_factory):
    bridge = bridge_factory(VALUES_TOOLS, pool_enabled=False)  # one-shot msgpack-framed pipes
    value = tuple(SAMPLES.values())
    assert same(bridge.call("echo", [value]), value)
    array = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    check_array(array, bridge.call("echo", [array]))
    items = list(bridge.stream("ramps", [2, 3]))
    assert [x.tolist() for x in items] == [[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]]
