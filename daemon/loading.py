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
    failed to load (said on stderr once, in one line; the traceback is in each error's data)."""
    try:
        return Executor(load(tools), expose_tracebacks)
    except BaseException as exc:  # noqa: BLE001 - reported on every call instead
        report_load_failure(exc, structured=False)
        return load_failure(exc)


def summary(exc: BaseException) -> str:
    """One line naming the exception, the file and line, and the last frame of user code:
    ``SyntaxError: invalid syntax (/app/tools.py, line 5: return x +* 2)``,
    ``NameError: name 'np' is not defined (in load_model, /app/model.py, line 12)``."""
    import traceback  # only on failure
    text = str(exc).strip().splitlines()
    head = f"{type(exc).__qualname__}: {text[0]}" if text else type(exc).__qualname__
    if isinstance(exc, SyntaxError) and exc.filename:
        code = (exc.text or "").strip()
        where = f"{exc.filename}, line {exc.lineno}" + (f": {code[:80]}" if code else "")
        head = f"{type(exc).__qualname__}: {exc.msg}"
        return f"{head} ({where})"
    frames = traceback.extract_tb(exc.__traceback__)
    # the user's own code if it is in the trace, else an installed library's
    last = next((f for f in reversed(frames) if _origin(f.filename) == "user"), None) or \
        next((f for f in reversed(frames) if _origin(f.filename) == "library"), None)
    if last is None:
        return head
    return f"{head} (in {last.name}, {last.filename}, line {last.lineno})"


def _origin(filename: str) -> str:
    """"user" (the user's own code), "library" (an installed package) or "system" (zbridge,
    the standard library, the import machinery)."""
    import os
    import sysconfig

    import zbridge
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return "system"
    path = os.path.abspath(filename)

    def under(directory: str | None) -> bool:
        return bool(directory) and path.startswith(os.path.abspath(str(directory)) + os.sep)
    if under(os.path.dirname(zbridge.__file__)) or under(os.path.dirname(__file__)):
        return "system"
    if any(under(sysconfig.get_path(k)) for k in ("purelib", "platlib")):
        return "library"
    if any(under(sysconfig.get_path(k)) for k in ("stdlib", "platstdlib")):
        return "system"
    return "user"


def report_load_failure(exc: BaseException, structured: bool) -> None:
    """Say on stderr why the tools could not load, once: the one-line ``summary`` last (the
    hub reads a failed start's cause from the last line), and, for a hub (``structured``:
    JSON records), the full traceback before it as a DEBUG record the hub logs at DEBUG."""
    import sys
    import traceback
    line = summary(exc)
    if structured:
        from zbridge.logs import record_line
        full = "".join(traceback.format_exception(exc)).rstrip()
        sys.stderr.write(record_line("DEBUG", "zbridge.daemon", "tools failed to load", exc=full) + "\n")
        sys.stderr.write(record_line("INFO", "zbridge.daemon", f"tools failed to load: {line}",
                                     event="load_failed") + "\n")
    else:
        sys.stderr.write(f"zbridge-daemon: tools failed to load: {line}\n")
    sys.stderr.flush()


def load_failure(exc: BaseException) -> PoolUnavailable:
    """The error every call gets when the tools could not load: the one-line summary, and
    the traceback in its data."""
    import traceback  # only on failure
    text = "".join(traceback.format_exception(exc)).rstrip()
    return PoolUnavailable(f"tools failed to load: {summary(exc)}", {"stderr": text[-4000:]})
