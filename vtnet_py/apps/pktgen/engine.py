"""pkt-gen's functions over the netmap API: tx, rx, txseq, rxseq, ping, pong.

Layout follows pkt-gen: workers move packets and only update counters; the main
thread prints a report every ``-T`` ms and the final lines when the workers are
done.  One worker runs in a thread of this process; ``-p N`` (N > 1) runs N
worker processes, each opening one ring pair (``netmap:IF-i``), with counters in
shared memory, so they use separate cores (threads would share one GIL).

Data path rules (why this is fast enough): TX writes each frame into its UMEM
buffer once, when the port opens (a TX ring's buffers move between its slots
but never leave it), and afterwards only slot lengths, head and cur -- or, when
frames differ (ranges, sequence numbers, random sizes), a vectorised patch of
the bytes that change.  RX looks at slot lengths only (rxseq also reads four
bytes a frame, vectorised).  No per-packet Python loop anywhere.

On error a worker prints one line and its port is closed; the final lines are
still printed for what was counted.  SIGINT/SIGTERM stop the workers at the next
batch and print the final lines; a third SIGINT interrupts at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import multiprocessing as mp
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TextIO

import numpy as np

from vtnet_py._sys.abi import SIOCGIFHWADDR, SIOCGIFMTU
from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py.apps.pktgen.frames import (
    ETH_HLEN,
    OFF_ETHERTYPE,
    OFF_SEQ,
    SEQ_LEN,
    STAMP_LEN,
    FrameGen,
    FrameSpec,
    SeqTracker,
    field_view,
    read_seq,
    read_stamp,
)
from vtnet_py.apps.pktgen.report import Counters, Final, Output, Reporter
from vtnet_py.errors import VtnetError
from vtnet_py.netmap.portname import PortSpec, RegMode, parse_port_name

FUNCTIONS = ("tx", "rx", "ping", "pong", "txseq", "rxseq")
DEFAULT_BURST = {"tx": 512, "rx": 512, "ping": 1, "pong": 1, "txseq": 512, "rxseq": 512}
SENDERS = ("tx", "txseq")
RECEIVERS = ("rx", "rxseq")
MIN_SPACE_NONE = 99999  # pkt-gen's "not measured in this interval"
TX_SPINS = 20  # txsyncs tried before blocking in poll when the TX rings are full
RX_IDLE_S = 1.0  # -W: a receiver stops after this much silence (pkt-gen: 1 s)

# Shared counter fields, one int64 row per worker.
F_PKTS, F_BYTES, F_EVENTS, F_MIN_SPACE, F_TIC, F_TOC, F_DONE, F_ERR = range(8)
F_SEQ_RECEIVED, F_SEQ_LOST, F_SEQ_GAPS, F_SEQ_GAP_PKTS, F_SEQ_OOO = range(8, 13)
F_RUNNING = 13
NFIELDS = 14


class PktgenError(VtnetError):
    """A pkt-gen option combination that cannot apply here (one line, says why)."""


@dataclass
class Config:
    """Everything a pkt-gen run needs; built by the CLI from pkt-gen's options."""

    port: str
    function: str = "rx"
    count: int = 0
    spec: FrameSpec = field(default_factory=FrameSpec)
    burst: int = 0  # 0: the function's default
    threads: int = 1
    report_ms: int = 1000
    wait_link: float = 2.0
    forever: bool = True  # False with -W
    rate: int = 0
    averages: bool = False
    normalize: bool = True
    framing: int = 0
    as_json: bool = False
    netns: str | None = None
    seed: int | None = None
    src_mac_given: bool = False
    affinity: int = -1  # -a: first CPU; worker i runs on CPU (a + i) % cpus
    cpus: int = 0  # -c: CPUs to use (0: all)

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS:
            raise PktgenError(
                f"-f {self.function}: unknown function (one of {', '.join(FUNCTIONS)})"
            )
        if self.burst == 0:
            self.burst = DEFAULT_BURST[self.function]
        if self.burst < 1:
            raise PktgenError(f"-b {self.burst}: the burst must be at least 1")
        if self.threads < 1:
            raise PktgenError(f"-p {self.threads}: at least one thread")
        if self.threads > 1 and self.function in ("ping", "pong", "txseq"):
            raise PktgenError(f"-p {self.threads}: -f {self.function} runs on one thread only")
        if self.count < 0:
            raise PktgenError(f"-n {self.count}: the count cannot be negative")
        if self.rate < 0:
            raise PktgenError(f"-R {self.rate}: the rate cannot be negative")
        ncpu = os.cpu_count() or 1
        if not 0 <= self.cpus <= ncpu:
            raise PktgenError(f"-c {self.cpus}: this machine has {ncpu} cpus")
        if self.report_ms < 1:
            raise PktgenError(f"-T {self.report_ms}: the report interval must be >= 1 ms")
        if self.rate and self.function in RECEIVERS + ("pong",):
            raise PktgenError(f"-R: -f {self.function} does not transmit at its own pace")
        want = {"tx": "plain", "txseq": "seq", "ping": "ping"}.get(self.function)
        if want is not None and self.spec.payload != want:
            self.spec = dataclasses.replace(self.spec, payload=want)  # type: ignore[arg-type]


