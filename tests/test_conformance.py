"""Replays docs/conformance/vectors.json against live hubs, with bare DEALER sockets.

No zbridge client code on the wire side: frames are the file's bytes, replies are read with
struct and msgpack, exactly as a client in another language would. One test per case, so a
change that breaks docs/PROTOCOL.md breaks a named test. The file's format is documented in
docs/conformance/README.md; this is its reference runner.
"""

from __future__ import annotations

import contextlib
import json
import struct
import sys
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from helpers import served

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "docs" / "conformance" / "vectors.json"
SPEC = json.loads(VECTORS.read_text())
HEADER = struct.Struct("!2sBBB3xIQ")
HEARTBEAT, STATUS = 4, 6
SETTLE_S = 15.0
STATUS_IDS = iter(range(1 << 40, 1 << 41))  # ids no case uses

TYPES = {"nil": type(None), "bool": bool, "str": str, "bin": bytes, "array": list, "map": dict,
         "float": float}


# --- the matcher (see README: patterns) --------------------------------------------------

def _is_type(value, name: str) -> bool:
    if name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, TYPES[name])


def mismatch(pattern, value, path: str = "$") -> str | None:
    """Why ``value`` does not match ``pattern``, or None if it does."""
    if isinstance(pattern, dict):
        operators = {k: v for k, v in pattern.items() if k.startswith("$")}
        why = _operators(operators, value, path) if operators else None
        if why or len(operators) == len(pattern):
            return why
        if not isinstance(value, dict):
            return f"{path}: expected a map, got {value!r:.200}"
        for key, sub in pattern.items():
            if key.startswith("$"):
                continue
            if isinstance(sub, dict) and sub.get("$absent"):
                if key in value:
                    return f"{path}.{key}: expected absent, got {value[key]!r:.200}"
                continue
            if key not in value:
                return f"{path}.{key}: missing (have {sorted(map(str, value))})"
            why = mismatch(sub, value[key], f"{path}.{key}")
            if why:
                return why
        return None
    if isinstance(pattern, list):
        if not isinstance(value, list) or len(value) != len(pattern):
            return f"{path}: expected {pattern!r:.200}, got {value!r:.200}"
        for i, (p, v) in enumerate(zip(pattern, value)):
            why = mismatch(p, v, f"{path}[{i}]")
            if why:
                return why
        return None
    same_type = (type(pattern) is type(value)) or (pattern is None and value is None)
    if not same_type or pattern != value:
        return f"{path}: expected {pattern!r:.200}, got {value!r:.200}"
    return None


def _operators(pattern: dict, value, path: str) -> str | None:
    for op, arg in pattern.items():
        why = None
        if op == "$int":
            why = None if _is_type(value, "int") and value == int(arg) else f"expected {arg}"
        elif op == "$bin":
            why = None if isinstance(value, bytes) and value == bytes.fromhex(arg) else f"expected bin {arg}"
        elif op == "$type":
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
            why = mismatch(arg, value, path) if not isinstance(arg, dict) else (
                None if isinstance(value, dict) and set(value) == set(arg) and
                all(mismatch(arg[k], value[k]) is None for k in arg) else f"expected exactly {arg!r}")
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
            if not isinstance(value, (list, dict, str, bytes)):
                why = "expected something with a length"
            elif (len(value) != arg) if op == "$len" else (len(value) < arg):
                why = f"expected {op[1:]} {arg}, got {len(value)}"
        else:
            raise ValueError(f"unknown pattern operator {op}")
        if why:
            return why if why.startswith("$") else f"{path}: {why}, got {value!r:.300}"
    return None


def _id_of(spec_id) -> int:
    return int(spec_id["$int"]) if isinstance(spec_id, dict) else spec_id


def decode(frame: bytes) -> dict:
    magic, version, kind, flags, timeout_ms, id = HEADER.unpack_from(frame)
    assert (magic, version) == (b"ZB", 1), f"reply with a bad header: {frame[:20].hex()}"
    body = msgpack.unpackb(frame[HEADER.size:], raw=False, strict_map_key=False)
    return {"kind": kind, "id": id, "flags": flags, "body": body}


def spec_mismatch(spec: dict, msg: dict) -> str | None:
    for field in ("kind", "flags"):
        if field in spec and spec[field] != msg[field]:
            return f"{field}: expected {spec[field]}, got {msg[field]}"
    if "id" in spec and _id_of(spec["id"]) != msg["id"]:
        return f"id: expected {_id_of(spec['id'])}, got {msg['id']}"
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
                endpoint, proc = stack.enter_context(served(
                    directory, "--tools", str(ROOT / SPEC["tools"]), *args))
                procs.append(proc)
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
        frames = sock.recv_multipart()
        assert len(frames) == 1, f"a reply of {len(frames)} frames"
        msg = decode(frames[0])
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


def run_poll_status(sock: zmq.Socket, step: dict) -> None:
    deadline = time.monotonic() + step["within_ms"] / 1000
    why = "no status reply"
    while time.monotonic() < deadline:
        id = next(STATUS_IDS)
        sock.send(HEADER.pack(b"ZB", 1, STATUS, 0, 0, id) + msgpack.packb(None))
        msg = receive(sock, deadline)
        while msg is not None and msg["id"] != id:
            msg = receive(sock, deadline)
        if msg is not None:
            why = mismatch(step["poll_status"], msg["body"]["result"])
            if why is None:
                return
        time.sleep(0.05)
    pytest.fail(f"status never matched: {why}")


def settle(endpoint: str) -> None:
    """Between cases: wait until no call is queued or running, so cases do not interfere."""
    conns = Connections(endpoint)
    try:
        run_poll_status(conns["settle"], {
            "poll_status": {"queue_depth": 0,
                            "daemons": {"$each": {"state": {"$in": ["starting", "idle", "stopping"]}}}},
            "within_ms": SETTLE_S * 1000})
    finally:
        conns.close()


def replay(case: dict, endpoint: str) -> None:
    conns = Connections(endpoint)
    try:
        for step in case["steps"]:
            conn = step.get("connection", "a")
            if "send" in step:
                frames = step["send"] if isinstance(step["send"], list) else [step["send"]]
                conns[conn].send_multipart([bytes.fromhex(f) for f in frames])
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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", SPEC["cases"], ids=[c["name"] for c in SPEC["cases"]])
def test_vector(case, hubs):
    endpoint = hubs(case.get("hub", "default"))
    settle(endpoint)
    replay(case, endpoint)


@pytest.mark.parametrize("pattern, value, matches", [
    ({"a": 1}, {"a": 1, "b": 2}, True),
    ({"a": 1}, {"a": True}, False),
    ({"a": 1}, {"a": 1.0}, False),
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
