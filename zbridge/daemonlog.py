"""A spawned daemon's stderr, as the hub's log records.

The hub starts its daemons with ``--log-format json`` (``daemon_args``), so what the daemon
itself logs (a tool error, a start failure and its traceback) arrives as one JSON record per
line; anything else on its stderr (a tool's ``print``, a C library's message) is a plain
line. ``forward`` turns both into records on the ``zbridge.daemon`` logger tagged with the
daemon (``daemon``: its public name, ``pid``), at the daemon record's own level or INFO.
A plain line is never lost: when nothing would show it at INFO, it goes to stderr as it is
(in JSON mode, as a JSON record), so a tool's output reaches the operator either way.

``forward`` returns the line's text for the supervisor's stderr tail, which explains a
failed start or a crash: a record's message (and traceback), never its JSON, and nothing
for a record about one call (a tool error), which explains no exit.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from .logs import _MARK, JSON_MSG

log = logging.getLogger("zbridge.daemon")
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
           "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}
_ENVELOPE = ("ts", "level", "logger", "msg", "daemon", "pid")  # ours to set, not the daemon's
CALL_EVENTS = ("tool_error",)  # records about one call, kept out of the stderr tail


def daemon_args() -> list[str]:
    """Command-line options for a daemon this hub spawns: records as JSON, and as much
    detail as the hub's own ``zbridge.daemon`` logger would show (tracebacks at DEBUG)."""
    level = log.getEffectiveLevel()
    return ["--log-format", "json", "--log-level", logging.getLevelName(min(max(level, logging.DEBUG),
                                                                             logging.CRITICAL))]


def parse(line: str) -> dict[str, Any] | None:
    """A daemon's JSON record, or None for a plain line."""
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("level") not in _LEVELS or not isinstance(record.get("msg"), str):
        return None
    return record


def name_of(ident: bytes) -> str:
    """The daemon's public name ("w3") from its routing id ("w3-1f2e...")."""
    return ident.decode(errors="replace").split("-", 1)[0]


def forward(ident: bytes, pid: int, line: str) -> str:
    """Log one stderr line of a daemon; returns its text for the stderr tail."""
    name = name_of(ident)
    record = parse(line)
    if record is None:
        _plain(name, pid, line)
        return line
    level = _LEVELS[record["level"]]
    msg: str = record["msg"]
    exc = record.get("exc")
    text = f"{msg}\n{exc}" if isinstance(exc, str) and exc else msg
    if log.isEnabledFor(level):
        fields = {k: v for k, v in record.items() if k not in _ENVELOPE and not k.startswith("_")}
        log.log(level, "[%s pid %d] %s", name, pid, text,
                extra={**fields, "daemon": name, "pid": pid, JSON_MSG: msg})
    # a call's failure is that call's answer, not the daemon's: it must never read as the
    # reason a later exit happened
    return "" if record.get("event") in CALL_EVENTS else text


def _plain(name: str, pid: int, line: str) -> None:
    if log.isEnabledFor(logging.INFO) and _shown(log):
        log.info("[%s pid %d] %s", name, pid, line, extra={"daemon": name, "pid": pid, "stream": "stderr",
                                                            JSON_MSG: line})
    elif _json_handler(log) is not None:  # JSON mode: a record all the same, whatever the level
        log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "%s", (line,), None,
                                  extra={"daemon": name, "pid": pid, "stream": "stderr"}))
    else:  # logging would drop it: a daemon's output must never vanish
        sys.stderr.write(f"[zbridge {name} pid {pid}] {line}\n")


def _shown(logger: logging.Logger) -> bool:
    """Whether some handler other than a NullHandler would receive this logger's records."""
    current: logging.Logger | None = logger
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        current = current.parent if current.propagate else None
    return False


def _json_handler(logger: logging.Logger) -> logging.Handler | None:
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if getattr(handler, _MARK, False):
                return handler
        current = current.parent if current.propagate else None
    return None
