"""Pins in bpffs and what can be read of an attached program from outside a port.

    /sys/fs/bpf/vtnetmap/<netns inode>/<ifname>/{xsks,owners,link}     dirs 0700, files 0600

``vtnetmap attach`` pins the steering program's link and maps there so that the program
outlives the attaching process and ports opened later by any process join it.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field

from vtnet_py._sys import abi as K
from vtnet_py._sys import bpf
from vtnet_py.device.record import check_dir
from vtnet_py.ebpf.steer import MAX_QUEUES, PROG_NAME, PROG_NAME_FRAGS
from vtnet_py.errors import DeviceError, PrivilegeError, VtnetError

BPFFS = "/sys/fs/bpf"
PIN_ROOT = os.path.join(BPFFS, "vtnetmap")
BPF_FS_TYPE = "bpf"


def pin_dir(nsino: int, ifname: str) -> str:
    return os.path.join(PIN_ROOT, str(nsino), ifname)


def bpf_error(ifname: str, what: str, exc: OSError) -> VtnetError:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return PrivilegeError(f"{ifname}: {what} needs root (CAP_BPF, CAP_SYS_ADMIN)")
    return DeviceError(f"{ifname}: {what} failed: {exc.strerror or exc}")


def _mount_type(path: str) -> str | None:
    """Filesystem type of the mount on top at ``path`` (None: not a mount point)."""
    fstype = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and fields[4].replace("\\040", " ") == path:
                fstype = right.split()[0]  # later lines are mounted on top
    return fstype


def _private_mount_ns() -> bool | None:
    """True when this process has its own mount namespace (``ip netns exec`` makes
    one), None when that cannot be told (pid 1's namespace is not readable)."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt")
    except OSError:
        return None


def ensure_bpffs(ifname: str) -> None:
    """Mount bpffs on /sys/fs/bpf (mode 0700) unless it is there.

    Refused in a private mount namespace: a bpffs mounted there, and with it the pins,
    would vanish when the namespace does, detaching the program behind the user's back.
    """
    if _mount_type(BPFFS) == BPF_FS_TYPE:
        return
    if _private_mount_ns():
        raise DeviceError(
            f"{ifname}: {BPFFS} has no bpffs in this process's private mount namespace "
            "(`ip netns exec`?), and pins made here would vanish with it; run "
            f"`vtnetmap attach --netns NS {ifname}` from the host's mount namespace"
        )
    if not os.path.isdir(BPFFS):
        raise DeviceError(f"{ifname}: {BPFFS} does not exist, so bpffs cannot be mounted")
    ret = K.libc.mount(b"bpf", BPFFS.encode(), b"bpf", ctypes.c_ulong(0), b"mode=0700")
    if ret != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise PrivilegeError(f"{ifname}: mounting bpffs on {BPFFS} needs CAP_SYS_ADMIN")
        raise DeviceError(f"{ifname}: mounting bpffs on {BPFFS} failed: {os.strerror(err)}")


def remove_pins(pdir: str) -> bool:
    """Unlink every pin in ``pdir`` and the directory, and its netns directory when that
    is left empty. True when something was there. StateFileError, and nothing removed,
    when ``pdir`` or a directory above it (up to the pin root) is a symlink or not
    root's: listing it would unlink the files of wherever it points."""
    if not os.path.lexists(pdir):
        return False
    d = pdir
    while len(d) >= len(PIN_ROOT):
        if os.path.lexists(d):
            check_dir(d)
        d = os.path.dirname(d)
    try:
        names = os.listdir(pdir)
    except FileNotFoundError:
        return False
    for name in names:
        with suppress(FileNotFoundError):
            os.unlink(os.path.join(pdir, name))
    with suppress(FileNotFoundError):
        os.rmdir(pdir)
    with suppress(OSError):  # other interfaces of that netns may still be pinned
        os.rmdir(os.path.dirname(pdir))
    return True


@dataclass
class ProgView:
    """What can be read of an XDP program from outside: name, ours, queue owners."""

    prog_id: int
    name: str
    ours: bool
    owners: dict[int, int] = field(default_factory=dict)  # queue -> pid, nonzero only

    @property
    def frags(self) -> bool:
        return self.name == PROG_NAME_FRAGS


def read_owners(owners_fd: int) -> dict[int, int]:
    """Nonzero entries of an ``owners`` map: queue -> pid."""
    out: dict[int, int] = {}
    v = ctypes.c_uint32(0)
    for q in range(MAX_QUEUES):  # control path: 256 lookups, once per status/detach
        v.value = 0
        if bpf.map_lookup(owners_fd, ctypes.c_uint32(q), v) and v.value:
            out[q] = int(v.value)
    return out


def inspect_prog(prog_id: int, ifname: str) -> ProgView | None:
    """Look at program ``prog_id``; None if it no longer exists."""
    try:
        fd = bpf.prog_fd_by_id(prog_id)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise bpf_error(ifname, f"reading XDP program {prog_id}", exc) from exc
    try:
        info, map_ids = bpf.prog_info(fd)
        name = info.name.decode(errors="replace")
        view = ProgView(prog_id, name, name in (PROG_NAME, PROG_NAME_FRAGS))
        if view.ours:
            for mid in map_ids:
                mfd = bpf.map_fd_by_id(mid)
                try:
                    if bpf.map_info(mfd).name.decode() == "owners":
                        view.owners = read_owners(mfd)
                finally:
                    os.close(mfd)
        return view
    except OSError as exc:
        raise bpf_error(ifname, f"reading XDP program {prog_id}", exc) from exc
    finally:
        os.close(fd)


@dataclass
class PinView:
    """The pinned link of an interface: its program and whether it is still attached."""

    prog_id: int
    link_id: int
    ifindex: int  # 0 once detached (interface gone, or BPF_LINK_DETACH)


def read_pin(pdir: str, ifname: str) -> PinView | None:
    path = os.path.join(pdir, "link")
    if not os.path.exists(path):  # no bpf() call (which unprivileged users cannot make)
        return None
    try:
        fd = bpf.obj_get(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise bpf_error(ifname, f"opening the pin {path}", exc) from exc
    try:
        li = bpf.link_info(fd)
        return PinView(int(li.prog_id), int(li.id), int(li.ifindex))
    finally:
        os.close(fd)


def describe_pids(pids: Iterable[int]) -> str:
    return ", ".join(str(p) for p in sorted(set(pids)))
