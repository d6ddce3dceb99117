"""netmap's bridge over vtnetmap ports: forward every frame between two ports.

Behaviour follows netmap's apps/bridge (read for semantics, not copied): each direction
moves frames from the RX rings of one port to the TX rings of the other, ring by ring,
in batches of ``min(burst, space(rx), space(tx))``; when both ports share a Memory the
frame is not copied but its buffer swapped into the TX slot (``NS_BUF_CHANGED`` on both
slots), otherwise (or with ``zerocopy=False``, bridge's ``-c``) the bytes are copied.
``NS_MOREFRAG`` is carried over. One batch is a handful of numpy operations on the slot
arrays; head and cur are written once per batch. The loop sleeps in poll() while both
ports are idle, and a poll that times out (2.5 s, as bridge's) prints bridge's line with
the state of both ports.

``-i netmap:IF`` alone bridges IF's NIC rings with its host rings (``IF^``), which is how
netmap's bridge puts a netmap application "in the middle" of a host's traffic.
"""

from __future__ import annotations

import dataclasses
import select
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py.device.netlink import read_device
from vtnet_py.errors import UnsupportedError
from vtnet_py.netmap.memory import Memory
from vtnet_py.netmap.move import rings_move
from vtnet_py.netmap.port import DEFAULT_RX_SLOTS, DEFAULT_TX_SLOTS, Port, nic_queue_bound
from vtnet_py.netmap.portname import RegMode, parse_port_name

POLL_TIMEOUT_MS = 2500  # bridge's poll timeout
TX_RECLAIM_MS = 1  # TX completions are reaped by syncing, not signalled: re-check soon
MAX_BURST = 8192
DEFAULT_BURST = 1024
DEFAULT_WAIT_LINK = 4
MAX_WAIT_LINK = 100


def dlog(func: str, msg: str, out: TextIO | None = None) -> None:
    """A line in the style of netmap's D() macro: seconds (mod 1000).microseconds, where."""
    now = time.time()
    sec = int(now) % 1000
    usec = int((now - int(now)) * 1_000_000)
    print(f"{sec:03d}.{usec:06d} {func} {msg}", file=out or sys.stderr, flush=True)


def buffers_needed(name: str, netns: str | None = None) -> int:
    """How many buffers ``open_port(name)`` takes from a Memory (ring slots of every ring it
    binds), read from the device's queue counts. Used to size a Memory shared by ports."""
    spec = parse_port_name(name)
    with enter_netns(netns):
        info = read_device(spec.ifname)
    rx_slots = spec.effective_rx_slots or DEFAULT_RX_SLOTS
    tx_slots = spec.effective_tx_slots or DEFAULT_TX_SLOTS
    per_pair = (rx_slots if spec.rx else 0) + (tx_slots if spec.tx else 0)
    pairs = nic_queue_bound(info)  # virtio_net grows its queues when XDP is attached
    nic = {RegMode.ALL_NIC: pairs, RegMode.ONE_NIC: 1, RegMode.NIC_SW: pairs}.get(spec.mode, 0)
    host = 1 if spec.mode in (RegMode.SW, RegMode.ONE_SW, RegMode.NIC_SW) else 0
    return (nic + host) * per_pair


def rx_avail(port: Port) -> int:
    return sum(r.space() for r in port.rx_rings)


def tx_avail(port: Port) -> int:
    return sum(r.space() for r in port.tx_rings)


@dataclass
class Direction:
    """One direction of the bridge and its counters."""

    src: Port
    dst: Port
    label: str
    packets: int = 0
    bytes: int = 0
    batches: int = 0
    last: tuple[int, int] = field(default=(0, 0))


