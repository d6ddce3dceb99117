"""The plan of an open (libnetmap's nmport_prepare): pure decisions, no syscalls.

:func:`plan_attach` decides what the steering program needs (frags, XDP mode) from the
parsed name, the DeviceInfo and the options; :func:`plan_port` decides the rest once the
device's real queue counts are known: which queues get which rings, ring sizes, host
rings, the vnet header, and the buffers the port's rings need. Unit tests build both
from :func:`~vtnet_py.device.fake.make_info` values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from vtnet_py._sys.abi import ETH_OVERHEAD, XDP_PACKET_HEADROOM
from vtnet_py.device.checks import possible_cpus, refuse_default_route, support_mode
from vtnet_py.device.netlink import real_queues
from vtnet_py.device.types import DeviceInfo
from vtnet_py.errors import DeviceError, UnsupportedError
from vtnet_py.netmap.hostrings import check_request, wants_host_rings
from vtnet_py.netmap.portname import PortSpec, RegMode
from vtnet_py.netmap.xsk import CHUNK_SIZE

NR_BUF_SIZE = CHUNK_SIZE - XDP_PACKET_HEADROOM  # a netmap buffer: a UMEM chunk after headroom
DEFAULT_RX_SLOTS = 1024
DEFAULT_TX_SLOTS = 1024
MAX_FRAGS = 18  # MAX_SKB_FRAGS + 1: the most a copy-mode AF_XDP TX frame may span


@dataclass(frozen=True)
class OpenOptions:
    """What open_port was asked besides the name (see :func:`open_port`)."""

    zerocopy: str = "auto"  # auto | on | off
    mode: str | None = None  # native | generic | None
    frags: bool | None = None
    force: bool = False
    vnet_hdr: int = 0
    nr_buf_size: int = NR_BUF_SIZE  # of the Memory the port will use


@dataclass(frozen=True)
class AttachPlan:
    """The first half of the plan, decided before the steering program is attached."""

    frags: bool
    steer: bool  # NIC RX rings: the steering program must be attached or joined
    xdp_mode: str | None  # mode to attach in (None: native, else generic)
    warning: str | None  # the cost of that mode, when it has one
    zerocopy: str  # auto | on | off, after the host-ring rule


@dataclass(frozen=True)
class QueuePlan:
    queue: int
    rx: bool  # bind an RX ring on this queue
    tx: bool  # bind a TX ring on this queue


@dataclass(frozen=True)
class PortPlan:
    """Everything open_port will acquire, decided before it acquires anything."""

    name: str
    ifname: str
    ifindex: int
    attach: AttachPlan
    queues: tuple[QueuePlan, ...]  # NIC queues with at least one ring
    rx_slots: int
    tx_slots: int
    host_rx: bool
    host_tx: bool
    vnet_hdr: int

    @property
    def frags(self) -> bool:
        return self.attach.frags

    @property
    def host(self) -> bool:
        return self.host_rx or self.host_tx

    @property
    def nic_tx(self) -> bool:
        return any(q.tx for q in self.queues)

    @property
    def buffers(self) -> int:
        """Buffers the port's rings own: one per slot, host rings after the NIC rings."""
        n = sum(
            (self.rx_slots if q.rx else 0) + (self.tx_slots if q.tx else 0) for q in self.queues
        )
        return n + (self.rx_slots if self.host_rx else 0) + (self.tx_slots if self.host_tx else 0)


def plan_attach(spec: PortSpec, info: DeviceInfo, opts: OpenOptions) -> AttachPlan:
    """The frags, steering and zero-copy decisions (pure). Raises UnsupportedError or
    RefusedError naming the port for a request that cannot work on this device."""
    name = spec.name
    refuse_default_route(info, opts.force)
    zerocopy = check_request(spec, opts.zerocopy)  # IF*: copy mode, like its host rings
    nic_rx = spec.rx and spec.mode not in (RegMode.SW, RegMode.ONE_SW)
    frame_max = info.mtu + ETH_OVERHEAD
    frags = opts.frags
    if frags is None:
        frags = frame_max > opts.nr_buf_size
    elif not frags and frame_max > opts.nr_buf_size and nic_rx:
        raise UnsupportedError(
            f"{name}: {spec.ifname} MTU {info.mtu} does not fit one "
            f"{opts.nr_buf_size}-byte buffer; open with frags=True"
        )
    if frags and opts.vnet_hdr:
        raise UnsupportedError(
            f"{name}: a virtio-net header with multi-buffer frames is not "
            f"supported (lower the MTU of {spec.ifname} or drop the header)"
        )
    mode, warning = opts.mode, None
    if nic_rx and not info.xdp_prog_id:
        # we attach: a failed native attach must not fall back to generic XDP on
        # virtio_net, whose generic path changes offloads on the way
        mode, warning = support_mode(info, opts.mode)
    return AttachPlan(frags=frags, steer=nic_rx, xdp_mode=mode, warning=warning, zerocopy=zerocopy)


