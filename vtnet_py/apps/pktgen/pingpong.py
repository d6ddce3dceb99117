"""pkt-gen's ping_body and pong_body: round trips of time-stamped frames.

ping sends frames carrying a sequence number and the send time; pong sends every
frame back with the MAC and IP addresses swapped; ping takes the round-trip times.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from vtnet_py.apps.pktgen.config import (
    F_BYTES,
    F_EVENTS,
    F_PKTS,
    F_SEQ_RECEIVED,
    F_TIC,
    F_TOC,
    PktgenError,
)
from vtnet_py.apps.pktgen.frames6 import ETHERTYPE_IPV6, make_framegen
from vtnet_py.apps.pktgen.oneslot import PingFrames, Umem, ping_rtt, reflect
from vtnet_py.apps.pktgen.rxfields import field_view, gather, payload_offsets
from vtnet_py.apps.pktgen.spec import OFF_ETHERTYPE, SEQ_LEN, STAMP_LEN
from vtnet_py.apps.pktgen.workerbase import Pacer, WorkerBase


class PingPong(WorkerBase):
    # -- ping / pong -----------------------------------------------------------

    def _ping(self, port: Any) -> None:
        if not port.tx_rings or not port.rx_rings:
            raise PktgenError(f"{self.port_name}: ping needs TX and RX rings")
        spec = self.cfg.spec
        gen = make_framegen(spec, seed=self.cfg.seed)
        bufs = port.bufs
        gen.init_rows(bufs, port.tx_rings[0].slot["buf_idx"])
        # one frame per round trip (the default -b 1): the integer path of oneslot.py
        fixed = not spec.min_length and spec.raw is None
        umem = Umem.of(bufs) if self.cfg.burst == 1 and fixed else None
        one = PingFrames(gen, spec.vnet_hdr_len) if umem is not None else None
        try:
            self._ping_loop(port, gen, one, umem)
        finally:
            if umem is not None:
                umem.release()

    def _ping_loop(self, port: Any, gen: Any, one: PingFrames | None, umem: Umem | None) -> None:
        cfg = self.cfg
        row = self.row
        spec = cfg.spec
        txr = port.tx_rings[0]
        bufs = port.bufs
        vh = spec.vnet_hdr_len
        n = self.frames_in
        pacer = Pacer(cfg.rate, cfg.burst) if cfg.rate else None
        sent = received = events = 0
        tosend = 0
        period_rtts: list[np.ndarray] = []
        tx_buf, tx_len = txr.slot["buf_idx"], txr.slot["len"]
        # each RX ring with its slot fields (a field view costs as much as a sync)
        rx_fields = [(r, r.slot["buf_idx"], r.slot["len"]) for r in port.rx_rings]
        one_rtts: list[int] = []
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
            elif one is not None and umem is not None:
                h = txr.head
                tx_len[h] = one.write(umem, int(tx_buf[h]), time.monotonic_ns())
                txr.head = txr.cur = txr.next(h)
                sent += 1
                events += 1
                if pacer:
                    tosend -= 1
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
            for r, rx_buf, rx_len in rx_fields:
                avail = r.space()
                if not avail:
                    continue
                if avail == 1 and umem is not None:
                    h = r.head
                    rtt1 = ping_rtt(umem, int(rx_buf[h]), int(rx_len[h]), vh, now)
                    if rtt1 is not None:
                        one_rtts.append(rtt1)
                        received += 1
                    r.head = r.cur = r.next(h)
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
            if one_rtts and (len(one_rtts) >= 4096 or t - last_print >= 1.0):
                period_rtts.append(np.array(one_rtts, np.int64))
                one_rtts = []
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
        if one_rtts:
            period_rtts.append(np.array(one_rtts, np.int64))
        self.ping_rtts.extend(period_rtts)
        port.rxsync()
        row[F_TOC] = time.monotonic_ns()
        row[F_SEQ_RECEIVED] = received

    def _pong(self, port: Any) -> None:
        if not port.tx_rings or not port.rx_rings:
            raise PktgenError(f"{self.port_name}: pong needs TX and RX rings")
        umem = Umem.of(port.bufs)  # frames that come one at a time: oneslot.reflect
        try:
            self._pong_loop(port, umem)
        finally:
            if umem is not None:
                umem.release()

    def _pong_loop(self, port: Any, umem: Umem | None) -> None:
        cfg = self.cfg
        row = self.row
        txr = port.tx_rings[0]
        tx_buf, tx_len = txr.slot["buf_idx"], txr.slot["len"]
        rx_fields = [(r, r.slot["buf_idx"], r.slot["len"]) for r in port.rx_rings]
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
            for r, rx_buf, rx_len in rx_fields:
                avail = r.space()
                if not avail:
                    continue
                k = min(avail, txr.space())
                if n:
                    k = min(k, n - sent)
                if k == 1 and avail == 1 and umem is not None:
                    h, th = r.head, txr.head
                    ln = int(rx_len[h])
                    reflect(umem, int(rx_buf[h]), int(tx_buf[th]), ln, vh)
                    tx_len[th] = ln
                    txr.head = txr.cur = txr.next(th)
                    r.head = r.cur = r.next(h)
                    sent += 1
                    nbytes += ln
                    events += 1
                    continue
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
