"""pkt-gen's receiver_body: -f rx and -f rxseq.

RX looks at slot lengths only; rxseq also reads the sequence number of each frame's
first slot (IPv4 or IPv6), one vectorised gather a batch.  NS_MOREFRAG chains count
as one packet each.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from vtnet_py.apps.pktgen.config import (
    F_BYTES,
    F_EVENTS,
    F_MIN_SPACE,
    F_PKTS,
    F_SEQ_GAP_PKTS,
    F_SEQ_GAPS,
    F_SEQ_LOST,
    F_SEQ_OOO,
    F_SEQ_RECEIVED,
    F_TIC,
    F_TOC,
    RX_IDLE_S,
    PktgenError,
)
from vtnet_py.apps.pktgen.rxfields import SeqTracker, gather, payload_offsets
from vtnet_py.apps.pktgen.spec import SEQ_LEN
from vtnet_py.apps.pktgen.workerbase import WorkerBase
from vtnet_py.netmap.ring import NS_MOREFRAG


class Receiver(WorkerBase):
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
