"""netmap host rings: the interface's own network stack as one more pair of netmap rings.

``open_port("netmap:IF^")`` (``IF^0``, or ``IF*`` / ``IF+`` together with the NIC rings)
gives a host RX ring, where the frames the stack transmits on IF arrive instead of going
to the wire, and a host TX ring, whose frames the stack receives as if they had arrived
on IF. They are ordinary :class:`~vtnet_py.netmap.ring.Ring` objects (``is_host=True``, last in
the port's ring lists) in the same Memory as the NIC rings, so moving a frame between a
NIC ring and a host ring is a ``buf_idx`` swap.

Mechanism. XDP sees only ingress, so the stack's egress is taken with TC, and AF_XDP
needs a device to bind to, so the port owns a helper veth pair::

    stack --xmit on IF--> vtnm_host_eg (TC egress of IF) --redirect--> near end vtnmh<ifindex>
          --veth--> far end vtnmH<ifindex> --XDP steering--> AF_XDP socket: host RX ring
    host TX ring: the same socket's TX --veth--> near end --> TC ingress of the near end
          (vtnm_host_in + act_mirred ingress redirect) --> IF's receive path --> stack

* The far end lives in a private network namespace that only this port holds (an
  unshare()d namespace kept by an fd, never bind-mounted). When the process dies, even by
  kill -9, the kernel destroys that namespace, which destroys the far end and with it the
  whole pair: nothing of the helper survives the owner. Only the near end is visible, in
  IF's namespace, with an alias naming its owner (pid and start time); it has no
  address and IPv6 off, so the stack never sends anything through it by itself.
* The TC programs are attached with tcx BPF links where the kernel has tcx (6.6+); the
  links die with the process. Older kernels (the 6.1 guest) get clsact + cls_bpf
  direct-action filters, which outlive a crashed process: the egress program therefore
  checks an XSKMAP holding the host socket, which the kernel empties when the socket is
  closed, and passes frames to the wire once the owner is gone. A stale filter (and a
  near end whose namespace is still being torn down) is removed by the next open or by
  :func:`cleanup_stale` (``vtnetmap detach``).
* Host TX frames enter IF through act_mirred, which marks the skb as redirected; generic
  (SKB-mode) XDP skips redirected skbs, so IF's steering program does not steal them
  back into a NIC RX ring. bpf_redirect(BPF_F_INGRESS) does not mark them (tried: in
  generic mode they looped into the NIC RX ring), hence mirred; native XDP never sees
  them (they do not come from the driver). The near end carries IF's MAC address, so its
  receive path classifies the frames (for this host, broadcast, other host) as IF would.
* netmap's rule: the stack's transmissions go to the host RX ring only while NIC TX rings
  of IF are in netmap mode (open in this process); otherwise they go to the wire. The
  egress program is attached while the host RX ring is open and a flag in its config map
  says whether to divert.
* Offloads: the near end has every segmentation and checksum offload off, so the kernel
  segments GSO super-frames and completes CHECKSUM_PARTIAL checksums in software when it
  transmits them (validate_xmit_skb); the host RX ring only sees complete wire frames no
  larger than the MTU. Anything larger that is not GSO is dropped and counted.

NS_FORWARD (netmap's transparent mode): on a port with both NIC and host rings, an RX slot
released with NS_FORWARD on a ring whose ``flags`` has NR_FORWARD is moved (buffer swap)
to the other side's TX ring at that rxsync -- NIC RX to the host TX ring (up into the
stack), host RX to the NIC TX rings (to the wire) -- and that TX ring is synced. When the
destination ring has no room the frame is dropped and counted, as netmap does.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import select
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from pyroute2 import IPRoute
from pyroute2.ethtool.ioctl import IoctlEthtool
from pyroute2.netlink.exceptions import NetlinkError

from vtnet_py._sys import abi as K
from vtnet_py._sys import bpf as bpf
from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py.device.policy import possible_cpus
from vtnet_py.ebpf.build import LoadedProgram, compile_image, instantiate
from vtnet_py.ebpf.steer import Steering
from vtnet_py.errors import BusyError, DeviceError, PrivilegeError, UnsupportedError, VtnetError
from vtnet_py.netmap.portname import RegMode
from vtnet_py.netmap.ring import NS_BUF_CHANGED, NS_FORWARD, NS_MOREFRAG, Ring
from vtnet_py.netmap.xsk import XskSocket, ring_sizes

if TYPE_CHECKING:
    from vtnet_py.device.types import DeviceInfo
    from vtnet_py.netmap.memory import Memory
    from vtnet_py.netmap.port import Port

log = logging.getLogger("vtnet_py")

NEAR_PREFIX = "vtnmh"  # near end of the helper pair, in IF's namespace
FAR_PREFIX = "vtnmH"  # far end, in the port's private namespace
EG_PROG = "vtnm_host_eg"
IN_PROG = "vtnm_host_in"
# bpf/host.c counters, in index order
HOST_COUNTERS = (
    "to_host_rx",
    "gso_segmented",
    "oversize_dropped",
    "owner_gone_passed",
    "from_host_tx",
)
CFG_NEAR, CFG_IFINDEX, CFG_MAX_LEN, CFG_DIVERT = 0, 1, 2, 3
TC_MODE_ENV = "VTNETMAP_HOST_TC"  # "tcx" or "clsact": force the attachment kind
TC_PRIO = 0xC1  # cls_bpf filter priority used for our filters (clsact fallback only)
TC_HANDLE = 1
ETH_VLAN_LEN = 14 + 4  # what a frame may add to the MTU: Ethernet header and one VLAN tag
HOST_RINGS = 1  # host ring pairs per interface (netmap's default)
_OWNER_RE = re.compile(r"^vtnetmap host rings of (\S+): pid (\d+) start (\d+)$")
# ethtool feature names the near end must have off (see the module docstring)
_OFFLOAD_PATTERNS = (
    re.compile(r"^tx-checksum"),
    re.compile(r"^tx-.*segmentation$"),
    re.compile(r"^tx-gso-"),
    re.compile(r"^tx-scatter-gather"),
    re.compile(r"^rx-gro"),
    re.compile(r"^rx-lro$"),
)


def helper_names(ifindex: int) -> tuple[str, str]:
    """(near end, far end) names of the helper pair of interface ``ifindex``."""
    return f"{NEAR_PREFIX}{ifindex}", f"{FAR_PREFIX}{ifindex}"


# --- owners -------------------------------------------------------------------------------


def _proc_start(pid: int) -> int | None:
    """Start time (clock ticks since boot) of ``pid``, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[19])


