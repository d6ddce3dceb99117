"""Readiness: what makes ``Port.fileno()`` mean what a netmap fd means.

netmap's poll() on a port's fd runs the syncs itself, and its answer follows the rings:
readable while an RX ring has frames between ``cur`` and ``tail``, writable while a TX
ring has room after completions were reaped. An AF_XDP socket knows only its kernel
rings, so ``Port.fileno()`` is an epoll over

- the RX sockets (EPOLLIN): frames waiting in a kernel RX ring, which the next rxsync
  takes;
- an eventfd, raised here whenever a sync leaves what netmap would report: frames
  between ``cur`` and ``tail`` of an RX ring, or (for a port without RX rings) room
  between ``cur`` and ``tail`` of a TX ring, or TX frames still in flight, whose
  completions no socket event announces, so that the caller's next txsync reaps them.
  It is cleared by the sync or the ``cur`` store that leaves none of these.

An epoll fd can only become readable, so a port without RX rings reports its TX room
as readable; a port with RX rings reports RX only (as select's read set on a netmap fd).

One difference from netmap remains: while the application holds every slot of an RX
ring (``cur`` at ``tail``, ``head`` not moved) and frames wait in the kernel RX ring,
the socket keeps the fd readable although an rxsync has no room to take them; netmap
would sleep until the next interrupt. Release slots (move ``head``) to end it.

Nothing is kept up to date until a caller asks for the fd: ``arm`` hooks the rings,
and from then on a sync or a ``cur`` store that changes the answer costs one eventfd
read or write. Ports used only through ``Port.poll()`` pay nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol


class Ring(Protocol):
    """What Readiness reads of a netmap ring (ring.Ring; a Protocol: no import cycle)."""

    _ready: Any

    @property
    def cur(self) -> int: ...

    @property
    def tail(self) -> int: ...

    def tx_pending(self) -> bool: ...


class Readiness:
    """The eventfd half of ``Port.fileno()`` (see the module docstring)."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.raised = False
        self._rings: list[Ring] = []
        self._tx = False

    def arm(self, rings: Sequence[Ring], tx: bool) -> None:
        """Follow ``rings`` (the RX rings, or for a port without them its TX rings)."""
        if self._rings:
            return
        self._rings = list(rings)
        self._tx = tx
        for r in self._rings:
            r._ready = self
        self.update()

    @property
    def armed(self) -> bool:
        return bool(self._rings)

    def ready(self) -> bool:
        if self._tx:
            return any(r.cur != r.tail or r.tx_pending() for r in self._rings)
        return any(r.cur != r.tail for r in self._rings)

    def update(self) -> None:
        """Raise or clear the eventfd to match the rings (a syscall only on a change)."""
        if self.fd < 0:
            return
        now = self.ready()
        if now == self.raised:
            return
        if now:
            os.eventfd_write(self.fd, 1)
        else:
            try:
                os.eventfd_read(self.fd)
            except BlockingIOError:
                pass  # already zero
        self.raised = now

    def disarm(self) -> None:
        """Stop following the rings (``Port.reconfigure`` arms it again on the new ones)."""
        for r in self._rings:
            r._ready = None
        self._rings = []

    def close(self) -> None:
        """Unhook the rings and close the eventfd (idempotent)."""
        self.disarm()
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
