"""``zbridge-daemon``: load tools, then serve the hub (``--connect``) or pipes (``--stdio``)."""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING

import click

from zbridge.endpoints import remove_if_orphaned
from zbridge.logs import configure_process
from zbridge.protocol import DEFAULT_MAX_MESSAGE, EXIT_LOAD_FAILED

from .loading import load, report_load_failure
from .process_io import isolate_stdout, kill_own_group, watch_lifeline
from .stdio import run as run_stdio


if TYPE_CHECKING:
    from zbridge.tools import Registry

    from .worker import WorkerOptions


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from zbridge import __version__
        click.echo(f"zbridge-daemon {__version__}")
        ctx.exit()


def expose_default(endpoint: str | None) -> bool:
    """``auto``: tracebacks go to a local reader (a pipe, ipc, inproc), never over tcp."""
    return not (endpoint or "").startswith("tcp://")


def _env_expose() -> bool | None:
    """ZBRIDGE_EXPOSE_TRACEBACKS as true/false, or None for auto (also when unset)."""
    raw = os.environ.get("ZBRIDGE_EXPOSE_TRACEBACKS", "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw in ("1", "true", "t", "yes", "y", "on"):
        return True
    if raw in ("0", "false", "f", "no", "n", "off"):
        return False
    raise click.BadParameter(f"ZBRIDGE_EXPOSE_TRACEBACKS={raw!r} is not auto, true or false",
                             param_hint="--expose-tracebacks")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
@click.option("--connect", "endpoint", envvar="ZBRIDGE_CONNECT", metavar="ENDPOINT",
              help="Hub backend endpoint to serve (ipc://... or tcp://...).")
@click.option("--stdio", is_flag=True, help="Serve line-delimited JSON-RPC 2.0 on stdin/stdout.")
@click.option("--stdio-msgpack", is_flag=True, hidden=True,
              help="Serve length-prefixed protocol frames on stdin/stdout (the client's fallback).")
@click.option("--tools", "tools", multiple=True, envvar="ZBRIDGE_TOOLS", metavar="MODULE|PATH",
              help="Module name (found as `python -m` finds it: the current directory first), "
                   "MODULE@DIR (DIR put first on sys.path) or .py file to load tools from (repeatable).")
@click.option("--identity", envvar="ZBRIDGE_IDENTITY", help="Routing id to present to the hub.")
@click.option("--lifeline", is_flag=True, hidden=True,
              help="Exit when stdin reaches EOF (set by the hub that spawned us).")
@click.option("--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE,
              envvar="ZBRIDGE_MAX_MESSAGE_SIZE", show_default=True, help="Largest frame in bytes.")
@click.option("--heartbeat", envvar="ZBRIDGE_HEARTBEAT", metavar="ENDPOINT",
              help="Hub heartbeat endpoint; without it the daemon does not beat.")
@click.option("--heartbeat-interval", type=float, default=1.0, envvar="ZBRIDGE_HEARTBEAT_INTERVAL",
              show_default=True, help="Seconds between beats.")
@click.option("--heartbeat-misses", type=int, default=3, envvar="ZBRIDGE_HEARTBEAT_MISSES",
              show_default=True, help="Silent intervals after which the hub counts as gone "
                                      "(then reconnect, with capped backoff).")
@click.option("--exit-on-hub-loss", is_flag=True, envvar="ZBRIDGE_EXIT_ON_HUB_LOSS",
              help="Exit when the hub is gone instead of reconnecting (without --lifeline).")
@click.option("--max-rss-mb", type=int, default=0, envvar="ZBRIDGE_MAX_RSS_MB", show_default=True,
              help="Ask to be replaced when RSS exceeds this after a call (0: never).")
@click.option("--curve-secret", envvar="ZBRIDGE_CURVE_SECRET", default="",
              help="Our CURVE secret key file, for a hub that requires CURVE.")
@click.option("--curve-server-key", envvar="ZBRIDGE_CURVE_SERVER_KEY", default="",
              help="The hub's CURVE public key file.")
@click.option("--expose-tracebacks/--no-expose-tracebacks", default=None,
              help="Put tool tracebacks in error replies [default: auto, from "
                   "ZBRIDGE_EXPOSE_TRACEBACKS: on for --stdio and ipc, off for tcp].")
@click.option("--allow-pickle", is_flag=True,
              help="Decode requests whose body is pickle (serializer='pickle'): runs the caller's "
                   "code, so only for a local hub that trusts its callers; refused with tcp.")
@click.option("--channel", type=int, default=None, hidden=True,
              help="File descriptor of our end of the channel an embedded hub's callers use "
                   "(set by that hub).")
@click.option("--stacks-dir", default=None, hidden=True,
              help="Directory where SIGUSR2 dumps every thread's stack, to stacks-<pid>.txt "
                   "(set by the hub that spawns us, for `zbridge stacks`).")
@click.option("--template", type=int, default=None, hidden=True,
              help="File descriptor of a control socket: load the tools once, then fork daemons "
                   "on request (set by a hub with preload; daemon/template.py).")
@click.option("--log-level", default="INFO", envvar="ZBRIDGE_LOG_LEVEL", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON record per stderr line (set by the hub that spawns us).")
def main(endpoint: str | None, stdio: bool, stdio_msgpack: bool, tools: tuple[str, ...], identity: str | None,
         lifeline: bool, max_message_size: int, heartbeat: str | None, heartbeat_interval: float,
         heartbeat_misses: int, exit_on_hub_loss: bool, max_rss_mb: int, curve_secret: str,
         curve_server_key: str, expose_tracebacks: bool | None, allow_pickle: bool,
         channel: int | None, stacks_dir: str | None, template: int | None, log_level: str,
         log_format: str) -> None:
    """Keep tools warm and serve calls to them."""
    if bool(endpoint) + stdio + stdio_msgpack != 1:
        raise click.UsageError("give exactly one of --connect ENDPOINT or --stdio")
    if expose_tracebacks is None:
        expose_tracebacks = _env_expose()
    if expose_tracebacks is None:
        expose_tracebacks = expose_default(endpoint)
    configure_process(log_level, log_format, "zbridge-daemon[%(process)d] %(levelname)s %(message)s")
    protocol_out = isolate_stdout()  # before tools load: imports may print too
    if stdio:
        run_stdio(tools, protocol_out, expose_tracebacks)
        return
    if stdio_msgpack:
        from .framed import run as run_framed
        run_framed(tools, protocol_out, expose_tracebacks)
        return
    from zbridge.security import client_keys
    if allow_pickle:
        _allow_pickle(endpoint or "", heartbeat)

    from .link import OnSilence
    from .worker import WorkerOptions
    try:
        curve = client_keys(curve_server_key, curve_secret)
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"CURVE keys: {exc}") from None
    # one routing id for the data and heartbeat sockets, so the hub can pair them
    identity = identity or f"r-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    # a local hub's lifeline outranks its heartbeats; a remote hub can only be heard
    on_silence = (OnSilence.IGNORE if lifeline else
                  OnSilence.EXIT if exit_on_hub_loss else OnSilence.RECONNECT)
    assert endpoint is not None  # exactly one of --connect and --stdio was given
    options = WorkerOptions(
        endpoint, identity.encode(), max_message_size, heartbeat,
        heartbeat_interval, heartbeat_misses, max_rss_mb, curve, expose_tracebacks, on_silence,
        channel=channel, stacks_dir=stacks_dir)
    if template is not None:  # each forked daemon gets its own routing id and channel
        from .template import run as run_template
        run_template(tools, options, template, structured=log_format == "json")
    run_worker(tools, lifeline, options, structured=log_format == "json")


def _allow_pickle(endpoint: str, heartbeat: str | None) -> None:
    from zbridge import pickling
    try:
        pickling.refuse_remote("pickle", endpoint, heartbeat)
    except ValueError as exc:
        raise click.UsageError(f"--allow-pickle: {exc}") from None
    pickling.allow()


def run_worker(tools: tuple[str, ...], lifeline: bool, options: WorkerOptions,
               structured: bool = False) -> None:
    from zbridge.stacks import arm
    arm(options.stacks_dir)  # first: a start-up hook that hangs can be looked at too
    if lifeline:
        watch_lifeline(functools.partial(lifeline_lost, options.endpoint))
    try:
        registry = load(tools)
    except BaseException as exc:  # noqa: BLE001 - the hub reads this from our stderr
        report_load_failure(exc, structured)
        os._exit(EXIT_LOAD_FAILED)
    serve_loaded(registry, options)


def serve_loaded(registry: Registry, options: WorkerOptions) -> None:
    """Serve the hub with tools already loaded (here, or in the template we were forked from)."""
    from . import worker
    worker.serve(registry, options, functools.partial(hub_lost, options.endpoint))


def hub_lost(endpoint: str, why: str = "") -> None:
    if why:
        logging.getLogger("zbridge.daemon").warning("%s; exiting", why)
    remove_if_orphaned(endpoint)
    os._exit(0)


def lifeline_lost(endpoint: str) -> None:
    """EOF on the lifeline: the hub is gone, or it stops us that way: exit quietly."""
    remove_if_orphaned(endpoint)
    kill_own_group()  # what our tools started must not outlive the hub with ppid 1
    os._exit(0)


if __name__ == "__main__":
    main()
