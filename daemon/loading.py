"""Loading the user's tools in a daemon, and reporting why it failed.

Shared by the zmq worker and the pipe daemon; kept free of click, zmq and logging so the
``--stdio`` start imports only what a pipe needs.
"""

from __future__ import annotations

import gc

from zbridge.errors import BridgeError, PoolUnavailable
from zbridge.execution import Executor
from zbridge.tools import Registry, load_tools


def load(specs: tuple[str, ...] | list[str]) -> Registry:
    """Import tools and run start-up hooks; exceptions carry the user's traceback."""
    registry = load_tools(specs)
    for hook in registry.startup_hooks:
        hook()
    # What start-up built (modules, a model) lives as long as the daemon: move it out of the
    # collector's sight, so a full collection during a call need not walk a big start-up heap.
    gc.collect()
    gc.freeze()
    return registry


def executor_for(tools: tuple[str, ...] | list[str], expose_tracebacks: bool) -> Executor | BridgeError:
    """What a pipe daemon serves: the loaded tools, or the error every call gets because they
    failed to load (its traceback printed on stderr once)."""
    try:
        return Executor(load(tools), expose_tracebacks)
    except BaseException as exc:  # noqa: BLE001 - reported on every call instead
        import traceback
        traceback.print_exc()
        return load_failure(exc)


def load_failure(exc: BaseException) -> PoolUnavailable:
    """The error every call gets when the tools could not load: last line and stderr tail."""
    import traceback  # only on failure
    text = "".join(traceback.format_exception(exc)).rstrip()
    last = text.splitlines()[-1] if text else repr(exc)
    return PoolUnavailable(f"tools failed to load: {last}", {"stderr": text[-4000:]})
