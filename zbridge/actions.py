"""What the broker asks the hub to do: typed, immutable actions (h11's events are the model).

The broker returns lists of these; the hub carries them out in order and reports failed
sends back as new broker events, so the broker never learns of I/O any other way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from .state import Job


@dataclass(frozen=True, slots=True)
class ToClient:
    """Send ``frame`` to the client with routing id ``client``, then the buffer frames in
    ``extra`` (opaque here: the hub forwards them as they came, never copied)."""
    client: bytes
    frame: bytes
    extra: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class ToDaemon:
    """Send ``frame`` to the daemon with routing id ``daemon`` (its data socket), then the
    buffer frames in ``extra``. ``client``: whose request it is (empty for control
    frames)."""
    daemon: bytes
    frame: bytes
    extra: tuple[Any, ...] = ()
    client: bytes = field(default=b"", compare=False)


@dataclass(frozen=True, slots=True)
class Lease:
    """A caller in this process (``job.owner``) may use the daemon now running ``job``: its
    request goes on the daemon's channel (``job.channel``), sent by whoever carries this
    out (if small; else by the owner, woken), and the owner reads the reply there."""
    job: Job


@dataclass(frozen=True, slots=True)
class Answered:
    """``job.answer`` is set: wake its owner (unless it is the thread carrying this out)."""
    job: Job


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start a daemon process that will present routing id ``daemon``."""
    daemon: bytes


@dataclass(frozen=True, slots=True)
class Kill:
    """Terminate the daemon's process group: TERM then KILL, or KILL at once if ``hard``."""
    daemon: bytes
    reason: str
    hard: bool = False


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Raise ``zbridge.Interrupted`` inside call ``request_id`` (via the heartbeat socket,
    whose thread still runs while the daemon's main thread is busy in the tool)."""
    daemon: bytes
    request_id: int


@dataclass(frozen=True, slots=True)
class Note:
    """Log one lifecycle event (``daemon_ready``, ``daemon_exit``...) at ``level`` (a
    ``logging`` level) on ``zbridge.hub``; ``fields`` become the record's structured extras."""
    event: str
    level: int
    fields: dict[str, Any]


Action = Union[ToClient, ToDaemon, Lease, Answered, Spawn, Kill, Interrupt, Note]
