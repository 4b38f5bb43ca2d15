"""``zbridge-daemon`` / ``python -m zbridge_daemon``: the pipe daemon starts lean.

Pipe clients start a daemon often (the fallback starts one per call), so ``--stdio`` with
the few options a pipe needs is parsed by hand here and never imports click, asyncio, zmq,
msgpack or logging (the fallback's hidden ``--stdio-msgpack`` imports msgpack, nothing more). Any other command line, ``-h`` included, goes to the click ``main``
in ``main.py``, which also reports every usage error.
"""

from __future__ import annotations

import os
import sys

# click's boolean spellings, so the environment reads the same on both paths
_TRUE = ("1", "true", "t", "yes", "y", "on")
_FALSE = ("0", "false", "f", "no", "n", "off")


def _env_flag(name: str, default: bool) -> bool | None:
    """The variable as a bool, the default when unset, None when it is no boolean."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return True if value in _TRUE else False if value in _FALSE else None


PIPE_MODES = ("--stdio", "--stdio-msgpack")


def parse_pipe_args(argv: list[str]) -> tuple[str, tuple[str, ...], bool] | None:
    """(mode, tools, expose_tracebacks) of a plain pipe command line, or None for anything else."""
    modes = [arg for arg in argv if arg in PIPE_MODES]
    if len(modes) != 1 or os.environ.get("ZBRIDGE_CONNECT"):
        return None  # not a pipe, or a conflict that click words better
    tools: list[str] = []
    # "auto" is on for a pipe: its reader is the local process that started us
    expose = _env_flag("ZBRIDGE_EXPOSE_TRACEBACKS", True)
    if os.environ.get("ZBRIDGE_EXPOSE_TRACEBACKS", "").strip().lower() == "auto":
        expose = True
    args = iter(argv)
    for arg in args:
        if arg in PIPE_MODES:
            continue
        if arg == "--tools":
            value = next(args, None)
            if value is None:
                return None
            tools.append(value)
        elif arg.startswith("--tools="):
            tools.append(arg.partition("=")[2])
        elif arg in ("--expose-tracebacks", "--no-expose-tracebacks"):
            expose = arg == "--expose-tracebacks"
        else:
            return None
    if expose is None:
        return None
    # as click does for a repeatable option: the variable only when the flag is absent
    return modes[0], tuple(tools) or tuple(os.environ.get("ZBRIDGE_TOOLS", "").split()), expose


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    options = parse_pipe_args(args)
    if options is None:
        from .main import main as full_main
        full_main(args, prog_name="zbridge-daemon")
        return
    from .process_io import isolate_stdout
    mode, tools, expose_tracebacks = options
    if mode == "--stdio-msgpack":
        from .framed import run
    else:
        from .stdio import run
    out = isolate_stdout()  # before tools load: imports may print too
    run(tools, out, expose_tracebacks)


if __name__ == "__main__":
    main()
