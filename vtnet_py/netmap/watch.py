"""DeviceWatch: notices, for an open port, that the interface changed under it.

It listens to the kernel instead of asking on a timer: a NETLINK_ROUTE socket joined to
RTNLGRP_LINK, made in the interface's network namespace, receives an RTM_NEWLINK or
RTM_DELLINK whenever the interface is deleted, goes down, or its channel count changes
(``ethtool -L`` on veth sends RTM_NEWLINK). A driver whose channel change sends no link
message (virtio_net) still sends ethtool's ETHTOOL_MSG_CHANNELS_NTF, so a second socket
joins the ethtool generic-netlink family's "monitor" group where the kernel has it.
``Port.poll()`` sleeps on these sockets beside the AF_XDP sockets, so it wakes only for a
message about its interface and then runs the full check (channels, existence, steering
program).
"""

from __future__ import annotations

import errno
import socket
import struct
import time

from pyroute2.ethtool.ioctl import IoctlEthtool, NoSuchDevice, NotSupportedError

from vtnet_py.device.netlink import genl_request, nla, parse_nlattrs
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
# linux/genetlink.h, linux/netlink.h, linux/ethtool_netlink.h
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_MCAST_GROUPS = 7
CTRL_ATTR_MCAST_GRP_NAME = 1
CTRL_ATTR_MCAST_GRP_ID = 2
SOL_NETLINK = 270
NETLINK_GENERIC = 16
NETLINK_ADD_MEMBERSHIP = 1
GENL_HDR = 4  # genlmsghdr: cmd, version, reserved
ETHTOOL_A_HEADER = 1  # every ethtool notification's first attribute: the device header
ETHTOOL_A_HEADER_DEV_INDEX = 1


def _ethtool_monitor() -> tuple[socket.socket, int] | None:
    """A NETLINK_GENERIC socket joined to ethtool's "monitor" group and the family id,
    or None where the kernel has no ethtool netlink (before 5.6)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
    try:
        try:
            (reply,) = genl_request(
                sock, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, nla(CTRL_ATTR_FAMILY_NAME, b"ethtool\0"), 1
            )
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                sock.close()
                return None
            raise
        attrs = parse_nlattrs(reply)
        family = int.from_bytes(attrs.get(CTRL_ATTR_FAMILY_ID, b"\0\0")[:2], "little")
        group = 0
        for nested in parse_nlattrs(attrs.get(CTRL_ATTR_MCAST_GROUPS, b"")).values():
            g = parse_nlattrs(nested)
            if g.get(CTRL_ATTR_MCAST_GRP_NAME, b"").rstrip(b"\0") == b"monitor":
                group = int.from_bytes(g.get(CTRL_ATTR_MCAST_GRP_ID, b"\0" * 4)[:4], "little")
        if not family or not group:
            sock.close()
            return None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NL_RCVBUF)
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, family


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
        self._ethnl: socket.socket | None = None
        self._ethtool_family = 0
        try:
            nl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NL_RCVBUF)
            nl.bind((0, RTMGRP_LINK))
            mon = _ethtool_monitor()
        except OSError:
            self.close()
            raise
        if mon is not None:
            self._ethnl, self._ethtool_family = mon

    def fileno(self) -> int:
        """The link-event socket: readable when a link message is waiting (-1: closed)."""
        return self._nl.fileno() if self._nl is not None else -1

    def fds(self) -> list[int]:
        """Every event socket (link messages, ethtool notifications), to wait on."""
        return [s.fileno() for s in (self._nl, self._ethnl) if s is not None]

    def events(self) -> bool:
        """Drain the link-event socket; True if a message concerned the interface (or
        some were lost: an overrun socket says ENOBUFS), so a check is due."""
        due = False
        for sock in (self._nl, self._ethnl):
            if sock is None:
                continue
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        due = True  # messages were dropped: ours may be among them
                        continue
                    raise
                due |= self._about_us(data)
        return due

    def _about_us(self, data: bytes) -> bool:
        """Whether a batch of netlink messages names the interface (or names none)."""
        off = 0
        due = False
        while off + NLMSG_HDR.size <= len(data):
            length, kind = NLMSG_HDR.unpack_from(data, off)[:2]
            if length < NLMSG_HDR.size or off + length > len(data):
                break
            body = data[off + NLMSG_HDR.size : off + length]
            idx = -1  # a message that is not about a device
            if kind in (RTM_NEWLINK, RTM_DELLINK) and len(body) >= 8:
                idx = IFINFO_INDEX.unpack_from(body, 4)[0]
            elif self._ethtool_family and kind == self._ethtool_family:
                head = parse_nlattrs(parse_nlattrs(body[GENL_HDR:]).get(ETHTOOL_A_HEADER, b""))
                raw = head.get(ETHTOOL_A_HEADER_DEV_INDEX, b"")
                idx = int.from_bytes(raw[:4], "little") if len(raw) >= 4 else 0
            if idx >= 0 and (not self.ifindex or idx in (0, self.ifindex)):
                due = True
            off += (length + 3) & ~3
        return due

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
        for name in ("_nl", "_ethnl"):
            sock = getattr(self, name, None)
            setattr(self, name, None)
            if sock is not None:
                sock.close()
