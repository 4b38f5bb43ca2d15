"""Log records as one JSON object per line (``log_format = "json"``), and the text form of
the broker's lifecycle notes.

A record's structured fields arrive as ``extra`` (``daemon``, ``pid``, ``tool``,
``request_id``, ``startup_s``...); the JSON formatter writes every attribute a plain
``LogRecord`` does not have, so whatever a note carries reaches the line.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

_PLAIN = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_MARK = "_zbridge_json"  # on the handler we add, so configuring twice adds it once


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
    parts = [event]
    for key, value in fields.items():
        if value is not None:
            text = str(value)
            parts.append(f"{key}={text!r}" if " " in text else f"{key}={text}")
    return " ".join(parts)