# -- interface facts (read in the port's namespace) ------------------------------------


def interface_facts(ifname: str, ns: str | None) -> tuple[bytes, int]:
    """(MAC address, MTU) of ``ifname``, read with ioctls in namespace ``ns``."""
    with enter_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16s16x", ifname.encode())
        try:
            hw = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)
            mtu_raw = fcntl.ioctl(s.fileno(), SIOCGIFMTU, req)
        except OSError as exc:
            raise PktgenError(f"{ifname}: cannot read the interface: {exc.strerror}") from exc
    finally:
        s.close()
    mac = hw[18:24]
    (mtu,) = struct.unpack_from("i", mtu_raw, 16)
    return mac, mtu


def worker_port_names(cfg: Config) -> list[str]:
    """The port each worker opens: the name as given, or ring i of it with -p N."""
    spec = parse_port_name(cfg.port, default_prefix=True)
    if cfg.threads == 1:
        return [spec.name if spec.name.startswith("netmap:") else str(spec)]
    if spec.mode is not RegMode.ALL_NIC:
        raise PktgenError(
            f"-p {cfg.threads}: {cfg.port} names one ring already; "
            f"give the interface (netmap:IF) to spread over rings"
        )
    names = []
    for i in range(cfg.threads):
        one: PortSpec = dataclasses.replace(spec, name="", mode=RegMode.ONE_NIC, ring_id=i)
        names.append(str(one))
    return names


# -- pacing ----------------------------------------------------------------------------


