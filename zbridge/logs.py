"""Log records as one JSON object per line (``log_format = "json"``), and the text form of
the broker's lifecycle notes.

A record's structured fields arrive as ``extra`` (``daemon``, ``pid``, ``tool``,
``request_id``, ``startup_s``...); the JSON formatter writes every attribute a plain
``LogRecord`` does not have, so whatever a note carries reaches the line.

Values that reach a line come from peers (a tool name is whatever a caller sent), so the
text forms escape control characters in every value (``escape``: a newline or ESC becomes
``\\n`` or ``\\x1b``) and a value can never start a forged line or drive the terminal;
JSON escapes them by itself.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

_PLAIN = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_MARK = "_zbridge_json"  # on the handler we add, so configuring twice adds it once


# C0 controls, DEL and C1 controls, as Python escapes (what repr() would print)
_ESCAPES = {c: repr(chr(c))[1:-1] for c in (*range(0x20), *range(0x7F, 0xA0))}


def escape(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``...)."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose message part has its control characters escaped (the
    traceback of ``exc_info`` keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        record.message = escape(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extras, "exc"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _PLAIN and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=repr, separators=(",", ":"))


def configure(log_format: str, stream: Any = None) -> None:
    """With "json", zbridge's loggers write JSON lines to ``stream`` (stderr) instead of
    passing records up to the root logger; "text" leaves logging as the program set it."""
    logger = logging.getLogger("zbridge")
    ours = [h for h in logger.handlers if getattr(h, _MARK, False)]
    if log_format != "json":
        if ours:  # undo only what we did
            for handler in ours:
                logger.removeHandler(handler)
            logger.propagate = True
        return
    if not ours:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        setattr(handler, _MARK, True)
        logger.addHandler(handler)
    logger.propagate = False


def note_text(event: str, fields: dict[str, Any]) -> str:
    """``daemon_exit daemon=w1 pid=123 reason=crashed ...``: the human form of a note."""
    parts = [escape(event)]
    for key, value in fields.items():
        if value is not None:
            text = str(value)  # repr() escapes control characters too
            parts.append(f"{key}={text!r}" if " " in text else f"{key}={escape(text)}")
    return " ".join(parts)
