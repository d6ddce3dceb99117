# Over 500 lines: the device layer's one kernel boundary (rtnetlink, ethtool, sysfs and the
# netdev generic-netlink family), each read into the same value types.
"""The real device layer: rtnetlink (pyroute2 IPRoute) plus ethtool (pyroute2's ioctl
ethtool, and ETHTOOL_GDRVINFO from :mod:`vtnet_py._sys.ethtool`), and the XDP features a
driver advertises (the "netdev" generic netlink family, which pyroute2 does not know: one
small request by hand, :func:`read_xdp_features`).

Namespace rule: every socket is opened inside the call that uses it and closed before it
returns, so it lives in the network namespace of the calling *thread* at that moment. A
caller that setns()-es into a namespace and then calls this layer talks to that namespace.
pyroute2's ``netns=`` argument is never used (it forks a helper process).

sysfs is only trusted for virtio feature bits, and only when /sys/class/net/IF shows the
same device (same ifindex, MAC address and bus) as netlink: /sys reflects the namespace
that mounted it, not the caller's.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.ethtool.ioctl import IoctlEthtool, NoSuchDevice, NotSupportedError
from pyroute2.netlink.exceptions import NetlinkError

from vtnet_py._sys import abi as K
from vtnet_py._sys import ethtool as _ethtool
from vtnet_py._sys.abi import RTN_UNICAST
from vtnet_py.device.types import (
    Channels,
    DeviceInfo,
    Feature,
    XdpFeatures,
    features_from_netlink,
    parse_virtio_features,
)
from vtnet_py.errors import BusyError, DeviceError, PrivilegeError, RefusedError

T = TypeVar("T")
SYSFS_NET = "/sys/class/net"


def no_such_interface(ifname: str) -> DeviceError:
    # repr: a name typed by the user may hold control characters; quote, never echo them
    return DeviceError(f"interface {ifname!r} does not exist (in this network namespace)")


# NETIF_F_GSO_SOFTWARE: veth_xdp_set() takes these out of the *peer's* hw_features while
# an XDP program is attached, so on a veth they read "off [fixed]" only because the other
# end runs XDP (a vtnetmap port or attach there), not because the driver lacks them.
VETH_PEER_XDP_HELD = frozenset(
    {
        "tx-tcp-segmentation",
        "tx-tcp-ecn-segmentation",
        "tx-tcp-mangleid-segmentation",
        "tx-tcp6-segmentation",
        "tx-tcp-accecn-segmentation",
        "tx-sctp-segmentation",
        "tx-udp-segmentation",
        "tx-gso-list",
    }
)


def fixed_features_message(ifname: str, held: Mapping[str, bool], driver: str = "") -> str:
    """Why the features in ``held`` (name -> state they are held in) cannot be set."""
    by_peer = sorted(
        n for n, on in held.items() if driver == "veth" and not on and n in VETH_PEER_XDP_HELD
    )
    parts = []
    if by_peer:
        parts.append(
            f"{', '.join(by_peer)} cannot be turned on while the veth peer of {ifname} has "
            "an XDP program attached (veth holds them off then: an open vtnetmap port or "
            "`vtnetmap attach` on the peer); close that port or detach the peer first"
        )
    for n in sorted(set(held) - set(by_peer)):
        parts.append(f"feature '{n}' is fixed {'on' if held[n] else 'off'} by the driver")
    return f"{ifname}: " + "; ".join(parts)


def fixed_feature_message(ifname: str, name: str, active: bool, driver: str = "") -> str:
    return fixed_features_message(ifname, {name: active}, driver)


def _driver(ifname: str) -> str:
    try:
        return _ethtool.get_drvinfo(ifname)[0]
    except OSError:
        return ""


def _map_oserror(ifname: str, what: str, exc: BaseException) -> DeviceError | PrivilegeError:
    """A DeviceError/PrivilegeError for an OSError (or pyroute2 ethtool error) of ``what``."""
    if isinstance(exc, NoSuchDevice):
        return no_such_interface(ifname)
    code = getattr(exc, "errno", None) or getattr(exc, "code", None)
    if isinstance(exc, NotSupportedError):
        code = errno.EOPNOTSUPP
    if code == errno.ENODEV:
        return no_such_interface(ifname)
    if code in (errno.EPERM, errno.EACCES):
        return PrivilegeError(f"{ifname}: {what} needs CAP_NET_ADMIN")
    if code == errno.EBUSY:
        return BusyError(f"{ifname}: the driver refused to {what}: device busy (EBUSY)")
    if code in (errno.EOPNOTSUPP, errno.EINVAL, errno.ERANGE):
        name = errno.errorcode.get(code, str(code))
        return RefusedError(f"{ifname}: the driver refused to {what} ({name})")
    return DeviceError(f"{ifname}: could not {what}: {exc}")


def _outside_event_loop(fn: Callable[[], T]) -> T:
    """Run ``fn`` here, or in a helper thread if this thread runs an asyncio loop.

    pyroute2 0.9's synchronous IPRoute drives its own event loop and fails inside a running
    one. A thread created now starts in this thread's current network namespace (clone
    copies it), so the helper sees the same namespace.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=run, name="vtnet-netlink")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def link_record(msg: Any) -> dict[str, Any]:
    """The fields :meth:`DeviceInfo.from_netlink` reads, from a pyroute2 RTM_NEWLINK msg."""
    xdp_nla = msg.get("IFLA_XDP")
    xdp: dict[str, Any] = {}
    if xdp_nla is not None:
        xdp = {
            "attached": xdp_nla.get("IFLA_XDP_ATTACHED"),
            "prog_id": xdp_nla.get("IFLA_XDP_PROG_ID"),
            "drv_prog_id": xdp_nla.get("IFLA_XDP_DRV_PROG_ID"),
            "skb_prog_id": xdp_nla.get("IFLA_XDP_SKB_PROG_ID"),
            "hw_prog_id": xdp_nla.get("IFLA_XDP_HW_PROG_ID"),
        }
    linkinfo = msg.get("IFLA_LINKINFO")
    kind = linkinfo.get("IFLA_INFO_KIND") if linkinfo is not None else None
    return {
        "ifname": msg.get("IFLA_IFNAME"),
        "ifindex": msg["index"],
        "mtu": msg.get("IFLA_MTU"),
        "max_mtu": msg.get("IFLA_MAX_MTU"),
        "operstate": msg.get("IFLA_OPERSTATE"),
        "flags": msg["flags"],
        "address": msg.get("IFLA_ADDRESS"),
        "kind": kind,
        "xdp": xdp,
    }


