"""An AF_XDP socket without the kernel: its four rings in plain memory, and a fake kernel.

``FakeXsk`` has what a :class:`~vtnet_py.netmap.ring.Ring` uses of an
:class:`~vtnet_py.netmap.xsk.XskSocket` (``fill``, ``comp``, ``rx``, ``tx``, ``kick_tx``,
``wake_rx``, ``fileno``, ``zerocopy``), so the ring model runs without root: in the
differential test of the two ring implementations and in the per-sync benchmark. The
fake kernel's verbs are the kernel's side of each ring: consume TX descriptors (on a kick,
or as a zero-copy driver would, unasked), complete them in order or not, take FILL
entries, deliver RX frames into them (or drop a frame when it finds none), and set the
need_wakeup flags.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from vtnet_py._sys import abi as K
from vtnet_py.errors import DeviceError
from vtnet_py.netmap.memory import Memory
from vtnet_py.netmap.ring import Ring
from vtnet_py.netmap.xsk import ADDR_DTYPE, DESC_DTYPE, KernelRing, RingSizes, ring_sizes


class FakeXsk:
    """One fake socket: rings of ``sizes``, a UMEM of ``chunks`` rows (for RX payload)."""

    def __init__(
        self,
        sizes: RingSizes,
        chunks: np.ndarray | None = None,
        *,
        chunk_size: int = 4096,
        tx_budget: int = 32,
        auto_complete: bool = True,
        need_wakeup: bool = True,
        zerocopy: bool = False,
    ):
        self.ifname = "fake"
        self.queue = 0
        self.zerocopy = zerocopy
        self.chunks = chunks
        self.chunk_size = chunk_size
        self.fill: KernelRing | None = KernelRing.in_memory(sizes.fill, ADDR_DTYPE, True)
        self.comp: KernelRing | None = KernelRing.in_memory(sizes.comp, ADDR_DTYPE, False)
        self.rx: KernelRing | None = (
            KernelRing.in_memory(sizes.rx, DESC_DTYPE, False) if sizes.rx else None
        )
        self.tx: KernelRing | None = (
            KernelRing.in_memory(sizes.tx, DESC_DTYPE, True) if sizes.tx else None
        )
        self.tx_budget = tx_budget  # descriptors one sendto() consumes (copy mode: 32)
        self.auto_complete = auto_complete
        self.kick_errno = 0  # what the next kicks return (a transient errno, or 0)
        self.sent: list[tuple[int, int, int]] = []  # (addr, len, options) taken from TX
        self.in_flight: deque[int] = deque()  # TX addresses taken, not yet completed
        self.fill_held: deque[int] = deque()  # FILL addresses taken, not yet used
        self.dropped = 0
        self.kicks = 0
        self.wakeups = 0
        self.set_need_wakeup(need_wakeup)

    # --- what a Ring calls -----------------------------------------------------------------
    def fileno(self) -> int:
        return -1  # no fd: the compiled core calls kick_tx/wake_rx instead of syscalls

    def kick_tx(self) -> int:
        self.kicks += 1
        if self.kick_errno:
            return self.kick_errno
        self.consume(self.tx_budget)
        return 0

    def wake_rx(self) -> None:
        self.wakeups += 1

    def raise_kick_error(self, err: int, tx: bool) -> None:
        raise DeviceError(
            f"fake queue 0: {'transmit kick' if tx else 'wakeup'}: {os.strerror(err)}"
        )

    def statistics(self) -> dict[str, int]:
        return {"rx_dropped": self.dropped}

    def close(self) -> None:
        self.fill = self.comp = self.rx = self.tx = None

    # --- the fake kernel ---------------------------------------------------------------------
    def set_need_wakeup(self, on: bool) -> None:
        for r in (self.fill, self.tx):
            if r is not None:
                r.flags[0] = K.XDP_RING_NEED_WAKEUP if on else 0

    def consume(self, k: int) -> int:
        """Take up to ``k`` TX descriptors (and complete them when ``auto_complete``)."""
        tx = self.tx
        assert tx is not None
        cons = int(tx.consumer[0])
        k = min(k, (int(tx.producer[0]) - cons) & 0xFFFFFFFF)
        for j in range(k):
            d = tx.desc[(cons + j) & tx.mask]
            self.sent.append((int(d["addr"]), int(d["len"]), int(d["options"])))
            self.in_flight.append(int(d["addr"]))
        tx.consumer[0] = (cons + k) & 0xFFFFFFFF
        if self.auto_complete:
            self.complete(k)
        return k

    def complete(self, k: int, order: Sequence[int] | None = None) -> int:
        """Put up to ``k`` taken TX buffers on the COMPLETION ring: the oldest first, or
        in ``order`` (a permutation of range(k)) to complete out of order."""
        comp = self.comp
        assert comp is not None
        k = min(k, len(self.in_flight))
        taken = [self.in_flight.popleft() for _ in range(k)]
        if order is not None:
            taken = [taken[i] for i in order]
        prod = int(comp.producer[0])
        for j, addr in enumerate(taken):
            comp.desc[(prod + j) & comp.mask] = addr & ~(self.chunk_size - 1)
        comp.producer[0] = (prod + k) & 0xFFFFFFFF
        return k

    def echo_tx(self) -> int:
        """Consume every TX descriptor and complete it in order, with numpy (for
        benchmarks: the fake kernel's own cost stays out of the way)."""
        tx, comp = self.tx, self.comp
        assert tx is not None and comp is not None
        cons = int(tx.consumer[0])
        k = (int(tx.producer[0]) - cons) & 0xFFFFFFFF
        if k:
            addrs = tx.desc["addr"][tx.pos[cons & tx.mask : (cons & tx.mask) + k]]
            prod = int(comp.producer[0])
            comp.desc[comp.pos[prod & comp.mask : (prod & comp.mask) + k]] = addrs & ~np.uint64(
                self.chunk_size - 1
            )
            tx.consumer[0] = (cons + k) & 0xFFFFFFFF
            comp.producer[0] = (prod + k) & 0xFFFFFFFF
        return k

    def deliver_bulk(self, k: int, length: int) -> int:
        """Turn up to ``k`` FILL entries into RX frames of ``length`` bytes, with numpy
        (payload not written; for benchmarks)."""
        fill, rx = self.fill, self.rx
        assert fill is not None and rx is not None
        fcons = int(fill.consumer[0])
        rprod = int(rx.producer[0])
        room = rx.size - ((rprod - int(rx.consumer[0])) & 0xFFFFFFFF)
        k = min(k, (int(fill.producer[0]) - fcons) & 0xFFFFFFFF, room)
        if k:
            addrs = fill.desc[fill.pos[fcons & fill.mask : (fcons & fill.mask) + k]]
            pos = rx.pos[rprod & rx.mask : (rprod & rx.mask) + k]
            rx.desc["addr"][pos] = addrs + np.uint64(K.XDP_PACKET_HEADROOM)
            rx.desc["len"][pos] = length
            rx.desc["options"][pos] = 0
            fill.consumer[0] = (fcons + k) & 0xFFFFFFFF
            rx.producer[0] = (rprod + k) & 0xFFFFFFFF
        return k

    def take_fill(self, k: int) -> int:
        fill = self.fill
        assert fill is not None
        cons = int(fill.consumer[0])
        k = min(k, (int(fill.producer[0]) - cons) & 0xFFFFFFFF)
        for j in range(k):
            self.fill_held.append(int(fill.desc[(cons + j) & fill.mask]))
        fill.consumer[0] = (cons + k) & 0xFFFFFFFF
        return k

    def deliver(self, frames: Sequence[bytes], contd: Sequence[bool] | None = None) -> int:
        """Receive ``frames`` into FILL buffers; a frame finding no buffer or no room on
        the RX ring is dropped (counted). Returns the number delivered."""
        rx = self.rx
        assert rx is not None
        got = 0
        for i, frame in enumerate(frames):
            if not self.fill_held:
                self.take_fill(1)
            prod = int(rx.producer[0])
            room = rx.size - ((prod - int(rx.consumer[0])) & 0xFFFFFFFF)
            if not self.fill_held or not room:
                self.dropped += 1
                continue
            base = self.fill_held.popleft()
            addr = base + K.XDP_PACKET_HEADROOM
            if self.chunks is not None:
                row = self.chunks[base // self.chunk_size]
                row[K.XDP_PACKET_HEADROOM : K.XDP_PACKET_HEADROOM + len(frame)] = np.frombuffer(
                    frame, np.uint8
                )
            opt = K.XDP_PKT_CONTD if contd is not None and contd[i] else 0
            rx.desc[prod & rx.mask] = (addr, len(frame), opt)
            rx.producer[0] = (prod + 1) & 0xFFFFFFFF
            got += 1
        return got


TRANSIENT_KICKS = (errno.EAGAIN, errno.ENOBUFS, errno.EBUSY)


def fake_rings(
    cls: type[Ring],
    rx_slots: int,
    tx_slots: int,
    *,
    frags: bool = False,
    vnet_hdr: int = 0,
    max_frags: int = 18,
    **fake: Any,
) -> tuple[Memory, FakeXsk, Ring, Ring]:
    """A Memory with one RX and one TX ring of class ``cls`` (PyRing or CRing) on one
    FakeXsk, laid out as open_port lays out a one-queue port."""
    mem = Memory(rx_slots + tx_slots)
    xsk = FakeXsk(ring_sizes(rx_slots, tx_slots), mem.umem.chunks, **fake)
    kid = mem.add_socket(xsk)  # type: ignore[arg-type]
    common: dict[str, Any] = dict(
        port_name="fake",
        queue=0,
        host=False,
        pool=mem.pool,
        xsk=xsk,
        kid=kid,
        frags=frags,
        max_frags=max_frags,
        chunks=mem.umem.chunks,
        vnet_hdr=vnet_hdr,
    )
    rx = cls(ring_id=0, is_tx=False, num_slots=rx_slots, first_buf=0, **common)
    tx = cls(ring_id=0, is_tx=True, num_slots=tx_slots, first_buf=rx_slots, **common)
    mem.allocate(rx_slots + tx_slots, "fake")
    mem.add_rings([rx, tx])
    return mem, xsk, rx, tx


__all__ = ["TRANSIENT_KICKS", "FakeXsk", "fake_rings"]
