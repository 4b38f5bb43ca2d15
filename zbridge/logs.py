"""Log records as one JSON object per line (``log_format = "json"``), and the text form of
the broker's lifecycle notes.

A record's structured fields arrive as ``extra`` (``daemon``, ``pid``, ``tool``,
``request_id``, ``startup_s``...); the JSON formatter writes every attribute a plain
``LogRecord`` does not have, so whatever a note carries reaches the line. With "json",
``zbridge serve`` writes nothing else on stderr: its banners are records too
(``announce``), and so are other libraries' records and Python warnings (``json_everywhere``).

zbridge's logger has a ``NullHandler``, as a library's should: a program that configured no
logging does not get the pool's warnings printed by logging's last-resort handler (its
errors reach it as exceptions that say the same).

Values that reach a line come from peers (a tool name is whatever a caller sent), so the
text forms escape control characters in every value (``escape``: a newline or ESC becomes
``\\n`` or ``\\x1b``) and a value can never start a forged line or drive the terminal;
JSON escapes them by itself.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_PLAIN = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_MARK = "_zbridge_json"  # on the handler we add, so configuring twice adds it once
JSON_MSG = "_json_msg"   # a record attribute: the "msg" of its JSON form, when the text form adds a prefix

logging.getLogger("zbridge").addHandler(logging.NullHandler())


def _stamp(created: float, msecs: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(msecs):03d}Z"


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
            "ts": _stamp(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "msg": getattr(record, JSON_MSG, None) or record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _PLAIN and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=repr, separators=(",", ":"))


def record_line(level: str, logger: str, msg: str, **fields: Any) -> str:
    """One JSON record as JsonFormatter writes it, for a writer without a configured logger
    (a daemon that is about to exit, a banner that shows at every level)."""
    now = time.time()
    out: dict[str, Any] = {"ts": _stamp(now, (now % 1) * 1000), "level": level, "logger": logger, "msg": msg}
    out.update(fields)
    return json.dumps(out, default=repr, separators=(",", ":"))


def announce(log_format: str, event: str, text: str, level: str = "INFO", **fields: Any) -> None:
    """A line ``zbridge serve`` always writes on stderr (started, stopped, a warning about its
    endpoint, why it could not start): ``text`` as it is, or with "json" a record on
    ``zbridge.hub`` with ``event`` and ``fields``."""
    line = record_line(level, "zbridge.hub", text, event=event, **fields) if log_format == "json" else text
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def configure_process(level: str, log_format: str, text_format: str) -> None:
    """A process's own logging (a daemon's): records on stderr at ``level``, as JSON lines
    with "json" (what a hub that spawns a daemon asks for, to re-log them), else as text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(text_format))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def json_everywhere() -> None:
    """With "json": records of other loggers (and Python warnings) leave as JSON too."""
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter())


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
