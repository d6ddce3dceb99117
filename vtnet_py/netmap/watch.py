"""DeviceWatch: notices, for an open port, that the interface changed under it.

It listens to the kernel instead of asking on a timer: a NETLINK_ROUTE socket joined to
RTNLGRP_LINK, made in the interface's network namespace, receives an RTM_NEWLINK or
RTM_DELLINK whenever the interface is deleted, goes down, or its channel count changes
(``ethtool -L`` on veth sends RTM_NEWLINK). ``Port.poll()`` sleeps on that socket beside
the AF_XDP sockets, so it wakes only for a message about its interface and then runs the
full check (channels, existence, steering program).
"""

from __future__ import annotations

import errno
import socket
import struct
import time

from pyroute2.ethtool.ioctl import IoctlEthtool, NoSuchDevice, NotSupportedError

from vtnet_py.device.types import Channels
from vtnet_py.ebpf.steer import Steering
from vtnet_py.errors import DeviceError, InterfaceChangedError

CHECK_INTERVAL_S = 0.1

# linux/rtnetlink.h
RTMGRP_LINK = 0x1  # the legacy group bit of RTNLGRP_LINK (group 1)
RTM_NEWLINK = 16
RTM_DELLINK = 17
NLMSG_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
IFINFO_INDEX = struct.Struct("=i")  # ifinfomsg.ifi_index, 4 bytes into the ifinfomsg
NL_RCVBUF = 1 << 20


def _fmt_channels(ch: Channels) -> str:
    parts = [f"{k} {getattr(ch, k)}" for k in ("combined", "rx", "tx", "other") if getattr(ch, k)]
    return ", ".join(parts) or "none reported"


class DeviceWatch:
    """Notices, for an open port, that the interface changed under it: channel counts
    (``ethtool -L``, possible on veth while XDP is attached), the interface gone, or the
    steering program detached. netmap_config's "fail clearly" choice: ``check`` raises
    InterfaceChangedError, and keeps raising while the change lasts.

    Create it in the port's network namespace: it keeps an ethtool socket made there,
    so checks need no setns. A check costs one ioctl (plus one bpf() call for the
    program) and runs at most every ``interval`` seconds. ``close`` frees the socket.
    """

    def __init__(
        self, port_name: str, ifname: str, channels: Channels, interval: float = CHECK_INTERVAL_S
    ):
        self.port_name = port_name
        self.ifname = ifname
        self.channels = channels
        self.interval = interval
        self._eth: IoctlEthtool | None = IoctlEthtool(ifname)
        self._next = time.monotonic() + interval
        self.ifindex = 0  # 0: every link message counts (set it to filter)
        self._nl: socket.socket | None = None
        try:
            nl = socket.socket(
                socket.AF_NETLINK,
                socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                socket.NETLINK_ROUTE,
            )
        except OSError:
            self.close()
            raise
        self._nl = nl
        try:
            nl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NL_RCVBUF)
            nl.bind((0, RTMGRP_LINK))
        except OSError:
            self.close()
            raise

    def fileno(self) -> int:
        """The link-event socket: readable when a link message is waiting (-1: closed)."""
        return self._nl.fileno() if self._nl is not None else -1

    def events(self) -> bool:
        """Drain the link-event socket; True if a message concerned the interface (or
        some were lost: an overrun socket says ENOBUFS), so a check is due."""
        nl = self._nl
        if nl is None:
            return False
        due = False
        while True:
            try:
                data = nl.recv(65536)
            except BlockingIOError:
                return due
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    due = True  # messages were dropped: ours may be among them
                    continue
                raise
            off = 0
            while off + NLMSG_HDR.size <= len(data):
                length, kind = NLMSG_HDR.unpack_from(data, off)[:2]
                if length < NLMSG_HDR.size:
                    break
                if kind in (RTM_NEWLINK, RTM_DELLINK):
                    at = off + NLMSG_HDR.size + 4
                    idx = IFINFO_INDEX.unpack_from(data, at)[0] if at + 4 <= len(data) else 0
                    if not self.ifindex or idx == self.ifindex:
                        due = True
                off += (length + 3) & ~3

    def _current(self) -> Channels:
        assert self._eth is not None
        try:
            return Channels.from_netlink(self._eth.get_channels())
        except NotSupportedError:
            return Channels()
        except (NoSuchDevice, OSError) as exc:
            if isinstance(exc, NoSuchDevice) or getattr(exc, "errno", None) == errno.ENODEV:
                raise InterfaceChangedError(
                    f"{self.port_name}: {self.ifname} is gone; reopen the port"
                ) from exc
            raise DeviceError(
                f"{self.port_name}: reading the channels of {self.ifname} failed: {exc}"
            ) from exc

    def check(
        self, steering: Steering | None = None, *, now: float | None = None, force: bool = False
    ) -> None:
        """Raise InterfaceChangedError if the interface changed (rate-limited to one check
        per ``interval`` unless ``force``: a link message came)."""
        if self._eth is None:
            return
        now = time.monotonic() if now is None else now
        if now < self._next and not force:
            return
        self._next = now + self.interval
        cur = self._current()
        old = self.channels
        if (cur.combined, cur.rx, cur.tx, cur.other) != (old.combined, old.rx, old.tx, old.other):
            raise InterfaceChangedError(
                f"{self.port_name}: {self.ifname} channels changed from {_fmt_channels(old)} "
                f"to {_fmt_channels(cur)}; reopen the port"
            )
        if steering is not None and not steering.still_attached():
            raise InterfaceChangedError(
                f"{self.port_name}: the steering program on {self.ifname} was detached "
                "(`vtnetmap detach`?); reopen the port"
            )

    def close(self) -> None:
        eth, self._eth = self._eth, None
        if eth is not None:
            eth.close()
        nl, self._nl = self._nl, None
        if nl is not None:
            nl.close()