def _owner_tag(ifname: str) -> str:
    pid = os.getpid()
    return f"vtnetmap host rings of {ifname}: pid {pid} start {_proc_start(pid)}"


def _owner_of(alias: str | None) -> tuple[int, bool] | None:
    """(pid, alive) of the owner recorded in a near end's alias; None if not ours."""
    m = _OWNER_RE.match(alias or "")
    if m is None:
        return None
    pid, start = int(m.group(2)), int(m.group(3))
    return pid, _proc_start(pid) == start


# --- which NIC TX rings are in netmap mode (netmap's rule for the host RX ring) ----------

_nic_tx: dict[int, tuple[int, int]] = {}  # id(port) -> (netns inode, ifindex)
_hosts: dict[tuple[int, int], HostRings] = {}


def _here() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _divert_wanted(key: tuple[int, int]) -> bool:
    return any(k == key for k in _nic_tx.values())


def _update_divert(key: tuple[int, int]) -> None:
    host = _hosts.get(key)
    if host is not None:
        host.set_divert(_divert_wanted(key))


def check_request(spec: Any, zerocopy: str) -> str:
    """The zerocopy mode a port with host rings must bind its NIC rings in.

    Host rings live in the same UMEM, bound on a veth (copy mode only), and every socket
    of a UMEM has the mode of the first one; so ``IF*`` binds its NIC rings in copy mode.
    """
    if spec.mode is not RegMode.NIC_SW:
        return zerocopy
    if zerocopy == "on":
        raise UnsupportedError(
            f"{spec.name}: host rings share the NIC rings' memory and "
            f"work in copy mode only; zerocopy='on' is impossible here"
        )
    return "off"