def default_route_oifs(routes: Iterable[Any]) -> set[int]:
    """Interface indexes that carry a default route (any table, IPv4 or IPv6).

    A route counts when it is unicast with prefix length 0; its output interface is
    RTA_OIF or, for multipath routes, every nexthop's interface.
    """
    oifs: set[int] = set()
    for r in routes:
        if r["dst_len"] != 0 or r["type"] != RTN_UNICAST:
            continue
        oif = r.get("RTA_OIF")
        if oif:
            oifs.add(int(oif))
        for hop in r.get("RTA_MULTIPATH") or ():
            hop_oif = hop.get("oif") if isinstance(hop, Mapping) else hop["oif"]
            if hop_oif:
                oifs.add(int(hop_oif))
    return oifs


def sysfs_shows(
    ifname: str,
    ifindex: int,
    address: str | None,
    bus_info: str = "",
    root: str = SYSFS_NET,
) -> bool:
    """Whether ``root``/``ifname`` is the device netlink reported in the caller's
    namespace: same ifindex, MAC address and (when known) parent bus device. sysfs shows
    the devices of the namespace that mounted /sys, so a same-named interface elsewhere
    must not be read."""
    base = os.path.join(root, ifname)
    try:
        with open(os.path.join(base, "ifindex")) as f:
            if int(f.read().strip()) != ifindex:
                return False
        if address is not None:
            with open(os.path.join(base, "address")) as f:
                if f.read().strip().lower() != str(address).lower():
                    return False
        if bus_info:
            parent = os.path.basename(os.path.realpath(os.path.join(base, "device", "..")))
            if parent != bus_info:
                return False
    except (OSError, ValueError):
        return False
    return True


def read_virtio_features_sysfs(
    ifname: str, ifindex: int, address: str | None, bus_info: str, root: str = SYSFS_NET
) -> frozenset[int] | None:
    """virtio feature bits of ``ifname`` from sysfs, or None when sysfs cannot be trusted
    (:func:`sysfs_shows`)."""
    if not sysfs_shows(ifname, ifindex, address, bus_info, root):
        return None
    try:
        with open(os.path.join(root, ifname, "device", "features")) as f:
            return parse_virtio_features(f.read())
    except (OSError, ValueError):
        return None


