"""The ``zbridge`` command: ``serve``, ``call``, ``status``.

Every option can also come from a ``ZBRIDGE_*`` variable (click's envvar support); the
pool settings are generated from ``zbridge.config.Settings`` so the table has one source.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from dataclasses import fields
from typing import Any, Callable

import click

from .config import Settings, env_name, load_settings
from .endpoints import default_endpoint, ipc_path
from .errors import BridgeError

DEFAULT_HELP = "an ipc socket in $XDG_RUNTIME_DIR/zbridge, else in <tempdir>/zbridge-<uid>"
_TYPES = {"int": int, "float": float, "str": str}


def settings_options(fn: Callable) -> Callable:
    """Add one option per Settings field (--kebab-name, envvar ZBRIDGE_NAME, default unset)."""
    for f in reversed(fields(Settings)):
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
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


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
@click.option("--log-level", default="WARNING", envvar="ZBRIDGE_LOG_LEVEL", show_default=True)
def main(log_level: str) -> None:
    """zbridge: keep Python tools warm in daemons and call them fast."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="zbridge %(levelname)s %(name)s: %(message)s")


@main.command()
@tools_option
@click.option("--bind", envvar="ZBRIDGE_BIND", default=None,
              help=f"Endpoint clients connect to [default: {DEFAULT_HELP}; tcp needs CURVE or "
                   "--allow-local-users; env ZBRIDGE_BIND]")
@click.option("--drain-timeout", type=float, default=10.0, envvar="ZBRIDGE_DRAIN_TIMEOUT",
              show_default=True, help="Seconds running calls get to finish on SIGTERM/SIGINT.")
@settings_options
def serve(tools: tuple[str, ...], bind: str | None, drain_timeout: float, **values: Any) -> None:
    """Run a hub and its daemons in this process until SIGTERM/SIGINT (twice: at once)."""
    from .hub import Hub
    settings = _settings(values)
    bind = resolve(bind)
    try:
        hub = Hub(settings, list(tools), frontend=bind)
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
        reader.recv(64)
        h.begin_stop(drain_timeout)

    click.echo(f"zbridge hub {os.getpid()} serving {bind} (tools: {', '.join(tools) or 'none'}, "
               f"workers: {settings.workers})", err=True)
    if bind.startswith("tcp://") and not settings.curve_secret:
        click.echo(f"zbridge WARNING: {bind} has no CURVE keys (--allow-local-users): every local "
                   "user can run the tools, as you", err=True)
    try:
        hub.run(prewarm=settings.prewarm, wake_fd=reader.fileno(), on_wake=on_signal)
    finally:
        signal.set_wakeup_fd(-1)
        reader.close()
        writer.close()
        _remove_socket_file(bind)
    click.echo("zbridge hub stopped", err=True)


@main.command()
@click.argument("tool")
@click.option("--args", "args_json", default=None, help="Arguments as JSON: an object or an array.")
@tools_option
@endpoint_option
@click.option("--idempotent", is_flag=True, help="Allow a retry if the daemon dies mid-call.")
@click.option("--stream", is_flag=True, help="Print each item of a generator tool as it arrives (JSON lines).")
@settings_options
def call(tool: str, args_json: str | None, tools: tuple[str, ...], endpoint: str | None,
         idempotent: bool, stream: bool, **values: Any) -> None:
    """Call TOOL once and print its JSON result (errors go to stderr, exit status 1).

    With --tools and no --endpoint, runs an embedded bridge for this one call.
    """
    try:
        args = json.loads(args_json) if args_json is not None else None
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--args") from None
    settings = _settings(values)
    try:
        with _open(settings, tools, endpoint) as client:
            if stream:
                for item in client.stream(tool, args):
                    click.echo(json.dumps(item, default=repr))
                return
            result = client.call(tool, args, idempotent=idempotent)
    except BridgeError as exc:
        click.echo(json.dumps(exc.to_wire(), default=repr), err=True)
        sys.exit(1)
    click.echo(json.dumps(result, default=repr))


