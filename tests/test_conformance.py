"""Replays docs/conformance/vectors.json against live hubs, with bare DEALER sockets.

No zbridge client code on the wire side: frames are the file's bytes, replies are read with
struct and msgpack, exactly as a client in another language would. One test per case, so a
change that breaks docs/PROTOCOL.md breaks a named test. The file's format is documented in
docs/conformance/README.md; this is its reference runner. A case marked ``pending`` states a
rule the hub does not follow yet: it must fail here (strict xfail), so the mark goes as soon
as the hub catches up.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import struct
import sys
import time
from pathlib import Path
from typing import NamedTuple

import msgpack
import pytest
import zmq

from helpers import served

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "docs" / "conformance" / "vectors.json"
SPEC = json.loads(VECTORS.read_text())
PROTOCOL = SPEC["protocol"]
HEADER = struct.Struct("!2sBBB3xIQ")
HEARTBEAT, STATUS = 4, 6
STATUS_IDS = itertools.count(int(SPEC["status_ids"]["first"]["$int"]))  # ids no case uses


class Ext(NamedTuple):
    """An extension value as it arrived: its code and payload bytes, undecoded."""
    code: int
    data: bytes


# --- the matcher (see README: values and patterns) ----------------------------------------

LITERALS = {"$int", "$float", "$bin", "$ext"}  # tags that write a value, not a test
TYPES = {"nil": type(None), "bool": bool, "str": str, "bin": bytes, "array": list, "map": dict,
         "float": float, "ext": Ext}


def to_bytes(spec) -> bytes:
    """BYTES notation: a hex string, or {"$bin": hex, "$times": n}."""
    if isinstance(spec, str):
        return bytes.fromhex(spec)
    return bytes.fromhex(spec["$bin"]) * spec.get("$times", 1)


def _is_type(value, name: str) -> bool:
    if name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, TYPES[name])


def _literal(pattern: dict, value, path: str) -> str | None:
    """A tagged value: $int, $float, $bin (+ $times) or $ext (+ hex | text | msgpack)."""
    if "$int" in pattern:
        ok = _is_type(value, "int") and value == int(pattern["$int"])
    elif "$float" in pattern:
        want = float(pattern["$float"])
        ok = isinstance(value, float) and (
            math.isnan(want) and math.isnan(value)
            or (value == want and math.copysign(1, value) == math.copysign(1, want)))
    elif "$bin" in pattern:
        ok = isinstance(value, bytes) and value == to_bytes(pattern)
    else:
        ok = isinstance(value, Ext) and value.code == pattern["$ext"]
        if ok and "hex" in pattern:
            ok = value.data == bytes.fromhex(pattern["hex"])
        if ok and "text" in pattern:
            ok = value.data == pattern["text"].encode()
        if ok and "msgpack" in pattern:
            return mismatch(pattern["msgpack"], decode_body(value.data), f"{path}<ext {value.code}>")
    return None if ok else f"{path}: expected {pattern!r:.200}, got {value!r:.200}"


def mismatch(pattern, value, path: str = "$", exact: bool = False) -> str | None:
    """Why ``value`` does not match ``pattern``, or None if it does; ``exact`` (inside
    $equals): maps have exactly the pattern's keys, at every depth."""
    if isinstance(pattern, dict):
        operators = {k: v for k, v in pattern.items() if k.startswith("$")}
        if operators.keys() & LITERALS:
            return _literal(pattern, value, path)
        if exact and operators.keys() - {"$pairs"}:
            raise ValueError(f"{path}: only values may appear inside $equals, not {sorted(operators)}")
        why = _operators(operators, value, path) if operators else None
        if why or (operators and len(operators) == len(pattern)):
            return why
        if not isinstance(value, dict):
            return f"{path}: expected a map, got {value!r:.200}"
        if exact and set(value) != set(pattern):
            return f"{path}: expected exactly the keys {sorted(pattern)}, got {sorted(map(str, value))}"
        for key, sub in pattern.items():
            if key.startswith("$"):
                continue
            if isinstance(sub, dict) and sub.get("$absent"):
                if key in value:
                    return f"{path}.{key}: expected absent, got {value[key]!r:.200}"
                continue
            if key not in value:
                return f"{path}.{key}: missing (have {sorted(map(str, value))})"
            why = mismatch(sub, value[key], f"{path}.{key}", exact)
            if why:
                return why
        return None
    if isinstance(pattern, list):
        if not isinstance(value, list) or len(value) != len(pattern):
            return f"{path}: expected {pattern!r:.200}, got {value!r:.200}"
        for i, (p, v) in enumerate(zip(pattern, value)):
            why = mismatch(p, v, f"{path}[{i}]", exact)
            if why:
                return why
        return None
    if isinstance(pattern, float):
        raise ValueError(f"{path}: a bare float in the vectors file (floats are tagged $float)")
    same_type = (type(pattern) is type(value)) or (pattern is None and value is None)
    if not same_type or pattern != value:
        return f"{path}: expected {pattern!r:.200}, got {value!r:.200}"
    return None