def real_queues(info: DeviceInfo, root: str = SYSFS_NET) -> tuple[int, int]:
    """(RX, TX) queues the kernel really uses: sysfs's queues/rx-* and tx-* where sysfs
    shows this very device (:func:`sysfs_shows`), else the channel counts (exact for veth,
    which reports rx/tx channels). virtio_net with XDP reports its XDP queue pairs as
    combined channels, but only RX uses them; an AF_XDP socket transmitting on a queue
    past the real TX queues sends nothing."""
    if sysfs_shows(info.ifname, info.ifindex, info.address, root=root):
        try:
            names = os.listdir(os.path.join(root, info.ifname, "queues"))
        except OSError:
            names = []
        nrx = sum(n.startswith("rx-") for n in names)
        ntx = sum(n.startswith("tx-") for n in names)
        if nrx and ntx:
            return nrx, ntx
    return info.rx_queues, info.tx_queues


class NetlinkDeviceLayer:
    """:class:`~vtnet_py.device.DeviceLayer` over the running kernel, in the current netns.

    Stateless: every method opens its sockets and closes them before returning.
    """

    def __init__(self, sysfs_root: str = SYSFS_NET) -> None:
        self._sysfs_root = sysfs_root

    # -- reading ------------------------------------------------------------------------

    def read(self, ifname: str) -> DeviceInfo:
        """Everything known about ``ifname``. Raises DeviceError if it does not exist."""
        link, default_oifs = _outside_event_loop(lambda: self._read_rtnl(ifname))
        try:
            driver, bus_info = _ethtool.get_drvinfo(ifname)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise no_such_interface(ifname) from exc
            # No ethtool driver info (loopback, some virtual devices): fall back to the
            # rtnetlink kind, which is what `ip -d link` shows.
            driver, bus_info = str(link.get("kind") or ""), ""

        channels, features = self._read_ethtool(ifname)
        virtio = None
        if driver == "virtio_net":
            virtio = read_virtio_features_sysfs(
                ifname, int(link["ifindex"]), link.get("address"), bus_info, self._sysfs_root
            )
        return DeviceInfo.from_netlink(
            link,
            driver=driver,
            bus_info=bus_info,
            channels=channels,
            features=features,
            virtio_features=virtio,
            carries_default_route=int(link["ifindex"]) in default_oifs,
        )

    @staticmethod
    def _read_rtnl(ifname: str) -> tuple[dict[str, Any], set[int]]:
        """The link record and the default-route interfaces, over one rtnetlink socket."""
        with IPRoute() as ipr:
            try:
                msgs = ipr.link("get", ifname=ifname)
            except NetlinkError as exc:
                if exc.code == errno.ENODEV:
                    raise no_such_interface(ifname) from exc
                raise _map_oserror(ifname, "read the link", exc) from exc
            routes: list[Any] = []
            for family in (socket.AF_INET, socket.AF_INET6):
                routes.extend(ipr.route("dump", family=family))
        return link_record(msgs[0]), default_route_oifs(routes)

    def read_xdp_features(self, ifname: str, ifindex: int) -> XdpFeatures | None:
        """What the driver advertises for XDP/AF_XDP; see :func:`read_xdp_features`."""
        return read_xdp_features(ifname, ifindex)

    def read_channels(self, ifname: str) -> Channels:
        """Only the channel counts (one ioctl): cheap enough to poll for a change."""
        eth = IoctlEthtool(ifname)
        try:
            return Channels.from_netlink(eth.get_channels())
        except NotSupportedError:
            return Channels()
        except (NoSuchDevice, OSError) as exc:
            raise _map_oserror(ifname, "read channels", exc) from exc
        finally:
            eth.close()

    def _read_ethtool(self, ifname: str) -> tuple[Channels, dict[str, Feature]]:
        eth = IoctlEthtool(ifname)
        try:
            try:
                channels = Channels.from_netlink(eth.get_channels())
            except NotSupportedError:
                # ethtool -l unsupported: the device has one queue of each kind.
                channels = Channels()
            try:
                flist = eth.get_features()
                records = [
                    (
                        name,
                        flist.is_active(name),
                        flist.is_available(name),
                        flist.is_requested(name),
                    )
                    for name in flist.keys()
                ]
                features = features_from_netlink(records)
            except NotSupportedError:
                features = {}
        except (NoSuchDevice, OSError) as exc:
            raise _map_oserror(ifname, "read ethtool settings", exc) from exc
        finally:
            eth.close()
        return channels, features

    # -- changing -----------------------------------------------------------------------

    def set_features(self, ifname: str, features: Mapping[str, bool]) -> None:
        """Set the requested state of each named feature in one ETHTOOL_SFEATURES call.

        Raises RefusedError naming the feature when it is fixed, unknown, or did not take
        the asked state (a feature asked off that stays active). Fixed features do not
        stop the others: those are set first, and the error says why each fixed one could
        not be (on veth, the peer's XDP program). On error the driver may have applied
        part of the request; the caller (``prepare``) undoes from its record.
        """
        if not features:
            return
        eth = IoctlEthtool(ifname)
        try:
            try:
                flist = eth.get_features()
            except (NoSuchDevice, NotSupportedError, OSError) as exc:
                raise _map_oserror(ifname, "read features", exc) from exc
            held: dict[str, bool] = {}
            for name, value in features.items():
                if name not in flist:
                    raise RefusedError(f"{ifname}: the driver has no feature '{name}'")
                if not flist.is_available(name):
                    if flist.is_active(name) != bool(value):
                        held[name] = flist.is_active(name)
                    continue  # fixed: nothing to request; the rest is still set
                flist.set_value(name, bool(value))
            if len(held) < len(features):
                self._request_features(eth, ifname, flist, features)
            if held:
                raise RefusedError(fixed_features_message(ifname, held, _driver(ifname)))
        finally:
            eth.close()

    @staticmethod
    def _request_features(
        eth: IoctlEthtool, ifname: str, flist: Any, features: Mapping[str, bool]
    ) -> None:
        """One ETHTOOL_SFEATURES with ``flist``, then check every settable feature took."""
        try:
            eth.set_features(flist)
        except NotSupportedError:
            # SFEATURES returns ETHTOOL_F_WISH/_UNSUPPORTED (positive) when not all
            # wishes were granted; pyroute2 reports that like EOPNOTSUPP. The
            # verification below names the feature that did not change.
            pass
        except (NoSuchDevice, OSError) as exc:
            names = ", ".join(f"{n} {'on' if v else 'off'}" for n, v in features.items())
            raise _map_oserror(ifname, f"set features ({names})", exc) from exc
        after = eth.get_features()
        for name, value in features.items():
            if not after.is_available(name):
                continue  # fixed: reported by the caller
            if not value and after.is_active(name):
                raise RefusedError(f"{ifname}: feature '{name}' stayed on after turning it off")
            if value and not after.is_requested(name):
                raise RefusedError(f"{ifname}: feature '{name}' could not be turned on")

    def set_channels(
        self,
        ifname: str,
        combined: int | None = None,
        rx: int | None = None,
        tx: int | None = None,
    ) -> None:
        """Set channel counts (``ethtool -L``); counts left None keep their value.

        Raises RefusedError when the driver refuses (EINVAL/EOPNOTSUPP: e.g. virtio_net
        while an XDP program is attached) or the count did not take. Nothing is left
        changed on refusal: the kernel applies a channel request as a whole or not at all.
        """
        eth = IoctlEthtool(ifname)
        try:
            try:
                cur = eth.get_channels()
            except (NoSuchDevice, NotSupportedError, OSError) as exc:
                raise _map_oserror(ifname, "read channels", exc) from exc
            want = {"combined_count": combined, "rx_count": rx, "tx_count": tx}
            for key, value in want.items():
                if value is not None:
                    setattr(cur, key, int(value))
            what = "set channels to " + " ".join(
                f"{k.split('_')[0]} {v}" for k, v in want.items() if v is not None
            )
            try:
                eth.set_channels(cur)
            except (NoSuchDevice, NotSupportedError, OSError) as exc:
                raise _map_oserror(ifname, what, exc) from exc
            after = Channels.from_netlink(eth.get_channels())
        finally:
            eth.close()
        got = {"combined_count": after.combined, "rx_count": after.rx, "tx_count": after.tx}
        for key, value in want.items():
            if value is not None and got[key] != value:
                raise RefusedError(
                    f"{ifname}: the driver did not {what} ({key.split('_')[0]} is {got[key]})"
                )