def port_built(
    port: Port,
    info: DeviceInfo,
    mem: Memory,
    *,
    rx_slots: int,
    tx_slots: int,
    first_buf: int,
    frags: bool,
    max_frags: int,
) -> None:
    """Called by open_port after the NIC rings exist (inside IF's namespace): note NIC TX
    rings in netmap mode, and open the host rings if the port name asks for them. On
    failure what this made is undone by :func:`port_closing` (open_port closes the port).
    """
    key = (_here(), info.ifindex)
    if any(not r.is_host for r in port.tx_rings):
        _nic_tx[id(port)] = key
        _update_divert(key)
    if port.spec.mode not in (RegMode.SW, RegMode.ONE_SW, RegMode.NIC_SW):
        return
    host = HostRings(port, info, key)
    port._host = host
    host.open(
        mem,
        rx_slots=rx_slots,
        tx_slots=tx_slots,
        first_buf=first_buf,
        frags=frags,
        max_frags=max_frags,
    )


def port_closing(port: Port) -> None:
    """Called first by Port.close: tear the host side down, forget the NIC TX rings."""
    host = getattr(port, "_host", None)
    if host is not None:
        port._host = None
        host.close()
    key = _nic_tx.pop(id(port), None)
    if key is not None:
        _update_divert(key)


# --- namespaces ---------------------------------------------------------------------------


