"""The stack's egress of an interface: one TC program per interface, shared by processes.

netmap's transmit hook sends a frame of the stack to the host RX ring while the NIC TX
ring it would use is in netmap mode, and to the wire otherwise, whichever process holds
those rings. Here that decision is ``vtnm_host_eg`` (bpf/host.c) on IF's egress, and its
inputs are kernel objects that die with their owners:

* a port with NIC TX rings puts one of its sockets into the program's ``txs`` XSKMAP
  (:meth:`EgressGate.add_tx`); the port holding the host RX ring puts the host socket into
  ``alive`` and the near end of its helper pair into ``cfg`` (:meth:`EgressGate.set_host`);
* the kernel removes a socket from every XSKMAP when it is closed, so a process that dies,
  even by kill -9, stops cutting the stack off at once.

With TX rings registered and the host RX ring held, frames go to the helper (host RX ring);
registered and not held, they are dropped and counted (``stack_cut_dropped``); otherwise
they pass. One program serves every process, as the steering program does: the first
process attaches it (a tcx link where the kernel has tcx, else a clsact cls_bpf filter),
the others find it (by the link's ifindex and the namespace recorded in its config, or by
the filter's program name) and take fds of its link and maps by id; a lock held only
while creating or joining (an abstract unix socket in IF's namespace, released by the
kernel with its holder) keeps two processes from attaching two programs.

A tcx link detaches when the last process holding an fd of it exits. A cls_bpf filter
outlives its processes: ``users`` records who uses the program (pid and start time), and
the last live user removes the filter on release; a filter whose users are all dead passes
every frame (its XSKMAPs are empty) and is removed by the next user's release or by
:func:`remove_unused` (``vtnetmap detach``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vtnet_py._sys import abi as K
from vtnet_py._sys import bpf as bpf
from vtnet_py._sys.netns import fd_netns
from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py._sys.proc import netns_inode, proc_start_time
from vtnet_py.ebpf.build import compile_image, instantiate
from vtnet_py.ebpf.tc import TC_MODE_ENV, TcAttachment, del_filter, filters, filters_named
from vtnet_py.errors import BusyError, DeviceError

EG_PROG = "vtnm_host_eg"  # bpf/host.c: IF's egress (this module)
IN_PROG = "vtnm_host_in"  # bpf/host.c: the helper's ingress -> IF (host TX ring)
# bpf/host.c counters, in index order
EGRESS_COUNTERS = (
    "to_host_rx",
    "gso_segmented",
    "oversize_dropped",
    "owner_gone_passed",
    "from_host_tx",
    "stack_cut_dropped",
    "host_tx_csum_completed",
)
CFG_NEAR, CFG_IFINDEX, CFG_MAX_LEN, CFG_DIVERT, CFG_NETNS = range(5)
TX_HOLDERS = 16  # ports with NIC TX rings on one interface at once (bpf/host.c's too)
USERS = 32  # processes using one interface's egress program at once
MAPS = ("cfg", "alive", "txs", "users", "counters")
LOCK_WAIT_S = 5.0
Key = tuple[int, int]  # (netns inode, ifindex)


class _User(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("start", ctypes.c_uint64)]


def image_flags() -> tuple[str, ...]:
    return (f"-DVTNM_USERS={USERS}",)


@contextmanager
def _interface_lock(ifname: str, ifindex: int) -> Iterator[None]:
    """Serialise creating/joining/removing the egress program of ``ifindex`` between
    processes: an abstract unix socket name in the calling thread's namespace (the kernel
    frees it when the holder exits, however it exits)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    deadline = time.monotonic() + LOCK_WAIT_S
    try:
        while True:
            try:
                s.bind(f"\0vtnetmap-egress-{ifindex}")
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                if time.monotonic() > deadline:
                    raise BusyError(
                        f"{ifname}: another process has been setting up its egress "
                        f"program for {LOCK_WAIT_S:.0f} s"
                    ) from exc
                time.sleep(0.005)
        yield
    finally:
        s.close()


def _u32(v: int) -> ctypes.c_uint32:
    return ctypes.c_uint32(v & 0xFFFFFFFF)


