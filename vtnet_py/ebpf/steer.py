"""The steering XDP program on an interface: attach it, join it, hand queues to sockets.

One program per interface serves every netmap port on it, in every process: it redirects
a queue's frames to the AF_XDP socket in ``xsks[queue]`` and passes the others to the
kernel. It is attached with a BPF link, and each process using it holds an fd of that link:
the kernel detaches the program when the last holder closes it, kill -9 included, so an
interface is never left steering frames to a dead process. A second process finds the
program through the interface's XDP program id, checks it is ours by name, and takes fds
of its link and maps by id.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from contextlib import suppress
from dataclasses import dataclass

from pyroute2 import IPRoute

from vtnet_py._sys import abi as K
from vtnet_py._sys import bpf as bpf
from vtnet_py.ebpf.build import compile_image, instantiate
from vtnet_py.errors import (
    BusyError,
    DeviceError,
    InterfaceChangedError,
    PrivilegeError,
    UnsupportedError,
)

log = logging.getLogger("vtnet_py")

PROG_NAME = "vtnm_steer"
PROG_NAME_FRAGS = "vtnm_steer_mb"  # the same program, loaded as multi-buffer aware
MODE_FLAGS = {"native": K.XDP_FLAGS_DRV_MODE, "generic": K.XDP_FLAGS_SKB_MODE}
MAX_QUEUES = 256


def xdp_attachment(ifindex: int) -> tuple[int, str | None]:
    """(program id, mode) of the XDP program on ``ifindex`` in the current netns."""
    with IPRoute() as ipr:
        try:
            links = ipr.get_links(ifindex)
        except Exception as exc:  # pyroute2 raises NetlinkError(errno)
            raise DeviceError(f"interface index {ifindex}: {exc}") from exc
    xdp = links[0].get_attr("IFLA_XDP") if links else None
    if not xdp:
        return 0, None
    prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") or 0
    attached = xdp.get_attr("IFLA_XDP_ATTACHED") or 0
    # pyroute2 decodes IFLA_XDP_ATTACHED to a name ("xdp", ...); older versions to the int
    mode = K.XDP_ATTACHED_MODES.get(attached)
    return int(prog_id), mode


@dataclass
class _Held:
    link_fd: int
    prog_fd: int
    xsks_fd: int
    owners_fd: int
    prog_id: int
    mode: str | None
    frags: bool


class Steering:
    """This process's handle on the steering program of one interface (refcounted)."""

    _registry: dict[tuple[int, int], Steering] = {}
    _lock = threading.Lock()
    # references dropped by finalizers, which may not take the lock: released by the
    # next acquire or release (list.append is atomic)
    _deferred: list[Steering] = []

    def __init__(self, key: tuple[int, int], ifname: str, held: _Held):
        self._key = key
        self.ifname = ifname
        self._held: _Held | None = held
        self._refs = 0
        self.prog_id = held.prog_id
        self.mode = held.mode
        self.frags = held.frags

    @classmethod
    def acquire(cls, ifname: str, ifindex: int, *, mode: str | None, frags: bool) -> Steering:
        """Attach the program to ``ifname`` (or join the one already there).

        ``mode`` None tries native XDP first, then generic. Raises BusyError when another,
        foreign XDP program is on the interface. Leaves nothing behind on failure.
        """
        key = (os.stat("/proc/thread-self/ns/net").st_ino, ifindex)
        cls._drain_deferred()
        with cls._lock:
            st = cls._registry.get(key)
            if st is None:
                st = cls(key, ifname, _attach_or_join(ifname, ifindex, mode, frags))
                cls._registry[key] = st
            elif not st.still_attached():
                raise InterfaceChangedError(
                    f"{ifname}: the steering program this process uses (id {st.prog_id}) was "
                    f"detached meanwhile (`vtnetmap detach {ifname}`?); close this process's "
                    f"ports on {ifname}, then open again"
                )
            elif frags and not st.frags:
                raise UnsupportedError(
                    f"{ifname}: the steering program in use is not multi-buffer aware; close "
                    f"the ports on {ifname} (or `vtnetmap detach {ifname}`) and open with "
                    f"frags first"
                )
            st._refs += 1
            return st

    def claim(self, queue: int, sock_fd: int) -> None:
        """Steer ``queue`` to the socket: from now on the kernel sees none of its frames."""
        held = self._live()
        bpf.map_update(held.owners_fd, ctypes.c_uint32(queue), ctypes.c_uint32(os.getpid()))
        bpf.map_update(held.xsks_fd, ctypes.c_uint32(queue), ctypes.c_uint32(sock_fd))

    def unclaim(self, queue: int) -> None:
        """Give ``queue`` back to the kernel (closing the socket does this too)."""
        held = self._held
        if held is None:
            return
        bpf.map_delete(held.xsks_fd, ctypes.c_uint32(queue))
        bpf.map_update(held.owners_fd, ctypes.c_uint32(queue), ctypes.c_uint32(0))

    def owner_of(self, queue: int) -> int:
        held = self._live()
        v = ctypes.c_uint32(0)
        bpf.map_lookup(held.owners_fd, ctypes.c_uint32(queue), v)
        return int(v.value)

    def still_attached(self) -> bool:
        """False once our link was detached from the interface (BPF_LINK_DETACH by
        `vtnetmap detach`, or the interface went away): one bpf() call, no netlink.
        True while unknown (a program joined without a link)."""
        held = self._held
        if held is None or held.link_fd < 0:
            return held is not None
        try:
            return bool(bpf.link_info(held.link_fd).ifindex)
        except OSError:
            return False

    def _live(self) -> _Held:
        if self._held is None:
            raise DeviceError(f"{self.ifname}: steering program released")
        return self._held

    def release(self) -> None:
        """Drop one reference; the last one closes our fds (and, if we were the last
        holder of the link anywhere, the kernel detaches the program)."""
        self._release()
        self._drain_deferred()

    def release_later(self) -> None:
        """:meth:`release`, from a finalizer: no lock taken here; the reference is
        dropped by this process's next acquire or release."""
        self._deferred.append(self)

    def _release(self) -> None:
        with self._lock:
            self._refs -= 1
            if self._refs > 0:
                return
            if self._registry.get(self._key) is self:
                del self._registry[self._key]
            held, self._held = self._held, None
        if held is not None:
            for fd in (held.xsks_fd, held.owners_fd, held.prog_fd, held.link_fd):
                if fd >= 0:
                    os.close(fd)

    @classmethod
    def _drain_deferred(cls) -> None:
        while cls._deferred:
            cls._deferred.pop()._release()

    @classmethod
    def _forget_after_fork(cls) -> None:
        """In a forked child: the parent's handles are not this process's to release
        (their fds are closed when the child exits); the child's ports start afresh."""
        cls._registry = {}
        cls._deferred = []
        cls._lock = threading.Lock()


