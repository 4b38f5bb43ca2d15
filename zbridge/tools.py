"""Registering and loading tools: ``@tool``, ``@startup`` and ``load_tools``.

A tool is a plain function. Decorate it with ``@zbridge.tool`` (optionally ``name=``) in a
module; the daemon imports that module (by module name or by a path to a ``.py`` file) and
serves every tool it registered. A module that registers nothing exposes its public
top-level functions instead. ``@tool(extra_args="ignore")`` lets a tool drop keyword
arguments it does not take (as pipe-daemon tools reading ``args.get(...)`` did); the default
``"error"`` answers them with InvalidParams. ``@zbridge.startup`` marks a hook that runs once in each
daemon after loading and before it reports ready: the place to load a model.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections import namedtuple
from types import FunctionType, ModuleType

# Deliberately no typing, inspect or dataclasses at import time: the pipe daemon imports
# this module on every start, and those three cost ~11 ms together (a third of a bare
# interpreter's start). inspect is imported only to read a signature, which a strict tool
# needs only once a call has failed.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import inspect
    from typing import Any, Callable, Iterable, ParamSpec, TypeVar, overload

    P = ParamSpec("P")
    R = TypeVar("R")

__all__ = ["Tool", "Registry", "tool", "startup", "load_tools", "REGISTRY"]

EXTRA_ARGS = ("error", "ignore")
WIRE_NAME = "__zbridge_tool__"  # set on a decorated function: the name it is served under


class Tool(namedtuple("Tool", "name fn accepted", defaults=(None,))):
    """A registered tool. ``accepted``: the keyword names kept when unknown ones are dropped
    (``extra_args="ignore"``); None passes every keyword on."""
    __slots__ = ()

    @property
    def signature(self) -> inspect.Signature | None:
        return signature_of(self.fn)


def signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    import inspect
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none; accept any arguments
        return None


def check_extra_args(value: str) -> str:
    if value not in EXTRA_ARGS:
        raise ValueError(f"extra_args must be one of {', '.join(map(repr, EXTRA_ARGS))}, not {value!r}")
    return value


def _accepted(fn: Callable[..., Any], extra_args: str) -> frozenset[str] | None:
    """Computed once at registration so a call only filters a dict, and only when it must."""
    if extra_args == "error":
        return None
    signature = signature_of(fn)
    if signature is None:
        return None
    import inspect
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None  # **kwargs takes everything already
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in params if p.kind in named)


class Registry:
    """The tools and start-up hooks one daemon serves."""

    def __init__(self) -> None:
        self.tools: dict[str, Tool] = {}
        self.startup_hooks: list[Callable[[], Any]] = []

    def add(self, fn: Callable[..., Any], name: str | None = None, extra_args: str = "error") -> Tool:
        check_extra_args(extra_args)
        entry = Tool(name or fn.__name__, fn, _accepted(fn, extra_args))
        self.tools[entry.name] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self.tools)


REGISTRY = Registry()


def _tool(fn: Any, name: str | None, extra_args: str) -> Any:
    check_extra_args(extra_args)  # at decoration, not at the first call

    def register(f: Callable[..., Any]) -> Callable[..., Any]:
        entry = REGISTRY.add(f, name, extra_args)
        try:  # so a typed handle (zbridge/handles.py) knows the name without a registry
            setattr(f, WIRE_NAME, entry.name)
        except (AttributeError, TypeError):  # a builtin or a bound method: its __name__ it is
            pass
        return f
    return register(fn) if fn is not None else register


if TYPE_CHECKING:  # the decorated function keeps its exact type (typing is not imported at run time)
    @overload
    def tool(fn: Callable[P, R], *, name: str | None = None, extra_args: str = "error") -> Callable[P, R]: ...

    @overload
    def tool(fn: None = None, *, name: str | None = None,
             extra_args: str = "error") -> Callable[[Callable[P, R]], Callable[P, R]]: ...

    def tool(fn: Any = None, *, name: str | None = None, extra_args: str = "error") -> Any: ...
else:
    def tool(fn=None, *, name=None, extra_args="error"):
        """Register ``fn`` as a tool, under ``name`` or its own name. Returns ``fn`` itself
        (marked with that name, for ``client.handle(fn)``).

        ``extra_args="ignore"`` drops keyword arguments the function does not take instead of
        answering InvalidParams (``"error"``, the default).
        """
        return _tool(fn, name, extra_args)


def startup(fn: Callable[[], R]) -> Callable[[], R]:
    """Run ``fn()`` once in every daemon before it reports ready (e.g. to load a model)."""
    if fn not in REGISTRY.startup_hooks:
        REGISTRY.startup_hooks.append(fn)
    return fn


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec


def _split_rooted(spec: str) -> tuple[str, str | None]:
    """``MODULE@DIR`` -> (MODULE, DIR): import MODULE with DIR first on sys.path. A spec whose
    part before ``@`` is no dotted name (a path such as ``/home/a@b/t.py``) is left whole."""
    name, sep, root = spec.partition("@")
    if sep and root and all(part.isidentifier() for part in name.split(".")):
        return name, root
    return spec, None


def _front_of_path(directory: str) -> None:
    if directory in sys.path:
        sys.path.remove(directory)
    sys.path.insert(0, directory)


def _import_path(path: str) -> ModuleType:
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ImportError(f"tools file not found: {path}")
    name = "zbridge_tools_" + os.path.splitext(os.path.basename(path))[0]
    directory = os.path.dirname(path)
    if directory not in sys.path:  # so the file can import its neighbours
        sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load tools from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _import_spec(spec: str) -> ModuleType:
    name, root = _split_rooted(spec)
    if root is None and _is_path(spec):
        return _import_path(spec)
    # as ``python -m`` does: the current directory first (console scripts leave it out)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    if root is not None:
        _front_of_path(root)
    return importlib.import_module(name)


def _public_functions(module: ModuleType) -> list[Callable[..., Any]]:
    return [obj for attr, obj in vars(module).items()
            if not attr.startswith("_") and isinstance(obj, FunctionType)
            and obj.__module__ == module.__name__]


def load_tools(specs: Iterable[str], registry: Registry = REGISTRY) -> Registry:
    """Import each module name or ``.py`` path; errors propagate with their traceback."""
    for spec in specs:
        before = len(registry.tools)
        module = _import_spec(spec)
        registered = any(t.fn.__module__ == module.__name__ for t in registry.tools.values())
        if len(registry.tools) == before and not registered:
            for fn in _public_functions(module):
                registry.add(fn)
    return registry


def tool_specs(tools: Any) -> list[str]:
    """Normalise what users pass as ``tools=`` into specs a daemon can load wherever it runs.

    A name, a path, a module, or a list of them. A ``.py`` path becomes absolute. A module, or
    a module name this process can find (the current directory first, then ``sys.path``, as
    ``python -m`` looks), becomes ``NAME@ROOT``: the daemon puts ROOT first on its sys.path
    and imports NAME, so it loads the same file the caller would. Names found nowhere stay as
    they are (the daemon then reports the ModuleNotFoundError).
    """
    if tools is None:
        return []
    if isinstance(tools, (str, os.PathLike, ModuleType)):
        tools = [tools]
    specs = []
    for item in tools:
        if isinstance(item, ModuleType):
            specs.append(_module_spec(item))
            continue
        spec = os.fspath(item)
        name, root = _split_rooted(spec)
        if root is not None:
            specs.append(f"{name}@{os.path.abspath(root)}")
        elif _is_path(spec):
            specs.append(os.path.abspath(spec))
        else:
            specs.append(_rooted(spec, _find_root(spec)))
    return specs


def _module_spec(module: ModuleType) -> str:
    name = module.__name__
    file = getattr(module, "__file__", None)
    if name == "__main__" or name.startswith("zbridge_tools_"):
        if not file:
            raise ValueError(f"module {name!r} has no file a daemon could load")
        return os.path.abspath(str(file))
    if not file:  # a namespace package or a built-in: the daemon finds it by name or not at all
        return name
    root = os.path.dirname(os.path.abspath(file))
    depth = name.count(".") + (os.path.basename(file).startswith("__init__.") and 1 or 0)
    for _ in range(depth):
        root = os.path.dirname(root)
    return _rooted(name, root)


def _find_root(name: str) -> str | None:
    """The sys.path entry holding top-level package or module of ``name``, without importing it."""
    from importlib.machinery import PathFinder
    top = name.partition(".")[0]
    if not top.isidentifier():
        return None
    search = [os.getcwd()] + [p or os.getcwd() for p in sys.path]
    found = PathFinder.find_spec(top, search)
    if found is None:
        return None
    if found.submodule_search_locations:  # a package (regular or namespace)
        location = list(found.submodule_search_locations)[0]
    elif found.origin:
        location = found.origin
    else:
        return None
    return os.path.dirname(os.path.abspath(location))


def _rooted(name: str, root: str | None) -> str:
    """``name@root``, or plain ``name`` when root is where every interpreter looks anyway."""
    if root is None or root in _standard_dirs():
        return name
    return f"{name}@{root}"


def _standard_dirs() -> set[str]:
    import sysconfig
    return {os.path.abspath(p) for key, p in sysconfig.get_paths().items()
            if key in ("stdlib", "platstdlib", "purelib", "platlib")}
