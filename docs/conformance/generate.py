"""Writes vectors.json: the conformance cases of docs/PROTOCOL.md (format in README.md).

Deliberately independent of zbridge's own code (only struct, hashlib and msgpack), so a
change in zbridge/protocol.py or zbridge/codec.py cannot quietly change what the vectors
expect: every extension payload here is built by hand from PROTOCOL.md §12. Run it after
editing a case: ``python docs/conformance/generate.py`` (tests check the file is up to date).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from pathlib import Path

import msgpack

OUT = Path(__file__).with_name("vectors.json")
PROTOCOL = 2
HEADER = struct.Struct("!2sBBB3xIQ")
KINDS = {1: "REQUEST", 2: "REPLY", 3: "READY", 4: "HEARTBEAT", 5: "DISCONNECT", 6: "STATUS",
         7: "CANCEL", 8: "PARTIAL", 9: "CREDIT", 11: "CONTROL"}
REQUEST, REPLY, READY, HEARTBEAT, DISCONNECT, STATUS, CANCEL, PARTIAL, CREDIT = range(1, 10)
CONTROL = 11  # (10 is LEASE, on the lease desk only)
IDEMPOTENT, RETIRE, STREAM, PREWARM, PICKLE = 0x01, 0x02, 0x04, 0x08, 0x10
TIMEOUT = 10_000  # ms: every call's deadline unless a case is about deadlines
U64 = 2**64 - 1
BASE_CAPABILITIES = ["stream", "prewarm", "trace", "control"]
CAPABILITIES = BASE_CAPABILITIES + ["lease"]  # the reference hubs serve ipc endpoints: a lease desk (§15)

HUBS = {
    "default": {"args": ["--workers", "2"],
                "about": "two daemons, every other setting at its default (timeout 30 s, "
                         "max_message_size 64 MiB, cancel_mode interrupt, tracebacks exposed on ipc)"},
    "small": {"args": ["--workers", "1", "--max-queue", "1", "--timeout", "0.5",
                       "--max-message-size", "8192", "--expose-tracebacks", "false"],
              "about": "one daemon, a queue of one call, a 0.5 s default deadline, 8 KiB "
                       "messages, no tracebacks or routing ids (as a tcp hub by default)"},
    "broken": {"args": ["--workers", "1", "--tools", "tests/toolsets/broken.py"],
               "about": "one daemon that can never start: a tools module fails to import"},
    "retire": {"args": ["--workers", "1", "--max-rss-mb", "1"],
               "about": "one daemon that sets the retire flag on every reply (RSS over 1 MB)"},
    "pickle": {"args": ["--workers", "1", "--serializer", "pickle"],
               "about": "one daemon that decodes pickle bodies: STATUS lists the pickle capability"},
    "scale": {"args": ["--workers", "1"],
              "about": "one daemon (at first): only the scale case changes its size"},
    "stacks": {"args": ["--workers", "1", "--prewarm"],
               "about": "one daemon, w1, from the start: only the stacks case uses it"},
    "reload": {"args": ["--workers", "2", "--prewarm"],
               "about": "two daemons, w1 and w2, from the start: only the reload case uses it"},
}
READINESS = {"interval_ms": 100, "within_ms": 30000,
             "about": "a hub is ready once a STATUS sent on a fresh connection is answered"}
SETTLE = {"pattern": {"queue_depth": 0,
                      "daemons": {"$each": {"state": {"$in": ["starting", "idle", "stopping"]}}}},
          "interval_ms": 50, "within_ms": 15000,
          "about": "before each case: no call queued, and no daemon busy or stale"}
STATUS_IDS = {"first": {"$int": str(2**40)},
              "about": "poll_status and settle send STATUS with ids counting up from here, on "
                       "their own connections; no case uses these ids"}


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def frame(kind: int, id: int = 0, body=None, *, flags: int = 0, timeout_ms: int = 0,
          version: int = PROTOCOL, magic: bytes = b"ZB", raw: bytes | None = None) -> bytes:
    return HEADER.pack(magic, version, kind, flags, timeout_ms, id) + (pack(body) if raw is None else raw)


def describe(data: bytes) -> str:
    """A human-readable line for a frame, for readers of the JSON file."""
    if len(data) < HEADER.size:
        return f"{len(data)}-byte frame (shorter than the header)"
    magic, version, kind, flags, timeout_ms, id = HEADER.unpack_from(data)
    head = (f"{KINDS.get(kind, f'kind {kind}')} id={id} flags={flags:#04x} timeout_ms={timeout_ms}"
            + ("" if magic == b"ZB" else f" magic={magic!r}")
            + ("" if version == PROTOCOL else f" version={version}"))
    body = data[HEADER.size:]
    try:
        text = repr(msgpack.unpackb(body, raw=False, strict_map_key=False))
    except Exception:
        text = f"undecodable {body[:16].hex()}"
    return f"{head} body={text if len(text) <= 120 else text[:117] + '...'} ({len(data)} bytes)"


def req(id: int, method: str, params=None, *, flags: int = 0, timeout_ms: int = TIMEOUT,
        window=None, body=None, **members) -> bytes:
    if body is None:
        body = {"method": method, "params": params, **members}
        if window is not None:
            body["window"] = window
    return frame(REQUEST, id, body, flags=flags, timeout_ms=timeout_ms)


def stream(id: int, method: str, params=None, window=None, **kw) -> bytes:
    return req(id, method, params, flags=STREAM, window=window, **kw)


# --- values: extension payloads built by hand from PROTOCOL.md §12 ----------------------

def ramp(n: int, start: int = 0) -> bytes:
    """Bytes start, start+1, ... modulo 256 (tests/toolsets/wire.py makes the same)."""
    return bytes((start + i) % 256 for i in range(n))


def ext_text(code: int, text: str) -> msgpack.ExtType:
    """Codes 1-5: the text's UTF-8 bytes are the whole payload (no msgpack str inside)."""
    return msgpack.ExtType(code, text.encode())


def ext_items(code: int, items: list) -> msgpack.ExtType:
    """Codes 7-9: the payload is one msgpack array."""
    return msgpack.ExtType(code, pack(items))