def _length(value) -> int | None:
    """Elements of an array, entries of a map, code points of a str, bytes of a bin."""
    return len(value) if isinstance(value, (list, dict, str, bytes)) else None


def _operators(pattern: dict, value, path: str) -> str | None:
    for op, arg in pattern.items():
        why = None
        if op == "$type":
            names = arg if isinstance(arg, list) else [arg]
            why = None if any(_is_type(value, n) for n in names) else f"expected type {names}"
        elif op == "$any":
            why = None
        elif op == "$absent":
            why = "expected absent"  # reached only outside a map member
        elif op == "$contains":
            why = None if isinstance(value, str) and arg in value else f"expected text containing {arg!r}"
        elif op == "$in":
            why = None if any(mismatch(a, value) is None for a in arg) else f"expected one of {arg}"
        elif op == "$gte":
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            why = None if number and value >= arg else f"expected a number >= {arg}"
        elif op == "$equals":
            why = mismatch(arg, value, path, exact=True)
        elif op == "$pairs":
            if not isinstance(value, dict) or len(value) != len(arg):
                why = f"expected a map of {len(arg)} pairs"
            else:
                keys = list(value)
                for k, v in arg:
                    match = [key for key in keys if mismatch(k, key) is None]
                    why = why or (f"no key {k!r}" if not match else mismatch(v, value[match[0]], f"{path}[{k!r}]"))
        elif op == "$keys":
            why = None if isinstance(value, dict) and set(value) == set(arg) else f"expected exactly the keys {sorted(arg)}"
        elif op == "$values":
            if not isinstance(value, dict):
                why = "expected a map"
            else:
                why = next(filter(None, (mismatch(arg, v, f"{path}.{k}") for k, v in value.items())), None)
        elif op == "$each":
            if not isinstance(value, list):
                why = "expected an array"
            else:
                why = next(filter(None, (mismatch(arg, v, f"{path}[{i}]") for i, v in enumerate(value))), None)
        elif op in ("$len", "$min_len"):
            length = _length(value)
            if length is None:
                why = "expected an array, map, str or bin"
            elif (length != arg) if op == "$len" else (length < arg):
                why = f"expected {op[1:]} {arg}, got {length}"
        else:
            raise ValueError(f"unknown pattern operator {op}")
        if why:
            return why if why.startswith("$") else f"{path}: {why}, got {value!r:.300}"
    return None


def _id_of(spec_id) -> int:
    return int(spec_id["$int"]) if isinstance(spec_id, dict) else spec_id


def _ext(code: int, data: bytes) -> Ext:
    return Ext(code, data)


def decode_body(data: bytes):
    """One msgpack value; extension values stay undecoded (Ext), Timestamps too (msgpack
    decodes code -1 itself: its canonical bytes are what every packer writes)."""
    body = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext, timestamp=0)
    return _timestamps_as_ext(body)


def _timestamps_as_ext(value):
    if isinstance(value, msgpack.Timestamp):
        return Ext(-1, value.to_bytes())
    if isinstance(value, list):
        return [_timestamps_as_ext(v) for v in value]
    if isinstance(value, dict):
        return {_timestamps_as_ext(k): _timestamps_as_ext(v) for k, v in value.items()}
    return value


def decode(frames: list[bytes]) -> dict:
    frame = frames[0]
    magic, version, kind, flags, timeout_ms, id = HEADER.unpack_from(frame)
    assert magic == b"ZB", f"reply with a bad header: {frame[:20].hex()}"
    return {"kind": kind, "id": id, "flags": flags, "version": version,
            "body": decode_body(frame[HEADER.size:]), "buffers": frames[1:]}