def _new_private_netns() -> int:
    """An fd of a fresh, anonymous network namespace; the calling thread stays where it
    is. The namespace lives while the fd (or a socket made inside it) does."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if K.libc.unshare(K.CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            if err == errno.EPERM:
                raise PrivilegeError("host rings: creating a network namespace needs CAP_SYS_ADMIN")
            raise DeviceError(f"host rings: unshare(CLONE_NEWNET): {os.strerror(err)}")
        try:
            return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            if K.libc.setns(home, K.CLONE_NEWNET) != 0:  # pragma: no cover - cannot fail
                raise DeviceError("host rings: cannot return to the original namespace")
    finally:
        os.close(home)


@contextmanager
def _in_fd_netns(fd: int) -> Iterator[None]:
    with enter_netns(f"/proc/self/fd/{fd}"):
        yield


def _set_sysctl(path: str, value: str) -> None:
    """Write a /proc/sys/net entry of the calling thread's namespace; absent entries (no
    IPv6 in this kernel) are skipped."""
    try:
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError:
        pass


def _offloads_off(ifname: str) -> None:
    """Turn off segmentation, checksum and coalescing offloads on a helper end."""
    eth = IoctlEthtool(ifname)
    try:
        feats = eth.get_features()
        names = [
            n
            for n in feats.keys()
            if any(p.match(n) for p in _OFFLOAD_PATTERNS) and feats.is_available(n)
        ]
        for n in names:
            feats.set_value(n, False)
        with suppress(Exception):  # partial success is reported as an error; check below
            eth.set_features(feats)
        after = eth.get_features()
        left = [
            n
            for n in after.keys()
            if after.is_active(n)
            and (n.startswith("tx-checksum") or n.endswith("segmentation"))
            and n not in ("tx-checksum-fcoe-crc", "tx-fcoe-segmentation")
        ]
        if left:
            raise DeviceError(
                f"{ifname}: could not turn off {', '.join(left)} on the host ring helper"
            )
    finally:
        eth.close()


# --- TC attachments -----------------------------------------------------------------------


class _TcAttachment:
    """One TC program on one hook of one interface: a tcx link or a cls_bpf filter
    (direct-action), or with ``mirred_to`` a classic cls_bpf filter whose act_mirred action
    redirects every frame it matches into that interface's ingress."""

    def __init__(
        self, ifindex: int, egress: bool, prog: LoadedProgram, mode: str | None, mirred_to: int = 0
    ):
        self.ifindex = ifindex
        self.egress = egress
        self.link_fd = -1
        self.kind = ""
        self.created_qdisc = False
        if mirred_to:
            self._attach_cls_bpf(prog, mirred_to)
            self.kind = "mirred"
            return
        if mode in (None, "tcx"):
            try:
                self.link_fd = bpf.link_create(
                    prog.prog_fd, ifindex, K.BPF_TCX_EGRESS if egress else K.BPF_TCX_INGRESS
                )
                self.kind = "tcx"
                return
            except OSError as exc:
                if exc.errno == errno.EPERM:
                    raise PrivilegeError(
                        "attaching a TC program needs CAP_NET_ADMIN and CAP_BPF"
                    ) from exc
                # EINVAL: a kernel without tcx (before 6.6) does not know the attach type
                if mode == "tcx" or exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise DeviceError(
                        f"ifindex {ifindex}: tcx attach failed: {exc.strerror}"
                    ) from exc
        self._attach_cls_bpf(prog)
        self.kind = "clsact"

    @property
    def parent(self) -> int:
        return K.TC_H_CLSACT_EGRESS if self.egress else K.TC_H_CLSACT_INGRESS

    def _attach_cls_bpf(self, prog: LoadedProgram, mirred_to: int = 0) -> None:
        if mirred_to:
            how: dict[str, Any] = {
                "action": {
                    "kind": "mirred",
                    "direction": "ingress",
                    "action": "redirect",
                    "ifindex": mirred_to,
                }
            }
        else:
            how = {"direct_action": True}
        with IPRoute() as ipr:
            try:
                ipr.tc("add", "clsact", self.ifindex)
                self.created_qdisc = True
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise DeviceError(
                        f"ifindex {self.ifindex}: adding a clsact qdisc: {exc}"
                    ) from exc
            try:
                ipr.tc(
                    "add-filter",
                    "bpf",
                    self.ifindex,
                    TC_HANDLE,
                    fd=prog.prog_fd,
                    name=prog.name,
                    parent=self.parent,
                    classid=1,
                    prio=TC_PRIO,
                    **how,
                )
            except NetlinkError as exc:
                if self.created_qdisc:
                    with suppress(NetlinkError):
                        ipr.tc("del", "clsact", self.ifindex)
                raise DeviceError(
                    f"ifindex {self.ifindex}: adding the {prog.name} filter: {exc}"
                ) from exc

    def detach(self) -> None:
        """Remove the attachment (idempotent; a vanished interface is not an error)."""
        if self.kind == "tcx":
            if self.link_fd >= 0:
                os.close(self.link_fd)
                self.link_fd = -1
        elif self.kind in ("clsact", "mirred"):
            with IPRoute() as ipr:
                _del_filter(ipr, self.ifindex, self.parent, TC_PRIO, TC_HANDLE)
                if self.created_qdisc and not _filters(ipr, self.ifindex):
                    with suppress(NetlinkError):
                        ipr.tc("del", "clsact", self.ifindex)
        self.kind = ""


def _filters(ipr: IPRoute, ifindex: int) -> list[Any]:
    out = []
    for parent in (K.TC_H_CLSACT_INGRESS, K.TC_H_CLSACT_EGRESS):
        try:
            out += [f for f in ipr.get_filters(index=ifindex, parent=parent) if f.get("TCA_KIND")]
        except NetlinkError:
            pass
    return out


def _del_filter(ipr: IPRoute, ifindex: int, parent: int, prio: int, handle: int) -> None:
    with suppress(NetlinkError):
        ipr.tc("del-filter", "bpf", ifindex, handle, parent=parent, prio=prio)


def _stale_filters(ipr: IPRoute, ifindex: int) -> list[tuple[int, int, int]]:
    """(parent, prio, handle) of our cls_bpf filters on ``ifindex``."""
    out = []
    for f in _filters(ipr, ifindex):
        if f.get("TCA_KIND") != "bpf":
            continue
        opts = f.get("TCA_OPTIONS")
        name = opts.get("TCA_BPF_NAME") if opts is not None else None
        if name in (EG_PROG, IN_PROG):
            out.append((f["parent"], f["info"] >> 16, f["handle"]))
    return out


# --- stale helpers ------------------------------------------------------------------------


