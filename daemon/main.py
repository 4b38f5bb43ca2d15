"""``zbridge-daemon``: load tools, then serve the hub (``--connect``) or pipes (``--stdio``)."""

from __future__ import annotations

import logging
import os
import sys
import traceback

import click

from zbridge.endpoints import remove_if_orphaned
from zbridge.errors import PoolUnavailable
from zbridge.execution import Executor
from zbridge.protocol import DEFAULT_MAX_MESSAGE
from zbridge.tools import REGISTRY, Registry, load_tools

from .streams import isolate_stdout, watch_lifeline

EXIT_LOAD_FAILED = 3


def load(specs: tuple[str, ...]) -> Registry:
    """Import tools and run start-up hooks; exceptions carry the user's traceback."""
    registry = load_tools(specs)
    for hook in registry.startup_hooks:
        hook()
    return registry


def load_failure(exc: BaseException) -> PoolUnavailable:
    text = "".join(traceback.format_exception(exc)).rstrip()
    last = text.splitlines()[-1] if text else repr(exc)
    return PoolUnavailable(f"tools failed to load: {last}", {"stderr": text[-4000:]})


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--connect", "endpoint", envvar="ZBRIDGE_CONNECT", metavar="ENDPOINT",
              help="Hub backend endpoint to serve (ipc://... or tcp://...).")
@click.option("--stdio", is_flag=True, help="Serve line-delimited JSON-RPC 2.0 on stdin/stdout.")
@click.option("--tools", "tools", multiple=True, envvar="ZBRIDGE_TOOLS", metavar="MODULE|PATH",
              help="Module name or .py file to load tools from (repeatable).")
@click.option("--identity", envvar="ZBRIDGE_IDENTITY", help="Routing id to present to the hub.")
@click.option("--lifeline", is_flag=True, hidden=True,
              help="Exit when stdin reaches EOF (set by the hub that spawned us).")
@click.option("--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE,
              envvar="ZBRIDGE_MAX_MESSAGE_SIZE", show_default=True, help="Largest frame in bytes.")
@click.option("--log-level", default="INFO", envvar="ZBRIDGE_LOG_LEVEL", show_default=True)
def main(endpoint: str | None, stdio: bool, tools: tuple[str, ...], identity: str | None,
         lifeline: bool, max_message_size: int, log_level: str) -> None:
    """Keep tools warm and serve calls to them."""
    if bool(endpoint) == stdio:
        raise click.UsageError("give exactly one of --connect ENDPOINT or --stdio")
    logging.basicConfig(stream=sys.stderr, level=log_level.upper(),
                        format=f"zbridge-daemon[{os.getpid()}] %(levelname)s %(message)s")
    protocol_out = isolate_stdout()  # before tools load: imports may print too
    if stdio:
        run_stdio(tools, protocol_out)
    else:
        run_worker(endpoint, tools, identity, lifeline, max_message_size)


def run_stdio(tools: tuple[str, ...], out) -> None:
    from . import stdio
    try:
        executor: Executor | PoolUnavailable = Executor(load(tools))
    except BaseException as exc:  # noqa: BLE001 - reported on every call instead
        traceback.print_exc()
        executor = load_failure(exc)
    stdio.serve(executor, out)


def run_worker(endpoint: str, tools: tuple[str, ...], identity: str | None, lifeline: bool,
               max_message_size: int) -> None:
    from . import worker
    if lifeline:
        watch_lifeline(lambda: (remove_if_orphaned(endpoint), os._exit(0)))
    try:
        registry = load(tools)
    except BaseException:  # noqa: BLE001 - the hub reads this from our stderr
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(EXIT_LOAD_FAILED)
    worker.serve(endpoint, registry, identity=identity.encode() if identity else None,
                 max_message=max_message_size)


if __name__ == "__main__":
    main()
