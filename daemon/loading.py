"""Loading the user's tools in a daemon, and reporting why it failed.

Shared by the zmq worker and the pipe daemon; kept free of click, zmq and logging so the
``--stdio`` start imports only what a pipe needs.
"""

from __future__ import annotations

import gc

from zbridge.errors import PoolUnavailable
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


def load_failure(exc: BaseException) -> PoolUnavailable:
    """The error every call gets when the tools could not load: last line and stderr tail."""
    import traceback  # only on failure
    text = "".join(traceback.format_exception(exc)).rstrip()
    last = text.splitlines()[-1] if text else repr(exc)
    return PoolUnavailable(f"tools failed to load: {last}", {"stderr": text[-4000:]})
