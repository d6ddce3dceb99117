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
  closed. A stale filter (and a near end whose namespace is still being torn down) is
  removed by the next open or by :func:`cleanup_stale` (``vtnetmap detach``). The helper
  pair is made by :mod:`~vtnet_py.netmap.hosthelper`, the TC attachments by
  :mod:`~vtnet_py.ebpf.tc`, the egress program by :mod:`~vtnet_py.ebpf.egress`.
* Host TX frames enter IF through act_mirred, which marks the skb as redirected; generic
  (SKB-mode) XDP skips redirected skbs, so IF's steering program does not steal them
  back into a NIC RX ring. bpf_redirect(BPF_F_INGRESS) does not mark them (tried: in
  generic mode they looped into the NIC RX ring), hence mirred; native XDP never sees
  them (they do not come from the driver). The near end carries IF's MAC address, so its
  receive path classifies the frames (for this host, broadcast, other host) as IF would.
* netmap's rule: the stack's transmissions go to the host RX ring only while NIC TX rings
  of IF are in netmap mode, in any process; otherwise they go to the wire (and with TX
  rings registered and no host RX ring held, nowhere: dropped and counted). That is IF's
  one egress program, shared by every process (:mod:`~vtnet_py.ebpf.egress`): the host
  holder puts its socket and the near end into it; NIC ports register themselves there,
  and TX-only NIC ports of this process (no socket an XSKMAP takes) through a flag the
  host holder sets from :class:`HostRegistry`.
* Host TX frames whose TCP/UDP checksum was left to offload (the field holds the
  pseudo-header sum) get it completed by the near end's ingress program on the way in.
  Frames from a NIC RX ring already come complete (the steering program finishes what a
  veth peer left partial); this catches frames an application wrote that way.
* Offloads: the near end has every segmentation and checksum offload off, so the kernel
  segments GSO super-frames and completes CHECKSUM_PARTIAL checksums in software when it
  transmits them (validate_xmit_skb); the host RX ring only sees complete wire frames no
  larger than the MTU. Anything larger that is not GSO is dropped and counted.

NS_FORWARD (netmap's transparent mode): on a port with both NIC and host rings, an RX slot
released with NS_FORWARD on a ring whose ``flags`` has NR_FORWARD is moved (buffer swap)
to the other side's TX ring at that rxsync -- NIC RX to the host TX ring (up into the
stack), host RX to the NIC TX rings (to the wire) -- and that TX ring is synced. When the
destination ring has no room the frame is dropped and counted, as netmap does. A port with
NIC rings only gets its host TX ring on demand instead (:class:`~vtnet_py.netmap.forward.
StackForward`, installed by the port).

Ownership: the Port owns its HostRings. HostRings binds the socket and hands it back; the
port makes the rings on it, registers both (memory, ring lists, epoll) and hands the rings
to HostRings with :meth:`HostRings.use_rings`; the NS_FORWARD hooks come back from
:meth:`HostRings.forwarders` for the port to install. Which NIC TX rings are open, and which
host rings, is kept per (namespace, ifindex) in one refcounted :class:`HostRegistry`.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vtnet_py._sys import abi as K
from vtnet_py._sys import bpf as bpf
from vtnet_py._sys.netns import fd_netns, new_private_netns
from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py._sys.proc import netns_inode
from vtnet_py.device.checks import possible_cpus
from vtnet_py.ebpf.build import LoadedProgram, compile_image, instantiate
from vtnet_py.ebpf.egress import EG_PROG, EGRESS_COUNTERS, EgressGate, image_flags
from vtnet_py.ebpf.steer import Steering
from vtnet_py.ebpf.tc import TC_MODE_ENV, TcAttachment
from vtnet_py.errors import BusyError, DeviceError, UnsupportedError, VtnetError
from vtnet_py.netmap.forward import forward_slots
from vtnet_py.netmap.hosthelper import (
    IN_PROG,
    cleanup_stale,
    clear_stale,
    delete_pair,
    helper_names,
    make_pair,
)
from vtnet_py.netmap.portname import PortSpec, RegMode
from vtnet_py.netmap.ring import Ring
from vtnet_py.netmap.xsk import XskSocket, ring_sizes