def plan_port(
    spec: PortSpec,
    info: DeviceInfo,
    opts: OpenOptions,
    *,
    queues: tuple[int, int],
    tx_limit: int | None = None,
) -> PortPlan:
    """The whole plan (pure): ``info`` and ``queues`` (the real RX and TX queue counts)
    as they are once the steering program is attached; ``tx_limit`` the TX queues before
    (attaching XDP adds queue pairs on virtio_net, which only receive)."""
    name = spec.name
    attach = plan_attach(spec, info, opts)
    nrx, ntx = queues
    if tx_limit is not None:
        ntx = min(ntx, tx_limit)
    for key, have in (("rx-rings", nrx), ("tx-rings", ntx)):
        asked = spec.effective_rx_rings if key == "rx-rings" else spec.effective_tx_rings
        if asked is not None and asked != have:
            raise UnsupportedError(
                f"{name}: @conf:{key}={asked} but {spec.ifname} has {have}; the number of "
                f"queues is the device's (change it with `vtnetmap attach --rings N`)"
            )
    if spec.mode is RegMode.ONE_NIC:
        assert spec.ring_id is not None
        if spec.ring_id >= max(nrx, ntx):
            raise DeviceError(
                f"{name}: {spec.ifname} has no queue {spec.ring_id} ({nrx} rx / {ntx} tx queues)"
            )
    qs = tuple(QueuePlan(q, r, t) for q, r, t in _queues(spec, nrx, ntx) if r or t)
    host = wants_host_rings(spec)
    if not host and not qs:
        raise DeviceError(f"{name}: no ring to bind on {spec.ifname}")
    return PortPlan(
        name=name,
        ifname=spec.ifname,
        ifindex=info.ifindex,
        attach=attach,
        queues=qs,
        rx_slots=spec.effective_rx_slots or DEFAULT_RX_SLOTS,
        tx_slots=spec.effective_tx_slots or DEFAULT_TX_SLOTS,
        host_rx=host and spec.rx,
        host_tx=host and spec.tx,
        vnet_hdr=opts.vnet_hdr,
    )


def _queues(spec: PortSpec, nrx: int, ntx: int) -> Iterator[tuple[int, bool, bool]]:
    """(queue, bind rx, bind tx) for every queue the port takes."""
    want_rx, want_tx = spec.rx, spec.tx
    if spec.mode in (RegMode.SW, RegMode.ONE_SW):
        return  # host rings only (hostrings.py)
    if spec.mode is RegMode.ONE_NIC:
        assert spec.ring_id is not None
        q = spec.ring_id
        yield q, want_rx and q < nrx, want_tx and q < ntx
        return
    for q in range(max(nrx if want_rx else 0, ntx if want_tx else 0)):
        yield q, want_rx and q < nrx, want_tx and q < ntx


def nic_queue_bound(info: DeviceInfo) -> int:
    """The most NIC ring pairs a port on ``info`` can get once the steering program is
    attached (virtio_net then adds up to one queue pair per CPU): for sizing a Memory
    before any port is open."""
    n = max(real_queues(info))
    if info.driver == "virtio_net" and not info.xdp_prog_id:
        limit = info.channels.max_combined or n
        n = max(n, min(limit, n + possible_cpus()))
    return n


__all__ = [
    "DEFAULT_RX_SLOTS",
    "DEFAULT_TX_SLOTS",
    "MAX_FRAGS",
    "NR_BUF_SIZE",
    "AttachPlan",
    "OpenOptions",
    "PortPlan",
    "QueuePlan",
    "nic_queue_bound",
    "plan_attach",
    "plan_port",
]
