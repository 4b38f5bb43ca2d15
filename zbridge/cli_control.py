"""``zbridge scale``, ``zbridge reload``, ``zbridge stacks``: live control of a running
``zbridge serve`` (the client methods of ``zbridge/admin.py``, from the shell)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

import click

from .cli import endpoint_option, hub_trouble, log_level_option, resolve
from .errors import BridgeError, CallTimeout
from .protocol import MAX_WORKERS
from .rollout import CONTROL_TIMEOUT, RELOAD_TIMEOUT

if TYPE_CHECKING:
    from .client import Client


def curve_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--curve-server-key", envvar="ZBRIDGE_CURVE_SERVER_KEY", default="",
                      help="The hub's CURVE public key file.")(fn)
    return click.option("--curve-secret", envvar="ZBRIDGE_CURVE_SECRET", default="",
                        help="Our CURVE secret key file.")(fn)


def _client(endpoint: str, curve_secret: str, curve_server_key: str) -> Client:
    from .client import Client
    return Client(endpoint, fallback=False, curve_secret=curve_secret, curve_server_key=curve_server_key)


def _failed(endpoint: str, exc: BridgeError, waited: float) -> click.ClickException:
    """A control that failed: a silent hub is named as such, anything else as it said."""
    if isinstance(exc, CallTimeout) and "no reply" in exc.message:
        return click.ClickException(hub_trouble(endpoint, exc, waited))
    return click.ClickException(exc.message)


def settled(info: Mapping[str, Any], workers: int) -> bool:
    """Whether the pool is what ``scale`` asked for: ``workers`` spawned daemons, every one
    up and staying."""
    daemons = [d for d in info["daemons"] if str(d["id"]).startswith("w") and d["state"] != "stopping"]
    return len(daemons) == workers and all(d["state"] in ("idle", "busy") and not d.get("retiring")
                                           for d in daemons)


@click.command()
@click.argument("workers", type=click.IntRange(0, MAX_WORKERS))
@endpoint_option
@click.option("--wait", is_flag=True, help="Return once the pool has WORKERS daemons up (busy ones "
                                           "leave only after their running call).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds --wait waits for the pool to settle.")
@curve_options
@log_level_option
def scale(workers: int, endpoint: str | None, wait: bool, timeout: float, curve_secret: str,
          curve_server_key: str) -> None:
    """Run WORKERS daemons in a running `zbridge serve`: new ones start now; extras leave, an
    idle one at once, a busy one after its running call."""
    endpoint = resolve(endpoint)
    try:
        with _client(endpoint, curve_secret, curve_server_key) as client:
            answer = client.scale(workers)
            click.echo(f"workers {answer['was']} -> {answer['workers']}")
            if wait:
                deadline = time.monotonic() + timeout
                while not settled(info := client.status(), workers):
                    if time.monotonic() >= deadline:
                        raise click.ClickException(
                            f"the pool has not settled at {workers} daemons after {timeout}s: "
                            f"{', '.join(str(d['id']) + ' ' + str(d['state']) for d in info['daemons'])}")
                    time.sleep(0.1)
                click.echo(f"{workers} daemon(s) up")
    except BridgeError as exc:
        raise _failed(endpoint, exc, CONTROL_TIMEOUT) from None


@click.command()
@endpoint_option
@click.option("--timeout", type=float, default=RELOAD_TIMEOUT, show_default=True,
              help="Seconds to wait for the reload to end (old daemons leave after their running "
                   "calls); past it, the reload goes on in the hub.")
@curve_options
@log_level_option
def reload(endpoint: str | None, timeout: float, curve_secret: str, curve_server_key: str) -> None:
    """Roll out new tool code: daemons are replaced one at a time, each after its running
    call; the first new daemon must start before any old one goes (if it cannot, the reload
    is aborted, the old daemons serve on, and the error says why)."""
    endpoint = resolve(endpoint)
    try:
        with _client(endpoint, curve_secret, curve_server_key) as client:
            answer = client.reload(timeout=timeout)
    except BridgeError as exc:
        raise _failed(endpoint, exc, CONTROL_TIMEOUT) from None
    click.echo(f"reloaded: {answer['replaced']} daemon(s) replaced in {answer['took_s']:.2f}s "
               f"(generation {answer['generation']})")


@click.command()
@click.argument("daemon")
@endpoint_option
@curve_options
@log_level_option
def stacks(daemon: str, endpoint: str | None, curve_secret: str, curve_server_key: str) -> None:
    """Print the Python stack of every thread of DAEMON (its id, e.g. w3, or its pid, as
    `zbridge status` shows them): where a stuck call is stuck. Daemons on the hub's host only."""
    endpoint = resolve(endpoint)
    try:
        with _client(endpoint, curve_secret, curve_server_key) as client:
            text = client.stacks(int(daemon) if daemon.isdigit() else daemon)
    except BridgeError as exc:
        raise _failed(endpoint, exc, CONTROL_TIMEOUT) from None
    click.echo(text.rstrip("\n"))
