"""Enter a named network namespace (``ip netns`` style) for the calling thread.

Sockets, BPF links and ifindex lookups made inside the ``with`` block belong to that
namespace and keep working after the thread has gone back, which is how a port is opened
on an interface that lives in another namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from vtnet_py._sys import abi as K
from vtnet_py.errors import DeviceError, PrivilegeError

NETNS_RUN_DIR = "/run/netns"


def _setns(fd: int, what: str) -> None:
    if K.libc.setns(fd, K.CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise PrivilegeError(f"entering network namespace {what} needs CAP_SYS_ADMIN")
        raise DeviceError(f"cannot enter network namespace {what}: {os.strerror(err)}")


@contextmanager
def netns(name: str | None) -> Iterator[None]:
    """Run the block inside network namespace ``name`` (None: stay where we are).

    The thread always returns to its original namespace, even when the block raises.
    """
    if name is None:
        yield
        return
    path = name if name.startswith("/") else os.path.join(NETNS_RUN_DIR, name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DeviceError(f"network namespace {name!r} does not exist ({path})") from None
    except (OSError, ValueError) as exc:  # "ns/" (ENOTDIR), a NUL byte, ...
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            raise  # a limit, not a bad name: the caller names the limit
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise DeviceError(f"network namespace {name!r}: cannot open {path!r}: {why}") from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, repr(name))
            try:
                yield
            finally:
                _setns(home, "of origin")
        finally:
            os.close(home)
    finally:
        os.close(target)


def new_private_netns(what: str) -> int:
    """An fd of a fresh, anonymous network namespace (never bind-mounted): it lives while
    the fd, or a socket or device made inside it, does. The calling thread stays where it
    is. ``what`` names the caller in errors."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if K.libc.unshare(K.CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            if err == errno.EPERM:
                raise PrivilegeError(f"{what}: creating a network namespace needs CAP_SYS_ADMIN")
            raise DeviceError(f"{what}: unshare(CLONE_NEWNET): {os.strerror(err)}")
        try:
            return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            _setns(home, "of origin")
    finally:
        os.close(home)


def fd_netns(fd: int) -> str:
    """A path naming the namespace held by ``fd``, for :func:`netns`."""
    return f"/proc/self/fd/{fd}"
