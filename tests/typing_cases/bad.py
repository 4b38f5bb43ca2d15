"""Wrong uses that a type checker must flag."""

from __future__ import annotations

import zbridge


@zbridge.tool
def add(a: int, b: int = 0) -> int:
    return a + b


add("one", 2)  # E: wrong argument type, kept through the decorator
name: int = zbridge.Bridge().call  # E: a method is not an int
zbridge.Bridge(tools="t").call(42)  # E: the tool name is a str
zbridge.Bridge(tools="t").scale("2")  # E: workers is an int
zbridge.Bridge(tools="t").stacks(1.5)  # E: a daemon is its id or pid