def _remove_socket_file(endpoint: str) -> None:
    """Our ipc socket file; we bound it, and a hub that is gone should not look present."""
    path = ipc_path(endpoint)
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _open(settings: Settings, tools: tuple[str, ...], endpoint: str | None):
    from .bridge import Bridge
    from .client import Client
    if endpoint or not tools:
        return Client(resolve(endpoint), tools=list(tools), settings=settings)
    return Bridge(list(tools), settings=settings)


@main.command()
@endpoint_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option("--curve-secret", envvar="ZBRIDGE_CURVE_SECRET", default="", help="Our CURVE secret key file.")
@click.option("--curve-server-key", envvar="ZBRIDGE_CURVE_SERVER_KEY", default="",
              help="The hub's CURVE public key file.")
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
            info = client.status()
    except BridgeError as exc:
        raise click.ClickException(f"no hub at {endpoint}: {exc}") from None
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(format_status(info))
    tools = format_tools(info)
    if tools:
        click.echo(tools)


def _cell(value: Any, fmt: str = "") -> str:
    return "-" if value is None else format(value, fmt)


def format_status(info: dict) -> str:
    """The status map as a table a person can read."""
    lines = [f"hub pid {info['hub_pid']} at {info['endpoint']}: {len(info['daemons'])} daemon(s) of "
             f"{info['workers']}, queue depth {info['queue_depth']}"
             + (" (shutting down)" if info.get("closing") else "")]
    lines.append(f"{'id':<6} {'pid':>8} {'state':<9} {'calls':>7} {'uptime_s':>9} {'rss_mb':>7} "
                 f"{'beat_age_s':>10} {'call':>8} {'call_age_s':>10}")
    for d in info["daemons"]:
        rss = d["rss"] / 1048576 if d.get("rss") else None
        lines.append(f"{d['id']:<6} {_cell(d['pid']):>8} {d['state']:<9} {d['calls']:>7} "
                     f"{_cell(d['uptime_s'], '.1f'):>9} {_cell(rss, '.1f'):>7} "
                     f"{_cell(d.get('last_beat_age_s'), '.2f'):>10} {_cell(d['current_call']):>8} "
                     f"{_cell(d['call_age_s'], '.2f'):>10}"
                     + (f"  retiring: {d['retiring']}" if d.get("retiring") else ""))
    restarts = info.get("restarts") or []
    if restarts:
        lines.append(f"recent exits ({len(restarts)}):")
        lines += [f"  {r['ago_s']:8.1f}s ago  {r['id']} pid {r['pid']}: {r['reason']}" for r in restarts[-10:]]
    if info.get("last_start_error"):
        lines.append(f"last start error: {info['last_start_error'].splitlines()[0]}")
    c = info.get("counters", {})
    lines.append("counters: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    return "\n".join(lines)


def format_tools(info: dict) -> str:
    """The per-tool section of `zbridge status`: calls, errors by code, latency quantiles."""
    tools = info.get("tools") or {}
    if not tools:
        return ""
    lines = [f"{'tool':<20} {'calls':>7} {'errors':<22} {'run p50/p90/p99 ms':>21} "
             f"{'wait p50/p90/p99 ms':>21}"]

    def q(h: dict) -> str:
        return "/".join("-" if h.get(k) is None else f"{h[k] * 1000:.2f}" for k in ("p50", "p90", "p99"))
    for name, t in tools.items():
        errors = ",".join(f"{code}:{n}" for code, n in (t.get("errors") or {}).items()) or "-"
        lines.append(f"{name[:20]:<20} {t['calls']:>7} {errors:<22} {q(t['run_s']):>21} {q(t['queue_s']):>21}")
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
                    text = render_unreachable(endpoint, str(exc))
                out.write((CLEAR if tty else "\n" if frames else "") + text + "\n")
                out.flush()
                frames += 1
                time.sleep(interval)
    except KeyboardInterrupt:
        if tty:
            out.write("\n")
        out.flush()
        return 0


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--name", default="zbridge", show_default=True, help="File name stem of the keypair.")
@click.option("--force", is_flag=True, help="Replace an existing keypair of that name.")
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


if __name__ == "__main__":
    main()