def ext_array(descr, shape: list[int], order: str, data: bytes) -> msgpack.ExtType:
    """Code 10: u32 big-endian length h of the msgpack header [descr, shape, order], the
    header, zero bytes up to the next multiple of 16 counted from the payload's first
    byte, then the raw data."""
    header = pack([descr, shape, order])
    start = -(-(4 + len(header)) // 16) * 16
    return msgpack.ExtType(10, struct.pack("!I", len(header)) + header
                           + bytes(start - 4 - len(header)) + data)


def ext_ref(index: int, kind: str, meta=None) -> msgpack.ExtType:
    """Code 11: buffer frame ``index`` of the message, as bytes ("b") or an array ("a")."""
    return msgpack.ExtType(11, pack([index, kind, meta]))


def ext_user(name: str, wire) -> msgpack.ExtType:
    return msgpack.ExtType(0, pack([name, wire]))


def timestamp(seconds: int, nanoseconds: int) -> msgpack.Timestamp:
    """Code -1, msgpack's Timestamp (msgpack packs it in the 32-, 64- or 96-bit form its
    spec picks; ExtType cannot hold a negative code)."""
    return msgpack.Timestamp(seconds, nanoseconds)


# --- steps ----------------------------------------------------------------------------

def bytes_spec(data: bytes):
    """BYTES notation: hex, or {"$bin": unit, "$times": n} for n repetitions of a unit."""
    for size in (256,):
        if len(data) > 4096 and len(data) % size == 0 and data == data[:size] * (len(data) // size):
            return {"$bin": data[:size].hex(), "$times": len(data) // size}
    return data.hex()


def send(*frames: bytes, conn: str = "a") -> dict:
    if len(frames) == 1:
        return {"send": bytes_spec(frames[0]), "connection": conn, "note": describe(frames[0])}
    return {"send": [bytes_spec(f) for f in frames], "connection": conn,
            "note": f"one message of {len(frames)} frames: " + "; ".join(describe(f) for f in frames)}


def expect(*specs: dict, conn: str = "a", within_ms: int = 5000, any_order: bool = False,
           keep_heartbeats: bool = False) -> dict:
    step = {"expect": list(specs), "connection": conn, "within_ms": within_ms}
    if any_order:
        step["any_order"] = True
    if keep_heartbeats:
        step["keep_heartbeats"] = True
    return step


def silence(ms: int = 300, conn: str = "a") -> dict:
    return {"silence_ms": ms, "connection": conn}


def sleep(ms: int) -> dict:
    return {"sleep_ms": ms}


def close(conn: str) -> dict:
    return {"close": conn}


def poll_status(pattern: dict, conn: str = "status", within_ms: int = 8000) -> dict:
    return {"poll_status": value(pattern), "connection": conn, "within_ms": within_ms}


# --- reply specs ----------------------------------------------------------------------

def big(n: int):
    """Integers past 2**53 are written as strings, so every JSON reader keeps them exact."""
    return {"$int": str(n)} if abs(n) > 2**53 else n


def value(v):
    """A Python value (or pattern) in the file's notation: floats, bytes, large integers
    and extension values tagged, so no JSON reader can take one for another."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return big(v)
    if isinstance(v, float):
        return {"$float": "NaN" if math.isnan(v) else repr(v)}
    if isinstance(v, bytes):
        spec = bytes_spec(v)
        return spec if isinstance(spec, dict) else {"$bin": spec}
    if isinstance(v, msgpack.ExtType):
        return {"$ext": v.code, "hex": v.data.hex()}
    if isinstance(v, msgpack.Timestamp):
        return {"$ext": -1, "hex": v.to_bytes().hex()}
    if isinstance(v, (list, tuple)):
        return [value(x) for x in v]
    if isinstance(v, dict):
        return {k: value(x) for k, x in v.items()}
    raise TypeError(f"no notation for {v!r}")


def ok(id: int, result=None, *, any_result: bool = False, buffers=None) -> dict:
    body = {"result": {"$any": True} if any_result else value(result), "error": {"$absent": True}}
    spec = {"kind": REPLY, "id": big(id), "flags": 0, "body": body}
    if buffers is not None:
        spec["buffers"] = [value(b) for b in buffers]
    return spec


def err(id: int, code, *, message=None, data=None, no_data: bool = False, version=None) -> dict:
    error: dict = {"code": code, "message": {"$type": "str"} if message is None else message}
    if no_data:
        error["data"] = {"$absent": True}
    elif data is not None:
        error["data"] = value(data)
    spec = {"kind": REPLY, "id": big(id), "flags": 0,
            "body": {"error": error, "result": {"$absent": True}}}
    if version is not None:
        spec["version"] = version
    return spec


def part(id: int, item, *, buffers=None) -> dict:
    spec = {"kind": PARTIAL, "id": id, "flags": 0, "body": {"item": value(item)}}
    if buffers is not None:
        spec["buffers"] = [value(b) for b in buffers]
    return spec


def contains(text: str) -> dict:
    return {"$contains": text}


def typed(*names: str) -> dict:
    return {"$type": names[0] if len(names) == 1 else list(names)}


# --- the cases ------------------------------------------------------------------------

CASES: list[dict] = []


def case(name: str, rule: str, *steps: dict, hub: str = "default", pending: str | None = None) -> None:
    entry = {"name": name, "rule": rule, "hub": hub, "steps": list(steps)}
    if pending:  # a rule of PROTOCOL.md the reference hub does not follow yet (README)
        entry["pending"] = pending
    CASES.append(entry)


def calls() -> None:
    case("call_positional_params", "Kinds: REQUEST params as an array bind by position",
         send(req(1, "add", [1, 2])), expect(ok(1, 3)))
    case("call_named_params", "Kinds: REQUEST params as a map bind by name",
         send(req(1, "add", {"a": 2, "b": 5})), expect(ok(1, 7)))
    case("call_nil_params_and_nil_result", "Kinds: params nil or absent means no arguments; "
         "a nil result is sent as result: nil (the member is present)",
         send(req(1, "echo", None)), expect(ok(1, None)),
         send(req(2, "", body={"method": "echo"})), expect(ok(2, None)))
    case("execute_tool_envelope", "Kinds: method execute_tool with {tool_name, args}",
         send(req(1, "execute_tool", {"tool_name": "add", "args": {"a": 2, "b": 5}})), expect(ok(1, 7)),
         send(req(2, "execute_tool", {"tool_name": "add", "args": [4, 5]})), expect(ok(2, 9)),
         send(req(3, "execute_tool", {"tool_name": "echo", "args": None})), expect(ok(3, None)))
    case("execute_tool_envelope_malformed", "Errors: a malformed execute_tool envelope is -32602",
         send(req(1, "execute_tool", {"args": [1]})), expect(err(1, -32602)),
         send(req(2, "execute_tool", {"tool_name": "add", "args": "x"})), expect(err(2, -32602)))
    case("builtin_health", "Daemon side: method health answers when no tool has that name",
         send(req(1, "health")), expect(ok(1, {"status": "ok", "pid": typed("int"), "tools": typed("array")})))
    case("replies_matched_by_id", "Ids: several calls in flight on one connection; replies "
         "come in completion order, matched by id",
         send(req(1, "span", [0.4, "slow"])), send(req(2, "add", [2, 3])),
         expect(ok(2, 5), ok(1, {"nonce": "slow"}), any_order=True))
    case("same_id_on_two_connections", "Ids: uniqueness is per connection",
         send(req(1, "span", [0.2, "from a"]), conn="a"), send(req(1, "span", [0.2, "from b"]), conn="b"),
         expect(ok(1, {"nonce": "from a"}), conn="a"), expect(ok(1, {"nonce": "from b"}), conn="b"))


def values() -> None:
    pairs = [
        (None, None), (True, True), (False, False), (0, 0), (-1, -1), (127, 127), (-33, -33),
        (2**63 - 1, 2**63 - 1), (-2**63, -2**63), (U64, U64), (1.5, 1.5), (1.0, 1.0),
        (-0.0, -0.0), (1e300, 1e300), (float("inf"), float("inf")), (float("nan"), float("nan")),
        ("", ""), ("héllo ✓ 字", "héllo ✓ 字"), (b"\x00\xffzb", b"\x00\xffzb"),
        ([], []), ({}, {"$equals": {}}), ([1, [2, [3, "x"]]], [1, [2, [3, "x"]]]),
        ({"k": {"n": [1, None, True]}, "e": ""}, {"$equals": {"k": {"n": [1, None, True]}, "e": ""}}),
    ]
    steps = []
    for i, (sent, expected) in enumerate(pairs, start=1):
        steps += [send(req(i, "echo", [sent])), expect(ok(i, expected))]
    case("values_round_trip", "Values: nil, bool, integers -2^63..2^64-1, float64 (also -0.0, "
         "infinities, NaN), str, bin, array, map survive a round trip; a float is never an "
         "integer of equal value", *steps)
    single = frame(REQUEST, 1, raw=msgpack.packb({"method": "echo", "params": [0.5]}, use_single_float=True),
                   timeout_ms=TIMEOUT)
    case("float32_arrives_as_float64", "Values: a float32 (0xca) is accepted and arrives as a "
         "64-bit float", send(single), expect(ok(1, 0.5)))
    case("non_string_map_keys_in_results", "Values: results may have any key type the tool "
         "returns, so clients decode replies without strict map keys",
         send(req(1, "int_keys")), expect(ok(1, {"$pairs": [[1, "one"], [2, [3]]]})))
    case("non_string_map_key_in_request", "Values: request bodies need string map keys; "
         "otherwise -32700 with the request's id (from the daemon)",
         send(req(1, "", body={1: "x", "method": "echo"})), expect(err(1, -32700)),
         send(req(2, "echo", {"value": {1: 2}})), expect(err(2, -32700)))


def extensions() -> None:
    """Every extension type, client to daemon (the tool describes what arrived) and daemon
    to client (exact payload bytes), then back and forth through echo."""
    at = 1767323045  # 2026-01-02T03:04:05Z in Unix seconds
    iso = "2026-01-02T03:04:05.000006"
    int_ = lambda n: {"type": "int", "value": n}  # noqa: E731 - how wire.py describes an int
    c_data = struct.pack("<6i", 0, 1, 2, 3, 4, 5)
    f_data = struct.pack("<6i", 0, 3, 1, 4, 2, 5)  # the same 2x3 array in F order
    be_data = struct.pack(">2d", 1.5, -2.0)
    arrays = {"type": "ndarray", "shape": [2, 3], "tolist": [[0, 1, 2], [3, 4, 5]], "writeable": False,
              "sha256": hashlib.sha256(c_data).hexdigest()}
    to_daemon = [  # (rule, value sent, what the daemon saw)
        ("-1, 64-bit form", timestamp(at, 6000),
         {"type": "datetime", "iso": iso + "+00:00", "utcoffset": 0}),
        ("-1, 32-bit form", timestamp(at, 0),
         {"type": "datetime", "iso": "2026-01-02T03:04:05+00:00", "utcoffset": 0}),
        ("-1, 96-bit form (before 1970)", timestamp(-1, 500_000_000),
         {"type": "datetime", "iso": "1969-12-31T23:59:59.500000+00:00", "utcoffset": 0}),
        ("1", ext_text(1, iso + "+05:30"), {"type": "datetime", "iso": iso + "+05:30", "utcoffset": 19800}),
        ("2", ext_text(2, iso), {"type": "datetime", "iso": iso, "utcoffset": None}),
        ("3", ext_text(3, "2026-01-02"), {"type": "date", "iso": "2026-01-02"}),
        ("4", ext_text(4, "03:04:05.000006"), {"type": "time", "iso": "03:04:05.000006", "utcoffset": None}),
        ("4 with an offset", ext_text(4, "03:04:05+05:30"),
         {"type": "time", "iso": "03:04:05+05:30", "utcoffset": 19800}),
        ("5", ext_text(5, "-1.50E+3"), {"type": "Decimal", "text": "-1.50E+3"}),
        ("5, NaN", ext_text(5, "NaN"), {"type": "Decimal", "text": "NaN"}),
        ("6", msgpack.ExtType(6, bytes.fromhex("12345678123456781234567812345678")),
         {"type": "UUID", "text": "12345678-1234-5678-1234-567812345678"}),
        ("7", ext_items(7, [1, "a"]), {"type": "tuple", "items": [int_(1), {"type": "str", "value": "a"}]}),
        ("8", ext_items(8, [2, 1]), {"type": "set", "items": [int_(1), int_(2)]}),
        ("9", ext_items(9, ["x"]), {"type": "frozenset", "items": [{"type": "str", "value": "x"}]}),
        ("10, C order", ext_array("<i4", [2, 3], "C", c_data), arrays | {"descr": "<i4"}),
        ("10, F order", ext_array("<i4", [2, 3], "F", f_data), arrays | {"descr": "<i4"}),
        ("10, big-endian float64", ext_array(">f8", [2], "C", be_data),
         {"type": "ndarray", "descr": ">f8", "shape": [2], "tolist": [1.5, -2.0], "writeable": False,
          "sha256": hashlib.sha256(be_data).hexdigest()}),
        ("0", ext_user("conformance.Point", [1, 2]), {"type": "Point", "x": 1, "y": 2}),
        ("nested at any depth", {"when": ext_text(3, "2026-01-02"),
                                 "pair": ext_items(7, [ext_text(5, "1.0"), ext_items(8, [3])])},
         {"type": "dict", "items": {"when": {"type": "date", "iso": "2026-01-02"},
                                    "pair": {"type": "tuple", "items": [
                                        {"type": "Decimal", "text": "1.0"},
                                        {"type": "set", "items": [int_(3)]}]}}}),
    ]
    steps = []
    for i, (_, sent, seen) in enumerate(to_daemon, start=1):
        steps += [send(req(i, "inspect", [sent])), expect(ok(i, {"$equals": value(seen)}))]
    case("extension_values_to_the_daemon", "Values: extension types -1 (all three Timestamp "
         "forms) and 0-10 in a request arrive in the daemon as the value §12 names: "
         + "; ".join(rule for rule, _, _ in to_daemon), *steps)

    from_daemon = [  # (wire.py sample name, the exact value expected)
        ("utc", timestamp(at, 6000)), ("offset", ext_text(1, iso + "+05:30")),
        ("naive", ext_text(2, iso)), ("date", ext_text(3, "2026-01-02")),
        ("time", ext_text(4, "03:04:05.000006")), ("time_offset", ext_text(4, "03:04:05+05:30")),
        ("decimal", ext_text(5, "-1.50E+3")),
        ("uuid", msgpack.ExtType(6, bytes.fromhex("12345678123456781234567812345678"))),
        ("tuple", ext_items(7, [1, "a"])), ("set", ext_items(8, [1, 2])),
        ("frozenset", ext_items(9, ["x"])), ("point", ext_user("conformance.Point", [1, 2])),
        ("array", ext_array("<i4", [2, 3], "C", c_data)),
        ("array_f", ext_array("<i4", [2, 3], "F", f_data)),
        ("array_be", ext_array(">f8", [2], "C", be_data)),
        ("nested", {"when": ext_text(3, "2026-01-02"),
                    "pair": ext_items(7, [ext_text(5, "1.0"), ext_items(8, [3])])}),
    ]
    steps = []
    for i, (name, expected) in enumerate(from_daemon, start=1):
        steps += [send(req(i, "sample", [name])), expect(ok(i, expected))]
    case("extension_values_from_the_daemon", "Values: a tool's datetimes, dates, times, "
         "Decimals, UUIDs, tuples, sets, frozensets, user types and numpy arrays come back as "
         "extension types -1 and 0-10, byte for byte as §12 lays them out", *steps)
    steps = []
    for i, (_, expected) in enumerate(from_daemon, start=1):
        steps += [send(req(i, "echo", [expected])), expect(ok(i, expected))]
    case("extension_values_round_trip", "Values: each canonical extension value sent to echo "
         "comes back with the same bytes", *steps)

    case("unknown_extension_refused", "Values: an extension code other than -1 and 0-11 in a "
         "request is -32602 with the request's id, as is a payload that is not its type's "
         "layout or a user type the daemon has not registered",
         send(req(1, "echo", [msgpack.ExtType(12, b"?")])), expect(err(1, -32602)),
         send(frame(REQUEST, 2, raw=pack({"method": "echo", "params": [None]})[:-1] + b"\xd4\xfb?",
                    timeout_ms=TIMEOUT)), expect(err(2, -32602)),
         send(req(3, "echo", [ext_text(3, "not a date")])), expect(err(3, -32602)),
         send(req(4, "echo", [ext_user("nobody.Registered", 1)])), expect(err(4, -32602)),
         send(req(5, "echo", [msgpack.ExtType(6, b"short")])), expect(err(5, -32602)),
         send(req(6, "echo", ["still fine"])), expect(ok(6, "still fine")))


def buffers() -> None:
    big_bytes = ramp(76800)
    u8 = ["|u1", [300, 256], "C"]
    case("buffer_frame_bytes_both_ways", "Frames/Values: a value in a buffer frame (ext 11 "
         "[index, \"b\", nil]) arrives as bytes; a result of at least 65536 bytes comes back "
         "as a buffer frame after the REPLY frame",
         send(req(1, "inspect", [ext_ref(0, "b")]), big_bytes),
         expect(ok(1, {"$equals": {"type": "bytes", "len": 76800,
                                   "sha256": hashlib.sha256(big_bytes).hexdigest()}})),
         send(req(2, "echo", [ext_ref(0, "b")]), big_bytes),
         expect(ok(2, ext_ref(0, "b"), buffers=[big_bytes])),
         send(req(3, "sample", ["big_bytes"])), expect(ok(3, ext_ref(0, "b"), buffers=[big_bytes])))
    case("buffer_frame_array_both_ways", "Frames/Values: an array in a buffer frame (ext 11 "
         "[index, \"a\", [descr, shape, order]]) arrives as that array; a large array result "
         "comes back the same way",
         send(req(1, "inspect", [ext_ref(0, "a", u8)]), big_bytes),
         expect(ok(1, {"$equals": {"type": "ndarray", "descr": "|u1", "shape": [300, 256],
                                   "tolist": None, "writeable": False,
                                   "sha256": hashlib.sha256(big_bytes).hexdigest()}})),
         send(req(2, "echo", [ext_ref(0, "a", u8)]), big_bytes),
         expect(ok(2, ext_ref(0, "a", u8), buffers=[big_bytes])),
         send(req(3, "sample", ["big_array"])), expect(ok(3, ext_ref(0, "a", u8), buffers=[big_bytes])))
    case("buffer_frames_numbered_in_order", "Frames: buffer frames are numbered 0, 1, ... in "
         "the order they follow the message's frame",
         send(req(1, "sample", ["two_big_bytes"])),
         expect(ok(1, [ext_ref(0, "b"), ext_ref(1, "b")], buffers=[ramp(70144), ramp(70144, 128)])),
         send(req(2, "inspect_all", [ext_ref(1, "b"), ext_ref(0, "b")]), b"\x00", b"\x01\x02"),
         expect(ok(2, [{"type": "bytes", "len": 2, "sha256": hashlib.sha256(b"\x01\x02").hexdigest()},
                       {"type": "bytes", "len": 1, "sha256": hashlib.sha256(b"\x00").hexdigest()}])))
    case("small_values_stay_in_band", "Values: a result under 65536 bytes comes back in band, "
         "in one frame", send(req(1, "sample", ["small_bytes"])), expect(ok(1, ramp(16))))
    case("partial_with_buffer_frames", "Streams/Frames: a PARTIAL may carry buffer frames too",
         send(stream(1, "blobs", [2, 65536], window=4)),
         expect(part(1, ext_ref(0, "b"), buffers=[ramp(65536)]),
                part(1, ext_ref(0, "b"), buffers=[ramp(65536, 1)]), ok(1, {"items": 2})))
    ref = ext_ref(0, "b")
    case("buffer_frame_round_trip", "Values: a receiver accepts a buffer frame of any size "
         "(small values come back in band); buffer frames the body does not reference are "
         "ignored; a reference to a frame that is not there is -32602",
         send(req(4, "echo", [ref]), b"\x00\xffzb"), expect(ok(4, b"\x00\xffzb")),
         send(req(5, "echo", ["unreferenced"]), b"\x01"), expect(ok(5, "unreferenced")),
         send(req(6, "echo", [ext_ref(1, "b")]), b"\x01"),
         expect(err(6, -32602, message=contains("buffer reference 1"))))
    case("buffer_frame_referenced_twice_refused", "Frames: each buffer frame may be referenced "
         "at most once per message; a second reference is refused with the request's id",
         send(req(1, "echo", [[ref, ref]]), b"\x01"),
         expect(err(1, -32602, message=contains("referenced more than once"))),
         send(req(2, "echo", ["still fine"])), expect(ok(2, "still fine")))
    doubled = frame(REQUEST, 1, raw=b"\x83" + pack("method") + pack("add") + pack("params")
                    + pack([1, 2]) + pack("method") + pack("add"), timeout_ms=TIMEOUT)
    nested = frame(REQUEST, 2, raw=b"\x82" + pack("method") + pack("echo") + pack("params")
                   + b"\x91\x82" + pack("a") + pack(1) + pack("a") + pack(2), timeout_ms=TIMEOUT)
    case("duplicate_map_keys_refused", "Values: a map with a key twice is refused, at any "
         "depth, with the request's id (hub and daemon can never disagree about the method)",
         send(doubled), expect(err(1, -32600, message=contains("'method'"))),
         send(nested), expect(err(2, -32600, message=contains("'a'"))),
         send(req(3, "echo", ["still fine"])), expect(ok(3, "still fine")))


def versions() -> None:
    refusal = {"$equals": {"versions": [PROTOCOL]}}
    ping = pack(None)
    case("version_1_client_refused", "Versions: a message in version 1 gets one REPLY frame in "
         "version 1's layout, with its own id, error -32600 and data.versions naming the "
         "versions served; nothing else follows, and the connection carries on",
         send(frame(STATUS, 1, None, version=1)), expect(err(1, -32600, data=refusal, version=1)),
         send(frame(REQUEST, 2, {"method": "sample", "params": ["big_bytes"]}, version=1, timeout_ms=TIMEOUT)),
         expect(err(2, -32600, data=refusal, version=1)),
         silence(300),
         send(frame(STATUS, 3, raw=ping)), expect(ok(3, {"protocol": PROTOCOL})))
    steps = []
    for id, version in ((4, 0), (5, 3), (6, 255)):
        steps += [send(frame(REQUEST, id, {"method": "echo", "params": [1]}, version=version,
                             timeout_ms=TIMEOUT)),
                  expect(err(id, -32600, data=refusal, version=version))]
    case("other_versions_refused_in_their_layout", "Versions: any version byte other than 2 "
         "gets the same one-frame refusal, carrying that version byte and the message's id",
         *steps, silence(200))
    later = bytearray(frame(REQUEST, 7, {"method": "echo", "params": [1]}, version=3, timeout_ms=TIMEOUT))
    later[5:8] = b"\x01\x02\x03"
    case("version_judged_before_reserved_bytes", "Versions: a later version may use the "
         "reserved bytes, so the version is judged first",
         send(bytes(later)), expect(err(7, -32600, data=refusal, version=3)))
    case("status_capabilities", "Versions/Status: STATUS says the version and the capabilities "
         "a client may ask for (no pickle on a hub whose daemons do not decode it)",
         send(frame(STATUS, 1, None)),
         expect(ok(1, {"protocol": PROTOCOL, "capabilities": {"$equals": CAPABILITIES}})))
    case("status_capabilities_with_pickle", "Versions/Status: a hub whose daemons decode "
         "pickle bodies lists the pickle capability",
         send(frame(STATUS, 1, None)),
         expect(ok(1, {"protocol": PROTOCOL, "capabilities": {"$equals": BASE_CAPABILITIES + ["pickle", "lease"]}})),
         hub="pickle")
    case("trace_member", "Requests: a REQUEST may carry a W3C traceparent as trace (the "
         "trace capability); anything else there is -32600",
         send(req(1, "echo", ["traced"], trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")),
         expect(ok(1, "traced")),
         send(req(2, "echo", ["x"], trace="not-a-traceparent")), expect(err(2, -32600)))


def ids() -> None:
    case("id_zero_refused", "Ids: request ids start at 1; a REQUEST with id 0 gets -32600 (id 0)",
         send(req(0, "echo", ["x"])), expect(err(0, -32600)), silence(200))
    case("id_max_u64", "Ids: any u64 from 1 to 2^64-1 is a valid id; Deadlines: timeout_ms "
         "up to 2^32-1",
         send(req(U64, "echo", ["top"], timeout_ms=2**32 - 1)), expect(ok(U64, "top")))
    case("id_reuse_after_timeout", "Ids: an answered call's id is free again, even while its "
         "daemon still runs it; that late reply is never delivered",
         send(req(1, "span", [0.6, "old"], timeout_ms=100)), expect(err(1, -32001)),
         send(req(1, "echo", ["new"])), expect(ok(1, "new")), silence(900))
    case("duplicate_in_flight_id_refused", "Ids: an id already in flight on the connection is "
         "refused with -32600 naming it; the first call still answers; after its reply the id is free",
         send(req(5, "span", [0.5, "first"])), send(req(5, "echo", ["second"])),
         expect(err(5, -32600, message=contains("5")), ok(5, {"nonce": "first"})),
         send(req(5, "echo", ["third"])), expect(ok(5, "third")))


def flags() -> None:
    steps = []
    for i, bit in enumerate((RETIRE, PREWARM, 0x10, 0x20, 0x40, 0x80), start=1):
        steps += [send(req(i, "echo", ["x"], flags=bit)), expect(err(i, -32600))]
    case("undefined_request_flags_refused", "Flags: a REQUEST may set only bits 0, 2 and 4; "
         "bit 4 (pickle) only where STATUS lists the pickle capability, elsewhere the daemon "
         "refuses it with -32600", *steps)
    case("idempotent_flag_is_accepted", "Flags: bit 0 (idempotent) is informational for the hub",
         send(req(1, "add", [1, 1], flags=IDEMPOTENT)), expect(ok(1, 2)))
    case("worker_lost_and_no_retry_by_the_hub", "Flags/Errors: a daemon dying mid-call is "
         "-32002; the hub does not retry, even a call marked idempotent",
         send(req(1, "exit_hard", [7])), expect(err(1, -32002, no_data=True), within_ms=10000),
         send(req(2, "exit_hard", [7], flags=IDEMPOTENT)), expect(err(2, -32002), within_ms=10000),
         send(req(3, "add", [1, 2])), expect(ok(3, 3), within_ms=10000))
    case("retire_flag_never_reaches_clients", "Flags: bit 1 (retire) is cleared by the hub; "
         "the daemon set it (RSS over max_rss_mb), so the hub replaces that daemon",
         send(req(1, "echo", ["r"])), expect(ok(1, "r")),
         send(req(2, "echo", ["s"])), expect(ok(2, "s")),
         poll_status({"counters": {"recycled": {"$gte": 1}}}), hub="retire")


def headers() -> None:
    good = req(9, "echo", ["still here"])
    case("bad_magic", "Frames: bad magic is -32700 with id 0; the connection carries on",
         send(frame(REQUEST, 7, {"method": "echo"}, magic=b"XY", timeout_ms=TIMEOUT)),
         expect(err(0, -32700)), send(good), expect(ok(9, "still here")))
    case("short_frame", "Frames: a frame shorter than 20 bytes is -32700 with id 0",
         send(b"ZB\x02\x01\x00"), expect(err(0, -32700)),
         send(b""), expect(err(0, -32700)),
         send(frame(REQUEST, 3)[:19]), expect(err(0, -32700)))
    bad = bytearray(req(7, "echo", ["x"]))
    bad[6] = 1
    case("reserved_bytes_must_be_zero", "Frames: a nonzero reserved byte (5-7) is -32600 with id 0",
         send(bytes(bad)), expect(err(0, -32600)), send(good), expect(ok(9, "still here")))
    case("unknown_kind", "Kinds: an unknown kind is -32600 with id 0",
         send(frame(0, 7, {})), expect(err(0, -32600)),
         send(frame(99, 8, {})), expect(err(0, -32600)))
    steps = []
    for id, kind in ((3, REPLY), (4, READY), (5, HEARTBEAT), (6, DISCONNECT), (7, PARTIAL)):
        steps += [send(frame(kind, id, {})), expect(err(id, -32600))]
    case("kinds_clients_may_not_send", "Kinds: a known kind a client may not send is -32600 "
         "with the header's id", *steps)
    too_many = "expected at most 65 frames per message (a frame and 64 buffer frames), got {}"
    case("multi_frame_message", "Frames: a message of more than 1 + 64 frames is -32600 (id 0) "
         "naming the count, after the hub read and dropped all its frames; nothing runs",
         send(req(1, "echo", ["a"]), *[b"x"] * 65),
         expect(err(0, -32600, message=too_many.format(66))),
         send(req(2, "echo", ["b"]), *[b""] * 66),
         expect(err(0, -32600, message=too_many.format(67))),
         silence(200), send(good), expect(ok(9, "still here")))
    case("buffer_frames_only_on_requests", "Frames: buffer frames after a frame other than "
         "REQUEST are -32600 with the header's id",
         send(frame(STATUS, 5, None), b"x"), expect(err(5, -32600)),
         send(good), expect(ok(9, "still here")))


def bodies() -> None:
    ping = pack({"method": "echo", "params": ["x"]})
    case("body_not_msgpack", "Errors: a REQUEST body that is not one msgpack value is -32700 "
         "with the request's id",
         send(frame(REQUEST, 1, raw=b"\xc1", timeout_ms=TIMEOUT)), expect(err(1, -32700)),
         send(frame(REQUEST, 2, raw=b"", timeout_ms=TIMEOUT)), expect(err(2, -32700)),
         send(frame(REQUEST, 3, raw=ping[:5], timeout_ms=TIMEOUT)), expect(err(3, -32700)),
         send(frame(REQUEST, 4, raw=ping + b"\x00", timeout_ms=TIMEOUT)), expect(err(4, -32700)))
    case("body_invalid_shape", "Errors: a msgpack body that is not {method: str, params: "
         "array|map|nil} is -32600 with the request's id",
         send(req(1, "", body=[1, 2])), expect(err(1, -32600)),
         send(req(2, "", body={"method": 5})), expect(err(2, -32600)),
         send(req(3, "", body={"params": []})), expect(err(3, -32600)),
         send(req(4, "echo", "x")), expect(err(4, -32600)))
    case("unknown_tool", "Errors: -32601 for a method no tool has",
         send(req(1, "no_such_tool", [])), expect(err(1, -32601, no_data=True)))
    case("bad_params", "Errors: arguments that do not fit the signature are -32602",
         send(req(1, "add", [1, 2, 3])), expect(err(1, -32602)),
         send(req(2, "add", {"a": 1, "c": 2})), expect(err(2, -32602)),
         send(req(3, "add", [])), expect(err(3, -32602)))
    case("tool_error_data", "Errors: -32000 message is 'Type: text', data {type, message, "
         "traceback} where tracebacks are exposed (ipc here)",
         send(req(1, "boom", ["bad input"])),
         expect(err(1, -32000, message="ValueError: bad input",
                    data={"$keys": ["type", "message", "traceback"], "type": "ValueError",
                          "message": "bad input", "traceback": contains("ValueError")})),
         send(req(2, "boom", [""])),
         expect(err(2, -32000, message="ValueError", data={"type": "ValueError", "message": ""})))
    case("tool_error_data_without_traceback", "Errors: without exposed tracebacks (tcp by "
         "default) data has no traceback member",
         send(req(1, "boom", ["x"])),
         expect(err(1, -32000, message="ValueError: x",
                    data={"$keys": ["type", "message"], "type": "ValueError", "message": "x"})),
         hub="small")
    case("pool_unavailable_data", "Errors: -32004 data {cause, closing?, stderr?} when the "
         "tools cannot load (stderr for local callers only)",
         send(req(1, "echo", ["never"])),
         expect(err(1, -32004, data={"cause": "load_failed", "closing": {"$absent": True},
                                     "stderr": contains("zbridge_missing_dependency_xyz")}),
                within_ms=30000), hub="broken")
    case("unencodable_result", "Errors: a result msgpack cannot carry is -32603",
         send(req(1, "unencodable")), expect(err(1, -32603)))


def deadlines() -> None:
    case("timeout_ms_deadline", "Deadlines: at timeout_ms the caller gets -32001; the "
         "daemon's late reply is dropped",
         send(req(1, "span", [0.8], timeout_ms=150)), expect(err(1, -32001, no_data=True)),
         silence(1000))
    case("deadline_includes_queueing", "Deadlines: counted from arrival at the hub, "
         "queueing included",
         send(req(1, "echo", ["warm"])), expect(ok(1, "warm")),
         send(req(2, "span", [0.6, "busy"])), send(req(3, "echo", ["late"], timeout_ms=200)),
         expect(err(3, -32001), ok(2, {"nonce": "busy"})), hub="small")
    case("timeout_ms_zero_is_hub_default", "Deadlines: timeout_ms 0 means the hub's timeout "
         "setting (0.5 s on this hub)",
         send(req(1, "span", [1.0], timeout_ms=0)), expect(err(1, -32001)), hub="small")
    case("timeout_ms_ignored_on_status", "Deadlines: timeout_ms is ignored on STATUS",
         send(frame(STATUS, 4, None, timeout_ms=1)), sleep(50), expect(ok(4, {"protocol": PROTOCOL})))
    case("overloaded", "Errors: -32003 when the hub's queue is full (max_queue 1 here)",
         send(req(1, "echo", ["warm"])), expect(ok(1, "warm")),
         send(req(2, "span", [0.5, "running"])), send(req(3, "span", [0.1, "queued"])),
         send(req(4, "echo", ["refused"])),
         expect(err(4, -32003), ok(2, {"nonce": "running"}), ok(3, {"nonce": "queued"})), hub="small")


def cancels() -> None:
    case("cancel_queued_call", "Cancel: a queued call gets -32005 at once and never runs",
         send(req(1, "span", [0.5, "one"])), send(req(2, "span", [0.5, "two"])),
         send(req(3, "span", [0.5, "three"])), send(frame(CANCEL, 3, {})),
         expect(err(3, -32005)),
         expect(ok(1, {"nonce": "one"}), ok(2, {"nonce": "two"}), any_order=True), silence(200))
    case("cancel_running_call", "Cancel: a running call gets -32005; nothing else follows",
         send(req(1, "span", [2.0, "long"])), sleep(300), send(frame(CANCEL, 1, {})),
         expect(err(1, -32005), within_ms=1500), silence(300))
    case("cancel_body_is_ignored", "Cancel: the body is ignored (the old owner member has no effect)",
         send(req(1, "span", [2.0])), sleep(200),
         send(frame(CANCEL, 1, {"owner": b"somebody-else", "junk": 1}, timeout_ms=1)),
         expect(err(1, -32005), within_ms=1500))
    case("cancel_is_never_answered", "Cancel: no reply to the CANCEL itself; an unknown or "
         "finished id is ignored",
         send(frame(CANCEL, 42, {})), silence(200),
         send(req(1, "echo", ["done"])), expect(ok(1, "done")),
         send(frame(CANCEL, 1, {})), silence(200))
    case("cancel_from_another_connection_does_nothing", "Cancel: honoured only from the "
         "connection that sent the request",
         send(req(1, "span", [0.5, "mine"]), conn="a"), sleep(150),
         send(frame(CANCEL, 1, {}), conn="b"), silence(200, conn="b"),
         expect(ok(1, {"nonce": "mine"}), conn="a"))


def credits() -> None:
    case("credit_for_plain_call_ignored", "Streams: CREDIT for a call that is not a running "
         "stream of this connection is dropped, never answered",
         send(req(1, "span", [0.3, "plain"])), send(frame(CREDIT, 1, {"n": 5})),
         send(frame(CREDIT, 99, {"n": 1})), send(frame(CREDIT, 98, {"n": "x"})),
         expect(ok(1, {"nonce": "plain"})), silence(200))
    case("stream_window_2_with_credit", "Streams: at most window items beyond the credit; "
         "PARTIALs in order, then REPLY {items: count}",
         send(stream(1, "count", [5], window=2)), expect(part(1, 0), part(1, 1)), silence(300),
         send(frame(CREDIT, 1, {"n": 2})), expect(part(1, 2), part(1, 3)), silence(300),
         send(frame(CREDIT, 1, {"n": 2})), expect(part(1, 4), ok(1, {"items": 5})))
    case("credit_from_another_connection_ignored", "Streams: only the connection that owns a "
         "stream can give it credit; timeout_ms is ignored on CREDIT",
         send(stream(1, "count", [4], window=2), conn="a"), expect(part(1, 0), part(1, 1), conn="a"),
         send(frame(CREDIT, 1, {"n": 2}), conn="b"), silence(300, conn="a"), silence(100, conn="b"),
         send(frame(CREDIT, 1, {"n": 2}, timeout_ms=1), conn="a"),
         expect(part(1, 2), part(1, 3), ok(1, {"items": 4}), conn="a"))
    case("stream_credit_capped_by_delivered", "Streams: the hub forwards no more credit in "
         "total than the items it delivered; extra credit is dropped",
         send(stream(1, "count", [6], window=2)), expect(part(1, 0), part(1, 1)),
         send(frame(CREDIT, 1, {"n": 100})), expect(part(1, 2), part(1, 3)), silence(300),
         send(frame(CREDIT, 1, {"n": 2})), expect(part(1, 4), part(1, 5), ok(1, {"items": 6})))
    for name, window in (("absent", None), ("0", 0)):
        case(f"stream_window_{name}_means_64", f"Streams: window {name} on a streaming request means 64",
             send(stream(1, "count", [70], window=window)),
             expect(*[part(1, i) for i in range(64)]), silence(300),
             send(frame(CANCEL, 1, {})), expect(err(1, -32005)))
    case("stream_window_range", "Streams: window is an integer 1..1024; anything else is "
         "-32600 from the daemon",
         send(stream(1, "count", [2], window=1024)), expect(part(1, 0), part(1, 1), ok(1, {"items": 2})),
         send(stream(2, "count", [2], window=1025)), expect(err(2, -32600)),
         send(stream(3, "count", [2], window=-1)), expect(err(3, -32600)),
         send(stream(4, "count", [2], window="8")), expect(err(4, -32600)))
    case("stream_of_plain_tool", "Streams: a tool that is not a generator streams its result as one item",
         send(stream(1, "add", [1, 2], window=4)), expect(part(1, 3), ok(1, {"items": 1})))
    case("stream_generator_without_stream_flag", "Streams: without the stream flag a generator "
         "tool's items come back as one array",
         send(req(1, "count", [3])), expect(ok(1, [0, 1, 2])))
    case("stream_tool_error_after_items", "Streams: the error that ends a stream comes after "
         "the items before it",
         send(stream(1, "count", {"n": 5, "fail_after": 2}, window=8)),
         expect(part(1, 0), part(1, 1), err(1, -32000, data={"type": "RuntimeError"})))
    case("stream_cancel", "Streams/Cancel: CANCEL ends a running stream with -32005; nothing follows",
         send(stream(1, "count", [10], window=2)), expect(part(1, 0), part(1, 1)),
         send(frame(CANCEL, 1, {})), expect(err(1, -32005)), silence(300))
    case("stream_deadline", "Streams/Deadlines: the deadline bounds the whole stream",
         send(stream(1, "count", [10], window=2, timeout_ms=300)), expect(part(1, 0), part(1, 1)),
         expect(err(1, -32001), within_ms=3000), silence(300))
    case("stream_probe_heartbeat", "Kinds: the hub may send a client HEARTBEAT (id 0, body {}) "
         "while a stream waits on it; clients ignore it",
         send(stream(1, "count", [10], window=2)), expect(part(1, 0), part(1, 1)),
         expect({"kind": HEARTBEAT, "id": 0, "body": {"$equals": {}}}, within_ms=4000, keep_heartbeats=True),
         send(frame(CANCEL, 1, {})), expect(err(1, -32005)))
    case("stream_consumer_vanished", "Streams: a stream whose connection vanished is stopped "
         "and its daemon freed",
         send(stream(1, "count", [10], window=2), conn="gone"), expect(part(1, 0), part(1, 1), conn="gone"),
         close("gone"),
         poll_status({"daemons": {"$each": {"state": {"$in": ["idle", "starting"]}}},
                      "counters": {"abandoned": {"$gte": 1}}}))


def status() -> None:
    counters = ["accepted", "completed", "timeouts", "lost", "overloaded", "unavailable", "spawns",
                "start_failures", "crashes", "kills", "recycled", "cancelled", "abandoned",
                "dropped_replies"]
    daemon = {"id": contains("w"), "pid": typed("int", "nil"),
              "state": {"$in": ["starting", "idle", "busy", "stale", "stopping"]},
              "calls": typed("int"), "uptime_s": typed("float", "int", "nil"),
              "current_call": typed("int", "nil"), "call_age_s": typed("float", "int", "nil"),
              "tools": typed("array"), "rss": typed("int", "nil"),
              "last_beat_age_s": typed("float", "int", "nil"), "unresponsive": typed("bool"),
              "retiring": typed("str", "nil"), "generation": typed("int")}
    case("status_fields", "Status: the REPLY result map",
         send(req(1, "echo", ["warm"])), expect(ok(1, "warm")),
         send(frame(STATUS, 7, None)),
         expect(ok(7, {"protocol": PROTOCOL, "capabilities": {"$equals": CAPABILITIES},
                       "max_message_size": 67108864, "workers": 2,
                       "queue_depth": typed("int"), "queue_bytes": typed("int"), "closing": False,
                       "failures": typed("int"), "last_start_error": typed("str", "nil"),
                       "counters": {"$keys": counters, "$values": typed("int")},
                       "daemons": {"$min_len": 1, "$each": daemon | {"routing_id": typed("str")}},
                       "restarts": {"$each": {"id": typed("str"), "pid": typed("int", "nil"),
                                              "reason": typed("str"), "ago_s": typed("float", "int")}},
                       "endpoint": typed("str"), "hub_pid": typed("int"),
                       "generation": typed("int"), "reload": None})))
    case("status_prewarm", "Flags: STATUS with bit 3 (prewarm) starts every daemon up to workers",
         send(frame(STATUS, 1, None, flags=PREWARM)),
         expect(ok(1, {"daemons": {"$min_len": 2}})))
    case("status_without_routing_ids", "Status: routing_id only for local callers; "
         "max_message_size is the hub's limit",
         send(req(1, "echo", ["warm"])), expect(ok(1, "warm")),
         send(frame(STATUS, 2, None)),
         expect(ok(2, {"max_message_size": 8192, "workers": 1,
                       "daemons": {"$min_len": 1, "$each": daemon | {"routing_id": {"$absent": True}}}})),
         hub="small")
    oversized = frame(REQUEST, 2, {"method": "echo", "params": [b"\x00" * (8192 + 4096 + 100)]},
                      timeout_ms=TIMEOUT)
    case("request_over_max_message_size", "Frames: a body over max_message_size (8192 "
         "here) in a frame within the 4096-byte margin is -32700 with the request's id",
         send(req(1, "echo", [b"\x00" * 9000])), expect(err(1, -32700)), hub="small")
    two = [ext_ref(0, "b"), ext_ref(1, "b")]
    case("message_over_max_message_size_in_all", "Frames: max_message_size (8192 here) bounds "
         "a message's body and buffer frames together; over it is -32700 with the request's "
         "id, though each frame fits",
         send(req(1, "echo", [two]), b"\x00" * 5000, b"\x00" * 5000),
         expect(err(1, -32700, message=contains("limit"))),
         send(req(2, "echo", [two]), b"\x00" * 3000, b"\x00" * 3000),
         expect(ok(2, [b"\x00" * 3000, b"\x00" * 3000])), hub="small")
    case("oversized_frame_drops_connection", "Frames: a frame over max_message_size + 4096 "
         "makes the hub drop the connection, and every reply in flight on it",
         send(req(1, "span", [0.4, "lost"])), send(oversized), silence(1000),
         poll_status({"counters": {"dropped_replies": {"$gte": 1}}}), hub="small")


def control() -> None:
    def op(id: int, body) -> bytes:
        return frame(CONTROL, id, body)
    case("control_bodies_refused", "Control: a CONTROL body that is not a known op with its "
         "arguments is -32600, an argument out of range -32602, both with the header's id; "
         "nothing changes",
         send(op(1, {})), expect(err(1, -32600)),
         send(op(2, {"op": "restart"})), expect(err(2, -32600)),
         send(op(3, {"op": "scale"})), expect(err(3, -32600)),
         send(op(4, {"op": "scale", "workers": "2"})), expect(err(4, -32600)),
         send(op(5, {"op": "scale", "workers": 1025})), expect(err(5, -32602)),
         send(op(6, {"op": "stacks"})), expect(err(6, -32600)),
         send(op(7, {"op": "stacks", "daemon": "w999"})), expect(err(7, -32602, message=contains("w999"))),
         send(op(8, None)), expect(err(8, -32600)),
         poll_status({"workers": 2}))
    case("control_scale", "Control: scale answers at once with the new and the old size; "
         "STATUS workers shows it and the daemons follow (up: started now; down: the extras leave)",
         send(op(1, {"op": "scale", "workers": 3})), expect(ok(1, {"workers": 3, "was": 1})),
         poll_status({"workers": 3, "daemons": {"$len": 3, "$each": {"state": "idle"}}}, within_ms=30000),
         send(op(2, {"op": "scale", "workers": 1})), expect(ok(2, {"workers": 1, "was": 3})),
         poll_status({"workers": 1, "daemons": {"$len": 1}, "exits": {"scaled": 2}}, within_ms=30000),
         hub="scale")
    case("control_stacks", "Control: stacks of a busy daemon (by its STATUS id) is its threads' "
         "Python stacks, the tool's frame among them; the running call is not disturbed",
         send(req(1, "span", [1.0, "held"])),
         poll_status({"daemons": {"$len": 1, "$each": {"id": "w1", "state": "busy"}}}, within_ms=30000),
         send(op(2, {"op": "stacks", "daemon": "w1"})),
         expect(ok(2, {"daemon": "w1", "pid": typed("int"), "stacks": contains(" in span")})),
         expect(ok(1, {"nonce": "held"}), within_ms=10000),
         hub="stacks")
    case("control_reload", "Control: reload answers once every daemon was replaced, one at a "
         "time, each after its running call (whose REPLY comes first); STATUS then shows the "
         "new generation on every daemon",
         poll_status({"daemons": {"$len": 2, "$each": {"state": "idle"}}}, within_ms=30000),
         send(req(1, "span", [0.5, "kept"])),
         poll_status({"daemons": {"$len": 2}, "queue_depth": 0, "counters": {"accepted": 1}}),
         send(op(2, {"op": "reload"})),
         expect(ok(1, {"nonce": "kept"}),
                ok(2, {"generation": 1, "replaced": 2, "took_s": typed("float", "int")}), within_ms=60000),
         poll_status({"generation": 1, "reload": None,
                      "daemons": {"$len": 2, "$each": {"generation": 1, "state": "idle"}}}),
         hub="reload")


def _untagged_floats(node, path: str = "$") -> list[str]:
    """Where a bare JSON float would be written (every float must be tagged $float)."""
    if isinstance(node, float):
        return [path]
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _untagged_floats(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _untagged_floats(v, f"{path}[{i}]")]
    return []


def build() -> dict:
    CASES.clear()
    for group in (calls, values, extensions, buffers, ids, flags, versions, headers, bodies,
                  deadlines, cancels, credits, status, control):
        group()
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    doc = {"format": 2, "protocol": PROTOCOL,
           "tools": ["tests/toolsets/basic.py", "tests/toolsets/wire.py"], "hubs": HUBS,
           "readiness": READINESS, "settle": SETTLE, "status_ids": STATUS_IDS, "cases": CASES}
    floats = _untagged_floats(CASES)
    assert not floats, f"untagged floats at {floats[:5]}"
    return doc


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT} ({len(CASES)} cases)", file=sys.stderr)
