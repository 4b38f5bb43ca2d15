"""The ``zbridge`` command: ``serve``, ``call``, ``status``; ``scale``, ``reload`` and
``stacks`` (live control, ``zbridge/cli_control.py``).

Every option can also come from a ``ZBRIDGE_*`` variable (click's envvar support); the
pool settings are generated from ``zbridge.config.Settings`` so the table has one source.
Each subcommand shows only what applies to it: ``serve`` every setting, ``call`` the
client's options, with hub settings for an embedded ``call --tools`` through ``--set``
or ``ZBRIDGE_*`` variables.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from .client import Client

import click

from . import logs
from .config import Settings, _parse, env_name, load_settings
from .endpoints import default_endpoint, ipc_path
from .errors import BridgeError, CallTimeout
from .logs import TextFormatter
from .watch import cell as _cell, duration

STATUS_TIMEOUT = 5.0  # seconds `zbridge status` waits for the hub's answer
DEFAULT_HELP = "an ipc socket in $XDG_RUNTIME_DIR/zbridge, else in <tempdir>/zbridge-<uid>"
_TYPES = {"int": int, "float": float, "str": str}


# settings only a calling side reads: `serve` does not show them
CLIENT_ONLY = ("max_in_flight", "pool_enabled", "fallback", "retries", "curve_server_key")


def settings_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add one option per hub Settings field (--kebab-name, envvar ZBRIDGE_NAME, default unset)."""
    for f in reversed(fields(Settings)):
        if f.name in CLIENT_ONLY:
            continue
        flag = f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} [default: {f.default!r}; env {env_name(f.name)}]"
        if f.type == "bool":
            option = click.option(f"--{flag}/--no-{flag}", f.name, default=None, help=help_text)
        else:
            option = click.option(f"--{flag}", f.name, type=_TYPES[f.type], default=None,
                                  help=help_text)
        fn = option(fn)
    return fn


def _settings(values: dict[str, Any]) -> Settings:
    names = {f.name for f in fields(Settings)}
    try:
        return load_settings(**{k: v for k, v in values.items() if k in names})
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None


def parse_set(items: tuple[str, ...]) -> dict[str, Any]:
    """``--set NAME=VALUE`` pairs as typed settings (VALUE read as its variable would be)."""
    kinds = {f.name: f.type for f in fields(Settings)}
    values: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in kinds:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE with NAME one of: {', '.join(kinds)}",
                                     param_hint="--set")
        try:
            values[name] = _parse(kinds[name], raw, name)
        except ValueError:
            raise click.BadParameter(f"{name}={raw!r} is not a valid {kinds[name]}", param_hint="--set") from None
    return values


