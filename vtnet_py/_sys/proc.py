"""/proc facts: whether a process lives, which network namespaces exist."""

from __future__ import annotations

import os
import socket
import struct
from contextlib import suppress

from vtnet_py._sys import abi as K
from vtnet_py._sys.netns import NETNS_RUN_DIR
from vtnet_py.errors import UnsupportedError


def netns_inode() -> int:
    """Inode of the calling thread's network namespace (names it in paths)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def netns_cookie() -> int:
    """Cookie of the calling thread's network namespace: names it for good (an inode
    number is reused by the next namespace made). A socket made now belongs to the
    thread's namespace, so any socket asked with SO_NETNS_COOKIE tells it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            raw = s.getsockopt(socket.SOL_SOCKET, K.SO_NETNS_COOKIE, 8)
        except OSError as exc:
            raise UnsupportedError(
                "this kernel does not tell network namespaces apart by cookie "
                "(SO_NETNS_COOKIE, Linux 5.14+), which vtnetmap attach needs"
            ) from exc
    return int(struct.unpack("=Q", raw)[0])


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            # "pid (comm) S ...": the state follows the last ')' (comm may hold one)
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (with the pid, names one process
    for good), or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[19])


def live_netns_paths() -> dict[int, str]:
    """Network namespaces this host can see, by inode: a path that opens each (a named
    one's file in /run/netns, else a thread's /proc/PID/task/TID/ns/net)."""
    paths: dict[int, str] = {}
    with suppress(OSError):
        for name in os.listdir(NETNS_RUN_DIR):
            path = os.path.join(NETNS_RUN_DIR, name)
            with suppress(OSError):
                paths.setdefault(os.stat(path).st_ino, path)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):  # setns() is per thread
                path = f"/proc/{pid}/task/{tid}/ns/net"
                with suppress(OSError, ValueError):
                    paths.setdefault(int(os.readlink(path)[5:-1]), path)
    return paths


def live_netns_inodes() -> set[int]:
    """Network namespaces this host can see: named ones and those of every thread."""
    return set(live_netns_paths())
