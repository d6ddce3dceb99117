"""netmap ports over AF_XDP: ``open_port("netmap:eth0")`` and the Port object.

A port owns one AF_XDP socket per queue it binds, all on one Memory (UMEM), and exposes
them as netmap rings. Opening is a sequence of acquire steps (device read, memory,
steering program, sockets, rings, queue claims, epoll); each has an undo step, and
``close`` (also on a half-built port) runs them in reverse. What survives a crash is only
what the kernel keeps for a live fd, so kill -9 returns every queue to the kernel.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import numpy as np

from vtnet_py._sys.abi import ETH_OVERHEAD, SIOCGIFHWADDR, VNET_HDR_LENS, XDP_PACKET_HEADROOM
from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py._sys.proc import pid_alive
from vtnet_py.device.netlink import read_device
from vtnet_py.device.policy import (
    check_xdp_preconditions,
    possible_cpus,
    refuse_default_route,
    support_mode,
)
from vtnet_py.device.record import attached_zerocopy
from vtnet_py.device.types import DeviceInfo
from vtnet_py.ebpf.steer import Steering
from vtnet_py.errors import (
    BusyError,
    DeviceError,
    InterfaceChangedError,
    PortClosedError,
    UnsupportedError,
    VtnetError,
)
from vtnet_py.netmap import hostrings
from vtnet_py.netmap.memory import Memory
from vtnet_py.netmap.portname import PortSpec, RegMode, parse_port_name
from vtnet_py.netmap.ring import FREE, Ring, krx, ktx
from vtnet_py.netmap.watch import DeviceWatch
from vtnet_py.netmap.xsk import CHUNK_SIZE, XskSocket, ring_sizes

log = logging.getLogger("vtnet_py")

NR_BUF_SIZE = CHUNK_SIZE - XDP_PACKET_HEADROOM  # a netmap buffer: a UMEM chunk after headroom
HEALTH_SLICE_MS = 100  # longest sleep in poll() between checks that the sockets are bound
PENDING_BACKOFF_S = 0.0002  # first wait for TX completions in poll(tx=True); doubles
DEFAULT_RX_SLOTS = 1024
DEFAULT_TX_SLOTS = 1024
MAX_FRAGS = 18  # MAX_SKB_FRAGS + 1: the most a copy-mode AF_XDP TX frame may span


class Port:
    """An open netmap port. Create with :func:`open_port`."""

    def __init__(self, spec: PortSpec):
        self.spec = spec
        self.name = spec.name
        self.ifname = spec.ifname
        self.ifindex = 0
        self.tx_rings: list[Ring] = []
        self.rx_rings: list[Ring] = []
        self.zerocopy = False
        self.xdp_mode: str | None = None
        self.frags = False
        self.vnet_hdr = 0
        self._bufs: np.ndarray | None = None
        self.memory: Memory | None = None
        self._own_memory = False
        self._sockets: list[XskSocket] = []
        self._claimed: list[int] = []
        self._steering: Steering | None = None
        self._epoll: select.epoll | None = None
        self._poller: Any = None
        self._rx_fds: dict[int, XskSocket] = {}
        self._closed = False
        self._watch: DeviceWatch | None = None  # notices channel changes (issue 3)
        self._failed = ""
        self._host: Any = None  # hostrings.HostRings when the port has host rings
        self._busy_poll = False  # poll() spins on the rings (open_port(busy_poll=True))
        self._allocated: tuple[int, int] | None = None  # (first, count) of mem.allocate
        self._poll_mask = -1

    # --- public ---------------------------------------------------------------------------
    @property
    def bufs(self) -> np.ndarray:
        """All buffers of the port's memory: row ``buf_idx`` is that buffer (zero copy).
        With a virtio-net header the row starts with the header."""
        mem = self._mem()
        if self._bufs is None:
            self._bufs = mem.umem.chunks[:, mem.umem.chunk_size - self.nr_buf_size :]
        return self._bufs

    def buf(self, buf_idx: int) -> np.ndarray:
        """Buffer ``buf_idx`` as a writable uint8 array of nr_buf_size bytes (no copy)."""
        mem = self._mem()
        if not 0 <= buf_idx < mem.nbufs:
            raise IndexError(f"{self.name}: buf_idx {buf_idx} out of range 0..{mem.nbufs - 1}")
        return self.bufs[buf_idx]

    @property
    def nr_buf_size(self) -> int:
        return self._mem().nr_buf_size + self.vnet_hdr

    def fileno(self) -> int:
        """An epoll fd, readable when an RX ring has frames waiting (for a TX-only port:
        when a TX ring has room), usable with select/poll/asyncio add_reader."""
        if self._epoll is None:
            raise PortClosedError(f"{self.name}: port is closed")
        return self._epoll.fileno()

    def rxsync(self) -> int:
        """rxsync every RX ring; returns the number of new frames."""
        self._check_open()
        n = 0
        try:  # _sticky_failure inline: a generator context costs a microsecond a sync
            for r in self.rx_rings:
                n += r.rxsync()
        except InterfaceChangedError:
            self._check_sockets()
            raise
        return n

    def txsync(self) -> int:
        """txsync every TX ring; returns the number of slots handed to the kernel."""
        self._check_open()
        n = 0
        try:
            for r in self.tx_rings:
                n += r.txsync()
        except InterfaceChangedError:
            self._check_sockets()
            raise
        return n

    def poll(self, rx: bool = True, tx: bool = False, timeout: float | None = None) -> bool:
        """netmap's poll(): push every TX ring, sync the RX rings if ``rx``, and wait up to
        ``timeout`` seconds (None: forever) until an RX ring has frames (``rx``) or a TX
        ring has room (``tx``). Returns whether that happened. An interface that went away
        or down raises InterfaceChangedError. A port opened with ``busy_poll=True`` spins
        on its rings instead of sleeping."""
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        tx_rings, rx_rings = self.tx_rings, self.rx_rings
        backoff = 0.0
        with self._sticky_failure():
            while True:
                for r in tx_rings:
                    r.txsync()
                if rx:
                    for r in rx_rings:
                        r.rxsync()
                if (rx and any(r.cur != r.tail for r in rx_rings)) or (
                    tx and any(r.cur != r.tail for r in tx_rings)
                ):
                    return True
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                self._check_device()
                if self._busy_poll:
                    if rx:
                        for s in self._sockets:
                            s.wake_rx()  # recvfrom: the kernel busy-polls the queue here
                    continue
                if tx and any(r.tx_pending() for r in tx_rings):
                    # completions need reaping, which no socket event announces: back off
                    # from a bare re-check up to the health interval, not a fixed tick
                    backoff = min(max(backoff * 2, PENDING_BACKOFF_S), HEALTH_SLICE_MS / 1000)
                    wait_until = now + backoff
                    if deadline is not None:
                        wait_until = min(wait_until, deadline)
                    self._wait(rx, tx, wait_until)
                else:
                    self._wait(rx, tx, deadline)

    @contextmanager
    def _sticky_failure(self) -> Iterator[None]:
        """A sync that hit a vanished interface (its sockets unbound by the kernel) marks
        the port failed for good, so every later call says so; a link that is only down
        (socket still bound) stays a transient error."""
        try:
            yield
        except InterfaceChangedError:
            self._check_sockets()
            raise

    def _check_device(self) -> None:
        """Raise InterfaceChangedError when the interface's channels changed since open,
        it went away, or the steering program was detached (at most every 100 ms; one
        ioctl on a socket kept from open time, so it reads the port's netns)."""
        if self._watch is not None:
            self._watch.check(self._steering)

    def _wait(self, rx: bool, tx: bool, deadline: float | None) -> None:
        """Sleep on the sockets until an event or ``deadline``. An AF_XDP socket whose
        device is unregistered reports no poll event at all (it is simply unbound, with
        sk_err = ENETDOWN), so a wait longer than the health interval wakes at it to look
        at SO_ERROR and the device; a shorter wait is not cut."""
        if self._poller is None:
            self._poller = select.poll()
            for s in self._sockets:
                self._poller.register(s.fileno(), select.POLLIN | select.POLLOUT)
            self._poll_mask = -1
        want = (select.POLLIN if rx else 0) | (select.POLLOUT if tx else 0) | select.POLLERR
        if want != self._poll_mask:
            for s in self._sockets:
                self._poller.modify(s.fileno(), want)
            self._poll_mask = want
        if deadline is None:
            ms = HEALTH_SLICE_MS
        else:
            # ceil: poll() counts whole milliseconds, and waking early only spins
            ms = min(HEALTH_SLICE_MS, max(0, math.ceil((deadline - time.monotonic()) * 1000)))
        events = self._poller.poll(ms)
        for fd, ev in events:
            if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                bad = next((x for x in self._sockets if x.fileno() == fd), None)
                where = f"queue {bad.queue}" if bad else f"fd {fd}"
                raise InterfaceChangedError(
                    f"{self.name}: {self.ifname} {where}: the socket "
                    f"reports an error (interface down or gone)"
                )
        if not events and ms == HEALTH_SLICE_MS:
            self._check_sockets()

    def _check_sockets(self) -> None:
        """Raise InterfaceChangedError if the kernel unbound a socket (device gone)."""
        for s in self._sockets:
            err = s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if s.sock else 0
            if err:
                self._failed = (
                    f"{self.name}: {self.ifname} queue {s.queue}: "
                    f"{os.strerror(err)} (the interface went away); close the port"
                )
                raise InterfaceChangedError(self._failed)

    def stats(self) -> dict[str, Any]:
        """Per-ring library counters and the kernel's AF_XDP statistics (also readable
        after the interface went away, so the final counters can be reported)."""
        if self._closed:
            raise PortClosedError(f"{self.name}: port is closed")
        out: dict[str, Any] = {
            "port": self.name,
            "zerocopy": self.zerocopy,
            "xdp_mode": self.xdp_mode,
            "frags": self.frags,
            "rings": [],
        }
        for r in self.rx_rings + self.tx_rings:
            d: dict[str, Any] = {
                "ring": r.ring_id,
                "kind": "tx" if r.is_tx else "rx",
                "queue": r.queue,
                "head": r.head,
                "cur": r.cur,
                "tail": r.tail,
                **r.stats,
            }
            d["kernel"] = r._xsk.statistics()
            # buffers with the kernel (TX: submitted, not yet reaped; RX: on FILL/RX), and
            # of those what the kernel already handed back that no sync has taken yet
            # (TX: completions not reaped; RX: frames waiting on the socket's RX ring)
            d["with_kernel"] = r._inflight if r.is_tx else r._kernel_rx
            d["waiting"] = r.waiting()
            out["rings"].append(d)
        if self._host is not None:  # TC program and NS_FORWARD counters of the host rings
            out["host"] = self._host.counters()
        return out

    def check_invariant(self) -> dict[str, int]:
        """Raise InvariantError unless every buffer of the memory is in exactly one place."""
        return self._mem().check_invariant()

    def owner_of(self, queue: int) -> int:
        """pid recorded as owner of ``queue`` in the steering program (0: the kernel)."""
        return self._steering.owner_of(queue) if self._steering else 0

    def close(self) -> None:
        """Give every queue back to the kernel and release all resources (idempotent)."""
        if self._closed:
            return
        self._closed = True
        hostrings.port_closing(self)  # host side first: the stack's frames stop coming
        if self._steering is not None:
            for q in self._claimed:
                with suppress(OSError, VtnetError):
                    self._steering.unclaim(q)
        self._claimed.clear()
        for s in self._sockets:
            s.close()
        mem = self.memory
        if mem is not None:
            rings = self.rx_rings + self.tx_rings
            for r in rings:  # this port's buffers, wherever they are now, become free
                held, _, _ = r.held_unchecked()
                mem.pool.owner[held] = FREE
                mem.pool.owner[mem.pool.owner == (ktx(r._kid) if r.is_tx else krx(r._kid))] = FREE
            mem.remove_rings(rings)
            mem.remove_sockets(self._sockets)
            if self._allocated is not None:  # the slots, for the next port on this memory
                mem.release(*self._allocated)
                self._allocated = None
            for r in rings:  # a Ring the application keeps must not keep the UMEM mapped
                r.detach()
            mem.users -= 1
            if self._own_memory:
                mem.close()
        self._sockets.clear()
        if self._steering is not None:
            self._steering.release()
            self._steering = None
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        self._poller = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._bufs = None

    def __enter__(self) -> Port:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with suppress(Exception):
            if not self._closed:
                self.close()

    def __repr__(self) -> str:
        return (
            f"<Port {self.name} rx_rings={len(self.rx_rings)} tx_rings={len(self.tx_rings)}"
            f"{' closed' if self._closed else ''}>"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise PortClosedError(f"{self.name}: port is closed")
        if self._failed:
            raise InterfaceChangedError(self._failed)

    def _mem(self) -> Memory:
        if self.memory is None or self._closed:
            raise PortClosedError(f"{self.name}: port is closed")
        return self.memory


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


def open_port(
    name: str,
    *,
    netns: str | None = None,
    zerocopy: str = "auto",
    mode: str | None = None,
    frags: bool | None = None,
    memory: Memory | None = None,
    force: bool = False,
    vnet_hdr: int = 0,
    busy_poll: bool = False,
) -> Port:
    """Open a netmap port by name (netmap's grammar, see vtnet_py.netmap.portname).

    ``netns`` opens an interface of that network namespace. ``zerocopy`` is "auto" (zero
    copy where the driver offers it), "on" (refuse otherwise) or "off". ``mode`` forces
    native or generic XDP. ``frags`` asks for multi-buffer frames (NS_MOREFRAG); None
    turns it on when the MTU does not fit one buffer. ``memory`` shares another port's
    buffers (zero-copy forwarding by buf_idx swap). ``force`` allows the interface that
    carries the default route. ``vnet_hdr`` (10 or 12) gives every slot a virtio-net
    header, as netmap's NETMAP_REQ_PORT_HDR_SET: zeroed on RX, stripped on TX, where a
    header asking for checksum or segmentation offload is refused per slot (counted in
    the ring's ``hdr_refused``). ``busy_poll`` trades a CPU for latency: poll() spins
    on the rings instead of sleeping, and the sockets ask the kernel to busy-poll the
    queue (SO_PREFER_BUSY_POLL, SO_BUSY_POLL, SO_BUSY_POLL_BUDGET; one log line where it
    refuses). On failure nothing is left behind.
    """
    if vnet_hdr not in VNET_HDR_LENS:
        raise ValueError(f"{name}: vnet_hdr must be one of {VNET_HDR_LENS}, not {vnet_hdr!r}")
    if zerocopy not in ("auto", "on", "off"):
        raise ValueError(f"{name}: zerocopy must be auto, on or off, not {zerocopy!r}")
    if mode not in (None, "native", "generic"):
        raise ValueError(f"{name}: mode must be native or generic, not {mode!r}")
    spec = parse_port_name(name)
    port = Port(spec)
    try:
        with enter_netns(netns):
            _build(port, spec, zerocopy, mode, frags, memory, force, vnet_hdr)
        if busy_poll:
            _set_busy_poll(port)
    except BaseException:
        port.close()
        raise
    return port


def _build(
    port: Port,
    spec: PortSpec,
    zerocopy: str,
    mode: str | None,
    frags: bool | None,
    memory: Memory | None,
    force: bool,
    vnet_hdr: int,
) -> None:
    name = spec.name
    info = read_device(spec.ifname)
    refuse_default_route(info, force)
    port.ifindex = info.ifindex
    zerocopy = attached_zerocopy(spec.ifname, zerocopy)  # `vtnetmap attach --zerocopy`
    zerocopy = hostrings.check_request(spec, zerocopy)  # IF*: copy mode, like its host rings
    host = spec.mode in (RegMode.SW, RegMode.ONE_SW, RegMode.NIC_SW)
    nic_rx = spec.rx and spec.mode not in (RegMode.SW, RegMode.ONE_SW)
    nr_buf_size = memory.nr_buf_size if memory is not None else NR_BUF_SIZE
    frame_max = info.mtu + ETH_OVERHEAD
    if frags is None:
        frags = frame_max > nr_buf_size
    elif not frags and frame_max > nr_buf_size and nic_rx:
        raise UnsupportedError(
            f"{name}: {spec.ifname} MTU {info.mtu} does not fit one "
            f"{nr_buf_size}-byte buffer; open with frags=True"
        )
    if frags and vnet_hdr:
        raise UnsupportedError(
            f"{name}: a virtio-net header with multi-buffer frames is not "
            f"supported (lower the MTU of {spec.ifname} or drop the header)"
        )
    tx_before = _real_queues(info)[1]
    if nic_rx:
        if not info.xdp_prog_id:
            # we attach: refuse what the driver would refuse, in its words, before trying
            # (a failed native attach must not fall back to generic XDP on virtio_net,
            # whose generic path changes offloads on the way)
            mode, why = support_mode(info, mode)
            if why:
                log.warning("vtnetmap: %s", why)
            for warning in check_xdp_preconditions(info, frags=frags, mode=mode):
                log.warning("vtnetmap: %s", warning)
        port._steering = Steering.acquire(spec.ifname, info.ifindex, mode=mode, frags=frags)
        port.xdp_mode = port._steering.mode
        # attaching XDP can change the queues: virtio_net adds a queue pair per CPU for XDP
        # transmit, which also receive; the stack's TX queues stay as they were
        info = read_device(spec.ifname)
    port._watch = DeviceWatch(name, spec.ifname, info.channels)  # made in the port's netns
    nrx, ntx = _real_queues(info)
    ntx = min(ntx, tx_before)
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
    rx_slots = spec.effective_rx_slots or DEFAULT_RX_SLOTS
    tx_slots = spec.effective_tx_slots or DEFAULT_TX_SLOTS
    plan = list(_queues(spec, nrx, ntx))
    if not host and not any(r or t for _, r, t in plan):
        raise DeviceError(f"{name}: no ring to bind on {spec.ifname}")
    need = sum((rx_slots if r else 0) + (tx_slots if t else 0) for _, r, t in plan)
    if host:  # one host ring pair, after the NIC rings in memory as in the ring lists
        need += (rx_slots if spec.rx else 0) + (tx_slots if spec.tx else 0)

    mem = memory
    if mem is None:
        mem = Memory(need)
        port._own_memory = True
    port.memory = mem
    mem.users += 1
    port.frags = frags
    port.vnet_hdr = vnet_hdr
    first_free = mem.allocate(need, name)
    port._allocated = (first_free, need)
    port._epoll = select.epoll()
    next_buf = first_free
    for q, want_rx, want_tx in plan:
        if not (want_rx or want_tx):
            continue
        sizes = ring_sizes(rx_slots if want_rx else 0, tx_slots if want_tx else 0)
        sock = _bind_retrying(port, spec.ifname, info.ifindex, q, mem, sizes, zerocopy, frags, name)
        port._sockets.append(sock)
        port.zerocopy = sock.zerocopy
        kid = mem.add_socket(sock)
        rings = []
        if want_rx:
            r = Ring(
                port_name=name,
                ring_id=len(port.rx_rings),
                queue=q,
                is_tx=False,
                host=False,
                num_slots=rx_slots,
                pool=mem.pool,
                xsk=sock,
                kid=kid,
                first_buf=next_buf,
                frags=frags,
                max_frags=MAX_FRAGS,
                chunks=mem.umem.chunks,
                vnet_hdr=vnet_hdr,
            )
            next_buf += rx_slots
            port.rx_rings.append(r)
            rings.append(r)
        if want_tx:
            t = Ring(
                port_name=name,
                ring_id=len(port.tx_rings),
                queue=q,
                is_tx=True,
                host=False,
                num_slots=tx_slots,
                pool=mem.pool,
                xsk=sock,
                kid=kid,
                first_buf=next_buf,
                frags=frags,
                max_frags=MAX_FRAGS,
                chunks=mem.umem.chunks,
                vnet_hdr=vnet_hdr,
            )
            next_buf += tx_slots
            port.tx_rings.append(t)
            rings.append(t)
        mem.add_rings(rings)
        if want_rx:
            assert port._steering is not None
            port._steering.claim(q, sock.fileno())
            port._claimed.append(q)
            port._epoll.register(sock.fileno(), select.EPOLLIN)
    hostrings.port_built(
        port,
        info,
        mem,
        rx_slots=rx_slots,
        tx_slots=tx_slots,
        first_buf=next_buf,
        frags=frags,
        max_frags=MAX_FRAGS,
    )
    if not port.rx_rings:
        for s in port._sockets:
            port._epoll.register(s.fileno(), select.EPOLLOUT)


# include/uapi/asm-generic/socket.h
SO_BUSY_POLL = 46
SO_PREFER_BUSY_POLL = 69
SO_BUSY_POLL_BUDGET = 70
BUSY_POLL_US = 20  # how long a recvfrom/sendto may busy-poll the queue
BUSY_POLL_BUDGET = 64  # packets per busy-poll round (NAPI's usual weight)


def _set_busy_poll(port: Port) -> None:
    """Ask the kernel to busy-poll each socket's queue, and make poll() spin."""
    port._busy_poll = True
    for s in port._sockets:
        if s.sock is None:
            continue
        for opt, val, what in (
            (SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL"),
            (SO_BUSY_POLL, BUSY_POLL_US, "SO_BUSY_POLL"),
            (SO_BUSY_POLL_BUDGET, BUSY_POLL_BUDGET, "SO_BUSY_POLL_BUDGET"),
        ):
            try:
                s.sock.setsockopt(socket.SOL_SOCKET, opt, val)
            except OSError as exc:
                log.warning(
                    "vtnetmap: %s queue %d: %s refused (%s); poll() spins on the rings only",
                    port.name,
                    s.queue,
                    what,
                    exc.strerror,
                )
                return


def _real_queues(info: DeviceInfo) -> tuple[int, int]:
    """(RX, TX) queues the kernel really uses: sysfs's queues/rx-* and tx-* where sysfs
    shows this very device (same name, ifindex and MAC: sysfs belongs to the netns that
    mounted it), else the channel counts (exact for veth, which reports rx/tx channels).
    virtio_net with XDP reports its XDP queue pairs as combined channels, but only RX uses
    them; an AF_XDP socket transmitting on a queue past the real TX queues sends nothing."""
    base = os.path.join("/sys/class/net", info.ifname)
    try:
        with open(os.path.join(base, "ifindex")) as f:
            same = int(f.read()) == info.ifindex
        with open(os.path.join(base, "address")) as f:
            same = same and f.read().strip() == _mac(info.ifname)
        if same:
            names = os.listdir(os.path.join(base, "queues"))
            nrx = sum(n.startswith("rx-") for n in names)
            ntx = sum(n.startswith("tx-") for n in names)
            if nrx and ntx:
                return nrx, ntx
    except (OSError, ValueError):
        pass
    return info.rx_queues, info.tx_queues


def _mac(ifname: str) -> str:
    """The MAC address of ``ifname`` in the calling thread's netns (SIOCGIFHWADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", ifname.encode()))
    return ":".join(f"{b:02x}" for b in raw[18:24])


def nic_queue_bound(info: DeviceInfo) -> int:
    """The most NIC ring pairs a port on ``info`` can get once the steering program is
    attached (virtio_net then adds up to one queue pair per CPU): for sizing a Memory
    before any port is open."""
    n = max(_real_queues(info))
    if info.driver == "virtio_net" and not info.xdp_prog_id:
        limit = info.channels.max_combined or n
        n = max(n, min(limit, n + possible_cpus()))
    return n


BUSY_RETRY_S = 1.0  # the kernel frees a closed socket's queue in deferred work


def _bind_retrying(
    port: Port,
    ifname: str,
    ifindex: int,
    q: int,
    mem: Memory,
    sizes: Any,
    zerocopy: str,
    frags: bool,
    name: str,
) -> XskSocket:
    """Bind, and when the queue is busy but no live process owns it (a socket closed a
    moment ago, whose queue the kernel releases in deferred work), try again briefly."""
    deadline = time.monotonic() + BUSY_RETRY_S
    while True:
        try:
            return _bind(ifname, ifindex, q, mem, sizes, zerocopy, frags, name)
        except BusyError as exc:
            owner = port.owner_of(q)
            if owner and owner != os.getpid() and pid_alive(owner):
                raise BusyError(
                    f"{name}: {ifname} queue {q} is busy: owned by pid {owner}"
                ) from exc
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _bind(
    ifname: str,
    ifindex: int,
    q: int,
    mem: Memory,
    sizes: Any,
    zerocopy: str,
    frags: bool,
    name: str,
) -> XskSocket:
    """Bind queue ``q``: zero copy first when "auto", copy mode if the driver refuses."""
    if mem.share_socket() is not None:
        tries = [False]  # the mode is inherited from the socket that registered the UMEM
    else:
        tries = [True, False] if zerocopy == "auto" else [zerocopy == "on"]
    for i, zc in enumerate(tries):
        try:
            return XskSocket(
                ifname=ifname,
                ifindex=ifindex,
                queue=q,
                umem=mem.umem,
                share_with=mem.share_socket(),
                sizes=sizes,
                zerocopy=zc,
                frags=frags,
            )
        except UnsupportedError as exc:
            if zc and i + 1 < len(tries) and "zero-copy" in str(exc):
                continue
            raise UnsupportedError(f"{name}: {exc}") from exc
        except DeviceError as exc:
            raise type(exc)(f"{name}: {exc}") from exc
    raise AssertionError("unreachable")


__all__ = ["Port", "open_port"]