def _link_by_name(ipr: IPRoute, name: str) -> Any | None:
    try:
        found = ipr.link_lookup(ifname=name)
    except NetlinkError:
        return None
    if not found:
        return None
    links = ipr.get_links(found[0])
    return links[0] if links else None


def _clear_stale(ipr: IPRoute, ifname: str, ifindex: int, who: str) -> list[str]:
    """Remove a helper pair and TC filters of ``ifname`` left by a dead owner.

    Raises BusyError when a live process owns them, or when the near end's name is taken
    by a device that is not vtnetmap's. Returns what was removed.
    """
    near, _ = helper_names(ifindex)
    removed = []
    link = _link_by_name(ipr, near)
    if link is not None:
        owner = _owner_of(link.get("IFLA_IFALIAS"))
        if owner is None:
            raise BusyError(
                f"{who}: {near}, the name of {ifname}'s host ring helper, is "
                f"taken by a device that is not vtnetmap's"
            )
        pid, alive = owner
        if alive:
            raise BusyError(
                f"{who}: the host rings of {ifname} are open in pid {pid} (helper {near})"
            )
        with suppress(NetlinkError):  # deleting one end deletes the pair
            ipr.link("del", index=link["index"])
        removed.append(f"helper {near} of dead pid {pid}")
    for parent, prio, handle in _stale_filters(ipr, ifindex):
        _del_filter(ipr, ifindex, parent, prio, handle)
        removed.append(
            f"{'egress' if parent == K.TC_H_CLSACT_EGRESS else 'ingress'} filter on {ifname}"
        )
    for what in removed:
        log.warning("vtnetmap: %s: removed stale %s", who, what)
    return removed


def cleanup_stale(ifname: str, netns: str | None = None) -> list[str]:
    """Remove what dead owners left of host rings on ``ifname`` (for `vtnetmap detach`):
    a helper pair still being torn down and, on kernels without tcx, cls_bpf filters.

    Returns a description of each thing removed. Host rings open in a live process are
    left alone (BusyError names the pid). Leaves nothing half-removed that matters: each
    removal is independent.
    """
    with enter_netns(netns), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise DeviceError(f"interface '{ifname}' does not exist (in this network namespace)")
        return _clear_stale(ipr, ifname, found[0], f"netmap:{ifname}^")


# --- the host side of a port --------------------------------------------------------------