os.register_at_fork(after_in_child=Steering._forget_after_fork)


def _attach_or_join(ifname: str, ifindex: int, mode: str | None, frags: bool) -> _Held:
    last: Exception | None = None
    for _ in range(8):  # bounded: each round loses only to a concurrent attach or exit
        prog_id, cur_mode = xdp_attachment(ifindex)
        try:
            if prog_id == 0:
                return _attach(ifname, ifindex, mode, frags)
            return _join(ifname, ifindex, prog_id, cur_mode, frags)
        except _Retry as exc:
            last = exc
            continue
    raise BusyError(f"{ifname}: could not attach or join the steering program: {last}")


def xdp_link_fd(prog_id: int) -> int:
    """An fd of the XDP link that holds program ``prog_id`` (-1: none, e.g. the program
    was attached through netlink, or the link just went away)."""
    for lid in bpf.link_ids():
        try:
            lfd = bpf.link_fd_by_id(lid)
        except OSError:
            continue
        li = bpf.link_info(lfd)
        if li.type == K.BPF_LINK_TYPE_XDP and li.prog_id == prog_id:
            return lfd
        os.close(lfd)
    return -1


class _Retry(Exception):
    pass


def _attach(ifname: str, ifindex: int, mode: str | None, frags: bool) -> _Held:
    image = compile_image("steer.c", (PROG_NAME,), (f"-DVTNM_MAX_QUEUES={MAX_QUEUES}",))
    name = PROG_NAME_FRAGS if frags else PROG_NAME
    prog = instantiate(
        image,
        PROG_NAME,
        K.BPF_PROG_TYPE_XDP,
        name=name,
        prog_flags=K.BPF_F_XDP_HAS_FRAGS if frags else 0,
        expected_attach_type=K.BPF_XDP,
    )
    try:
        modes = [mode] if mode else ["native", "generic"]
        for i, m in enumerate(modes):
            try:
                link = bpf.link_create(prog.prog_fd, ifindex, K.BPF_XDP, MODE_FLAGS[m])
            except OSError as exc:
                if exc.errno == errno.EBUSY or exc.errno == errno.EEXIST:
                    raise _Retry(f"{ifname} got an XDP program meanwhile") from exc
                if exc.errno == errno.EPERM:
                    raise PrivilegeError(
                        f"{ifname}: attaching XDP needs CAP_NET_ADMIN and CAP_BPF"
                    ) from exc
                if i + 1 < len(modes) and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                    log.warning(
                        "vtnetmap: %s has no native XDP (%s); using generic (SKB) "
                        "XDP, which is much slower",
                        ifname,
                        exc.strerror,
                    )
                    continue
                why = exc.strerror or str(exc)
                if exc.errno == errno.EINVAL and frags is False:
                    why += " (an MTU too large for single-buffer XDP? open with frags=True)"
                raise UnsupportedError(
                    f"{ifname}: attaching XDP in {m} mode refused: {why}"
                ) from exc
            held = _Held(
                link_fd=link,
                prog_fd=prog.prog_fd,
                xsks_fd=prog.maps["xsks"],
                owners_fd=prog.maps["owners"],
                prog_id=bpf.prog_info(prog.prog_fd)[0].id,
                mode=m,
                frags=frags,
            )
            return held
        raise AssertionError("unreachable")
    except BaseException:
        prog.close()
        raise