class Pacer:
    """-R: ``burst`` packets every ``burst / rate`` seconds on an absolute schedule.

    Sleeps (never spins) until each deadline; oversleeping is caught up by the
    next deadlines, so the mean rate holds while a slow rate costs no CPU.
    As in pkt-gen the burst shrinks to rate/300 (at least 1) so that something
    is sent about every 3 ms.
    """

    def __init__(self, rate: int, burst: int):
        self.burst = max(1, min(burst, rate // 300))
        self.period = self.burst / rate
        self.next = time.monotonic()

    def wait(self, cancel: Callable[[], bool]) -> int:
        """Wait for the next slot; returns how many packets it allows."""
        self.next += self.period
        while not cancel():
            d = self.next - time.monotonic()
            if d <= 0:
                break
            time.sleep(min(d, 0.2))
        return self.burst


# -- workers ---------------------------------------------------------------------------


@dataclass
class Worker:
    """One pkt-gen thread: a port, a counters row, and a way to see cancellation."""

    cfg: Config
    index: int
    port_name: str
    row: np.ndarray  # int64[NFIELDS], shared with the reporter
    cancelled: Callable[[], bool]
    out: Output
    frames_in: int = 0  # share of -n for this worker (0: forever)
    ping_rtts: list[np.ndarray] = field(default_factory=list)

    def open(self) -> Any:
        """Open this worker's port (in the calling thread: bcc compiles the steering
        program on first use, which must happen in a main thread); None on failure,
        after one line on stderr."""
        from vtnet_py import open_port  # late: the CLI's --help must not need the core
        from vtnet_py.admin.status import describe_port_mode

        try:
            # -H: the port gives every slot a virtio-net header (zeroed on RX,
            # stripped on TX), as netmap's NETMAP_REQ_PORT_HDR_SET
            port = open_port(
                self.port_name, netns=self.cfg.netns, vnet_hdr=self.cfg.spec.vnet_hdr_len
            )
        except (VtnetError, OSError) as exc:
            self.out.diag(f"cannot open {self.port_name}: {exc}", func="worker")
            self.row[F_ERR] = 1
            self.row[F_DONE] = 1
            self.row[F_RUNNING] = 0
            return None
        # copy or zero copy, and why: what a user of a driver without zero copy asks first
        self.out.diag(describe_port_mode(port, self.cfg.netns), func="open_port")
        return port

    def run(self, port: Any = None) -> None:
        """Run the function on ``port`` (opened here when None); closes the port."""
        self.row[F_RUNNING] = 1
        if self.cfg.affinity >= 0:
            cpus = self.cfg.cpus or os.cpu_count() or 1
            # pid 0 is the calling thread: a worker thread pins only itself
            os.sched_setaffinity(0, {(self.cfg.affinity + self.index) % cpus})
        if port is None:
            port = self.open()
            if port is None:
                return
        try:
            body = {
                "tx": self._tx,
                "txseq": self._tx,
                "rx": self._rx,
                "rxseq": self._rx,
                "ping": self._ping,
                "pong": self._pong,
            }[self.cfg.function]
            body(port)
            self.row[F_DONE] = 1
        except (VtnetError, OSError) as exc:
            self.out.diag(f"{self.port_name}: {exc}", func="worker")
            self.row[F_ERR] = 1
        finally:
            if not self.row[F_TOC]:
                self.row[F_TOC] = time.monotonic_ns()
            with contextlib.suppress(Exception):
                port.close()
            self.row[F_RUNNING] = 0

    def _wait_link(self) -> None:
        end = time.monotonic() + self.cfg.wait_link
        while not self.cancelled() and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    # -- tx / txseq ------------------------------------------------------------

    def _tx(self, port: Any) -> None:
        cfg = self.cfg
        row = self.row
        rings = port.tx_rings
        if not rings:
            raise PktgenError(f"{self.port_name}: no TX ring (opened with /R?)")
        spec = cfg.spec
        if spec.max_slot_len > rings[0].nr_buf_size:
            raise PktgenError(
                f"-l {spec.length}: a frame of {spec.max_slot_len} bytes does not "
                f"fit a {rings[0].nr_buf_size}-byte buffer"
            )
        gen = FrameGen(spec, seed=None if cfg.seed is None else cfg.seed + self.index)
        bufs = port.bufs
        # Each TX ring owns num_slots buffers for good (completions bring them
        # back to its slots), so the template goes into all of them once.
        for r in rings:
            gen.init_rows(bufs, r.slot["buf_idx"])
            r.slot["len"][:] = spec.max_slot_len
        varies = spec.varies
        fixed_len = spec.max_slot_len
        n = self.frames_in
        pacer = Pacer(cfg.rate, cfg.burst) if cfg.rate else None
        burst = pacer.burst if pacer else cfg.burst
        sent = 0
        nbytes = 0
        events = 0
        tosend = 0
        min_space = MIN_SPACE_NONE
        self._wait_link()
        row[F_TIC] = time.monotonic_ns()
        if pacer:
            pacer.next = time.monotonic()
        while not self.cancelled() and (n == 0 or sent < n):
            if pacer and tosend <= 0:
                tosend = pacer.wait(self.cancelled)
            # Push what was queued and reap completions (txsync); only when no
            # ring has room, block in netmap's poll(POLLOUT).  In copy mode the
            # completions of a push arrive within microseconds, so a few txsyncs
            # first avoid sleeping a whole poll tick (pkt-gen's BUSYWAIT idea,
            # bounded).
            port.txsync()
            spins = 0
            while not any(r.space() for r in rings) and spins < TX_SPINS:
                port.txsync()
                spins += 1
            if spins == TX_SPINS and not port.poll(rx=False, tx=True, timeout=2.0):
                continue
            for r in rings:
                limit = tosend if pacer else burst
                if n:
                    limit = min(limit, n - sent)
                space = r.space()
                min_space = min(min_space, space)
                k = min(space, limit)
                if k <= 0:
                    continue
                idx = r.slots_from_head(k)
                if varies:
                    b = gen.next_batch(k)
                    gen.write(bufs, r.slot["buf_idx"][idx], b)
                    r.slot["len"][idx] = b.slot_len
                    nbytes += int(b.slot_len.sum(dtype=np.int64))
                else:
                    r.slot["len"][idx] = fixed_len
                    nbytes += k * fixed_len
                r.head = r.cur = r.next(r.head, k)
                sent += k
                events += 1
                row[F_PKTS] = sent
                row[F_BYTES] = nbytes
                row[F_EVENTS] = events
                if row[F_MIN_SPACE] < 0 or min_space < row[F_MIN_SPACE]:
                    row[F_MIN_SPACE] = min_space
                min_space = MIN_SPACE_NONE
                if pacer:
                    tosend -= k
                    if tosend <= 0:
                        break
                if n and sent >= n:
                    break
        # flush, then wait for the TX rings to drain (pkt-gen's nm_tx_pending loop)
        deadline = time.monotonic() + 2.0
        port.txsync()
        while any(r.tx_pending() for r in rings) and time.monotonic() < deadline:
            if self.cancelled() and time.monotonic() > deadline - 1.5:
                break
            port.txsync()
            time.sleep(0.0001)
        row[F_TOC] = time.monotonic_ns()

    # -- rx / rxseq ------------------------------------------------------------

    def _rx(self, port: Any) -> None:
        cfg = self.cfg
        row = self.row
        rings = port.rx_rings
        if not rings:
            raise PktgenError(f"{self.port_name}: no RX ring (opened with /T?)")
        seq_mode = cfg.function == "rxseq"
        trackers = [SeqTracker() for _ in rings]
        vh = cfg.spec.vnet_hdr_len
        bufs = port.bufs
        n = self.frames_in
        burst = cfg.burst
        pkts = nbytes = events = 0
        last_log = 0.0
        self._wait_link()
        # unbounded wait for the first packet, as pkt-gen
        while not self.cancelled() and not port.poll(rx=True, timeout=1.0):
            pass
        row[F_TIC] = time.monotonic_ns()
        last_rx = time.monotonic()
        while not self.cancelled() and (n == 0 or pkts < n):
            if not port.poll(rx=True, timeout=RX_IDLE_S):
                if not cfg.forever:
                    break
                continue
            cur_space = 0
            for i, r in enumerate(rings):
                # free room on the kernel side of the ring, as pkt-gen's min_space
                cur_space += (r.head - r.tail) % r.num_slots
                avail = r.space()
                if not avail:
                    continue
                m = min(avail, burst)
                if n:
                    m = min(m, n - pkts)
                idx = r.slots_from_head(m)
                lens = r.slot["len"][idx]
                nbytes += int(lens.sum(dtype=np.int64))
                more = (r.slot["flags"][idx] & 0x20) != 0  # NS_MOREFRAG
                complete = m - int(more.sum()) if more.any() else m
                if seq_mode:
                    last_log = self._check_seq(bufs, r, idx, lens, vh, trackers[i], last_log)
                r.head = r.cur = r.next(r.head, m)
                pkts += complete
                events += 1
            last_rx = time.monotonic()
            row[F_PKTS] = pkts
            row[F_BYTES] = nbytes
            row[F_EVENTS] = events
            if row[F_MIN_SPACE] < 0 or cur_space < row[F_MIN_SPACE]:
                row[F_MIN_SPACE] = cur_space
            if seq_mode:
                self._store_seq(trackers)
        port.rxsync()  # give the last batch back
        row[F_TOC] = int(last_rx * 1e9) if not cfg.forever else time.monotonic_ns()
        if seq_mode:
            self._store_seq(trackers)

    def _check_seq(
        self,
        bufs: np.ndarray,
        r: Any,
        idx: np.ndarray,
        lens: np.ndarray,
        vh: int,
        t: SeqTracker,
        last_log: float,
    ) -> float:
        rows = r.slot["buf_idx"][idx]
        # only IPv4 frames long enough to carry a sequence number count
        et = field_view(bufs, vh + OFF_ETHERTYPE, ">u2")[rows]
        ok = (et == 0x0800) & (lens >= vh + OFF_SEQ + SEQ_LEN)
        if not ok.all():
            rows = rows[ok]
        if rows.size == 0:
            return last_log
        seqs = read_seq(bufs, rows, vh)
        prev = t._last
        bad = t.update(seqs)
        now = time.monotonic()
        if bad.any() and now - last_log >= 0.5:  # pkt-gen rate-limits these to 2/s
            i = int(np.flatnonzero(bad)[0])
            exp = (int(seqs[i - 1]) + 1 if i else prev + 1) & 0xFFFFFFFF
            found = int(seqs[i])
            kind = "GAP" if ((found - exp) & 0xFFFFFFFF) < 0x7FFFFFFF else "OUT OF ORDER"
            self.out.diag(f"Sequence {kind}: exp {exp} found {found}", func="rxseq_body")
            return now
        return last_log

    def _store_seq(self, trackers: list[SeqTracker]) -> None:
        row = self.row
        row[F_SEQ_RECEIVED] = sum(t.received for t in trackers)
        row[F_SEQ_LOST] = sum(t.lost for t in trackers)
        row[F_SEQ_GAPS] = sum(t.gaps for t in trackers)
        row[F_SEQ_GAP_PKTS] = sum(t.gap_packets for t in trackers)
        row[F_SEQ_OOO] = sum(t.out_of_order for t in trackers)

    # -- ping / pong -----------------------------------------------------------

    def _ping(self, port: Any) -> None:
        cfg = self.cfg
        row = self.row
        if not port.tx_rings or not port.rx_rings:
            raise PktgenError(f"{self.port_name}: ping needs TX and RX rings")
        spec = cfg.spec
        txr = port.tx_rings[0]
        gen = FrameGen(spec, seed=cfg.seed)
        bufs = port.bufs
        gen.init_rows(bufs, txr.slot["buf_idx"])
        vh = spec.vnet_hdr_len
        n = self.frames_in
        pacer = Pacer(cfg.rate, cfg.burst) if cfg.rate else None
        sent = received = events = 0
        tosend = 0
        period_rtts: list[np.ndarray] = []
        last_print = time.monotonic()
        self._wait_link()
        row[F_TIC] = time.monotonic_ns()
        if pacer:
            pacer.next = time.monotonic()
        while not self.cancelled() and (n == 0 or sent < n):
            if pacer and tosend <= 0:
                tosend = pacer.wait(self.cancelled)
            limit = tosend if pacer else cfg.burst
            if n:
                limit = min(limit, n - sent)
            k = min(limit, txr.space())
            if k <= 0:
                self.out.diag("-- ouch, cannot send", func="ping_body")
                port.txsync()
            else:
                idx = txr.slots_from_head(k)
                stamp = np.full(k, time.monotonic_ns(), dtype=np.uint64)
                b = gen.next_batch(k, stamp=stamp)
                gen.write(bufs, txr.slot["buf_idx"][idx], b)
                txr.slot["len"][idx] = b.slot_len
                txr.head = txr.cur = txr.next(txr.head, k)
                sent += k
                events += 1
                if pacer:
                    tosend -= k
            row[F_PKTS] = sent
            row[F_BYTES] = sent * spec.max_slot_len
            row[F_EVENTS] = events
            # poll() pushes the TX ring, then waits for the replies
            if not port.poll(rx=True, timeout=3.0):
                self.out.diag("poll error on queue 0: timeout", func="ping_body")
                continue
            now = time.monotonic_ns()
            for r in port.rx_rings:
                avail = r.space()
                if not avail:
                    continue
                idx = r.slots_from_head(avail)
                rows = r.slot["buf_idx"][idx]
                lens = r.slot["len"][idx]
                et = field_view(bufs, vh + OFF_ETHERTYPE, ">u2")[rows]
                ok = (et == 0x0800) & (lens >= vh + ETH_HLEN + 28 + SEQ_LEN + STAMP_LEN)
                if ok.any():
                    st = read_stamp(bufs, rows[ok], vh).astype(np.int64)
                    rtt = now - st
                    rtt = rtt[(rtt >= 0) & (rtt < 60_000_000_000)]  # not ours otherwise
                    period_rtts.append(rtt)
                    received += int(rtt.size)
                r.head = r.cur = r.next(r.head, avail)
            t = time.monotonic()
            if t - last_print >= 1.0 and period_rtts:
                allr = np.concatenate(period_rtts)
                if allr.size:
                    self.out.diag(
                        f"count {allr.size} RTT: min {int(allr.min())} av {int(allr.mean())} ns",
                        func="ping_body",
                    )
                self.ping_rtts.extend(period_rtts)
                period_rtts = []
                last_print = t
        self.ping_rtts.extend(period_rtts)
        port.rxsync()
        row[F_TOC] = time.monotonic_ns()
        row[F_SEQ_RECEIVED] = received

    def _pong(self, port: Any) -> None:
        cfg = self.cfg
        row = self.row
        if not port.tx_rings or not port.rx_rings:
            raise PktgenError(f"{self.port_name}: pong needs TX and RX rings")
        txr = port.tx_rings[0]
        bufs = port.bufs
        vh = cfg.spec.vnet_hdr_len
        n = self.frames_in
        sent = nbytes = events = 0
        self._wait_link()
        row[F_TIC] = time.monotonic_ns()
        while not self.cancelled() and (n == 0 or sent < n):
            # poll() first pushes the replies queued in the previous round
            if not port.poll(rx=True, timeout=1.0):
                continue
            for r in port.rx_rings:
                avail = r.space()
                if not avail:
                    continue
                k = min(avail, txr.space())
                if n:
                    k = min(k, n - sent)
                if k > 0:
                    src = r.slot["buf_idx"][r.slots_from_head(k)]
                    tidx = txr.slots_from_head(k)
                    dst = txr.slot["buf_idx"][tidx]
                    lens = r.slot["len"][r.slots_from_head(k)]
                    top = int(lens.max())
                    bufs[dst, :top] = bufs[src, :top]
                    # swap the MAC addresses, and the IPv4 addresses of IPv4 frames
                    bufs[dst, vh : vh + 6] = bufs[src, vh + 6 : vh + 12]
                    bufs[dst, vh + 6 : vh + 12] = bufs[src, vh : vh + 6]
                    et = field_view(bufs, vh + OFF_ETHERTYPE, ">u2")[src]
                    v4 = (et == 0x0800) & (lens >= vh + 34)
                    if v4.any():
                        s4, d4 = src[v4], dst[v4]
                        bufs[d4, vh + 26 : vh + 30] = bufs[s4, vh + 30 : vh + 34]
                        bufs[d4, vh + 30 : vh + 34] = bufs[s4, vh + 26 : vh + 30]
                    txr.slot["len"][tidx] = lens
                    txr.head = txr.cur = txr.next(txr.head, k)
                    sent += k
                    nbytes += int(lens.sum(dtype=np.int64))
                    events += 1
                # frames that found no TX room are dropped, as pkt-gen does
                r.head = r.cur = r.next(r.head, avail)
            row[F_PKTS] = sent
            row[F_BYTES] = nbytes
            row[F_EVENTS] = events
        port.txsync()
        row[F_TOC] = time.monotonic_ns()


# -- the run ---------------------------------------------------------------------------


class Run:
    """Start the workers, report every -T ms, print the final lines."""

    # what each worker is: live.LiveRun swaps in its kernel-side generator
    worker_class: ClassVar[type[Worker]] = Worker

    def __init__(self, cfg: Config, out: TextIO | None = None, err: TextIO | None = None):
        self.cfg = cfg
        self.output = Output(
            out or sys.stdout, err or sys.stderr, as_json=cfg.as_json, normalize=cfg.normalize
        )
        self.names = worker_port_names(cfg)
        self.pspec = parse_port_name(self.names[0])
        self.queues = self._facts()
        nw = len(self.names)
        self._shared = mp.RawArray(ctypes.c_int64, nw * NFIELDS + 1)
        arr = np.frombuffer(memoryview(self._shared).cast("B"), dtype=np.int64)
        self.rows = arr[: nw * NFIELDS].reshape(nw, NFIELDS)
        self._cancel = arr[nw * NFIELDS :]  # one shared word: 1 = stop
        self.workers: list[Worker] = []
        self._signals = 0

    def _facts(self) -> int:
        """Fill in the source MAC, check the frame against the MTU; returns the queue
        count of the direction this function uses."""
        from vtnet_py.device.netlink import read_device

        cfg = self.cfg
        ifname = self.pspec.ifname
        mac, mtu = interface_facts(ifname, cfg.netns)
        if not cfg.src_mac_given:
            cfg.spec = dataclasses.replace(cfg.spec, src_mac=mac)
        if cfg.function in SENDERS + ("ping",) and cfg.spec.length - ETH_HLEN > mtu:
            raise PktgenError(
                f"-l {cfg.spec.length}: the IPv4 packet ({cfg.spec.length - ETH_HLEN}"
                f" bytes) exceeds the MTU of {ifname} ({mtu})"
            )
        with enter_netns(cfg.netns):
            info = read_device(ifname)
        q = info.tx_queues if cfg.function in SENDERS else info.rx_queues
        if cfg.threads > q:
            raise PktgenError(f"-p {cfg.threads}: {ifname} has only {q} queues")
        return q

    def cancelled(self) -> bool:
        return bool(self._cancel[0])

    def cancel(self) -> None:
        self._cancel[0] = 1

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        self.output.diag(f"received {signal.Signals(signum).name}", func="sigint_h")
        # workers see the stop word within one batch or poll timeout (<= 3 s); a
        # third ^C is for a worker stuck anyway
        if self._signals > 2 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.cancel()

    def _header(self) -> None:
        cfg = self.cfg
        kind = (
            "Sending on"
            if cfg.function in SENDERS
            else "Receiving from"
            if cfg.function in RECEIVERS
            else "Working on"
        )
        nq = self.queues if self.pspec.mode is RegMode.ALL_NIC or cfg.threads > 1 else 1
        cpus = cfg.cpus or (os.cpu_count() or 1)
        self.output.info(f"{kind} {cfg.port}: {nq} queues, {cfg.threads} threads and {cpus} cpus.")
        if cfg.function in SENDERS:
            from vtnet_py.apps.pktgen.frames import format_mac

            s = cfg.spec
            self.output.info(
                f"{s.src} -> {s.dst} ({format_mac(s.src_mac)} -> {format_mac(s.dst_mac)})"
            )

    def run(self) -> int:
        """Run to the end; returns the exit status (0, or 1 when a worker failed)."""
        cfg = self.cfg
        nw = len(self.names)
        per = cfg.count // nw if cfg.count else 0
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self._header()
        procs: list[Any] = []
        threads: list[threading.Thread] = []
        try:
            for i, name in enumerate(self.names):
                self.rows[i, F_MIN_SPACE] = -1
                w = self.worker_class(
                    cfg,
                    i,
                    name,
                    self.rows[i],
                    self.cancelled,
                    self.output,
                    frames_in=per + (cfg.count - per * nw if i == 0 and cfg.count else 0),
                )
                self.workers.append(w)
            if nw == 1:
                port = self.workers[0].open()
                if port is not None:
                    th = threading.Thread(
                        target=self.workers[0].run, args=(port,), name="pkt-gen-worker", daemon=True
                    )
                    self.rows[0, F_RUNNING] = 1
                    th.start()
                    threads.append(th)
            else:
                ctx = mp.get_context("fork")
                for i, w in enumerate(self.workers):
                    self.rows[i, F_RUNNING] = 1
                    p = ctx.Process(target=_child_main, args=(w,), name=f"pkt-gen-{i}")
                    p.start()
                    procs.append(p)
            self._report_loop(
                lambda: any(t.is_alive() for t in threads) or any(p.is_alive() for p in procs)
            )
        finally:
            self.cancel()
            for t in threads:
                t.join(timeout=5.0)
            for p in procs:
                p.join(timeout=5.0)
                if p.is_alive():
                    p.terminate()
                    p.join()
            for s, h in old.items():
                signal.signal(s, h)
        self._final()
        return 1 if self.rows[:, F_ERR].any() else 0

    def _snapshot(self) -> Counters:
        c = Counters()
        for row in self.rows:
            ms = int(row[F_MIN_SPACE])
            c = c + Counters(
                int(row[F_PKTS]),
                int(row[F_BYTES]),
                int(row[F_EVENTS]),
                ms if ms >= 0 else MIN_SPACE_NONE,
            )
            row[F_MIN_SPACE] = -1  # reset per interval, as pkt-gen's main thread does
        return c

    def _report_loop(self, alive: Callable[[], bool]) -> None:
        rep = Reporter(framing=self.cfg.framing, averages=self.cfg.averages)
        interval = self.cfg.report_ms / 1000.0
        next_t = time.monotonic() + interval
        while True:
            while time.monotonic() < next_t:
                if not alive():
                    break
                time.sleep(min(0.05, max(0.0, next_t - time.monotonic())))
            done = not alive()
            p = rep.sample(self._snapshot())
            # no line for a run that never started (its port did not open)
            if p is not None and (not done or self.rows[:, F_TIC].any()):
                self.output.periodic(p)
            if done:
                return
            next_t += interval

    def _final(self) -> None:
        cfg = self.cfg
        rows = self.rows
        pkts = int(rows[:, F_PKTS].sum())
        nbytes = int(rows[:, F_BYTES].sum())
        events = int(rows[:, F_EVENTS].sum())
        # pkt-gen takes the latest start and the latest end over the threads
        tics = rows[:, F_TIC][rows[:, F_TIC] > 0]
        tocs = rows[:, F_TOC][rows[:, F_TOC] > 0]
        secs = (int(tocs.max()) - int(tics.max())) / 1e9 if tics.size and tocs.size else 0.0
        secs = max(secs, 0.0)
        if cfg.function in SENDERS or cfg.function in RECEIVERS:
            msg = "Sent" if cfg.function in SENDERS else "Received"
            extra: dict[str, Any] = {}
            f = Final(msg, pkts, nbytes, events, secs, cfg.framing)
            if cfg.function == "rxseq":
                extra = {
                    "seq_received": int(rows[:, F_SEQ_RECEIVED].sum()),
                    "lost": int(rows[:, F_SEQ_LOST].sum()),
                    "gaps": int(rows[:, F_SEQ_GAPS].sum()),
                    "gap_packets": int(rows[:, F_SEQ_GAP_PKTS].sum()),
                    "out_of_order": int(rows[:, F_SEQ_OOO].sum()),
                }
            self.output.final(f, extra)
            if cfg.function == "rxseq" and not cfg.as_json:
                self.output.record(
                    {},
                    [
                        f"Sequence: {extra['seq_received']} numbered packets, "
                        f"{extra['lost']} lost, "
                        f"{extra['gaps']} gaps ({extra['gap_packets']} packets), "
                        f"{extra['out_of_order']} out of order."
                    ],
                )
        elif cfg.function == "ping":
            self._ping_final(pkts)
        else:
            self.output.record(
                {
                    "type": "final",
                    "msg": "Replied",
                    "pkts": pkts,
                    "bytes": nbytes,
                    "events": events,
                    "seconds": secs,
                },
                [f"Replied to {pkts} packets in {secs:.2f} seconds."],
            )

    def _ping_final(self, sent: int) -> None:
        w = self.workers[0]
        rtts = np.concatenate(w.ping_rtts) if w.ping_rtts else np.zeros(0, np.int64)
        received = int(rtts.size)
        d: dict[str, Any] = {"type": "final", "msg": "RTT", "sent": sent, "received": received}
        lines = []
        if received:
            q = np.percentile(rtts, [50, 99])
            d.update(
                min=int(rtts.min()),
                avg=float(rtts.mean()),
                median=float(q[0]),
                p99=float(q[1]),
                max=int(rtts.max()),
            )
            lines.append(
                f"RTT over {received} packets: min {int(rtts.min())} av {int(rtts.mean())} ns"
            )
            lines.append(
                f"RTT percentiles: min {int(rtts.min())} median {int(q[0])} "
                f"p99 {int(q[1])} max {int(rtts.max())} ns "
                f"({sent} sent, {received} replies)"
            )
        else:
            lines.append(f"RTT: no reply to {sent} packets")
        self.output.record(d, lines)


def _child_main(w: Worker) -> None:
    """A -p worker process: SIGINT goes to the parent, which sets the shared stop word."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    w.run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if w.row[F_ERR] else 0)