class HostRings:
    """The host rings of one port: helper pair, private namespace, socket, programs."""

    def __init__(self, port: Port, info: DeviceInfo, key: tuple[int, int]):
        self.port = port
        self.name = port.name
        self.ifname = info.ifname
        self.ifindex = info.ifindex
        self.mtu = info.mtu
        self.key = key
        self.near, self.far = helper_names(info.ifindex)
        self.near_ifindex = 0
        self.far_ifindex = 0
        self.tc_kind = ""
        self.rx_ring: Ring | None = None
        self.tx_ring: Ring | None = None
        self.stats = {"forwarded_to_host": 0, "forwarded_to_nic": 0, "forward_dropped": 0}
        self._netns_fd = -1  # the private namespace of the far end
        self._if_ns_fd = -1  # IF's namespace, for teardown from wherever close() runs
        self._made_pair = False
        self._sock: XskSocket | None = None
        self._steering: Steering | None = None
        self._eg: LoadedProgram | None = None
        self._in: LoadedProgram | None = None
        self._attached: list[_TcAttachment] = []
        self._registered = False
        self._closed = False

    # --- open ---------------------------------------------------------------------------
    def open(
        self,
        mem: Memory,
        *,
        rx_slots: int,
        tx_slots: int,
        first_buf: int,
        frags: bool,
        max_frags: int,
    ) -> None:
        """Build everything (called inside IF's namespace). On failure the caller closes
        the port, which calls :meth:`close`, which undoes whatever was done."""
        port, spec = self.port, self.port.spec
        want_rx, want_tx = spec.rx, spec.tx
        if spec.mode is RegMode.ONE_SW and spec.ring_id != 0:
            raise DeviceError(
                f"{self.name}: {self.ifname} has {HOST_RINGS} host ring pair; "
                f"host ring {spec.ring_id} does not exist"
            )
        if want_rx and self.mtu + ETH_VLAN_LEN > mem.nr_buf_size and not frags:
            raise UnsupportedError(
                f"{self.name}: {self.ifname} MTU {self.mtu} does not fit "
                f"one {mem.nr_buf_size}-byte buffer; open with frags=True"
            )
        share = mem.share_socket()
        if share is not None and share.zerocopy:
            raise UnsupportedError(
                f"{self.name}: the memory is bound in zero-copy mode, but host rings work "
                f"in copy mode only; open the NIC port with zerocopy='off'"
            )
        if self.key in _hosts:
            raise BusyError(
                f"{self.name}: the host rings of {self.ifname} are already open in this process"
            )
        self._if_ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        with IPRoute() as ipr:
            _clear_stale(ipr, self.ifname, self.ifindex, self.name)
        self._netns_fd = _new_private_netns()
        self._make_pair()

        with _in_fd_netns(self._netns_fd):
            sizes = ring_sizes(rx_slots if want_rx else 0, tx_slots if want_tx else 0)
            try:
                self._sock = XskSocket(
                    ifname=self.far,
                    ifindex=self.far_ifindex,
                    queue=0,
                    umem=mem.umem,
                    share_with=share,
                    sizes=sizes,
                    zerocopy=False,
                    frags=frags,
                )
            except VtnetError as exc:
                raise type(exc)(f"{self.name}: host rings: {exc}") from exc
            sock = self._sock
            port._sockets.append(sock)
            kid = mem.add_socket(sock)
            rings = []
            nxt = first_buf
            if want_rx:
                self.rx_ring = Ring(
                    port_name=self.name,
                    ring_id=len(port.rx_rings),
                    queue=0,
                    is_tx=False,
                    host=True,
                    num_slots=rx_slots,
                    pool=mem.pool,
                    xsk=sock,
                    kid=kid,
                    first_buf=nxt,
                    frags=frags,
                    max_frags=max_frags,
                    chunks=mem.umem.chunks,
                    vnet_hdr=port.vnet_hdr,
                )
                nxt += rx_slots
                rings.append(self.rx_ring)
            if want_tx:
                self.tx_ring = Ring(
                    port_name=self.name,
                    ring_id=len(port.tx_rings),
                    queue=0,
                    is_tx=True,
                    host=True,
                    num_slots=tx_slots,
                    pool=mem.pool,
                    xsk=sock,
                    kid=kid,
                    first_buf=nxt,
                    frags=frags,
                    max_frags=max_frags,
                    chunks=mem.umem.chunks,
                    vnet_hdr=port.vnet_hdr,
                )
                rings.append(self.tx_ring)
            mem.add_rings(rings)
            if self.rx_ring is not None:
                port.rx_rings.append(self.rx_ring)
            if self.tx_ring is not None:
                port.tx_rings.append(self.tx_ring)
            if want_rx:
                self._steering = Steering.acquire(
                    self.far, self.far_ifindex, mode=None, frags=frags
                )
                self._steering.claim(0, sock.fileno())
        if want_rx and port._epoll is not None:
            port._epoll.register(sock.fileno(), select.EPOLLIN)
        self._wire_forwarding()
        self._load_programs()
        _hosts[self.key] = self
        self._registered = True
        mode = os.environ.get(TC_MODE_ENV) or None
        if want_tx:
            assert self._in is not None
            self._attached.append(
                _TcAttachment(self.near_ifindex, False, self._in, mode, mirred_to=self.ifindex)
            )
        if want_rx:
            assert self._eg is not None
            self.set_divert(_divert_wanted(self.key))
            # last: from here on the stack's frames leave through the helper
            self._attached.append(_TcAttachment(self.ifindex, True, self._eg, mode))
            self.tc_kind = self._attached[-1].kind

    def _make_pair(self) -> None:
        with IPRoute() as ipr:
            links = ipr.get_links(self.ifindex)
            mac = links[0].get("IFLA_ADDRESS") if links else None
            try:
                # The near end gets IF's MAC address: frames from the host TX ring pass
                # its receive path (which classifies them as for this host or not) before
                # act_mirred hands them to IF unchanged.
                ipr.link(
                    "add",
                    ifname=self.near,
                    kind="veth",
                    num_tx_queues=1,
                    num_rx_queues=1,
                    mtu=self.mtu,
                    **({"address": mac} if mac else {}),
                    peer={
                        "ifname": self.far,
                        "net_ns_fd": self._netns_fd,
                        "num_tx_queues": 1,
                        "num_rx_queues": 1,
                        "mtu": self.mtu,
                    },
                )
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    raise BusyError(
                        f"{self.name}: {self.near} appeared meanwhile: another "
                        f"process opens the host rings of {self.ifname}"
                    ) from exc
                raise DeviceError(
                    f"{self.name}: creating the host ring helper {self.near}: {exc}"
                ) from exc
            self._made_pair = True
            self.near_ifindex = ipr.link_lookup(ifname=self.near)[0]
            ipr.link("set", index=self.near_ifindex, ifalias=_owner_tag(self.ifname))
            _set_sysctl(f"/proc/sys/net/ipv6/conf/{self.near}/disable_ipv6", "1")
            _offloads_off(self.near)
            ipr.link("set", index=self.near_ifindex, state="up")
        with _in_fd_netns(self._netns_fd), IPRoute() as ipr:
            self.far_ifindex = ipr.link_lookup(ifname=self.far)[0]
            _set_sysctl(f"/proc/sys/net/ipv6/conf/{self.far}/disable_ipv6", "1")
            _offloads_off(self.far)
            ipr.link("set", index=self.far_ifindex, state="up")

    def _load_programs(self) -> None:
        image = compile_image("host.c", (EG_PROG, IN_PROG))
        self._eg = instantiate(image, EG_PROG, K.BPF_PROG_TYPE_SCHED_CLS, name=EG_PROG)
        self._in = instantiate(image, IN_PROG, K.BPF_PROG_TYPE_SCHED_CLS, name=IN_PROG)
        for prog in (self._eg, self._in):
            cfg = prog.maps["cfg"]
            for k, v in (
                (CFG_NEAR, self.near_ifindex),
                (CFG_IFINDEX, self.ifindex),
                (CFG_MAX_LEN, self.mtu + ETH_VLAN_LEN),
                (CFG_DIVERT, 0),
            ):
                bpf.map_update(cfg, ctypes.c_uint32(k), ctypes.c_uint32(v))
        if self._sock is not None and self.rx_ring is not None:
            bpf.map_update(
                self._eg.maps["alive"], ctypes.c_uint32(0), ctypes.c_uint32(self._sock.fileno())
            )

    def set_divert(self, on: bool) -> None:
        """Whether the stack's frames go to the host RX ring (True) or to the wire."""
        if self._eg is not None and self._eg.prog_fd >= 0:
            bpf.map_update(
                self._eg.maps["cfg"], ctypes.c_uint32(CFG_DIVERT), ctypes.c_uint32(1 if on else 0)
            )

    def diverting(self) -> bool:
        if self._eg is None or self._eg.prog_fd < 0:
            return False
        v = ctypes.c_uint32(0)
        bpf.map_lookup(self._eg.maps["cfg"], ctypes.c_uint32(CFG_DIVERT), v)
        return bool(v.value) and any(a.egress and a.kind for a in self._attached)

    def _wire_forwarding(self) -> None:
        port = self.port
        nic_rx = [r for r in port.rx_rings if not r.is_host]
        nic_tx = [r for r in port.tx_rings if not r.is_host]
        if self.tx_ring is not None:
            for r in nic_rx:
                r._forward = partial(
                    _forward, dsts=[self.tx_ring], stats=self.stats, key="forwarded_to_host"
                )
        if self.rx_ring is not None and nic_tx:
            self.rx_ring._forward = partial(
                _forward, dsts=nic_tx, stats=self.stats, key="forwarded_to_nic"
            )

    # --- status -------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """The TC programs' counters (summed over CPUs) and the forwarding counters."""
        out = dict.fromkeys(HOST_COUNTERS, 0)
        ncpu = possible_cpus()
        for prog in (self._eg, self._in):
            if prog is None or prog.prog_fd < 0:
                continue
            for i, name in enumerate(HOST_COUNTERS):
                vals = (ctypes.c_uint64 * ncpu)()
                if bpf.map_lookup(prog.maps["counters"], ctypes.c_uint32(i), vals):  # type: ignore[arg-type]
                    out[name] += sum(vals)
        out.update(self.stats)
        out["tc"] = self.tc_kind  # type: ignore[assignment]
        return out

    # --- close --------------------------------------------------------------------------
    def close(self) -> None:
        """Undo everything (idempotent, also after a partial open): stop diverting the
        stack's frames first, then the socket, the steering program, the helper pair."""
        if self._closed:
            return
        self._closed = True
        if self._if_ns_fd < 0:
            return
        try:
            with _in_fd_netns(self._if_ns_fd):
                self._teardown()
        finally:
            os.close(self._if_ns_fd)
            self._if_ns_fd = -1

    def _teardown(self) -> None:
        for att in reversed(self._attached):  # egress first: frames go back to the wire
            with suppress(OSError, VtnetError, NetlinkError):
                att.detach()
        self._attached.clear()
        if self._registered:
            _hosts.pop(self.key, None)
        for r in self.port.rx_rings + self.port.tx_rings:
            r._forward = None
        if self._steering is not None:
            with suppress(OSError, VtnetError):
                self._steering.unclaim(0)
            self._steering.release()
            self._steering = None
        if self._sock is not None:
            self._sock.close()  # the port closes it again (idempotent)
        for prog in (self._eg, self._in):
            if prog is not None:
                prog.close()
        if self._made_pair:
            # deleting one end deletes both, whatever namespace the other is in
            with suppress(NetlinkError, OSError), IPRoute() as ipr:
                found = (
                    [self.near_ifindex] if self.near_ifindex else ipr.link_lookup(ifname=self.near)
                )
                if found:
                    ipr.link("del", index=found[0])
        if self._netns_fd >= 0:
            os.close(self._netns_fd)  # the private namespace (and anything left) goes
            self._netns_fd = -1