class EgressGate:
    """This process's handle on the egress program of one interface (refcounted)."""

    _registry: dict[Key, EgressGate] = {}
    _lock = threading.Lock()
    # references dropped by finalizers, which may not take the lock: released by the
    # next acquire (list.append is atomic)
    _deferred: list[EgressGate] = []

    def __init__(self, key: Key, ifname: str, ifindex: int):
        self.key = key
        self.ifname = ifname
        self.ifindex = ifindex
        self.kind = ""  # "tcx" or "clsact"
        self.prog_fd = -1
        self.maps: dict[str, int] = {}
        self.link_fd = -1
        self._user_slot = -1
        self._ns_fd = -1
        self._refs = 0

    # --- acquire / release ------------------------------------------------------------------
    @classmethod
    def acquire(cls, ifname: str, ifindex: int, max_len: int) -> EgressGate:
        """Attach the program to ``ifname``'s egress, or join the one already there (in
        the calling thread's namespace). Leaves nothing behind on failure."""
        key = (netns_inode(), ifindex)
        while cls._deferred:
            with suppress(Exception):
                cls._deferred.pop().release()
        with cls._lock:
            gate = cls._registry.get(key)
            if gate is None:
                gate = cls(key, ifname, ifindex)
                try:
                    gate._open(max_len)
                except BaseException:
                    gate._close_fds()
                    raise
                cls._registry[key] = gate
            gate._refs += 1
            return gate

    def _open(self, max_len: int) -> None:
        self._ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        with _interface_lock(self.ifname, self.ifindex):
            try:
                if not self._join():
                    self._create(max_len)
                self._claim_user_slot()
            except BaseException:
                # a cls_bpf filter outlives our fds: take it away again unless in use
                if self.kind == "clsact" and "users" in self.maps and not self._live_users():
                    with suppress(OSError, NetlinkError), IPRoute() as ipr:
                        _remove_filters(ipr, self.ifindex)
                raise

    def _take_maps(self, prog_fd: int) -> bool:
        """Take fds of the program's maps; False (nothing kept) if it lacks ours."""
        _, map_ids = bpf.prog_info(prog_fd)
        maps: dict[str, int] = {}
        for mid in map_ids:
            with suppress(OSError):
                mfd = bpf.map_fd_by_id(mid)
                maps[bpf.map_info(mfd).name.decode()] = mfd
        if not all(m in maps for m in MAPS):
            for fd in maps.values():
                os.close(fd)
            return False
        self.maps = maps
        return True

    def _join(self, tidy: bool = True) -> bool:
        """Find the program on IF's egress: a tcx link, else a cls_bpf filter. ``tidy``
        removes filters of the name whose program is not ours any more."""
        inode = netns_inode() & 0xFFFFFFFF
        for lid in bpf.link_ids():
            try:
                lfd = bpf.link_fd_by_id(lid)
            except OSError:
                continue
            li = bpf.link_info(lfd)
            if not (
                li.type == K.BPF_LINK_TYPE_TCX
                and li.ifindex == self.ifindex
                and li.attach_type == K.BPF_TCX_EGRESS
                and self._adopt(li.prog_id, inode)
            ):
                os.close(lfd)
                continue
            self.link_fd = lfd
            self.kind = "tcx"
            return True
        with IPRoute() as ipr:
            found = _egress_filters(ipr, self.ifindex)
            if not found:
                return False
            # netlink does not decode the filter's program id: find the program by its
            # name and the interface and namespace in its config
            for prog_id in bpf.prog_ids():
                if self._adopt(prog_id, inode):
                    self.kind = "clsact"
                    return True
            # filters of an older vtnetmap (other maps): nobody can use them any more
            for parent, prio, handle in found if tidy else ():
                del_filter(ipr, self.ifindex, parent, prio, handle)
        return False

    def _adopt(self, prog_id: int, inode: int) -> bool:
        """Take program ``prog_id`` and its maps if it is IF's egress program."""
        try:
            pfd = bpf.prog_fd_by_id(prog_id)
        except OSError:
            return False
        try:
            ok = bpf.prog_info(pfd)[0].name.decode() == EG_PROG and self._take_maps(pfd)
        except OSError:
            ok = False
        if ok and (self._cfg(CFG_NETNS) != inode or self._cfg(CFG_IFINDEX) != self.ifindex):
            self._drop_maps()
            ok = False
        if not ok:
            os.close(pfd)
            return False
        self.prog_fd = pfd
        return True

    def _create(self, max_len: int) -> None:
        image = compile_image("host.c", (EG_PROG, IN_PROG), image_flags())
        prog = instantiate(image, EG_PROG, K.BPF_PROG_TYPE_SCHED_CLS, name=EG_PROG)
        self.prog_fd, self.maps = prog.prog_fd, prog.maps
        for k, v in (
            (CFG_NEAR, 0),
            (CFG_IFINDEX, self.ifindex),
            (CFG_MAX_LEN, max_len),
            (CFG_DIVERT, 0),
            (CFG_NETNS, netns_inode()),
        ):
            bpf.map_update(self.maps["cfg"], _u32(k), _u32(v))
        att = TcAttachment(self.ifindex, True, prog, os.environ.get(TC_MODE_ENV) or None)
        self.kind = att.kind
        self.link_fd = att.link_fd  # tcx: ours to close; clsact: -1, the filter stays

    def _claim_user_slot(self) -> None:
        """Record this process in ``users`` (a free or dead owner's slot)."""
        me = os.getpid()
        mine = _User(me, 0, proc_start_time(me) or 0)
        for i in range(USERS):
            u = _User()
            bpf.map_lookup(self.maps["users"], _u32(i), u)  # type: ignore[arg-type]
            if u.pid == 0 or proc_start_time(u.pid) != u.start:
                bpf.map_update(self.maps["users"], _u32(i), mine)  # type: ignore[arg-type]
                self._user_slot = i
                return
        raise BusyError(f"{self.ifname}: {USERS} processes already use its egress program")

    def release(self) -> None:
        """Drop one reference; the last one of this process leaves the program (and
        removes a cls_bpf filter nobody alive uses any more)."""
        with self._lock:
            self._refs -= 1
            if self._refs > 0:
                return
            if self._registry.get(self.key) is self:
                del self._registry[self.key]
        try:
            if self.kind == "clsact" and self._ns_fd >= 0:
                with enter_netns(fd_netns(self._ns_fd)):
                    with _interface_lock(self.ifname, self.ifindex):
                        self._leave_users()
                        if not self._live_users():
                            with IPRoute() as ipr:
                                _remove_filters(ipr, self.ifindex)
            else:
                self._leave_users()
        finally:
            self._close_fds()

    def _leave_users(self) -> None:
        if self._user_slot >= 0 and "users" in self.maps:
            with suppress(OSError):
                bpf.map_update(self.maps["users"], _u32(self._user_slot), _User())  # type: ignore[arg-type]
            self._user_slot = -1

    def _live_users(self) -> list[int]:
        return _live_users(self.maps["users"])

    def release_later(self) -> None:
        """:meth:`release`, from a finalizer: no lock taken here; the reference is
        dropped by this process's next acquire. Our XSKMAP entries go with our sockets."""
        self._deferred.append(self)

    def _drop_maps(self) -> None:
        for fd in self.maps.values():
            with suppress(OSError):
                os.close(fd)
        self.maps = {}

    def _close_fds(self) -> None:
        self._drop_maps()
        for fd in (self.prog_fd, self.link_fd, self._ns_fd):
            if fd >= 0:
                with suppress(OSError):
                    os.close(fd)
        self.prog_fd = self.link_fd = self._ns_fd = -1

    @classmethod
    def forget_after_fork(cls) -> None:
        """In a forked child: the parent's handles are not this process's to release."""
        cls._registry = {}
        cls._deferred = []
        cls._lock = threading.Lock()

    # --- who holds what -------------------------------------------------------------------
    def add_tx(self, sock_fd: int) -> int:
        """Count a port's NIC TX rings in: ``sock_fd`` (a socket of that port with an RX
        ring, which is what an XSKMAP takes) goes into a free ``txs`` slot, returned."""
        for i in range(TX_HOLDERS):
            try:
                bpf.map_update(self.maps["txs"], _u32(i), _u32(sock_fd), K.BPF_NOEXIST)
                return i
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise DeviceError(
                        f"{self.ifname}: registering NIC TX rings with the egress program: "
                        f"{exc.strerror}"
                    ) from exc
        raise BusyError(f"{self.ifname}: {TX_HOLDERS} ports with NIC TX rings are already open")

    def drop_tx(self, slot: int) -> None:
        """Count them out (before the socket closes: after that the slot may be another's)."""
        if "txs" in self.maps:
            bpf.map_delete(self.maps["txs"], _u32(slot))

    def set_host(self, sock_fd: int, near_ifindex: int, max_len: int) -> None:
        """The host RX ring is held by ``sock_fd``; the stack's frames go to ``near_ifindex``."""
        bpf.map_update(self.maps["cfg"], _u32(CFG_NEAR), _u32(near_ifindex))
        bpf.map_update(self.maps["cfg"], _u32(CFG_MAX_LEN), _u32(max_len))
        bpf.map_update(self.maps["alive"], _u32(0), _u32(sock_fd))

    def clear_host(self) -> None:
        if "alive" in self.maps:
            bpf.map_delete(self.maps["alive"], _u32(0))
            bpf.map_update(self.maps["cfg"], _u32(CFG_DIVERT), _u32(0))
            bpf.map_update(self.maps["cfg"], _u32(CFG_NEAR), _u32(0))

    def set_divert(self, on: bool) -> None:
        """The host holder's own TX-only NIC ports (which have no socket to register)."""
        if "cfg" in self.maps:
            bpf.map_update(self.maps["cfg"], _u32(CFG_DIVERT), _u32(1 if on else 0))

    def _cfg(self, k: int) -> int:
        v = ctypes.c_uint32(0)
        bpf.map_lookup(self.maps["cfg"], _u32(k), v)
        return int(v.value)

    def counters(self, ncpu: int) -> dict[str, int]:
        """The program's counters, summed over ``ncpu`` possible CPUs (every process's
        frames)."""
        out = dict.fromkeys(EGRESS_COUNTERS, 0)
        if "counters" not in self.maps:
            return out
        for i, name in enumerate(EGRESS_COUNTERS):
            vals = (ctypes.c_uint64 * ncpu)()
            if bpf.map_lookup(self.maps["counters"], _u32(i), vals):  # type: ignore[arg-type]
                out[name] = int(sum(vals))
        return out