def spec_mismatch(spec: dict, msg: dict) -> str | None:
    for field in ("kind", "flags"):
        if field in spec and spec[field] != msg[field]:
            return f"{field}: expected {spec[field]}, got {msg[field]}"
    if spec.get("version", PROTOCOL) != msg["version"]:
        return f"version: expected {spec.get('version', PROTOCOL)}, got {msg['version']}"
    if "id" in spec and _id_of(spec["id"]) != msg["id"]:
        return f"id: expected {_id_of(spec['id'])}, got {msg['id']}"
    buffers = spec.get("buffers", [])
    if len(buffers) != len(msg["buffers"]):
        return f"buffers: expected {len(buffers)} buffer frame(s), got {len(msg['buffers'])}"
    for i, (pattern, frame) in enumerate(zip(buffers, msg["buffers"])):
        why = mismatch(pattern, frame, f"buffer {i}")
        if why:
            return why
    return mismatch(spec["body"], msg["body"]) if "body" in spec else None


# --- hubs and connections ------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_leaked_processes():
    """The hubs here outlive single cases; each hub's own teardown checks it stopped."""
    yield


@pytest.fixture(scope="module")
def hubs(tmp_path_factory):
    """Starts each hub the first time a case needs it; all are stopped with SIGTERM at the end."""
    started: dict[str, str] = {}
    procs = []
    with contextlib.ExitStack() as stack:
        def get(name: str) -> str:
            if name not in started:
                directory = tmp_path_factory.mktemp(f"hub-{name}")
                args = [str(ROOT / a) if a.startswith("tests/") else a for a in SPEC["hubs"][name]["args"]]
                tools = [arg for path in SPEC["tools"] for arg in ("--tools", str(ROOT / path))]
                endpoint, proc = stack.enter_context(served(directory, *tools, *args))
                procs.append(proc)
                wait_ready(endpoint)
                started[name] = endpoint
            return started[name]
        yield get
    assert all(proc.poll() is not None for proc in procs)


class Connections:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.context = zmq.Context.instance()
        self.socks: dict[str, zmq.Socket] = {}

    def __getitem__(self, name: str) -> zmq.Socket:
        if name not in self.socks:
            sock = self.context.socket(zmq.DEALER)
            sock.linger = 0
            sock.sndtimeo = 5000
            sock.connect(self.endpoint)
            self.socks[name] = sock
        return self.socks[name]

    def close(self, name: str | None = None) -> None:
        for key in [name] if name else list(self.socks):
            self.socks.pop(key).close(0)


