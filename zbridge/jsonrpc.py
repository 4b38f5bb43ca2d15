"""JSON-RPC 2.0 objects and the line-delimited stdio protocol. Pure, no I/O.

One line in is one JSON value: a request object or a batch (array) of them. One line out is
the reply: an object, an array for a batch, or nothing for notifications. Ids come back
exactly as sent. Seed compatibility: method ``execute_tool`` with
``{"tool_name": ..., "args": ...}`` is the same as calling the tool by its own name.

Streaming is opt-in: method ``zbridge.stream`` with ``{"tool": ..., "args": ...}`` asks for
each item as a ``zbridge.partial`` notification before the reply. Without it, every request
gets exactly one line back, so a client reading one line per request never drifts.
"""

from __future__ import annotations

import json
from collections import namedtuple

from .errors import BridgeError, InternalError, InvalidParams, InvalidRequest, ParseError

_MISSING = object()
SEED_METHOD = "execute_tool"
STREAM_METHOD = "zbridge.stream"    # request: stream this tool's items as notifications
PARTIAL_METHOD = "zbridge.partial"  # notification carrying one streamed item


TYPE_CHECKING = False  # typing, like dataclasses, is too slow an import for the pipe's start
if TYPE_CHECKING:
    from typing import Any, Callable


class Call(namedtuple("Call", "id method params notification")):
    """One valid request object from a line (params: list[Any], dict or None)."""
    __slots__ = ()


class Invalid(namedtuple("Invalid", "id error")):
    """A request object that failed validation; it gets this error (a BridgeError) as its reply."""
    __slots__ = ()


def result_object(id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": result}


def error_object(id: Any, error: BridgeError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "error": error.to_wire()}


def notification_object(method: str, params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def encode_line(obj: Any) -> bytes:
    """JSON text on one line; raises TypeError/ValueError if obj is not JSON-encodable."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                      default=_no_json_form).encode() + b"\n"


def _no_json_form(value: Any) -> Any:
    """JSON has no datetime, Decimal, set, array...: refuse by name rather than guess a
    lossy form the other side could not tell from a plain string or list."""
    cls = type(value)
    name = f"{cls.__module__}.{cls.__qualname__}".removeprefix("builtins.")
    raise TypeError(f"a value of type {name} has no JSON form on the --stdio pipe: convert it "
                    "(str(), .isoformat(), list(), .tolist()) or call through the zmq pool, "
                    "which carries it (see Values in docs/PROTOCOL.md)")


def partial_line(id: Any, seq: int, item: Any) -> bytes:
    """The ``zbridge.partial`` notification line for item ``seq`` of stream ``id``;
    InternalError when JSON cannot carry the item (it ends the stream)."""
    try:
        return encode_line(notification_object(PARTIAL_METHOD, {"id": id, "seq": seq, "item": item}))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InternalError(f"item {seq} cannot be encoded as JSON: {exc}"[:500]) from None


def encode_reply(obj: dict[str, Any]) -> bytes:
    """A reply object as its line; a result JSON cannot carry becomes -32603 naming why."""
    try:
        return encode_line(obj)
    except (TypeError, ValueError, RecursionError) as exc:
        return encode_line(error_object(obj.get("id"), InternalError(
            f"result cannot be encoded as JSON: {type(exc).__name__}: {exc}"[:500])))


def encode_replies(replies: list[dict[str, Any] | None], is_batch: bool) -> bytes | None:
    """The one line answering a line's items (None entries: notifications), or None when
    nothing is to be written: a lone object, or an array for a batch."""
    present = [r for r in replies if r is not None]
    if not present:
        return None
    if not is_batch:
        return encode_reply(present[0])
    return b"[" + b",".join(encode_reply(r).rstrip(b"\n") for r in present) + b"]\n"


def answer(item: Call | Invalid, run: Callable[[Call], Any]) -> dict[str, Any] | None:
    """The reply object for one item: ``run(call)``'s result or the BridgeError it raised;
    None for a notification (it runs, nothing is written)."""
    if isinstance(item, Invalid):
        return error_object(item.id, item.error)
    try:
        reply = result_object(item.id, run(item))
    except BridgeError as exc:
        reply = error_object(item.id, exc)
    return None if item.notification else reply


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def parse_object(obj: Any) -> Call | Invalid:
    """Validate one request object."""
    if not isinstance(obj, dict):
        return Invalid(None, InvalidRequest("a request must be a JSON object"))
    raw_id = obj.get("id", _MISSING)
    id = None if raw_id is _MISSING or not _valid_id(raw_id) else raw_id
    if raw_id is not _MISSING and not _valid_id(raw_id):
        return Invalid(None, InvalidRequest("'id' must be a string, a number or null"))
    if obj.get("jsonrpc") != "2.0":
        return Invalid(id, InvalidRequest("'jsonrpc' must be exactly \"2.0\""))
    method = obj.get("method")
    if not isinstance(method, str):
        return Invalid(id, InvalidRequest("'method' must be a string"))
    params = obj.get("params")
    if params is not None and not isinstance(params, (list, dict)):
        return Invalid(id, InvalidRequest("'params' must be an array or an object"))
    return Call(id, method, params, raw_id is _MISSING)


def parse_line(line: bytes | str) -> tuple[list[Call | Invalid], bool]:
    """Decode one line into request objects; returns (items, is_batch).

    Undecodable JSON yields a single Invalid with ParseError; an empty batch a single
    Invalid with InvalidRequest, answered as a lone object as the spec requires.
    """
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as exc:
        return [Invalid(None, ParseError(f"invalid JSON: {exc}"[:300]))], False
    if isinstance(value, list):
        if not value:
            return [Invalid(None, InvalidRequest("empty batch"))], False
        return [parse_object(item) for item in value], True
    return [parse_object(value)], False


def _unwrap(method: str, params: Any, name_key: str) -> tuple[str, Any]:
    """(tool name, arguments) from an envelope ``{name_key: str, "args": ...}``."""
    if not isinstance(params, dict) or not isinstance(params.get(name_key), str):
        raise InvalidParams(f"{method} needs params {{\"{name_key}\": str, \"args\": object|array|null}}")
    args = params.get("args")
    if args is not None and not isinstance(args, (list, dict)):
        raise InvalidParams(f"{method} 'args' must be an object, an array or null")
    return params[name_key], args


def resolve_tool_call(method: str, params: Any) -> tuple[str, Any]:
    """Map the seed's ``execute_tool`` envelope to (tool name, arguments)."""
    if method != SEED_METHOD:
        return method, params
    return _unwrap(SEED_METHOD, params, "tool_name")


def resolve_stream_call(params: Any) -> tuple[str, Any]:
    """The (tool name, arguments) of a ``zbridge.stream`` request's params."""
    return _unwrap(STREAM_METHOD, params, "tool")