def _forward(
    src: Ring, idx: np.ndarray, *, dsts: list[Ring], stats: dict[str, int], key: str
) -> None:
    """NS_FORWARD: move the released slots ``idx`` of ``src`` that carry NS_FORWARD into
    the TX rings ``dsts`` (first with room first) by swapping buffers, then sync those
    TX rings. Frames that find no room are dropped (their slots are released as usual)."""
    fl = src.slot["flags"]
    sel = idx[(fl[idx] & NS_FORWARD) != 0]
    if not sel.size:
        return
    bi = src.slot["buf_idx"]
    ln = src.slot["len"]
    done = 0
    for dst in dsts:
        left = sel.size - done
        if left <= 0:
            break
        room = (dst.tail - dst.head) % dst.num_slots
        k = min(room, left)
        if k <= 0:
            continue
        part = sel[done : done + k]
        if k < left and fl[part[-1]] & NS_MOREFRAG:
            # do not split a multi-slot frame: it would be sent without its end
            ends = np.flatnonzero((fl[part] & NS_MOREFRAG) == 0)
            k = int(ends[-1]) + 1 if ends.size else 0
            part = part[:k]
            if not k:
                continue
        ti = dst.slots_from_head(k)
        tmp = bi[part].copy()
        bi[part] = dst.slot["buf_idx"][ti]
        dst.slot["buf_idx"][ti] = tmp
        dst.slot["len"][ti] = ln[part]
        dst.slot["flags"][ti] = NS_BUF_CHANGED | (fl[part] & NS_MOREFRAG)
        fl[part] = NS_BUF_CHANGED
        dst.head = dst.cur = dst.next(dst.head, k)
        done += k
        dst.txsync()
    stats[key] += done
    stats["forward_dropped"] += int(sel.size) - done


__all__ = [
    "HOST_COUNTERS",
    "HostRings",
    "check_request",
    "cleanup_stale",
    "helper_names",
    "port_built",
    "port_closing",
]
