"""What a forked child does with the bridges it inherited: nothing, and it lets go.

``os.fork()`` copies a process with its bridges' state but not their threads: the hub
thread, the supervisor's watchers and any caller holding the pool's lock do not exist in
the child. So a child's copy refuses every use (``ClientCore._check`` compares pids) and,
right after the fork, lets go of the file descriptors that tie daemons to their owner:
their lifelines (a daemon exits when its lifeline's last writer is gone, so after the
parent's death its daemons must not live on for as long as a child does) and their
channels. Each is pointed at /dev/null (``dup2``) rather than closed, so objects the
child still holds close a harmless descriptor, never one that was reused.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class Inherited(Protocol):
    def let_go_in_child(self, devnull: int) -> None: ...


_owners: weakref.WeakSet[Inherited] = weakref.WeakSet()


def register(owner: Inherited) -> None:
    """``owner`` (a hub) lets go of what it holds in every child forked from now on."""
    _owners.add(owner)


def _after_fork_in_child() -> None:
    if not _owners:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for owner in list(_owners):
            owner.let_go_in_child(devnull)
    finally:
        os.close(devnull)
    _owners.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
