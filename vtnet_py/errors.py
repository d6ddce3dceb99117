"""The exception tree of vtnetmap, in one place.

    VtnetError                      anything this library raises on purpose
    ├── PortNameError (ValueError)  a port name outside netmap's grammar; quotes it
    ├── UnsupportedError            valid request that this kernel/driver/port cannot do
    ├── DeviceError                 the interface is missing, refused, or changed under us
    │   ├── RefusedError            a precondition fails (driver words, default route, ...)
    │   ├── BusyError               a queue or interface is owned by someone else
    │   ├── StateFileError          vtnetmap's own state file or directory: unreadable,
    │   │                           tampered with, or on a full / read-only filesystem
    │   └── InterfaceChangedError   link gone/down, channels or MTU changed while open
    ├── PrivilegeError (PermissionError)  a capability is missing; names it
    ├── ResourceError               a limit was reached (fds, memory); names port and limit
    ├── RingError                   a ring rule broken (head/cur, buf_idx, len): ring reset
    ├── PortClosedError             the port was closed
    └── InvariantError (AssertionError)   a UMEM frame is not in exactly one place

Lower-layer errors (OSError from a syscall) are mapped with ``raise X(...) from exc``;
every message names the port, interface, queue or ring it is about.
"""

from __future__ import annotations


class VtnetError(Exception):
    """Base of every error raised on purpose by vtnetmap."""


class PortNameError(VtnetError, ValueError):
    """A port name outside netmap's grammar (the message quotes it and says which part)."""


class UnsupportedError(VtnetError):
    """A well-formed request that this kernel, driver or port cannot serve."""


class DeviceError(VtnetError):
    """The interface is missing, refused the operation, or changed under an open port."""


class RefusedError(DeviceError):
    """A precondition failed: a driver limit, a fixed offload, the default-route interface."""


class BusyError(DeviceError):
    """A queue (or the interface's XDP hook) is owned by another socket or program."""


class StateFileError(DeviceError):
    """vtnetmap's own state (a file or directory under /run/vtnetmap, or its pins) cannot
    be read or written: garbled, out of range, not ours, or the filesystem is full or
    read-only. ``path`` names it; the message does too."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class InterfaceChangedError(DeviceError):
    """The interface went away or changed (link, channels, MTU) while a port was open."""


class PrivilegeError(VtnetError, PermissionError):
    """A capability (CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW, ...) is missing."""


class ResourceError(VtnetError):
    """A process or system limit (file descriptors, memory, BPF map space) refused an
    open; the message names the port, the step and the limit."""


class RingError(VtnetError):
    """The application broke a netmap ring rule; as netmap does, the ring is reset to
    head = cur = hwcur, and nothing is sent or released.

    ``slot`` is the ring's slot at fault (None when the rule is about head/cur or the
    ring as a whole), ``buf_idx`` the buffer index found there (None when not about one
    buffer), ``reason`` a short code: ``head_cur``, ``len``, ``range``, ``owner``,
    ``twice``, ``copied``, ``morefrag``, ``frags``, ``never_ends``, ``count``.
    """

    def __init__(
        self,
        message: str,
        *,
        slot: int | None = None,
        buf_idx: int | None = None,
        reason: str = "",
    ):
        super().__init__(message)
        self.slot = slot
        self.buf_idx = buf_idx
        self.reason = reason


class PortClosedError(VtnetError):
    """An operation on a closed port."""


class InvariantError(VtnetError, AssertionError):
    """A UMEM frame is not in exactly one place (lost or handed out twice)."""