class Bridge:
    """Forward between ports ``a`` and ``b`` (or loop ``a`` back onto itself if ``b`` is
    ``a``). The ports stay the caller's to close. ``wake_fd`` is an fd that becomes
    readable to interrupt a sleeping step (the caller drains it)."""

    def __init__(
        self,
        a: Port,
        b: Port,
        *,
        burst: int = DEFAULT_BURST,
        zerocopy: bool = True,
        verbose: int = 0,
        out: TextIO | None = None,
        wake_fd: int | None = None,
    ):
        self.a, self.b = a, b
        self.burst = burst
        self.zerocopy = zerocopy and a.memory is not None and a.memory is b.memory
        self.verbose = verbose
        self.out = out or sys.stderr
        self.a2b = Direction(a, b, f"{_side(a)} --> {_side(b)}")
        self.b2a = Direction(b, a, f"{_side(b)} --> {_side(a)}")
        self.polls = 0
        self.timeouts = 0
        self._ports = [a] if a is b else [a, b]
        # the sockets, not fileno(): step() syncs itself and only sleeps with nothing to
        # move, so it waits for frames in a kernel RX ring (completions are not signalled)
        self._poller = select.poll()
        for p in self._ports:
            for fd in p.socket_fds():
                self._poller.register(fd, select.POLLIN)
        if wake_fd is not None:  # signal.set_wakeup_fd: a signal ends the sleep at once
            self._poller.register(wake_fd, select.POLLIN)

    # --- moving ---------------------------------------------------------------------------
    def ports_move(self, d: Direction) -> int:
        """netmap's ports_move: fill the destination's TX rings in order from the source's
        RX rings in order, until either side runs out."""
        rxs, txs = d.src.rx_rings, d.dst.tx_rings
        si = di = 0
        moved = 0
        src_bufs, dst_bufs = d.src.bufs, d.dst.bufs
        while si < len(rxs) and di < len(txs):
            rx, tx = rxs[si], txs[di]
            if rx.empty():
                si += 1
                continue
            if tx.empty():
                di += 1
                continue
            n, nbytes = rings_move(rx, tx, self.burst, self.zerocopy, src_bufs, dst_bufs)
            moved += n
            d.bytes += nbytes
            d.batches += 1
            if self.verbose:
                dlog(
                    "rings_move",
                    f"{d.label} fwd {n} packets: rxring {rx.ring_id} --> txring {tx.ring_id}",
                    self.out,
                )
        d.packets += moved
        return moved

    def step(self, timeout_ms: int = POLL_TIMEOUT_MS) -> int:
        """One iteration of bridge's loop: move what can be moved, then sync both ports
        (what its poll() does), waiting first if nothing could move. Returns frames
        moved. Two syncs per port per iteration: the syncs after a move also bring what
        the next iteration moves."""
        a, b = self.a, self.b
        ports = self._ports
        moved = self.ports_move(self.a2b)
        if a is not b:
            moved += self.ports_move(self.b2a)
        if moved:
            # release the emptied RX slots first: in copy mode pushing a big TX batch
            # takes many sendto() calls, and meanwhile the kernel needs FILL buffers
            for p in ports:
                p.rxsync()
            for p in ports:
                p.txsync()
            return moved
        for p in ports:
            p.txsync()
        for p in ports:
            p.rxsync()
        na, nb = rx_avail(a), rx_avail(b)
        if (na and tx_avail(b)) or (nb and tx_avail(a)):
            return 0
        self.polls += 1
        # frames waiting for TX room: completions come back through syncs, so look
        # again soon; otherwise sleep until a port has frames
        wait = TX_RECLAIM_MS if (na or nb) else timeout_ms
        if not self._poller.poll(wait) and wait == timeout_ms:
            self.timeouts += 1
            self._timeout_line()
            for p in ports:
                p._check_device()
                p._check_sockets()
        for p in ports:
            p.txsync()
        for p in ports:
            p.rxsync()
        return 0

    def run(self, stop: Callable[[], bool], report_s: float = 0.0) -> None:
        """Loop until ``stop()``; with ``report_s`` print a rate line that often."""
        next_report = time.monotonic() + report_s if report_s else None
        while not stop():
            self.step()
            if next_report is not None and time.monotonic() >= next_report:
                self.report(report_s)
                next_report = time.monotonic() + report_s

    # --- output ---------------------------------------------------------------------------
    def _timeout_line(self) -> None:
        def state(p: Port) -> str:
            head = p.rx_rings[0].head if p.rx_rings else 0
            return f"rx {rx_avail(p)}@{head} tx {tx_avail(p)}"

        dlog(
            "main", f"poll timeout [0] ev 1 0 {state(self.a)}, [1] ev 1 0 {state(self.b)}", self.out
        )

    def report(self, interval: float, only_if_moved: bool = False) -> None:
        """A rate line for the last ``interval`` seconds (both directions)."""
        parts = []
        moved = 0
        for d in (self.a2b, self.b2a) if self.a is not self.b else (self.a2b,):
            pk, by = d.packets - d.last[0], d.bytes - d.last[1]
            d.last = (d.packets, d.bytes)
            moved += pk
            parts.append(f"{d.label}: {pk / interval:.0f} pps {by * 8 / interval / 1e6:.3f} Mbps")
        if moved or not only_if_moved:
            dlog("main", "; ".join(parts), self.out)

    def summary(self) -> list[str]:
        lines = []
        for d in (self.a2b, self.b2a) if self.a is not self.b else (self.a2b,):
            avg = d.packets / d.batches if d.batches else 0.0
            lines.append(
                f"{d.label}: {d.packets} packets {d.bytes} bytes in {d.batches} "
                f"batches (avg {avg:.1f})"
            )
        lines.append(
            f"polls {self.polls} timeouts {self.timeouts} zerocopy "
            f"{'yes' if self.zerocopy else 'no'}"
        )
        for p in self._ports:
            line = kernel_drops(p)
            if line:
                lines.append(line)
        return lines


