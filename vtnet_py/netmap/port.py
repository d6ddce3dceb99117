# Over 500 lines: the Port and the open steps that register their undo on it stay together.
"""netmap ports over AF_XDP: ``open_port("netmap:eth0")`` and the Port object.

A port owns one AF_XDP socket per queue it binds, all on one Memory (UMEM), and exposes
them as netmap rings. Opening follows libnetmap's nmport_prepare/register/mmap:

1. a pure plan (:mod:`vtnet_py.netmap.plan`: ``plan_attach``, then ``plan_port``):
   which queues, ring sizes, frags, vnet header, buffers needed, zero-copy choice,
   computed from the parsed name, the DeviceInfo and the options, without a syscall;
2. named acquire steps, each recording its undo on the port as it succeeds: epoll (with
   the eventfd of ``fileno()``'s readiness), device, steering, watch (with its link-event
   sockets), memory, then per queue socket, holder name, rings and claim, then the NIC TX
   registration and host rings. A failure at any step (or
   ``close``, also on a half-built port) runs the undo steps done so far in reverse.
   ``reconfigure`` (after ``ethtool -L``) undoes every step after epoll and runs them
   again on the device as it is now, keeping the Memory when it can.

What survives a crash is only what the kernel keeps for a live fd, so kill -9 returns
every queue to the kernel. A port belongs to the process that opened it: in a forked
child, ``close`` and the finalizer only drop that process's references (netmap's rule:
the last close of a shared fd releases the rings), so the parent keeps receiving.
"""

from __future__ import annotations

import logging
import math
import os
import select
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np

from vtnet_py._sys import abi as K
from vtnet_py._sys.abi import VNET_HDR_LENS
from vtnet_py._sys.netns import fd_netns
from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py._sys.proc import netns_inode
from vtnet_py.device.checks import check_xdp_preconditions, possible_cpus
from vtnet_py.device.netlink import read_device, real_queues
from vtnet_py.device.record import attached_zerocopy
from vtnet_py.device.types import DeviceInfo
from vtnet_py.ebpf.egress import EgressGate
from vtnet_py.ebpf.steer import Steering
from vtnet_py.errors import (
    BusyError,
    InterfaceChangedError,
    PortClosedError,
    ResourceError,
    VtnetError,
)
from vtnet_py.netmap.acquire import (
    QUEUES,
    bind_retrying,
    hold_queue,
    limit_error,
    limit_hit,
    make_rings,
    release_rings,
)
from vtnet_py.netmap.buffer import Buffer, as_buffer
from vtnet_py.netmap.forward import StackForward
from vtnet_py.netmap.hostrings import ETH_VLAN_LEN, HostRings
from vtnet_py.netmap.hostrings import REGISTRY as HOST_REGISTRY
from vtnet_py.netmap.memory import Memory
from vtnet_py.netmap.nmutil import PktHdr, nm_dispatch, nm_inject, nm_nextpkt
from vtnet_py.netmap.plan import (
    DEFAULT_RX_SLOTS,
    DEFAULT_TX_SLOTS,
    NR_BUF_SIZE,
    AttachPlan,
    OpenOptions,
    PortPlan,
    QueuePlan,
    nic_queue_bound,
    plan_attach,
    plan_port,
)
from vtnet_py.netmap.portname import PortSpec, parse_port_name
from vtnet_py.netmap.ready import Readiness
from vtnet_py.netmap.ring import Ring
from vtnet_py.netmap.watch import DeviceWatch
from vtnet_py.netmap.xsk import XskSocket, ring_sizes

try:
    from vtnet_py.netmap._ringcore import poll as _c_poll
except ImportError:  # the extension is not built: PyRing rings, Python's poll loop
    _c_poll = None  # type: ignore[assignment]

log = logging.getLogger("vtnet_py")

_C_PENDING = -3  # _ringcore.poll: nothing ready, TX completions awaited
PENDING_BACKOFF_S = 0.0002  # first wait for TX completions in poll(tx=True); doubles
PENDING_BACKOFF_MAX_S = 0.1  # and its ceiling: no socket event announces a completion


# --- the port -----------------------------------------------------------------------------