def _join(ifname: str, ifindex: int, prog_id: int, cur_mode: str | None, frags: bool) -> _Held:
    try:
        prog_fd = bpf.prog_fd_by_id(prog_id)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise _Retry("program went away") from exc
        raise
    fds = [prog_fd]
    try:
        info, map_ids = bpf.prog_info(prog_fd)
        name = info.name.decode()
        if name not in (PROG_NAME, PROG_NAME_FRAGS):
            raise BusyError(
                f"{ifname} already has an XDP program (id {prog_id}, name "
                f"{name!r}) that is not vtnetmap's; detach it first"
            )
        if frags and name != PROG_NAME_FRAGS:
            raise UnsupportedError(
                f"{ifname}: the steering program attached (id {prog_id}) is not multi-buffer "
                f"aware; close the other ports on {ifname} (or `vtnetmap detach {ifname}`)"
            )
        maps: dict[str, int] = {}
        for mid in map_ids:
            mfd = bpf.map_fd_by_id(mid)
            fds.append(mfd)
            maps[bpf.map_info(mfd).name.decode()] = mfd
        if "xsks" not in maps or "owners" not in maps:
            raise BusyError(
                f"{ifname}: XDP program {prog_id} is named like vtnetmap's but lacks its maps"
            )
        link_fd = xdp_link_fd(prog_id)
        if link_fd < 0:
            # attached without a link (a pinned `vtnetmap attach`), or the link just died
            prog_now, _ = xdp_attachment(ifindex)
            if prog_now != prog_id:
                raise _Retry("program detached while joining")
        fds.append(link_fd)
        return _Held(
            link_fd=link_fd,
            prog_fd=prog_fd,
            xsks_fd=maps["xsks"],
            owners_fd=maps["owners"],
            prog_id=prog_id,
            mode=cur_mode,
            frags=name == PROG_NAME_FRAGS,
        )
    except BaseException:
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        raise


PIN_NAMES = ("xsks", "owners", "link")  # the link last: a pinned link implies pinned maps


def attach_pinned(
    ifname: str, ifindex: int, mode: str, frags: bool, pin_dir: str
) -> tuple[int, int]:
    """Attach the steering program to ``ifname`` (current netns) with a BPF link and pin
    the maps ``xsks``, ``owners`` and then the link in ``pin_dir`` (an existing bpffs
    directory), files 0600, so the program stays attached after this process exits and
    ports of any process join it. Returns (program id, link id).

    BusyError when an XDP program is (or gets) attached meanwhile. On failure the pins
    made here are removed and our fds closed, which detaches the program again.
    """
    try:
        held = _attach(ifname, ifindex, mode, frags)
    except _Retry as exc:
        raise BusyError(f"{ifname}: another XDP program was attached meanwhile") from exc
    fds = {"xsks": held.xsks_fd, "owners": held.owners_fd, "link": held.link_fd}
    made: list[str] = []
    try:
        for name in PIN_NAMES:
            path = os.path.join(pin_dir, name)
            bpf.obj_pin(fds[name], path)
            made.append(path)
            os.chmod(path, 0o600)
        return held.prog_id, int(bpf.link_info(held.link_fd).id)
    except OSError as exc:
        for path in reversed(made):
            with suppress(OSError):
                os.unlink(path)
        raise DeviceError(
            f"{ifname}: pinning the steering program in {pin_dir} failed: {exc.strerror or exc}"
        ) from exc
    finally:
        for fd in (held.xsks_fd, held.owners_fd, held.prog_fd, held.link_fd):
            os.close(fd)