def read_device(ifname: str) -> DeviceInfo:
    """``NetlinkDeviceLayer().read(ifname)`` in the calling thread's network namespace."""
    return NetlinkDeviceLayer().read(ifname)


def read_channels(ifname: str) -> Channels:
    """``NetlinkDeviceLayer().read_channels(ifname)``: one ioctl, for change detection."""
    return NetlinkDeviceLayer().read_channels(ifname)


# --- generic netlink, by hand -----------------------------------------------------------


def nla(attr: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to NLA_ALIGNTO."""
    head = K.nlattr(nla_len=ctypes.sizeof(K.nlattr) + len(payload), nla_type=attr)
    raw = bytes(head) + payload
    return raw + b"\0" * (-len(raw) % K.NLA_ALIGNTO)


def parse_nlattrs(data: bytes) -> dict[int, bytes]:
    """Attribute type -> payload of a flat attribute stream (the last one of a type wins)."""
    out: dict[int, bytes] = {}
    hdr = ctypes.sizeof(K.nlattr)
    pos = 0
    while pos + hdr <= len(data):
        a = K.nlattr.from_buffer_copy(data, pos)
        if a.nla_len < hdr or pos + a.nla_len > len(data):
            break  # truncated: keep what was whole
        out[a.nla_type & K.NLA_TYPE_MASK] = data[pos + hdr : pos + a.nla_len]
        pos += a.nla_len + (-a.nla_len % K.NLA_ALIGNTO)
    return out


def genl_request(
    sock: socket.socket, family: int, cmd: int, attrs: bytes, seq: int, dump: bool = False
) -> list[bytes]:
    """Send one generic netlink request on ``sock`` (AF_NETLINK, NETLINK_GENERIC) and
    return the attribute streams of its replies: one for a request, every part of a dump.

    Raises OSError with the kernel's errno when it answers with an error."""
    genl = bytes(K.genlmsghdr(cmd=cmd, version=1))
    hdr = K.nlmsghdr(
        nlmsg_len=ctypes.sizeof(K.nlmsghdr) + len(genl) + len(attrs),
        nlmsg_type=family,
        nlmsg_flags=K.NLM_F_REQUEST | (K.NLM_F_DUMP if dump else 0),
        nlmsg_seq=seq,
    )
    sock.send(bytes(hdr) + genl + attrs)
    nlh = ctypes.sizeof(K.nlmsghdr)
    out: list[bytes] = []
    while True:
        data = sock.recv(1 << 16)
        pos = 0
        while pos + nlh <= len(data):
            m = K.nlmsghdr.from_buffer_copy(data, pos)
            if m.nlmsg_len < nlh:
                break
            body = data[pos + nlh : pos + m.nlmsg_len]
            pos += m.nlmsg_len + (-m.nlmsg_len % K.NLA_ALIGNTO)
            if m.nlmsg_seq != seq:
                continue  # not our answer (nothing else is sent on this socket)
            if m.nlmsg_type == K.NLMSG_DONE:
                return out
            if m.nlmsg_type == K.NLMSG_ERROR:
                err = -K.nlmsgerr_head.from_buffer_copy(body).error
                if err:
                    raise OSError(err, os.strerror(err))
                continue  # an ACK; the reply proper comes separately
            if m.nlmsg_type == family:
                out.append(body[ctypes.sizeof(K.genlmsghdr) :])
                if not dump:
                    return out


def genl_family_id(sock: socket.socket, name: bytes) -> int | None:
    """The id of generic netlink family ``name`` (nlctrl), None when the kernel has none."""
    try:
        (ctrl,) = genl_request(
            sock,
            K.GENL_ID_CTRL,
            K.CTRL_CMD_GETFAMILY,
            nla(K.CTRL_ATTR_FAMILY_NAME, name + b"\0"),
            seq=1,
        )
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    raw_id = parse_nlattrs(ctrl).get(K.CTRL_ATTR_FAMILY_ID, b"")
    return int.from_bytes(raw_id[:2], "little") if len(raw_id) >= 2 else None


def read_xdp_features(ifname: str, ifindex: int) -> XdpFeatures | None:
    """What the driver of ``ifindex`` advertises for XDP and AF_XDP (calling thread's
    network namespace), from the kernel's "netdev" generic netlink family.

    None when the kernel has no such family (before Linux 6.3): nothing is advertised
    there, and zero copy is found out only by binding. Raises DeviceError naming
    ``ifname`` when the interface is gone. Leaves nothing behind (one socket, closed).
    """
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, K.NETLINK_GENERIC) as sock:
        sock.settimeout(5.0)
        try:
            family = genl_family_id(sock, K.NETDEV_FAMILY_NAME)
            if family is None:
                return None
            (reply,) = genl_request(
                sock,
                family,
                K.NETDEV_CMD_DEV_GET,
                nla(K.NETDEV_A_DEV_IFINDEX, ifindex.to_bytes(4, "little")),
                seq=2,
            )
        except OSError as exc:
            raise _map_oserror(ifname, "read its XDP features", exc) from exc
    return XdpFeatures.from_netlink(parse_nlattrs(reply))