def kernel_drops(p: Port) -> str:
    """What the kernel dropped on the way into the port's RX rings (their AF_XDP
    statistics), one line naming the port and each queue; "" when nothing was dropped.
    A TCP flow across the bridge sees each of these as a retransmission."""
    parts = []
    for r in p.stats()["rings"]:
        k = r["kernel"]
        if r["kind"] != "rx" or not k.get("rx_dropped"):
            continue
        where = "host ring" if r["host"] else f"queue {r['queue']}"
        parts.append(
            f"{where} {k['rx_dropped']} (fill ring empty {k.get('rx_fill_ring_empty_descs', 0)}, "
            f"rx ring full {k.get('rx_ring_full', 0)})"
        )
    return f"kernel drops on {p.name}: " + "; ".join(parts) if parts else ""


def _side(p: Port) -> str:
    host = any(r.is_host for r in p.rx_rings + p.tx_rings)
    nic = any(not r.is_host for r in p.rx_rings + p.tx_rings)
    kind = "nic+host" if host and nic else ("host" if host else "nic")
    return f"{p.ifname}:{kind}"


def open_pair(
    ifa: str,
    ifb: str | None,
    *,
    copy: bool = False,
    loopback: bool = False,
    netns: str | None = None,
    out: TextIO | None = None,
) -> tuple[Port, Port, Memory | None]:
    """Open the two ports as bridge does: one name (or two equal ones) bridges IF's NIC
    rings with its host rings, unless ``loopback``. Both share one Memory sized for both
    (zero copy) unless ``copy``. Returns (a, b, the shared Memory or None); on failure
    nothing stays open."""
    from vtnet_py.netmap.port import open_port

    out = out or sys.stderr
    if ifb is None:
        ifb = ifa
    same = ifa == ifb
    if same and not loopback:
        dlog("main", "same interface, endpoint 0 goes to host", out)
        spec = parse_port_name(ifa)
        if spec.mode is not RegMode.ALL_NIC:
            raise UnsupportedError(
                f"{ifa}: bridging an interface with its host rings needs "
                f"all its NIC rings (netmap:IF, no ring suffix)"
            )
        ifa = str(dataclasses.replace(spec, name="", mode=RegMode.SW))
    elif same:
        dlog("main", "same interface, loopbacking traffic", out)
    mem = None
    if not copy:
        need = buffers_needed(ifa, netns) + (0 if same and loopback else buffers_needed(ifb, netns))
        mem = Memory(need)
    a = b = None
    try:
        a = open_port(ifa, netns=netns, memory=mem)
        b = a if same and loopback else open_port(ifb, netns=netns, memory=mem)
    except BaseException:
        if a is not None:
            a.close()
        if mem is not None:
            mem.close()
        raise
    return a, b, mem


__all__ = ["Bridge", "buffers_needed", "open_pair", "rings_move"]