def poll_round(
    tx_rings: Sequence[Ring], rx_rings: Sequence[Ring], push: bool, pull: bool, rx: bool, tx: bool
) -> int:
    """One round of netmap's poll(): txsync every TX ring (``push``), rxsync every RX
    ring (``pull``); returns POLLIN if an RX ring has frames between cur and tail
    (``rx``), POLLOUT if a TX ring has room there (``tx``). The reference model of the
    round _ringcore.poll runs in C (tests/unit/test_ringcore_diff.py holds it to this)."""
    if push:
        for r in tx_rings:
            r.txsync()
    if pull:
        for r in rx_rings:
            r.rxsync()
    revents = 0
    if rx:
        for r in rx_rings:
            if r.cur != r.tail:
                revents = select.POLLIN
                break
    if tx:
        for r in tx_rings:
            if r.cur != r.tail:
                revents |= select.POLLOUT
                break
    return revents


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
        self.plan: PortPlan | None = None
        self._bufs: np.ndarray | None = None
        self.memory: Memory | None = None
        self._own_memory = False
        self._sockets: list[XskSocket] = []
        self._steering: Steering | None = None
        self._epoll: select.epoll | None = None
        self._poller: Any = None
        self._c_args: tuple[Any, ...] | None = None  # _poll_compiled's rings and fds
        self._watched: list[tuple[int, int]] = []  # fileno()'s sockets (see watch_fd)
        self._fileno_live = False  # fileno() was asked for: they are in the epoll
        self._closed = False
        self._watch: DeviceWatch | None = None  # notices channel changes
        self._failed = ""
        self._host: HostRings | None = None
        self._egress: EgressGate | None = None  # IF's egress program (NIC TX rings open)
        self._stack_forward: StackForward | None = None  # NS_FORWARD without host rings
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._pid = os.getpid()  # the process that opened it: the only one that releases
        self._busy_poll = False  # poll() spins on the rings (open_port(busy_poll=True))
        self._allocated: tuple[int, int] | None = None  # (first, count) of mem.allocate
        self._poll_mask = -1
        # what reconfigure() needs to run the open steps again (set by open_port)
        self._reopen: _Reopen | None = None
        self._keep_memory = False  # reconfigure(): the memory step's undo keeps the Memory
        # nm_desc's ring cursors for inject / nextpkt / dispatch (netmap_user.h)
        self.cur_tx_ring = 0
        self.cur_rx_ring = 0
        self._ready: Readiness | None = None  # the eventfd of fileno(), in the epoll
        self._no_tx_poll = False  # NETMAP_NO_TX_POLL: poll() txsyncs only when asked for TX
        self._do_rx_poll = False  # NETMAP_DO_RX_POLL: poll() rxsyncs even when not asked
        self.poll_wakeups = 0  # returns from the kernel wait in poll() (for tests)

    # --- public ---------------------------------------------------------------------------
    @property
    def bufs(self) -> np.ndarray:
        """All buffers of the port's memory: row ``buf_idx`` is that buffer (zero copy).
        With a virtio-net header the row starts with the header."""
        mem = self._mem()
        if self._bufs is None:
            self._bufs = mem.umem.chunks[:, mem.umem.chunk_size - self.nr_buf_size :]
        return self._bufs

    def buf(self, buf_idx: int) -> Buffer:
        """Buffer ``buf_idx`` as a writable uint8 array of nr_buf_size bytes (no copy);
        its slices also take bytes-likes: ``port.buf(i)[:n] = b"..."``."""
        mem = self._mem()
        if not 0 <= buf_idx < mem.nbufs:
            raise IndexError(f"{self.name}: buf_idx {buf_idx} out of range 0..{mem.nbufs - 1}")
        return as_buffer(self.bufs[buf_idx])

    def write(self, buf_idx: int, data: object, offset: int = 0) -> int:
        """Copy a bytes-like into buffer ``buf_idx`` at ``offset``; returns its length
        (for the slot's ``len``). Too long for the buffer: ValueError naming the port."""
        src = memoryview(data).cast("B")  # type: ignore[arg-type]
        end = offset + src.nbytes
        if offset < 0 or end > self.nr_buf_size:
            raise ValueError(
                f"{self.name}: {src.nbytes} bytes at offset {offset} do not fit buffer "
                f"{buf_idx} ({self.nr_buf_size} bytes)"
            )
        self.buf(buf_idx)[offset:end] = src
        return src.nbytes

    def inject(self, data: object) -> int:
        """netmap's nm_inject (see :func:`vtnet_py.netmap.nmutil.nm_inject`)."""
        return nm_inject(self, data)

    def nextpkt(self) -> tuple[PktHdr, bytes] | None:
        """netmap's nm_nextpkt (see :func:`vtnet_py.netmap.nmutil.nm_nextpkt`)."""
        return nm_nextpkt(self)

    def dispatch(self, cnt: int, callback: Callable[[PktHdr, memoryview], object]) -> int:
        """netmap's nm_dispatch (see :func:`vtnet_py.netmap.nmutil.nm_dispatch`)."""
        return nm_dispatch(self, cnt, callback)

    @property
    def nr_buf_size(self) -> int:
        return self._mem().nr_buf_size + self.vnet_hdr

    def fileno(self) -> int:
        """An fd for select/poll/asyncio add_reader that is readable when netmap's poll()
        would report the port ready, without syncing: an RX ring has frames between cur
        and tail, or frames wait in a kernel RX ring (the next rxsync takes them). A port
        without RX rings is readable when a TX ring has room between cur and tail (or
        frames in flight, which a txsync reaps). Set ``cur = tail`` to be woken only by
        new frames. See vtnet_py.netmap.ready for how."""
        if self._epoll is None or self._ready is None or self._closed:
            raise PortClosedError(f"{self.name}: port is closed")
        if not self._ready.armed:
            if self.rx_rings:
                self._ready.arm(self.rx_rings, tx=False)
            else:
                self._ready.arm(self.tx_rings, tx=True)
        if not self._fileno_live:
            self._fileno_live = True
            for fd, events in self._watched:
                self._epoll.register(fd, events)
        return self._epoll.fileno()

    def socket_fds(self) -> list[int]:
        """The port's AF_XDP socket fds, host rings' included: each is readable while its
        kernel RX ring holds frames. For a loop that waits on several ports at once and
        syncs itself (as the bridge does); unlike ``fileno()`` they say nothing about
        frames already synced into the slots, and cost nothing to keep."""
        self._check_open()
        return [s.fileno() for s in self._sockets]

    def rxsync(self) -> int:
        """rxsync every RX ring; returns the number of new frames."""
        self._check_open()
        n = 0
        # a sync that hit a vanished interface (its sockets unbound by the kernel) marks the
        # port failed for good (_check_sockets); a link only down stays a transient error
        try:
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

    def poll(self, rx: bool = True, tx: bool = False, timeout: float | None = None) -> int:
        """netmap's poll() on the port: txsync every TX ring (only when ``tx`` if the port
        was opened with ``no_tx_poll``), rxsync every RX ring when ``rx`` (always with
        ``do_rx_poll``), and wait up to ``timeout`` seconds (None: forever) until an RX
        ring has frames between cur and tail (``rx``) or a TX ring has room between cur
        and tail (``tx``). Returns netmap's revents: ``select.POLLIN`` and/or
        ``select.POLLOUT`` for what is ready, 0 on timeout (so ``if port.poll():`` still
        reads as before). The wait is in the kernel, on the AF_XDP sockets and a netlink
        link-event socket: an interface that went away, lost its steering program or
        changed channels raises InterfaceChangedError (netmap's POLLERR) as soon as the
        kernel says so. Only TX completions, which no socket event announces, are waited
        for by a backoff from 0.2 ms to 100 ms. A port opened with ``busy_poll=True``
        spins on its rings instead of sleeping."""
        if self._closed or self._failed:
            self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        push = tx or not self._no_tx_poll
        pull = rx or self._do_rx_poll
        try:  # as in rxsync (inline, not a context manager: those cost a microsecond)
            if _c_poll is not None:
                revents = self._poll_compiled(rx, tx, deadline, push, pull)
                if revents is not None and revents != _C_PENDING:
                    return revents
                return self._poll(rx, tx, deadline, push, pull, revents == _C_PENDING)
            return self._poll(rx, tx, deadline, push, pull, False)
        except InterfaceChangedError:
            self._check_sockets()
            raise

    def _poll(
        self, rx: bool, tx: bool, deadline: float | None, push: bool, pull: bool, synced: bool
    ) -> int:
        """Port.poll's loop in Python: for rings the compiled loop does not take, and for
        the backoff while TX completions are awaited. ``synced``: the compiled loop just
        ran a round and found nothing ready, so the first round is skipped."""
        tx_rings, rx_rings = self.tx_rings, self.rx_rings
        backoff = 0.0
        while True:
            if not synced:
                revents = poll_round(tx_rings, rx_rings, push, pull, rx, tx)
                if revents:
                    return revents
            synced = False
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return 0
            # a change seen before (or one whose message we read in a sync's
            # absence) keeps failing: a rate-limited re-check, no wake-up
            self._check_device()
            if self._busy_poll:
                if rx:
                    for s in self._sockets:
                        s.wake_rx()  # recvfrom: the kernel busy-polls the queue here
                continue
            if tx and any(r.tx_pending() for r in tx_rings):
                # completions need reaping, which no socket event announces: back off
                backoff = min(max(backoff * 2, PENDING_BACKOFF_S), PENDING_BACKOFF_MAX_S)
                wait_until = now + backoff
                if deadline is not None:
                    wait_until = min(wait_until, deadline)
                self._wait(rx, wait_until)
            else:
                self._wait(rx, deadline)

    def _poll_compiled(
        self, rx: bool, tx: bool, deadline: float | None, push: bool, pull: bool
    ) -> int | None:
        """The loop of _poll in C (_ringcore.poll) when every ring allows it: the same
        syncs, readiness and kernel wait (or spin, with busy_poll), without a Python step
        per sync or wake-up. None: run the Python loop (a ring with a readiness eventfd or
        NR_FORWARD); _C_PENDING: a round found nothing ready and TX completions are awaited
        (the Python loop backs off, without another round first). A refused sync raises
        the ring's RingError, as its own. Lean on purpose: this is what runs right after a
        wake-up, on cold caches, once per round trip of a ping/pong."""
        args = self._c_args
        if args is None:  # made again whenever the rings or sockets change (add_*, reopen)
            watched = tuple(self._watch.fds()) if self._watch is not None else ()
            socks = tuple(s.fileno() for s in self._sockets)
            args = self._c_args = (tuple(self.tx_rings), tuple(self.rx_rings), socks, watched)
        rings_tx, rings_rx, socks, watched = args
        want = (select.POLLIN if rx else 0) | (select.POLLOUT if tx else 0)
        watch, busy = self._watch, self._busy_poll
        while True:
            # as _poll checks before it sleeps: a change seen before keeps failing, and
            # the rate-limited re-check runs (the C loop sleeps without asking Python)
            if watch is not None:
                watch.check(self._steering)
            ms = -1
            if deadline is not None:
                ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            revents, woke = _c_poll(rings_tx, rings_rx, push, pull, want, socks, ms, watched, busy)
            if woke:
                self.poll_wakeups += woke
            if revents > 0:
                return int(revents)
            if revents == -1:
                return None
            if revents == _C_PENDING:
                return _C_PENDING
            if revents == -2:  # a link message or a socket error: _wait's answer to it
                self._wait(rx, time.monotonic())
            elif deadline is not None and time.monotonic() >= deadline:
                return 0

    def _check_device(self, force: bool = False) -> None:
        """Raise InterfaceChangedError when the interface's channels changed since open,
        it went away, or the steering program was detached: at once with ``force`` (a
        link message about the interface came), else at most every 100 ms (one ioctl on
        a socket kept from open time, so it reads the port's netns)."""
        if self._watch is not None:
            self._watch.check(self._steering, force=force)

    def _wait_set(self, rx: bool) -> Any:
        """The fds poll() sleeps on: the sockets (POLLIN when ``rx``) and the link-event
        fds. A poll(2) set, not an epoll: a socket keeps a wait-queue entry only while
        poll() sleeps, so the rest of the time a TX completion (sock_wfree) wakes nobody;
        with an epoll registered, every completed frame costs a wake-up call."""
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            for fd in self._watch.fds() if self._watch is not None else ():
                poller.register(fd, select.POLLIN)
            self._poll_mask = -1
        want = select.POLLIN if rx else 0  # POLLERR and POLLHUP are always reported
        if want != self._poll_mask:
            for s in self._sockets:
                poller.register(s.fileno(), want)
            self._poll_mask = want
        return poller

    def _wait(self, rx: bool, deadline: float | None) -> None:
        """Sleep in the kernel until a socket event, a link message about the interface,
        or ``deadline``. An AF_XDP socket whose device is unregistered reports no poll
        event (it is only unbound, with sk_err = ENETDOWN): the RTM_DELLINK on the
        link-event socket is what wakes the wait then."""
        poller = self._wait_set(rx)
        wait = None if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1000))
        events = poller.poll(wait)
        self.poll_wakeups += 1
        watched = self._watch.fds() if self._watch is not None else []
        for fd, ev in events:
            if fd in watched:
                if self._watch is not None and self._watch.events():
                    self._check_device(force=True)
                    self._check_sockets()
            elif ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                bad = next((x for x in self._sockets if x.fileno() == fd), None)
                where = f"queue {bad.queue}" if bad else f"fd {fd}"
                raise InterfaceChangedError(
                    f"{self.name}: {self.ifname} {where}: the socket "
                    f"reports an error (interface down or gone)"
                )

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
                "host": r.is_host,
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
        fwd = self._stack_forward
        if fwd is not None and fwd.host is not None:  # NS_FORWARD without host rings
            out["host"] = {**fwd.host.stats().get("host", {}), **fwd.stats}
        if self._egress is not None:  # the stack's egress while NIC TX rings are open
            out["stack_egress"] = self._egress.counters(possible_cpus())
        return out

    def check_invariant(self) -> dict[str, int]:
        """Raise InvariantError unless every buffer of the memory is in exactly one place."""
        return self._mem().check_invariant()

    def owner_of(self, queue: int) -> int:
        """pid recorded as owner of ``queue`` in the steering program (0: the kernel)."""
        return self._steering.owner_of(queue) if self._steering else 0

    def reconfigure(self) -> None:
        """Close the rings and register them again on the queues the interface has now,
        as a netmap program re-registers after NETMAP_REQ_PORT_INFO_GET shows new ring
        counts (``ethtool -L`` since the open). Same port object, same ``fileno()``, and
        the same Memory when it still holds the new rings (a shared
        Memory always; a private one is replaced by a larger one when it must grow, and
        ``port.bufs`` then views the new one). Ring objects read before are stale: take
        ``port.rx_rings`` / ``port.tx_rings`` again; frames in the old rings are dropped.
        The steering reference is dropped and taken again, so a program this port alone
        holds is attached afresh and runs on every queue (veth installs it only on the
        queues it has at attach time).
        On failure the port is closed (nothing is left behind, as after a failed open)
        and the error says why."""
        self._check_open_for_reconfigure()
        _reconfigure(self)

    # --- what the open steps register -----------------------------------------------------
    def done(self, step: str, undo: Callable[[], None]) -> None:
        """Record that ``step`` succeeded and how to undo it (close runs these in reverse)."""
        self._undo.append((step, undo))

    def add_socket(self, sock: XskSocket) -> int:
        """Take ``sock`` as one of the port's sockets; returns its id in the memory."""
        self._sockets.append(sock)
        self._c_args = None
        self.zerocopy = sock.zerocopy
        return self._mem().add_socket(sock)

    def add_rings(self, rings: list[Ring]) -> None:
        """Take ``rings`` (made on one of the port's sockets) into the ring lists."""
        self._mem().add_rings(rings)
        self._c_args = None
        for r in rings:
            (self.tx_rings if r.is_tx else self.rx_rings).append(r)

    def watch_fd(self, fd: int, events: int) -> None:
        """Make ``fileno()`` readable on ``events`` of socket ``fd``. Registered in the
        epoll once ``fileno()`` is first asked for: a registered socket has a wait-queue
        entry for good, and then every TX completion on it costs a wake-up call."""
        assert self._epoll is not None
        self._watched.append((fd, events))
        if self._fileno_live:
            self._epoll.register(fd, events)

    # --- close ------------------------------------------------------------------------------
    def close(self) -> None:
        """Give every queue back to the kernel and release all resources (idempotent).

        In a process that did not open the port (a forked child) nothing is released:
        the port only drops this process's references, and the opener keeps its queues.
        """
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._pid:
            self._drop()
            return
        while self._undo:
            step, undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:  # the remaining steps must still run
                log.warning("vtnetmap: %s: undoing %s: %s", self.name, step, exc)
        self._drop()

    def _drop(self) -> None:
        self._undo.clear()
        self._sockets = []
        self._steering = None
        self._epoll = None
        self._poller = None
        self._c_args = None
        if self._ready is not None:  # a raw fd: this process's copy goes with the port
            self._ready.close()
        self._ready = None
        self._watch = None
        self._host = None
        self._egress = None
        self._stack_forward = None
        self._bufs = None
        self.memory = None

    def __enter__(self) -> Port:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A finalizer may run anywhere (in a GC pass inside a lock, at interpreter exit,
        # in a forked child): it closes the raw fds of the process that opened the port,
        # as kill -9 would, and nothing else: no netlink, no map update, no lock.
        if getattr(self, "_closed", True) or os.getpid() != self._pid:
            return
        self._closed = True
        with suppress(Exception):
            if self._host is not None:
                self._host.close_fds()
            if self._egress is not None:
                self._egress.release_later()
            for s in self._sockets:
                s.close()
            if self._epoll is not None:
                self._epoll.close()
            if self._ready is not None:
                self._ready.close()
            if self._watch is not None:
                self._watch.close()
            if self._steering is not None:
                self._steering.release_later()

    def __repr__(self) -> str:
        return (
            f"<Port {self.name} rx_rings={len(self.rx_rings)} tx_rings={len(self.tx_rings)}"
            f"{' closed' if self._closed else ''}>"
        )

    def _check_open_for_reconfigure(self) -> None:
        if self._closed:
            raise PortClosedError(f"{self.name}: port is closed")
        if os.getpid() != self._pid:
            raise VtnetError(
                f"{self.name}: reconfigure() in pid {os.getpid()}: only the process that "
                f"opened the port (pid {self._pid}) may rebuild its rings"
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


# --- open ---------------------------------------------------------------------------------


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
    no_tx_poll: bool = False,
    do_rx_poll: bool = False,
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
    the ring's ``hdr_refused``). On failure nothing is left behind: every step done is
    undone in reverse; a limit hit (file descriptors, memory) raises ResourceError
    naming the port and the limit. ``busy_poll`` trades a CPU for latency: poll() spins
    on the rings instead of sleeping, and the sockets ask the kernel to busy-poll the
    queue (SO_PREFER_BUSY_POLL, SO_BUSY_POLL, SO_BUSY_POLL_BUDGET; one log line where it
    refuses). ``no_tx_poll`` (netmap's NETMAP_NO_TX_POLL) makes poll() push the TX rings
    only when asked for TX; ``do_rx_poll`` (NETMAP_DO_RX_POLL) makes it rxsync also when
    not asked for RX.
    """
    if vnet_hdr not in VNET_HDR_LENS:
        raise ValueError(f"{name}: vnet_hdr must be one of {VNET_HDR_LENS}, not {vnet_hdr!r}")
    if zerocopy not in ("auto", "on", "off"):
        raise ValueError(f"{name}: zerocopy must be auto, on or off, not {zerocopy!r}")
    if mode not in (None, "native", "generic"):
        raise ValueError(f"{name}: mode must be native or generic, not {mode!r}")
    spec = parse_port_name(name)
    port = Port(spec)
    port._no_tx_poll = bool(no_tx_poll)
    port._do_rx_poll = bool(do_rx_poll)
    try:
        with _step(port, "namespace"), enter_netns(netns):
            _open(port, spec, zerocopy, mode, frags, memory, force, vnet_hdr, netns)
        if busy_poll:
            _set_busy_poll(port)
    except BaseException:
        port.close()
        raise
    return port


@dataclass(frozen=True)
class _Reopen:
    """What open_port was asked, kept for reconfigure()."""

    netns: str | None
    zerocopy: str
    mode: str | None
    frags: bool | None
    force: bool
    vnet_hdr: int
    mark: int  # len(port._undo) after the epoll step: reconfigure undoes every later step


def _reconfigure(port: Port) -> None:
    """Undo every step after the epoll fd (the steering reference too: a program attached
    again reaches every queue, which veth needs for queues added while it ran), then run
    them again on the device as it is now, keeping the Memory when it can."""
    ro = port._reopen
    assert ro is not None
    mem = port._mem()
    own = port._own_memory
    port._keep_memory = True
    try:
        while len(port._undo) > ro.mark:
            step, undo = port._undo.pop()
            try:
                undo()
            except Exception as exc:  # the remaining steps must still run
                log.warning("vtnetmap: %s: undoing %s: %s", port.name, step, exc)
    finally:
        port._keep_memory = False
    port.tx_rings, port.rx_rings, port._sockets, port._watched = [], [], [], []
    port._poller, port._poll_mask, port._bufs, port._c_args = None, -1, None, None
    port._watch, port._host, port._failed, port.plan = None, None, "", None
    port._steering, port.memory = None, None
    try:
        with _step(port, "namespace"), enter_netns(ro.netns):
            _register(port, port.spec, ro, mem, own=own)
        ready = port._ready
        if ready is not None and ready.armed:  # fileno() follows the new rings
            ready.disarm()
            if port.rx_rings:
                ready.arm(port.rx_rings, tx=False)
            else:
                ready.arm(port.tx_rings, tx=True)
        if port._busy_poll:
            _set_busy_poll(port)
    except BaseException:
        port.close()
        if own:
            with suppress(BusyError):
                mem.close()  # idempotent; kept for the rebuild, which did not take it
        raise


def _open(
    port: Port,
    spec: PortSpec,
    zerocopy: str,
    mode: str | None,
    frags: bool | None,
    memory: Memory | None,
    force: bool,
    vnet_hdr: int,
    netns: str | None = None,
) -> None:
    """The acquire steps, in the port's network namespace."""
    with _step(port, "epoll"):  # first: fileno() outlives reconfigure()
        port._epoll = select.epoll()
        port.done("epoll", port._epoll.close)
        port._ready = Readiness()
        port.done("readiness", port._ready.close)
        port._epoll.register(port._ready.fd, select.EPOLLIN)
    ro = _Reopen(netns, zerocopy, mode, frags, force, vnet_hdr, mark=len(port._undo))
    port._reopen = ro
    _register(port, spec, ro, memory, own=memory is None)


def _register(port: Port, spec: PortSpec, ro: _Reopen, memory: Memory | None, *, own: bool) -> None:
    """Every step after the epoll fd, for open_port and reconfigure(). ``own``: the port
    owns ``memory`` (reconfigure passes back the private Memory it kept); a private
    Memory too small for the new plan is replaced by a larger one."""
    with _step(port, "device"):
        info = read_device(spec.ifname)
        zc = attached_zerocopy(spec.ifname, ro.zerocopy)  # `vtnetmap attach --zerocopy`
    opts = OpenOptions(
        zerocopy=zc,
        mode=ro.mode,
        frags=ro.frags,
        force=ro.force,
        vnet_hdr=ro.vnet_hdr,
        nr_buf_size=memory.nr_buf_size if memory is not None else NR_BUF_SIZE,
    )
    attach = plan_attach(spec, info, opts)
    port.ifindex = info.ifindex
    tx_before = real_queues(info)[1]
    if attach.steer:
        with _step(port, "steering"):
            _acquire_steering(port, info, attach)
            # attaching XDP can change the queues: virtio_net adds a queue pair per CPU for
            # XDP transmit, which also receive; the stack's TX queues stay as they were
            info = read_device(spec.ifname)
    plan = plan_port(spec, info, opts, queues=real_queues(info), tx_limit=tx_before)
    if own and memory is not None and plan.buffers > memory.nbufs:
        memory.close()  # reconfigure(): the private Memory must grow
        memory = None
    port.plan = plan
    key = (netns_inode(), info.ifindex)
    port.done("queue registry", QUEUES.take(key, plan, port))
    with _step(port, "watch"):
        port._watch = DeviceWatch(plan.name, plan.ifname, info.channels)  # in the port's netns
        port._watch.ifindex = info.ifindex
        port.done("watch", port._watch.close)
    with _step(port, "memory"):
        _acquire_memory(port, plan, memory, own=own)
        nxt = port._mem().allocate(plan.buffers, plan.name)
        port._allocated = (nxt, plan.buffers)
    for q in plan.queues:
        with _step(port, f"queue {q.queue}"):
            nxt = _acquire_queue(port, plan, q, nxt)
    if plan.nic_tx:  # NIC TX rings in netmap mode: the stack's frames go to host RX rings
        HOST_REGISTRY.nic_tx_opened(key)
        port.done("NIC TX rings", lambda: HOST_REGISTRY.nic_tx_closed(key))
    if plan.host:
        with _step(port, "host rings"):
            _acquire_host_rings(port, plan, info, key, nxt)
    if plan.nic_tx:
        with _step(port, "stack egress"):
            _cut_stack_egress(port, info)
    if not plan.host and port.rx_rings and not port.vnet_hdr:
        _ns_forward_on_demand(port, info)


def _ns_forward_on_demand(port: Port, info: DeviceInfo) -> None:
    """NS_FORWARD on a port without host rings: the first rxsync that forwards starts a
    host TX ring (``IF^/T``, in IF's namespace) and copies the frames into it."""
    ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    port.done("namespace fd", lambda: os.close(ns_fd))
    host_name = f"netmap:{info.ifname}^/T"
    fwd = StackForward(
        port.name,
        lambda: open_port(host_name, netns=fd_netns(ns_fd)),
        lambda: port.bufs,
    )
    port._stack_forward = fwd

    def close() -> None:
        port._stack_forward = None
        fwd.close()

    port.done("NS_FORWARD host TX ring", close)
    for r in port.rx_rings:
        r.set_forward(fwd.hook)

    def unhook() -> None:
        for r in port.rx_rings:
            r.set_forward(None)

    port.done("NS_FORWARD hooks", unhook)


def _cut_stack_egress(port: Port, info: DeviceInfo) -> None:
    """netmap's rule for the stack's egress while this port's NIC TX rings are
    registered: to a host RX ring if one is held (any process), else dropped. One of the
    port's sockets goes into IF's egress program, and leaves it with the socket, however
    the process ends. A TX-only port has no socket an XSKMAP takes (it needs an RX ring):
    it counts only for host rings of its own process (HOST_REGISTRY)."""
    sock = next((s for s in port._sockets if s.rx is not None and s.tx is not None), None)
    if sock is None:
        return
    gate = EgressGate.acquire(info.ifname, info.ifindex, info.mtu + ETH_VLAN_LEN)
    port._egress = gate

    def release() -> None:
        port._egress = None
        gate.release()

    port.done("egress program", release)
    slot = gate.add_tx(sock.fileno())
    port.done("NIC TX registration", lambda: gate.drop_tx(slot))


BUSY_POLL_US = 20  # how long a recvfrom/sendto may busy-poll the queue
BUSY_POLL_BUDGET = 64  # packets per busy-poll round (NAPI's usual weight)


def _set_busy_poll(port: Port) -> None:
    """Ask the kernel to busy-poll each socket's queue, and make poll() spin."""
    port._busy_poll = True
    for s in port._sockets:
        if s.sock is None:
            continue
        for opt, val, what in (
            (K.SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL"),
            (K.SO_BUSY_POLL, BUSY_POLL_US, "SO_BUSY_POLL"),
            (K.SO_BUSY_POLL_BUDGET, BUSY_POLL_BUDGET, "SO_BUSY_POLL_BUDGET"),
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


@contextmanager
def _step(port: Port, step: str) -> Iterator[None]:
    """Run one acquire step; an exhausted limit becomes one ResourceError line naming
    the port, the step and the limit."""
    try:
        yield
    except ResourceError:
        raise
    except (OSError, VtnetError) as exc:
        hit = limit_hit(exc)
        if hit is None:
            raise
        raise limit_error(port.name, step, hit) from exc


def _acquire_steering(port: Port, info: DeviceInfo, attach: AttachPlan) -> None:
    if attach.warning:
        log.warning("vtnetmap: %s", attach.warning)
    if not info.xdp_prog_id:
        # we attach: refuse what the driver would refuse, in its words, before trying
        mode = attach.xdp_mode or "native"
        for warning in check_xdp_preconditions(info, frags=attach.frags, mode=mode):
            log.warning("vtnetmap: %s", warning)
    steering = Steering.acquire(info.ifname, info.ifindex, mode=attach.xdp_mode, frags=attach.frags)
    port._steering = steering
    port.xdp_mode = steering.mode
    port.done("steering", steering.release)


def _acquire_memory(port: Port, plan: PortPlan, memory: Memory | None, *, own: bool) -> None:
    mem = memory if memory is not None else Memory(plan.buffers)
    port._own_memory = own or memory is None
    port.memory = mem
    port.frags = plan.frags
    port.vnet_hdr = plan.vnet_hdr
    mem.users += 1

    def undo() -> None:
        release_rings(mem, port.rx_rings + port.tx_rings)
        mem.remove_sockets(port._sockets)
        if port._allocated is not None:  # the slots, for the next port on this memory
            mem.release(*port._allocated)
            port._allocated = None
        mem.users -= 1
        if port._own_memory and not port._keep_memory:
            mem.close()

    port.done("memory", undo)


def _add_rings(
    port: Port,
    plan: PortPlan,
    sock: XskSocket,
    kid: int,
    *,
    rx: bool,
    tx: bool,
    queue: int,
    host: bool,
    first_buf: int,
) -> tuple[Ring | None, Ring | None]:
    """Make the RX and/or TX ring on ``sock`` and register them with the port."""
    made = make_rings(
        port._mem(),
        plan,
        sock,
        kid,
        rx=rx,
        tx=tx,
        queue=queue,
        host=host,
        first_buf=first_buf,
        ring_ids=(len(port.rx_rings), len(port.tx_rings)),
    )
    port.add_rings(made)
    return (
        next((r for r in made if not r.is_tx), None),
        next((r for r in made if r.is_tx), None),
    )


def _acquire_queue(port: Port, plan: PortPlan, q: QueuePlan, first_buf: int) -> int:
    """Socket, rings and steering claim of one NIC queue; returns the next free buffer."""
    sizes = ring_sizes(plan.rx_slots if q.rx else 0, plan.tx_slots if q.tx else 0)
    sock = bind_retrying(port._mem(), plan, q.queue, sizes, port.owner_of)
    port.done(f"socket of queue {q.queue}", sock.close)
    holder = hold_queue(plan.ifindex, q.queue)  # names this pid to a process told EBUSY
    if holder is not None:
        port.done(f"holder of queue {q.queue}", holder.close)
    kid = port.add_socket(sock)
    _add_rings(
        port, plan, sock, kid, rx=q.rx, tx=q.tx, queue=q.queue, host=False, first_buf=first_buf
    )
    nxt = first_buf + (plan.rx_slots if q.rx else 0) + (plan.tx_slots if q.tx else 0)
    if q.rx:
        steering = port._steering
        assert steering is not None
        steering.claim(q.queue, sock.fileno())
        port.done(f"claim of queue {q.queue}", lambda: steering.unclaim(q.queue))
        port.watch_fd(sock.fileno(), select.EPOLLIN)
    return nxt


def _acquire_host_rings(
    port: Port, plan: PortPlan, info: DeviceInfo, key: tuple[int, int], first_buf: int
) -> None:
    """The host ring pair: HostRings makes the helper and binds its socket; the port
    makes the rings on it, registers them, and installs the NS_FORWARD hooks."""
    mem = port._mem()
    host = HostRings(port.spec, info, key)
    host.check(mem, plan.frags)
    port._host = host
    port.done("host rings", host.close)
    host.make_helper()
    sock = host.bind(mem, rx_slots=plan.rx_slots, tx_slots=plan.tx_slots, frags=plan.frags)
    kid = port.add_socket(sock)
    rx, tx = _add_rings(
        port,
        plan,
        sock,
        kid,
        rx=plan.host_rx,
        tx=plan.host_tx,
        queue=0,
        host=True,
        first_buf=first_buf,
    )
    host.use_rings(rx, tx)
    if rx is not None:
        port.watch_fd(sock.fileno(), select.EPOLLIN)
    hooks = host.forwarders(
        [r for r in port.rx_rings if not r.is_host], [r for r in port.tx_rings if not r.is_host]
    )
    for ring, hook in hooks:
        ring.set_forward(hook)

    def unhook() -> None:
        for ring, _ in hooks:
            ring.set_forward(None)

    port.done("NS_FORWARD hooks", unhook)
    host.start(plan.frags)


__all__ = [
    "DEFAULT_RX_SLOTS",
    "DEFAULT_TX_SLOTS",
    "NR_BUF_SIZE",
    "Port",
    "nic_queue_bound",
    "open_port",
]