if TYPE_CHECKING:
    from vtnet_py.device.types import DeviceInfo
    from vtnet_py.netmap.memory import Memory

HOST_COUNTERS = EGRESS_COUNTERS  # bpf/host.c counters, in index order
ETH_VLAN_LEN = K.ETH_HLEN + K.VLAN_HLEN  # what a frame may add to the MTU
HOST_RINGS = 1  # host ring pairs per interface (netmap's default)
Key = tuple[int, int]  # (netns inode, ifindex): one interface


def wants_host_rings(spec: PortSpec) -> bool:
    return spec.mode in (RegMode.SW, RegMode.ONE_SW, RegMode.NIC_SW)


def check_request(spec: PortSpec, zerocopy: str) -> str:
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


# --- which NIC TX rings are in netmap mode (netmap's rule for the host RX ring) ----------


class HostRegistry:
    """This process's host rings and NIC TX ring users, per interface (refcounted).

    netmap's rule: the stack's frames go to the host RX ring only while NIC TX rings of
    the same interface are in netmap mode. Every port with NIC TX rings counts itself in
    with :meth:`nic_tx_opened` and out with :meth:`nic_tx_closed`; the host rings of that
    interface (at most one per process) divert while the count is above zero.
    """

    def __init__(self) -> None:
        self.hosts: dict[Key, HostRings] = {}
        self.nic_tx: dict[Key, int] = {}
        self._lock = threading.Lock()

    def in_use(self, key: Key) -> bool:
        return key in self.hosts

    def divert_wanted(self, key: Key) -> bool:
        return self.nic_tx.get(key, 0) > 0

    def nic_tx_opened(self, key: Key) -> None:
        with self._lock:
            self.nic_tx[key] = self.nic_tx.get(key, 0) + 1
            self._update(key)

    def nic_tx_closed(self, key: Key) -> None:
        with self._lock:
            n = self.nic_tx.get(key, 0) - 1
            if n > 0:
                self.nic_tx[key] = n
            else:
                self.nic_tx.pop(key, None)
            self._update(key)

    def add(self, host: HostRings) -> None:
        with self._lock:
            if host.key in self.hosts:
                raise BusyError(
                    f"{host.name}: the host rings of {host.ifname} are already open in this process"
                )
            self.hosts[host.key] = host

    def remove(self, host: HostRings) -> None:
        with self._lock:
            if self.hosts.get(host.key) is host:
                del self.hosts[host.key]

    def _update(self, key: Key) -> None:
        host = self.hosts.get(key)
        if host is not None:
            host.set_divert(self.divert_wanted(key))

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's ports are not this process's to count."""
        self.hosts.clear()
        self.nic_tx.clear()
        self._lock = threading.Lock()


REGISTRY = HostRegistry()
# the registry's tables under the module's names (read by leak checks)
_hosts = REGISTRY.hosts
_nic_tx = REGISTRY.nic_tx
os.register_at_fork(after_in_child=REGISTRY.forget_after_fork)


# --- the host side of a port --------------------------------------------------------------


class HostRings:
    """The host rings of one port: helper pair, private namespace, socket, programs.

    Opened in steps the port runs in IF's namespace (:meth:`check`, :meth:`make_helper`,
    :meth:`bind`, :meth:`use_rings`, :meth:`start`); :meth:`close` undoes whatever of them
    was done, in reverse, from any namespace.
    """

    def __init__(
        self, spec: PortSpec, info: DeviceInfo, key: Key, registry: HostRegistry = REGISTRY
    ):
        self.name = spec.name
        self.ifname = info.ifname
        self.ifindex = info.ifindex
        self.mtu = info.mtu
        self.key = key
        self.want_rx, self.want_tx = spec.rx, spec.tx
        self.ring_id = spec.ring_id if spec.mode is RegMode.ONE_SW else None
        self.near, self.far = helper_names(info.ifindex)
        self.near_ifindex = 0
        self.far_ifindex = 0
        self.tc_kind = ""
        self.rx_ring: Ring | None = None
        self.tx_ring: Ring | None = None
        self.sock: XskSocket | None = None
        self.stats = {"forwarded_to_host": 0, "forwarded_to_nic": 0, "forward_dropped": 0}
        self._registry = registry
        self._netns_fd = -1  # the private namespace of the far end
        self._if_ns_fd = -1  # IF's namespace, for teardown from wherever close() runs
        self._steering: Steering | None = None
        self._gate: EgressGate | None = None  # IF's egress program, shared
        self._in: LoadedProgram | None = None
        self._attached: list[TcAttachment] = []
        self._registered = False
        self._closed = False

    # --- open ---------------------------------------------------------------------------
    def check(self, mem: Memory, frags: bool) -> None:
        """Refuse what cannot work, before anything is made."""
        if self.ring_id is not None and self.ring_id != 0:
            raise DeviceError(
                f"{self.name}: {self.ifname} has {HOST_RINGS} host ring pair; "
                f"host ring {self.ring_id} does not exist"
            )
        if self.want_rx and self.mtu + ETH_VLAN_LEN > mem.nr_buf_size and not frags:
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
        if self._registry.in_use(self.key):
            raise BusyError(
                f"{self.name}: the host rings of {self.ifname} are already open in this process"
            )

    def make_helper(self) -> None:
        """Remove what a dead owner left, then make the private namespace and the pair."""
        self._if_ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        with IPRoute() as ipr:
            clear_stale(ipr, self.ifname, self.ifindex, self.name)
        self._netns_fd = new_private_netns(f"{self.name}: host rings")
        self.near_ifindex, self.far_ifindex = make_pair(
            self.name, self.ifname, self.ifindex, self.mtu, self._netns_fd
        )

    def bind(self, mem: Memory, *, rx_slots: int, tx_slots: int, frags: bool) -> XskSocket:
        """Bind the host socket on the far end; the caller registers it with the memory."""
        sizes = ring_sizes(rx_slots if self.want_rx else 0, tx_slots if self.want_tx else 0)
        with enter_netns(fd_netns(self._netns_fd)):
            try:
                self.sock = XskSocket(
                    ifname=self.far,
                    ifindex=self.far_ifindex,
                    queue=0,
                    umem=mem.umem,
                    share_with=mem.share_socket(),
                    sizes=sizes,
                    zerocopy=False,
                    frags=frags,
                )
            except VtnetError as exc:
                raise type(exc)(f"{self.name}: host rings: {exc}") from exc
        return self.sock

    def use_rings(self, rx: Ring | None, tx: Ring | None) -> None:
        """The rings the port made on :attr:`sock` (RX when asked for, TX likewise)."""
        self.rx_ring, self.tx_ring = rx, tx

    def start(self, frags: bool) -> None:
        """Steer the far end to the socket, load the TC programs and attach them: from
        the egress attachment on (last), the stack's frames leave through the helper."""
        sock = self.sock
        assert sock is not None
        if self.want_rx:
            with enter_netns(fd_netns(self._netns_fd)):
                self._steering = Steering.acquire(
                    self.far, self.far_ifindex, mode=None, frags=frags
                )
                self._steering.claim(0, sock.fileno())
        self._load_programs()
        self._registry.add(self)
        self._registered = True
        mode = os.environ.get(TC_MODE_ENV) or None
        if self.want_tx:
            assert self._in is not None
            self._attached.append(
                TcAttachment(self.near_ifindex, False, self._in, mode, mirred_to=self.ifindex)
            )
        if self.want_rx:
            # from here on the stack's frames leave through the helper whenever NIC TX
            # rings of IF are registered, in this process or another
            self._gate = EgressGate.acquire(self.ifname, self.ifindex, self.mtu + ETH_VLAN_LEN)
            self.tc_kind = self._gate.kind
            self.set_divert(self._registry.divert_wanted(self.key))
            self._gate.set_host(sock.fileno(), self.near_ifindex, self.mtu + ETH_VLAN_LEN)

    def _load_programs(self) -> None:
        image = compile_image("host.c", (EG_PROG, IN_PROG), image_flags())
        self._in = instantiate(image, IN_PROG, K.BPF_PROG_TYPE_SCHED_CLS, name=IN_PROG)

    def set_divert(self, on: bool) -> None:
        """Whether NIC TX-only ports of this process are open (ports with an RX socket
        register themselves with the egress program; these have no socket it takes)."""
        if self._gate is not None:
            self._gate.set_divert(on)

    def forwarders(
        self, nic_rx: list[Ring], nic_tx: list[Ring]
    ) -> list[tuple[Ring, Callable[[Ring, np.ndarray], None]]]:
        """NS_FORWARD hooks for the port to install: (RX ring, hook) pairs."""
        out: list[tuple[Ring, Callable[[Ring, np.ndarray], None]]] = []
        if self.tx_ring is not None:
            to_host = partial(
                forward_slots, dsts=[self.tx_ring], stats=self.stats, key="forwarded_to_host"
            )
            out += [(r, to_host) for r in nic_rx]
        if self.rx_ring is not None and nic_tx:
            to_nic = partial(forward_slots, dsts=nic_tx, stats=self.stats, key="forwarded_to_nic")
            out.append((self.rx_ring, to_nic))
        return out

    # --- status -------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """The TC programs' counters (summed over CPUs) and the forwarding counters."""
        ncpu = possible_cpus()
        out = dict.fromkeys(HOST_COUNTERS, 0)
        if self._gate is not None:
            out.update(self._gate.counters(ncpu))
        if self._in is not None and self._in.prog_fd >= 0:  # this port's host TX program
            for name in ("from_host_tx", "host_tx_csum_completed"):
                vals = (ctypes.c_uint64 * ncpu)()
                i = ctypes.c_uint32(HOST_COUNTERS.index(name))
                if bpf.map_lookup(self._in.maps["counters"], i, vals):  # type: ignore[arg-type]
                    out[name] = int(sum(vals))
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
            if os.fstat(self._if_ns_fd).st_ino == netns_inode():
                self._teardown()  # already there (a failed open): no setns, no privilege
            else:
                with enter_netns(fd_netns(self._if_ns_fd)):
                    self._teardown()
        finally:
            os.close(self._if_ns_fd)
            self._if_ns_fd = -1

    def _teardown(self) -> None:
        if self._gate is not None:  # first: the stack's frames stop coming
            with suppress(OSError, VtnetError, NetlinkError):
                self._gate.clear_host()
            with suppress(OSError, VtnetError, NetlinkError):
                self._gate.release()
            self._gate = None
        for att in reversed(self._attached):
            with suppress(OSError, VtnetError, NetlinkError):
                att.detach()
        self._attached.clear()
        if self._registered:
            self._registry.remove(self)
        if self._steering is not None:
            with suppress(OSError, VtnetError):
                self._steering.unclaim(0)
            self._steering.release()
            self._steering = None
        if self.sock is not None:
            self.sock.close()  # the port closes it again (idempotent)
        if self._in is not None:
            self._in.close()
        if self.near_ifindex:
            delete_pair(self.near_ifindex)
        if self._netns_fd >= 0:
            os.close(self._netns_fd)  # the private namespace (and anything left) goes
            self._netns_fd = -1

    def close_fds(self) -> None:
        """What a finalizer, or a forked child, may do: close this process's fds only (no
        netlink, no map update, no lock). With the socket and the private namespace
        gone the pair vanishes; a clsact filter left behind passes frames to the wire."""
        if self._closed:
            return
        self._closed = True
        for att in self._attached:
            att.close_fd()
        if self._gate is not None:
            self._gate.release_later()
            self._gate = None
        if self._steering is not None:
            self._steering.release_later()
            self._steering = None
        if self.sock is not None:
            self.sock.close()
        if self._in is not None:
            self._in.close()
        for fd in (self._netns_fd, self._if_ns_fd):
            if fd >= 0:
                os.close(fd)
        self._netns_fd = self._if_ns_fd = -1


__all__ = [
    "HOST_COUNTERS",
    "REGISTRY",
    "TC_MODE_ENV",
    "HostRegistry",
    "HostRings",
    "check_request",
    "cleanup_stale",
    "helper_names",
    "wants_host_rings",
]
