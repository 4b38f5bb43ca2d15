"""Every setting, its default and its ZBRIDGE_* variable, in one place.

Explicit arguments win over environment variables, which win over the defaults here.
The CLI builds its options from the same table.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, fields, replace
from types import FrameType
from typing import Any, Mapping

from .pickling import SERIALIZERS
from .protocol import DEFAULT_MAX_MESSAGE, DEFAULT_MAX_QUEUE_BYTES


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    workers: int = _setting(1, "Most local daemons to run at once (0: only daemons from other hosts).")
    prewarm: bool = _setting(False, "Start all daemons at once instead of on first call.")
    timeout: float = _setting(30.0, "Default call deadline in seconds.")
    max_queue: int = _setting(1000, "Calls waiting for a daemon before new ones get Overloaded.")
    max_queue_bytes: int = _setting(DEFAULT_MAX_QUEUE_BYTES, "Bytes of queued requests before new ones get Overloaded.")
    max_in_flight: int = _setting(256, "Calls one client keeps at the hub at once (async calls, call_many, map); more wait in the client.")
    start_timeout: float = _setting(120.0, "Seconds a daemon may take to load tools and report ready.")
    start_retries: int = _setting(3, "Consecutive failed starts before calls get PoolUnavailable.")
    backoff_base: float = _setting(0.1, "First restart delay in seconds (doubles per failure).")
    backoff_cap: float = _setting(30.0, "Longest restart delay in seconds.")
    stable_after: float = _setting(10.0, "Seconds of uptime after which a crash no longer counts toward backoff.")
    kill_grace: float = _setting(5.0, "Seconds after a call's deadline before its daemon is killed.")
    stop_timeout: float = _setting(5.0, "Seconds a daemon gets to exit before SIGKILL on shutdown.")
    heartbeat_interval: float = _setting(1.0, "Seconds between heartbeats, hub to daemon and back.")
    heartbeat_misses: int = _setting(3, "Missed heartbeats before a daemon (or the hub) counts as dead.")
    idle_timeout: float = _setting(300.0, "Seconds idle before idle_action applies (0: never).")
    idle_action: str = _setting("restart", "restart (fresh warm daemon), stop (down to min_workers) or none.")
    min_workers: int = _setting(0, "Daemons idle_action=stop keeps running.")
    max_calls: int = _setting(0, "Replace a daemon after this many calls, plus up to 10% jitter (0: never).")
    max_rss_mb: int = _setting(0, "Replace a daemon whose RSS exceeds this after a call (0: never).")
    max_message_size: int = _setting(DEFAULT_MAX_MESSAGE, "Largest request or reply in bytes: its body and buffer frames together.")
    pool_enabled: bool = _setting(True, "Use warm daemons; false runs each call in a fresh --stdio subprocess.")
    preload: bool = _setting(False, "Fork daemons from a template process that loaded the tools and ran the start-up hooks once: read-only memory shared, replacements serving in milliseconds (see Preloaded daemons).")
    direct: bool = _setting(True, "Plain calls borrow an idle daemon and talk to it over its own channel, the hub only deciding (an embedded Bridge; a Client of a local zbridge serve, which lends its daemons through its lease desk); false routes every call through the hub.")
    fallback: bool = _setting(True, "Use a one-shot subprocess when the pool cannot serve a call that never ran.")
    retries: int = _setting(2, "Retries of idempotent calls that met WorkerLost.")
    cancel_mode: str = _setting("interrupt", "A cancelled running call: interrupt (raise zbridge.Interrupted in the tool), abandon (drop its result) or kill (replace the daemon).")
    serializer: str = _setting("msgpack", "msgpack, or pickle for any Python object on a trusted local bridge (refused with a tcp endpoint).")
    python: str = _setting("", "Interpreter for daemons (default: this one).")
    expose_tracebacks: str = _setting("auto", "Tool tracebacks in error replies: auto (on for ipc/inproc, off for tcp), true or false.")
    curve_secret: str = _setting("", "This side's CURVE secret key file (.key_secret); on a hub, turns CURVE on for tcp.")
    curve_server_key: str = _setting("", "The hub's CURVE public key file (.key), for clients and daemons.")
    curve_clients: str = _setting("", "Hub: directory of client public keys allowed to call.")
    curve_daemons: str = _setting("", "Hub: directory of daemon public keys allowed to serve.")
    allow_local_users: bool = _setting(False, "Hub: serve a tcp loopback --bind without CURVE, so every local user may run the tools.")
    daemon_bind: str = _setting("", "Hub: extra endpoint for daemons on other hosts, e.g. tcp://0.0.0.0:5556.")
    heartbeat_bind: str = _setting("", "Hub: heartbeat endpoint for daemons on other hosts (with daemon_bind).")
    log_format: str = _setting("text", "Hub log records: text (for people) or json (one object per line).")
    metrics: str = _setting("", "Hub: serve Prometheus metrics on HOST:PORT (with metrics_token_file, or metrics_allow_anyone) or on unix:PATH (this user only); needs zbridge[metrics].")
    metrics_token_file: str = _setting("", "Hub: file holding the bearer token a metrics scrape must send (Prometheus: authorization.credentials_file).")
    metrics_allow_anyone: bool = _setting(False, "Hub: serve tcp metrics without a token: anyone who reaches the port reads tool names, call rates and memory (on loopback: every local user).")

    def __post_init__(self) -> None:
        for f in fields(self):
            check_type(f.name, str(f.type), getattr(self, f.name))
        if self.workers < 0:
            raise ValueError(f"workers must be at least 0, not {self.workers}")
        if self.expose_tracebacks not in ("auto", "true", "false"):
            raise ValueError(f"expose_tracebacks must be auto, true or false, not {self.expose_tracebacks!r}")
        if self.cancel_mode not in ("interrupt", "abandon", "kill"):
            raise ValueError(f"cancel_mode must be interrupt, abandon or kill, not {self.cancel_mode!r}")
        if bool(self.daemon_bind) != bool(self.heartbeat_bind):
            raise ValueError("daemon_bind and heartbeat_bind go together")
        if self.idle_action not in ("restart", "stop", "none"):
            raise ValueError(f"idle_action must be restart, stop or none, not {self.idle_action!r}")
        if self.heartbeat_interval <= 0 or self.heartbeat_misses < 1:
            raise ValueError("heartbeat_interval must be > 0 and heartbeat_misses >= 1")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {self.max_in_flight}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")
        if self.serializer not in SERIALIZERS:
            raise ValueError(f"serializer must be msgpack or pickle, not {self.serializer!r}")
        if self.serializer == "pickle" and not self.pool_enabled:
            raise ValueError("serializer='pickle' needs the pool (pool_enabled=True): the one-shot "
                             "pipe subprocess carries msgpack only")
        if self.timeout <= 0 or self.max_queue < 0 or self.max_queue_bytes < 0:
            raise ValueError("timeout must be > 0, max_queue and max_queue_bytes >= 0")


_EXPECTED = {"int": "an int", "float": "a number (int or float)", "bool": "a bool (True or False)",
             "str": "a str"}


def check_type(name: str, kind: str, value: Any) -> None:
    """TypeError naming the setting unless ``value`` is of its type (bool is no number here)."""
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool),
          "str": isinstance(value, str)}.get(kind, True)
    if not ok:
        raise TypeError(f"setting {name!r} must be {_EXPECTED[kind]}, not {type(value).__name__} {value!r}")


# ZBRIDGE_* names read outside Settings: CLI-only options, daemon options, tests and tools
OTHER_VARIABLES = frozenset({
    "ZBRIDGE_TOOLS", "ZBRIDGE_BIND", "ZBRIDGE_ENDPOINT", "ZBRIDGE_LOG_LEVEL", "ZBRIDGE_DRAIN_TIMEOUT",
    "ZBRIDGE_CONNECT", "ZBRIDGE_IDENTITY", "ZBRIDGE_HEARTBEAT", "ZBRIDGE_EXIT_ON_HUB_LOSS",
    "ZBRIDGE_SOAK_SECONDS", "ZBRIDGE_EXAMPLE_LOAD_SECONDS", "ZBRIDGE_EXAMPLE_TREES",
})
# prefixes: the test suite's own, and click's automatic ZBRIDGE_<COMMAND>_<OPTION> names
OTHER_PREFIXES = ("ZBRIDGE_TEST_", "ZBRIDGE_SERVE_", "ZBRIDGE_CALL_", "ZBRIDGE_STATUS_",
                  "ZBRIDGE_KEYGEN_", "ZBRIDGE_BENCH_")
_warned = False


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """ZBRIDGE_* names in ``env`` that nothing reads: most likely typos."""
    known = {env_name(f.name) for f in fields(Settings)} | OTHER_VARIABLES
    return sorted(name for name in env if name.startswith("ZBRIDGE_") and name not in known
                  and not name.startswith(OTHER_PREFIXES))


def warn_unknown_variables(env: Mapping[str, str]) -> None:
    """Warn once per process about ZBRIDGE_* variables nothing reads."""
    global _warned
    if _warned:
        return
    unknown = unknown_variables(env)
    if unknown:
        _warned = True
        warnings.warn(f"unknown zbridge environment variable(s) ignored: {', '.join(unknown)} "
                      f"(settings are listed in zbridge.config.describe() and the README)",
                      stacklevel=_outside_zbridge())


def _outside_zbridge() -> int:
    """The stacklevel of the first caller outside this package, so the warning names user code."""
    import sys
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(2), 2  # 1 is warn_unknown_variables itself
    current: FrameType | None = frame
    while current is not None and current.f_code.co_filename.startswith(package):
        current, level = current.f_back, level + 1
    return level


def env_name(name: str) -> str:
    return "ZBRIDGE_" + name.upper()


def _parse(kind: Any, raw: str, name: str) -> Any:
    if kind in (bool, "bool"):
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{env_name(name)}={raw!r} is not a boolean")
    caster = {"int": int, "float": float, "str": str}.get(kind, kind)
    try:
        return caster(raw)
    except ValueError:
        raise ValueError(f"{env_name(name)}={raw!r} is not a valid {getattr(caster, '__name__', caster)}") from None


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from defaults, then ZBRIDGE_* variables, then non-None ``overrides``."""
    if env is None:
        env = os.environ
        warn_unknown_variables(env)
    values: dict[str, Any] = {}
    known = {f.name: f for f in fields(Settings)}
    for name, f in known.items():
        if env_name(name) in env:
            values[name] = _parse(f.type, env[env_name(name)], name)
    for name, value in overrides.items():
        if name not in known:
            raise TypeError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = value
    return replace(Settings(), **values)


def describe() -> list[tuple[str, str, Any, str]]:
    """(name, variable, default, help) for every setting, for docs and --help."""
    return [(f.name, env_name(f.name), f.default, f.metadata["help"]) for f in fields(Settings)]