def _set_log_level(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    try:
        level = logging.getLevelName(value.upper())
        if not isinstance(level, int):
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a logging level (DEBUG, INFO, WARNING, ERROR)") from None
    handler = logging.StreamHandler(sys.stderr)  # values in messages cannot forge lines
    handler.setFormatter(TextFormatter("zbridge %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(handlers=[handler])
    logging.getLogger().setLevel(level)


def log_level_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--log-level after the subcommand too (``zbridge serve --log-level INFO``)."""
    return click.option("--log-level", default=None, expose_value=False, callback=_set_log_level,
                        metavar="LEVEL", help="Logging level (overrides the one before the subcommand).")(fn)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from . import __version__
        click.echo(f"zbridge {__version__}")
        ctx.exit()


tools_option = click.option("--tools", "tools", multiple=True, envvar="ZBRIDGE_TOOLS",
                            metavar="MODULE|PATH", help="Tools module or .py file (repeatable). [env ZBRIDGE_TOOLS]")
endpoint_option = click.option("--endpoint", envvar="ZBRIDGE_ENDPOINT", default=None,
                               help=f"Hub endpoint of `zbridge serve` [default: {DEFAULT_HELP}; env ZBRIDGE_ENDPOINT].")


def resolve(endpoint: str | None) -> str:
    """The given endpoint, or the default one (refused if its directory is not private)."""
    try:
        return endpoint or default_endpoint()
    except OSError as exc:
        raise click.ClickException(str(exc)) from None



@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "ZBRIDGE"})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
@click.option("--log-level", default="WARNING", envvar="ZBRIDGE_LOG_LEVEL", show_default=True,
              expose_value=False, callback=_set_log_level, metavar="LEVEL",
              help="Logging level: DEBUG, INFO, WARNING, ERROR (also after the subcommand).")
def main() -> None:
    """zbridge: keep Python tools warm in daemons and call them fast."""


@main.command()
@tools_option
@click.option("--bind", envvar="ZBRIDGE_BIND", default=None,
              help=f"Endpoint clients connect to [default: {DEFAULT_HELP}; tcp needs CURVE or "
                   "--allow-local-users; env ZBRIDGE_BIND]")
@click.option("--drain-timeout", type=float, default=10.0, envvar="ZBRIDGE_DRAIN_TIMEOUT",
              show_default=True, help="Seconds running calls get to finish on SIGTERM/SIGINT.")
@click.option("--stdio", is_flag=True, help="Take JSON-RPC 2.0 lines on stdin and answer on stdout "
              "instead of binding an endpoint, until EOF (docs/PIPE.md); logs go to stderr.")
@settings_options
@log_level_option
def serve(tools: tuple[str, ...], bind: str | None, drain_timeout: float, stdio: bool, **values: Any) -> None:
    """Run a hub and its daemons in this process until SIGTERM/SIGINT (twice: at once)."""
    settings = _settings(values)
    if settings.log_format != "json":
        return run_hub(settings, tools, bind, drain_timeout, stdio)
    logs.json_everywhere()  # every line on stderr is a JSON record, also why we stopped
    try:
        run_hub(settings, tools, bind, drain_timeout, stdio)
    except click.ClickException as exc:
        logs.announce("json", "hub_error", exc.format_message(), level="ERROR")
        sys.exit(exc.exit_code)
    except Exception:  # noqa: BLE001 - a crash, as a record with its traceback
        logging.getLogger("zbridge.hub").critical("hub crashed", exc_info=True, extra={"event": "hub_crash"})
        sys.exit(1)


def run_hub(settings: Settings, tools: tuple[str, ...], bind: str | None, drain_timeout: float,
            stdio: bool = False) -> None:
    """``zbridge serve`` once its settings are known."""
    from .hub import Hub
    from .tools import tool_specs
    from .fdguard import raise_limit
    if stdio:  # the pool behind one pipe: no endpoint (a --bind is not used)
        from .pipefront import serve_stdio
        try:
            return serve_stdio(tool_specs(list(tools)), settings, drain_timeout)
        except (ValueError, OSError) as exc:
            raise click.ClickException(str(exc)) from None
    bind = resolve(bind)
    raise_limit()  # a process of its own: as many connections as the system lets it hold
    fmt = settings.log_format
    try:
        hub = Hub(settings, tool_specs(list(tools)), frontend=bind)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # zmq.ZMQError: address in use, bad endpoint
        raise click.ClickException(f"cannot bind {bind}: {exc}") from None
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)  # the wakeup fd carries the signal to the loop

    def on_signal(h: Hub) -> None:
        for _ in reader.recv(64):  # one byte per signal: a second one means stop now
            h.begin_stop(drain_timeout)

    logs.announce(fmt, "hub_start", f"zbridge hub {os.getpid()} serving {bind} (tools: "
                  f"{', '.join(tools) or 'none'}, workers: {settings.workers})",
                  pid=os.getpid(), endpoint=bind, tools=list(tools), workers=settings.workers)
    if bind.startswith("tcp://") and not settings.curve_secret:
        logs.announce(fmt, "no_curve", f"zbridge WARNING: {bind} has no CURVE keys (--allow-local-users): "
                      "every local user can run the tools, as you", level="WARNING", endpoint=bind)
    try:
        hub.run(prewarm=settings.prewarm, wake_fd=reader.fileno(), on_wake=on_signal)
    finally:
        signal.set_wakeup_fd(-1)
        reader.close()
        writer.close()
        _remove_socket_file(bind)
    logs.announce(fmt, "hub_stop", "zbridge hub stopped", pid=os.getpid(), endpoint=bind)


@main.command(epilog="Hub settings (workers, start_timeout, ...) apply to an embedded call "
                     "(--tools without --endpoint): give them with --set NAME=VALUE or ZBRIDGE_* "
                     "variables; `zbridge serve --help` lists them all.")
@click.argument("tool")
@click.option("--args", "args_json", default=None, help="Arguments as JSON: an object or an array.")
@tools_option
@endpoint_option
@click.option("--timeout", type=float, default=None, envvar="ZBRIDGE_TIMEOUT",
              help="Call deadline in seconds [default: 30.0; env ZBRIDGE_TIMEOUT].")
@click.option("--idempotent", is_flag=True, help="Allow a retry if the daemon dies mid-call.")
@click.option("--stream", is_flag=True, help="Print each item of a generator tool as it arrives (JSON lines).")
@click.option("--connect-timeout", type=float, default=5.0, show_default=True,
              help="Seconds to wait for the hub before the call fails with PoolUnavailable.")
@click.option("--curve-secret", envvar="ZBRIDGE_CURVE_SECRET", default=None,
              help="Our CURVE secret key file, for a tcp hub [env ZBRIDGE_CURVE_SECRET].")
@click.option("--curve-server-key", envvar="ZBRIDGE_CURVE_SERVER_KEY", default=None,
              help="The hub's CURVE public key file [env ZBRIDGE_CURVE_SERVER_KEY].")
@click.option("--set", "set_items", multiple=True, metavar="NAME=VALUE",
              help="Any setting, e.g. --set workers=2 --set fallback=false (repeatable).")
@log_level_option
def call(tool: str, args_json: str | None, tools: tuple[str, ...], endpoint: str | None,
         timeout: float | None, idempotent: bool, stream: bool, connect_timeout: float,
         curve_secret: str | None, curve_server_key: str | None, set_items: tuple[str, ...]) -> None:
    """Call TOOL once and print its JSON result (errors go to stderr, exit status 1).

    With --tools and no --endpoint, runs an embedded bridge for this one call.
    """
    try:
        args = json.loads(args_json) if args_json is not None else None
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--args") from None
    values = parse_set(set_items)
    for name, value in (("timeout", timeout), ("curve_secret", curve_secret),
                        ("curve_server_key", curve_server_key)):
        if value is not None:
            values[name] = value
    settings = _settings(values)
    try:
        with _open(settings, tools, endpoint, connect_timeout) as client:
            if stream:
                for item in client.stream(tool, args):
                    click.echo(json.dumps(item, default=repr))
                return
            result = client.call(tool, args, idempotent=idempotent)
    except BridgeError as exc:
        click.echo(json.dumps(printable_error(exc), default=repr), err=True)
        sys.exit(1)
    click.echo(json.dumps(result, default=repr))


def printable_error(exc: BridgeError) -> dict[str, Any]:
    """The error as `zbridge call` prints it: a daemon's start-up traceback (``data.stderr``)
    only at DEBUG, like the hub's log; the message already names the cause, file and line."""
    wire = exc.to_wire()
    data = wire.get("data")
    if isinstance(data, dict) and "stderr" in data and not logging.getLogger("zbridge").isEnabledFor(logging.DEBUG):
        wire["data"] = {k: v for k, v in data.items() if k != "stderr"}
    return wire


def _remove_socket_file(endpoint: str) -> None:
    """Our ipc socket file; we bound it, and a hub that is gone should not look present."""
    path = ipc_path(endpoint)
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _open(settings: Settings, tools: tuple[str, ...], endpoint: str | None,
          connect_timeout: float) -> Client:
    from .bridge import Bridge
    from .client import Client
    if endpoint or not tools:
        return Client(resolve(endpoint), tools=list(tools), settings=settings,
                      connect_timeout=connect_timeout)
    return Bridge(list(tools), settings=settings)


@main.command()
@endpoint_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option("--curve-secret", envvar="ZBRIDGE_CURVE_SECRET", default="", help="Our CURVE secret key file.")
@click.option("--curve-server-key", envvar="ZBRIDGE_CURVE_SERVER_KEY", default="",
              help="The hub's CURVE public key file.")
@log_level_option
@click.option("--watch", type=float, is_flag=False, flag_value=2.0, default=None, metavar="[SECONDS]",
              help="Redraw a live view every SECONDS (default 2) until Ctrl-C; over a pipe, "
                   "print successive snapshots separated by a blank line.")
def status(endpoint: str | None, as_json: bool, curve_secret: str, curve_server_key: str,
           watch: float | None) -> None:
    """Show the daemons and queue of a running `zbridge serve`."""
    from .client import Client
    endpoint = resolve(endpoint)
    if watch is not None:
        sys.exit(watch_status(endpoint, watch, curve_secret, curve_server_key))
    try:
        with Client(endpoint, fallback=False, curve_secret=curve_secret,
                    curve_server_key=curve_server_key) as client:
            info = client.status(timeout=STATUS_TIMEOUT)
    except BridgeError as exc:
        raise click.ClickException(hub_trouble(endpoint, exc, STATUS_TIMEOUT)) from None
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(format_status(info))
    tools = format_tools(info)
    if tools:
        click.echo(tools)


def hub_trouble(endpoint: str, exc: BridgeError, waited: float) -> str:
    """What went wrong asking a hub for its status, naming a hub that exists but is silent."""
    from . import presence
    if isinstance(exc, CallTimeout):
        return presence.silent(endpoint, waited)
    return str(exc)


# (heading, value of a daemon's status map, left-aligned)
_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str], bool]] = [
    ("id", lambda d: str(d["id"]), True),
    ("pid", lambda d: _cell(d.get("pid")), False),
    ("state", lambda d: str(d["state"]) + (" (unresponsive)" if d.get("unresponsive") else ""), True),
    ("calls", lambda d: _cell(d.get("calls")), False),
    ("uptime_s", lambda d: _cell(d.get("uptime_s"), ".1f"), False),
    ("rss_mb", lambda d: _cell(d["rss"] / 1048576 if d.get("rss") else None, ".1f"), False),
    ("beat_age_s", lambda d: _cell(d.get("last_beat_age_s"), ".2f"), False),
    ("call", lambda d: _cell(d.get("current_call")), False),
    ("call_age_s", lambda d: _cell(d.get("call_age_s"), ".2f"), False),
]


