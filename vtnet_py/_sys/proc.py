"""/proc facts: whether a process lives, which network namespaces exist."""

from __future__ import annotations

import os
from contextlib import suppress

from vtnet_py._sys.netns import NETNS_RUN_DIR


def netns_inode() -> int:
    """Inode of the calling thread's network namespace (names it in paths)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


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


def live_netns_inodes() -> set[int]:
    """Network namespaces this host can see: named ones and those of every thread."""
    inos: set[int] = set()
    with suppress(OSError):
        for name in os.listdir(NETNS_RUN_DIR):
            with suppress(OSError):
                inos.add(os.stat(os.path.join(NETNS_RUN_DIR, name)).st_ino)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):  # setns() is per thread
                with suppress(OSError, ValueError):
                    inos.add(int(os.readlink(f"/proc/{pid}/task/{tid}/ns/net")[5:-1]))
    return inos