os.register_at_fork(after_in_child=EgressGate.forget_after_fork)


def _egress_filters(ipr: IPRoute, ifindex: int) -> list[tuple[int, int, int]]:
    """(parent, prio, handle) of the egress cls_bpf filters named EG_PROG."""
    return [f for f in filters_named(ipr, ifindex, (EG_PROG,)) if f[0] == K.TC_H_CLSACT_EGRESS]


def _live_users(users_fd: int) -> list[int]:
    out = []
    for i in range(USERS):
        u = _User()
        found = bpf.map_lookup(users_fd, _u32(i), u)  # type: ignore[arg-type]
        if found and u.pid and proc_start_time(u.pid) == u.start:
            out.append(int(u.pid))
    return out


def _remove_filters(ipr: IPRoute, ifindex: int) -> None:
    for parent, prio, handle in filters_named(ipr, ifindex, (EG_PROG,)):
        del_filter(ipr, ifindex, parent, prio, handle)
    if not filters(ipr, ifindex):
        with suppress(NetlinkError):
            ipr.tc("del", "clsact", ifindex)


def egress_status(ifname: str, ifindex: int, ncpu: int) -> dict[str, object] | None:
    """What ``vtnetmap status`` shows of IF's egress program (calling thread's namespace):
    its attachment, live users and counters; None when it is not attached. Read only."""
    probe = EgressGate((netns_inode(), ifindex), ifname, ifindex)
    try:
        if not probe._join(tidy=False):
            return None
        out: dict[str, object] = {"attached": probe.kind, "users": _live_users(probe.maps["users"])}
        out.update(probe.counters(ncpu))
        return out
    finally:
        probe._close_fds()


def remove_unused(ipr: IPRoute, ifname: str, ifindex: int) -> list[str]:
    """Remove the egress cls_bpf filter of ``ifindex`` if no live process uses it (what
    dead owners left on a kernel without tcx). Returns what was removed."""
    removed: list[str] = []
    with _interface_lock(ifname, ifindex):
        found = _egress_filters(ipr, ifindex)
        if not found:
            return removed
        probe = EgressGate((netns_inode(), ifindex), ifname, ifindex)
        for prog_id in bpf.prog_ids():
            if probe._adopt(prog_id, netns_inode() & 0xFFFFFFFF):
                break
        try:
            if probe.maps and _live_users(probe.maps["users"]):
                return removed
        finally:
            probe._close_fds()
        for parent, prio, handle in found:
            del_filter(ipr, ifindex, parent, prio, handle)
            removed.append(f"egress filter on {ifname}")
        if not filters(ipr, ifindex):
            with suppress(NetlinkError):
                ipr.tc("del", "clsact", ifindex)
    return removed


__all__ = [
    "EGRESS_COUNTERS",
    "EG_PROG",
    "IN_PROG",
    "EgressGate",
    "egress_status",
    "image_flags",
    "remove_unused",
]