def format_table(headings: list[str], rows: list[list[str]], left: list[bool]) -> list[str]:
    """Columns as wide as their widest cell, two spaces apart."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headings)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if is_left else c.rjust(w)
                         for c, w, is_left in zip(cells, widths, left)).rstrip()
    return [line(headings)] + [line(r) for r in rows]


def format_status(info: Mapping[str, Any]) -> str:
    """The status map as a table a person can read."""
    queue = f"queue depth {info['queue_depth']}"
    if info.get("queue_bytes") is not None:
        queue += f" ({info['queue_bytes']} bytes)"
    lines = [f"hub pid {info['hub_pid']} at {info['endpoint']}: {len(info['daemons'])} daemon(s) of "
             f"{info['workers']}, {queue}" + (" (shutting down)" if info.get("closing") else "")]
    rows = [[value(d) for _, value, _ in _COLUMNS] for d in info["daemons"]]
    table = format_table([h for h, _, _ in _COLUMNS], rows, [left for _, _, left in _COLUMNS])
    lines.append(table[0])
    for d, text in zip(info["daemons"], table[1:]):
        lines.append(text + (f"  retiring: {d['retiring']}" if d.get("retiring") else ""))
    restarts = info.get("restarts") or []
    if restarts:
        lines.append(f"recent exits ({len(restarts)}):")
        lines += [f"  {r['ago_s']:8.1f}s ago  {r['id']} pid {r['pid']}: {r['reason']}" for r in restarts[-10:]]
    if info.get("last_start_error"):
        lines.append(f"last start error: {info['last_start_error'].splitlines()[0]}")
    reload = info.get("reload")
    if reload:
        lines.append(f"reload to generation {reload['generation']}: {reload['phase']}, "
                     f"{reload['replaced']} replaced, {reload['left']} old daemon(s) left")
    if info.get("preload"):  # daemons are forked from a template (issue 21)
        p = info["preload"]
        lines.append(f"preload: template {p['state']}, pid {p['pid']}" + (f": {p['refusal']}" if p["refusal"] else ""))
    c = info.get("counters", {})
    lines.append("counters: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    return "\n".join(lines)


def format_tools(info: Mapping[str, Any]) -> str:
    """The per-tool section of `zbridge status`: calls, errors by code, latency quantiles."""
    tools = info.get("tools") or {}
    if not tools:
        return ""
    lines = [f"{'tool':<20} {'calls':>7} {'errors':<22} {'run p50/p90/p99':>24} "
             f"{'wait p50/p90/p99':>24}"]

    def q(h: dict[str, Any]) -> str:
        return "/".join(duration(h.get(k)) for k in ("p50", "p90", "p99"))
    for name, t in tools.items():
        errors = ",".join(f"{code}:{n}" for code, n in (t.get("errors") or {}).items()) or "-"
        lines.append(f"{name[:20]:<20} {t['calls']:>7} {errors:<22} {q(t['run_s']):>24} {q(t['queue_s']):>24}")
    return "\n".join(lines)


def watch_status(endpoint: str, interval: float, curve_secret: str = "", curve_server_key: str = "",
                 out: Any = None) -> int:
    """The --watch loop: fetch status, draw a frame (clear the screen on a tty, else a blank
    line between frames), sleep; 0 when interrupted (Ctrl-C, SIGINT)."""
    import time

    from .client import Client
    from .watch import CLEAR, render, render_unreachable
    out = out or sys.stdout
    tty = out.isatty()
    interval = max(0.1, interval)
    prev, prev_at, frames = None, 0.0, 0
    try:
        with Client(endpoint, fallback=False, curve_secret=curve_secret,
                    curve_server_key=curve_server_key) as client:
            while True:
                try:
                    info = client.status(timeout=max(1.0, interval))
                    at = time.monotonic()
                    text = render(info, prev, at - prev_at if prev else None, interval)
                    prev, prev_at = info, at
                except BridgeError as exc:
                    text = render_unreachable(hub_trouble(endpoint, exc, max(1.0, interval)))
                out.write((CLEAR if tty else "\n" if frames else "") + text + "\n")
                out.flush()
                frames += 1
                time.sleep(interval)
    except KeyboardInterrupt:
        if tty:
            out.write("\n")
        out.flush()
        return 0


@main.command(context_settings={"ignore_unknown_options": True, "help_option_names": []},
              add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Measure zbridge on this machine against raw zmq, pipes and other pools
    (`zbridge bench --help`; the peers need `pip install 'zbridge[bench]'`)."""
    import importlib  # the bench package is its own (installed beside zbridge), untyped
    run_bench = importlib.import_module("zbridge_bench.cli").main
    run_bench(list(args), prog="zbridge bench")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--name", default="zbridge", show_default=True, help="File name stem of the keypair.")
@click.option("--force", is_flag=True, help="Replace an existing keypair of that name.")
@log_level_option
def keygen(directory: str, name: str, force: bool) -> None:
    """Write a CURVE keypair: DIRECTORY/NAME.key (public) and NAME.key_secret (mode 0600).

    Give the hub's .key_secret to `serve --curve-secret`, and its .key to clients and daemons
    (--curve-server-key); put each client's .key in the hub's --curve-clients directory and
    each remote daemon's .key in its --curve-daemons directory.
    """
    from .security import keygen as make_keys
    try:
        public, secret = make_keys(directory, name, force=force)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"public key: {public}\nsecret key: {secret}")


def _add_control_commands() -> None:
    from .cli_control import reload, scale, stacks  # (it imports this module's options)
    for command in (scale, reload, stacks):
        main.add_command(command)


if __name__ == "__main__":  # `python -m zbridge.cli`: the module itself has every command
    from zbridge.cli import main as _main
    _main()
else:
    _add_control_commands()