def receive(sock: zmq.Socket, deadline: float, keep_heartbeats: bool = False) -> dict | None:
    """The next message before ``deadline`` (monotonic), skipping HEARTBEATs unless kept."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(left * 1000):
            return None
        msg = decode(sock.recv_multipart())
        if msg["kind"] == HEARTBEAT and not keep_heartbeats:
            continue
        return msg


def run_expect(sock: zmq.Socket, step: dict) -> None:
    pending = list(step["expect"])
    deadline = time.monotonic() + step["within_ms"] / 1000
    seen = []
    while pending:
        msg = receive(sock, deadline, step.get("keep_heartbeats", False))
        assert msg is not None, f"timed out waiting for {pending[0]} (received so far: {seen})"
        seen.append(msg)
        candidates = pending if step.get("any_order") else pending[:1]
        reasons = [spec_mismatch(spec, msg) for spec in candidates]
        for spec, why in zip(candidates, reasons):
            if why is None:
                pending.remove(spec)
                break
        else:
            pytest.fail(f"unexpected message {msg!r:.500}: {reasons[0]}")


def run_poll_status(sock: zmq.Socket, step: dict, interval_ms: int | None = None) -> None:
    """STATUS (fresh ids) until its result matches; other messages on that connection are
    discarded, and the next STATUS goes ``interval_ms`` after a reply."""
    interval = (interval_ms if interval_ms is not None else SPEC["settle"]["interval_ms"]) / 1000
    deadline = time.monotonic() + step["within_ms"] / 1000
    why = "no status reply"
    while time.monotonic() < deadline:
        id = next(STATUS_IDS)
        sock.send(HEADER.pack(b"ZB", PROTOCOL, STATUS, 0, 0, id) + msgpack.packb(None))
        msg = receive(sock, deadline)
        while msg is not None and msg["id"] != id:
            msg = receive(sock, deadline)
        if msg is not None:
            why = mismatch(step["poll_status"], msg["body"]["result"])
            if why is None:
                return
        time.sleep(interval)
    pytest.fail(f"status never matched: {why}")


def wait_ready(endpoint: str) -> None:
    """Readiness: a STATUS on a fresh connection is answered."""
    conns = Connections(endpoint)
    try:
        ready = SPEC["readiness"]
        run_poll_status(conns["ready"], {"poll_status": {"protocol": PROTOCOL},
                                         "within_ms": ready["within_ms"]}, ready["interval_ms"])
    finally:
        conns.close()


def settle(endpoint: str) -> None:
    """Between cases: wait until no call is queued or running, so cases do not interfere."""
    conns = Connections(endpoint)
    try:
        run_poll_status(conns["settle"], {"poll_status": SPEC["settle"]["pattern"],
                                          "within_ms": SPEC["settle"]["within_ms"]})
    finally:
        conns.close()


def replay(case: dict, endpoint: str) -> None:
    conns = Connections(endpoint)
    try:
        for step in case["steps"]:
            conn = step.get("connection", "a")
            if "send" in step:
                frames = step["send"] if isinstance(step["send"], list) else [step["send"]]
                conns[conn].send_multipart([to_bytes(f) for f in frames])
            elif "expect" in step:
                run_expect(conns[conn], step)
            elif "silence_ms" in step:
                msg = receive(conns[conn], time.monotonic() + step["silence_ms"] / 1000)
                assert msg is None, f"expected silence on {conn!r}, got {msg!r:.500}"
            elif "sleep_ms" in step:
                time.sleep(step["sleep_ms"] / 1000)
            elif "close" in step:
                conns.close(step["close"])
            elif "poll_status" in step:
                run_poll_status(conns[conn], step)
            else:
                raise ValueError(f"unknown step {step}")
    finally:
        conns.close()


def test_vectors_file_is_generated_from_its_script():
    sys.path.insert(0, str(VECTORS.parent))
    try:
        import generate
    finally:
        sys.path.pop(0)
    assert generate.render() == VECTORS.read_text(), "run python docs/conformance/generate.py"


def _param(case: dict):
    marks = [pytest.mark.xfail(strict=True, reason=case["pending"])] if "pending" in case else []
    return pytest.param(case, id=case["name"], marks=marks)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", [_param(c) for c in SPEC["cases"]])
def test_vector(case, hubs):
    endpoint = hubs(case.get("hub", "default"))
    settle(endpoint)
    replay(case, endpoint)


@pytest.mark.parametrize("pattern, value, matches", [
    ({"a": 1}, {"a": 1, "b": 2}, True),
    ({"a": 1}, {"a": True}, False),
    ({"a": 1}, {"a": 1.0}, False),
    ({"a": {"$float": "1.0"}}, {"a": 1}, False),
    ({"a": {"$float": "1.0"}}, {"a": 1.0}, True),
    ({"$float": "NaN"}, float("nan"), True),
    ({"$float": "-0.0"}, 0.0, False),
    ({"$float": "-0.0"}, -0.0, True),
    ({"$bin": "0001", "$times": 2}, b"\x00\x01\x00\x01", True),
    ({"$ext": 3, "text": "2026-01-02"}, Ext(3, b"2026-01-02"), True),
    ({"$ext": 3, "hex": "00"}, Ext(4, b"\x00"), False),
    ({"$ext": 7, "msgpack": [1, "a"]}, Ext(7, b"\x92\x01\xa1a"), True),
    ({"$equals": {"a": {"b": 1}}}, {"a": {"b": 1, "c": 2}}, False),
    ({"$equals": {"a": [{"b": 1}]}}, {"a": [{"b": 1}]}, True),
    ({"$len": 1}, "字", True),
    ({"$len": 3}, "字".encode(), True),
    ({"a": {"$absent": True}}, {"b": 1}, True),
    ({"a": {"$absent": True}}, {"a": None}, False),
    ({"$keys": ["a"], "a": 1}, {"a": 1, "b": 2}, False),
    ({"$equals": {}}, {"x": 1}, False),
    ({"$int": "18446744073709551615"}, 2**64 - 1, True),
    ({"$bin": "00ff"}, b"\x00\xff", True),
    ({"$bin": "00ff"}, "\x00\xff", False),
    ({"$type": ["int", "nil"]}, None, True),
    ({"$type": "int"}, False, False),
    ({"$in": ["idle", "busy"]}, "stale", False),
    ({"$gte": 1}, 0, False),
    ({"$each": {"s": "idle"}, "$min_len": 1}, [], False),
    ({"$values": {"$type": "int"}}, {"a": 1, "b": "x"}, False),
    ({"$pairs": [[1, "one"]]}, {1: "one"}, True),
    ({"$pairs": [[1, "one"]]}, {"1": "one"}, False),
    ({"$contains": "5"}, "request id 5 is already in flight", True),
    ([1, 2], [1, 2, 3], False),
])
def test_the_matcher_itself(pattern, value, matches):
    assert (mismatch(pattern, value) is None) is matches
