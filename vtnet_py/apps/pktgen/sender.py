"""pkt-gen's sender_body: -f tx and -f txseq.

TX writes each frame into its UMEM buffer once, when the port opens (a TX ring's
buffers move between its slots but never leave it), and afterwards only slot
lengths, head and cur -- or, when frames differ (ranges, sequence numbers, random
sizes), a vectorised patch of the bytes that change.  Frames cut into several slots
(-F/-M, or longer than a buffer) are copied per batch, one numpy assignment per
fragment position.  No per-packet Python loop (but with -X).
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
    F_TIC,
    F_TOC,
    MIN_SPACE_NONE,
    TX_SPINS,
    PktgenError,
)
from vtnet_py.apps.pktgen.frames import FrameGen
from vtnet_py.apps.pktgen.frames6 import make_framegen
from vtnet_py.apps.pktgen.workerbase import Pacer, WorkerBase
from vtnet_py.netmap.ring import NS_MOREFRAG


class Sender(WorkerBase):
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
