"""Moving frames from an RX ring to a TX ring: netmap's bridge ``rings_move``.

:func:`rings_move` takes the frames of ``rx`` from its head to the TX slots of ``tx`` from
its head, as many as both have (``[head, tail)`` on each) up to ``limit``, and advances
both heads (and curs) past them. Zero copy swaps the two slots' ``buf_idx`` (both rings
in one Memory) and marks both ``NS_BUF_CHANGED``; otherwise the frame's bytes are copied.
``NS_MOREFRAG`` follows the frame, so a multi-buffer chain stays one frame.

Two implementations with one contract: the compiled ``_ringcore.move`` (one C loop over
both slot tables, taken when both rings are compiled rings) and :func:`rings_move_py`,
numpy over the slot arrays, the reference model tests/unit/test_move.py holds the C one
to. The buf_idx values a swap writes are checked by the next syncs like any the
application writes.
"""

from __future__ import annotations

import numpy as np

from vtnet_py.netmap.ring import NS_BUF_CHANGED, NS_MOREFRAG, CRing, Ring

try:
    from vtnet_py.netmap._ringcore import move as _c_move
except ImportError:  # the extension is not built: only PyRing rings exist
    _c_move = None  # type: ignore[assignment]

_NOT_MOREFRAG = np.uint16(0xFFFF ^ NS_MOREFRAG)


def rings_move_py(
    rx: Ring, tx: Ring, limit: int, zerocopy: bool, src_bufs: np.ndarray, dst_bufs: np.ndarray
) -> tuple[int, int]:
    """The reference model of :func:`rings_move` in numpy; returns (frames, bytes)."""
    n_rx, n_tx = rx.num_slots, tx.num_slots
    if rx.is_tx or not tx.is_tx:
        raise ValueError("move: the source must be an RX ring, the destination a TX ring")
    for r in (rx, tx):
        h = r.head
        if not (
            isinstance(h, int | np.integer)
            and 0 <= h < r.num_slots
            and (h - r.hwcur) % r.num_slots <= (r.tail - r.hwcur) % r.num_slots
        ):
            raise ValueError(f"{r._what}: head outside [hwcur, tail]")
    if not isinstance(limit, int | np.integer) or limit < 0:
        raise ValueError("move: limit must be an integer >= 0")
    if zerocopy and rx._pool is not tx._pool:
        raise ValueError(f"{rx._what} -> {tx._what}: zero copy needs one buffer pool")
    m = min(limit, (rx.tail - rx.head) % n_rx, (tx.tail - tx.head) % n_tx)
    if m <= 0:
        return 0, 0
    ri = rx.slots_from_head(m)
    ti = tx.slots_from_head(m)
    rs, ts = rx.slot, tx.slot
    lens = rs["len"][ri]
    if not zerocopy:
        bad = np.flatnonzero(
            (rs["buf_idx"][ri] >= len(src_bufs))
            | (ts["buf_idx"][ti] >= len(dst_bufs))
            | (lens > min(rx.nr_buf_size, tx.nr_buf_size))
        )
        if bad.size:  # nothing is moved unless all can be
            k = int(bad[0])
            raise ValueError(
                f"{rx._what} slot {int(ri[k])} -> {tx._what} slot {int(ti[k])}: "
                "buf_idx or len out of range"
            )
    ts["len"][ti] = lens
    rflags = rs["flags"][ri]
    if zerocopy:
        rbi = rs["buf_idx"][ri]
        rs["buf_idx"][ri] = ts["buf_idx"][ti]
        ts["buf_idx"][ti] = rbi
        rs["flags"][ri] = rflags | NS_BUF_CHANGED
        tflags = ts["flags"][ti] | NS_BUF_CHANGED
    else:
        rb, tb = rs["buf_idx"][ri], ts["buf_idx"][ti]
        if np.may_share_memory(src_bufs, dst_bufs) and (
            np.intersect1d(rb, tb).size or np.unique(tb).size != tb.size
        ):
            # buf_idx values the application copied between slots: frame after frame,
            # as the C loop copies (the next sync refuses and repairs such slots)
            for j in range(m):
                n = int(lens[j])
                dst_bufs[tb[j], :n] = src_bufs[rb[j], :n].copy()
        else:
            width = int(lens.max())
            block = src_bufs[rb, :width]
            exact = np.arange(width) < lens[:, None]  # each frame's own bytes, no more
            dst_bufs[tb, :width] = np.where(exact, block, dst_bufs[tb, :width])
        tflags = ts["flags"][ti]
    ts["flags"][ti] = (tflags & _NOT_MOREFRAG) | (rflags & NS_MOREFRAG)
    rx.head = rx.cur = rx.next(rx.head, m)
    tx.head = tx.cur = tx.next(tx.head, m)
    return m, int(lens.sum())


def rings_move(
    rx: Ring, tx: Ring, limit: int, zerocopy: bool, src_bufs: np.ndarray, dst_bufs: np.ndarray
) -> tuple[int, int]:
    """Move up to ``limit`` frames from ``rx`` to ``tx`` (see the module docstring);
    returns (frames, bytes). ``src_bufs``/``dst_bufs`` (the ports' ``bufs``) serve the
    reference model's copy."""
    if _c_move is not None and type(rx) is CRing and type(tx) is CRing:
        m, nbytes = _c_move(rx._core, rx.head, tx._core, tx.head, limit, zerocopy)
        if m:
            rx.head = rx.cur = (rx.head + m) % rx.num_slots
            tx.head = tx.cur = (tx.head + m) % tx.num_slots
        return m, nbytes
    return rings_move_py(rx, tx, limit, zerocopy, src_bufs, dst_bufs)
