"""pkt-gen's workers: one port each, moving packets and updating a shared counters row.

Data path rules (why this is fast enough): TX writes each frame into its UMEM
buffer once, when the port opens (a TX ring's buffers move between its slots
but never leave it), and afterwards only slot lengths, head and cur -- or, when
frames differ (ranges, sequence numbers, random sizes), a vectorised patch of
the bytes that change.  RX looks at slot lengths only (rxseq also reads four
bytes a frame, vectorised).  No per-packet Python loop anywhere (but with -X,
which prints every slot as pkt-gen does).

A worker that fails prints one line, closes its port and marks its row failed:
the run then exits 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vtnet_py.apps.pktgen.config import (
    F_BYTES,
    F_DONE,
    F_ERR,
    F_EVENTS,
    F_FILL_EMPTY,
    F_MIN_SPACE,
    F_PKTS,
    F_RUNNING,
    F_RX_DROPPED,
    F_RX_RING_FULL,
    F_SEQ_GAP_PKTS,
    F_SEQ_GAPS,
    F_SEQ_LOST,
    F_SEQ_OOO,
    F_SEQ_RECEIVED,
    F_TIC,
    F_TOC,
    MIN_SPACE_NONE,
    RX_IDLE_S,
    TX_SPINS,
    Config,
    PktgenError,
)
from vtnet_py.apps.pktgen.frames import (
    OFF_ETHERTYPE,
    SEQ_LEN,
    STAMP_LEN,
    FrameGen,
    make_framegen,
)
from vtnet_py.apps.pktgen.frames6 import ETHERTYPE_IPV6
from vtnet_py.apps.pktgen.report import Output, hexdump
from vtnet_py.apps.pktgen.rxfields import SeqTracker, field_view, gather, payload_offsets
from vtnet_py.errors import VtnetError
from vtnet_py.netmap.ring import NS_MOREFRAG

STATS_S = 0.1  # how often a worker copies its sockets' drop counters

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
    _stats_t: float = 0.0

    def open(self) -> Any:
        """Open this worker's port (in the calling thread: bcc compiles the steering
        program on first use, which must happen in a main thread); None on failure,
        after one line on stderr."""
        from vtnet_py import open_port  # late: the CLI's --help must not need the core

        try:
            # -H: the port gives every slot a virtio-net header (zeroed on RX,
            # stripped on TX), as netmap's NETMAP_REQ_PORT_HDR_SET.  Frames cut into
            # several slots need a multi-buffer socket; otherwise the port decides
            # from the MTU.
            port = open_port(
                self.port_name,
                netns=self.cfg.netns,
                vnet_hdr=self.cfg.spec.vnet_hdr_len,
                frags=True if self.cfg.frag_plan.count > 1 else None,
            )
        except (VtnetError, OSError) as exc:
            self.out.diag(f"cannot open {self.port_name}: {exc}", func="worker")
            self.row[F_ERR] = 1
            self.row[F_DONE] = 1
            self.row[F_RUNNING] = 0
            return None
        if self.cfg.verbose:
            st = port.stats()
            self.out.diag(
                f"{self.port_name}: {len(port.rx_rings)} RX and {len(port.tx_rings)} TX rings, "
                f"{st['xdp_mode']} XDP, {'zero-copy' if st['zerocopy'] else 'copy'} mode, "
                f"multi-buffer {'on' if st['frags'] else 'off'}",
                func="worker",
            )
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
        except Exception as exc:  # a bug, or numpy refusing a value: one line, exit 1
            self.out.diag(f"{self.port_name}: {type(exc).__name__}: {exc}", func="worker")
            self.row[F_ERR] = 1
        finally:
            if not self.row[F_TOC]:
                self.row[F_TOC] = time.monotonic_ns()
            with contextlib.suppress(Exception):
                self._kernel_stats(port, final=True)
            with contextlib.suppress(Exception):
                port.close()
            self.row[F_RUNNING] = 0

    def _kernel_stats(self, port: Any, final: bool = False) -> None:
        """Copy the RX sockets' drop counters (XDP_STATISTICS) into the shared row; at
        most every STATS_S unless ``final``, since each is a getsockopt per ring."""
        now = time.monotonic()
        if not final and now - self._stats_t < STATS_S:
            return
        self._stats_t = now
        st = port.stats()
        rings = [r for r in st["rings"] if r["kind"] == "rx"]
        for f, key in (
            (F_RX_DROPPED, "rx_dropped"),
            (F_RX_RING_FULL, "rx_ring_full"),
            (F_FILL_EMPTY, "rx_fill_ring_empty_descs"),
        ):
            self.row[f] = sum(int(r["kernel"].get(key, 0)) for r in rings)
        if final and self.cfg.verbose:
            for r in st["rings"]:
                k = " ".join(f"{n} {v}" for n, v in r["kernel"].items())
                self.out.diag(f"{self.port_name} {r['kind']} ring {r['ring']}: {k}", func="worker")

    def _dump(self, port: Any, ring: Any, idx: np.ndarray) -> None:
        """-X: each slot of ``idx`` as pkt-gen's dump_payload() prints it."""
        for i in idx:
            slot = ring.slot[int(i)]
            n = int(slot["len"])
            data = bytes(port.buf(int(slot["buf_idx"]))[:n])
            self.out.text(
                hexdump(data, ring.ring_id, int(i), int(slot["buf_idx"]), int(slot["flags"]))
            )

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
        plan = cfg.frag_plan
        nf = plan.count
        if max(plan.size, plan.last) > rings[0].nr_buf_size:
            raise PktgenError(
                f"-l {spec.length}: a slot of {max(plan.size, plan.last)} bytes does not "
                f"fit a {rings[0].nr_buf_size}-byte buffer"
            )
        if cfg.verbose:
            self.out.diag(f"frags {nf} frag_size {plan.size}", func="sender_body")
        gen = make_framegen(spec, seed=None if cfg.seed is None else cfg.seed + self.index)
        bufs = port.bufs
        # Each TX ring owns num_slots buffers for good (completions bring them
        # back to its slots), so the template goes into all of them once.  A frame
        # cut into slots lands at a different place in the ring each time: it is
        # copied per batch instead.
        if nf == 1:
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
                k = min(space // nf, limit)
                if k <= 0:
                    continue
                idx = r.slots_from_head(k * nf)
                if nf > 1:
                    nbytes += self._fill_chains(r, idx, k, gen, bufs)
                elif varies:
                    b = gen.next_batch(k)
                    gen.write(bufs, r.slot["buf_idx"][idx], b)
                    r.slot["len"][idx] = b.slot_len
                    nbytes += int(b.slot_len.sum(dtype=np.int64))
                else:
                    r.slot["len"][idx] = fixed_len
                    nbytes += k * fixed_len
                if cfg.dump:
                    self._dump(port, r, idx)
                r.head = r.cur = r.next(r.head, k * nf)
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
            self._kernel_stats(port)
        # flush, then wait for the TX rings to drain (pkt-gen's nm_tx_pending loop)
        deadline = time.monotonic() + 2.0
        port.txsync()
        while any(r.tx_pending() for r in rings) and time.monotonic() < deadline:
            if self.cancelled() and time.monotonic() > deadline - 1.5:
                break
            port.txsync()
            time.sleep(0.0001)
        row[F_TOC] = time.monotonic_ns()

    def _fill_chains(self, r: Any, idx: np.ndarray, k: int, gen: FrameGen, bufs: np.ndarray) -> int:
        """Write ``k`` frames into the slots ``idx``, each cut as -F/-M say (NS_MOREFRAG
        on all its slots but the last); returns the bytes written."""
        plan = self.cfg.frag_plan
        width = gen.template.shape[0]
        if gen.spec.varies:
            frames = gen.frames(k)[0]
        else:
            frames = np.broadcast_to(gen.template, (k, width))
        rows = r.slot["buf_idx"][idx].reshape(k, plan.count)
        off = 0
        for j, ln in enumerate(plan.slot_lens()):
            bufs[rows[:, j], :ln] = frames[:, off : off + ln]
            off += ln
        r.slot["len"][idx] = np.tile(np.array(plan.slot_lens(), np.uint16), k)
        flags = np.full(plan.count, NS_MOREFRAG, np.uint16)
        flags[-1] = 0
        r.slot["flags"][idx] = np.tile(flags, k)
        return k * width

    # -- rx / rxseq ------------------------------------------------------------

    def _rx(self, port: Any) -> None:
        cfg = self.cfg
        row = self.row
        rings = port.rx_rings
        if not rings:
            raise PktgenError(f"{self.port_name}: no RX ring (opened with /T?)")
        seq_mode = cfg.function == "rxseq"
        trackers = [SeqTracker() for _ in rings]
        in_chain = [False] * len(rings)  # the ring's last slot seen carried NS_MOREFRAG
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
                more = (r.slot["flags"][idx] & NS_MOREFRAG) != 0
                complete = m - int(more.sum()) if more.any() else m
                if seq_mode:
                    # the number is in the first slot of each frame
                    first = ~np.concatenate(([in_chain[i]], more[:-1]))
                    sel = idx if first.all() else idx[first]
                    last_log = self._check_seq(bufs, r, sel, vh, trackers[i], last_log)
                in_chain[i] = bool(more[-1])
                if cfg.dump:
                    self._dump(port, r, idx)
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
            self._kernel_stats(port)
        port.rxsync()  # give the last batch back
        row[F_TOC] = int(last_rx * 1e9) if not cfg.forever else time.monotonic_ns()
        if seq_mode:
            self._store_seq(trackers)

    def _check_seq(
        self,
        bufs: np.ndarray,
        r: Any,
        idx: np.ndarray,
        vh: int,
        t: SeqTracker,
        last_log: float,
    ) -> float:
        rows = r.slot["buf_idx"][idx]
        # only IPv4 and IPv6 frames long enough to carry a sequence number count
        offs = payload_offsets(bufs, rows, r.slot["len"][idx], vh, SEQ_LEN)
        ok = offs >= 0
        if not ok.all():
            rows, offs = rows[ok], offs[ok]
        if rows.size == 0:
            return last_log
        seqs = gather(bufs, rows, offs, vh, ">u4").astype(np.uint32)
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
        gen = make_framegen(spec, seed=cfg.seed)
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
                offs = payload_offsets(bufs, rows, lens, vh, SEQ_LEN + STAMP_LEN)
                ok = offs >= 0
                if ok.any():
                    st = gather(bufs, rows[ok], offs[ok], vh, ">u8", SEQ_LEN).astype(np.int64)
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
                    v6 = (et == ETHERTYPE_IPV6) & (lens >= vh + 54)  # the UDP sum stays right
                    if v6.any():
                        s6, d6 = src[v6], dst[v6]
                        bufs[d6, vh + 22 : vh + 38] = bufs[s6, vh + 38 : vh + 54]
                        bufs[d6, vh + 38 : vh + 54] = bufs[s6, vh + 22 : vh + 38]
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


def _child_main(w: Worker) -> None:
    """A -p worker process: SIGINT goes to the parent, which sets the shared stop word."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    w.run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if w.row[F_ERR] else 0)
