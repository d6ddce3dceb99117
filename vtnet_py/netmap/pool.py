"""Who holds each UMEM buffer: the owner codes, the one slot table, BufferPool.

Every UMEM chunk is in exactly one place. ``BufferPool.owner`` says where (free, held by
a ring slot, or given to the kernel by a given socket as FILL/RX or TX/COMPLETION), every
transition checks the state it expects, and ``Memory.check_invariant`` proves the whole
picture. Every ring's slots live in the pool's one slot table, so a slot has one global
number and a buf_idx copied (not swapped) into another slot can be told from a swap.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from vtnet_py.errors import InvariantError


class HoldsBuffers(Protocol):
    """What the pool asks of a ring (netmap/ring.py's Ring): the buffers in its slots."""

    def held_unchecked(self) -> tuple[np.ndarray, int, int]: ...


SLOT_DTYPE = np.dtype([("buf_idx", "<u4"), ("len", "<u2"), ("flags", "<u2"), ("ptr", "<u8")])

# BufferPool.owner codes
FREE = 0
APP = 1  # in a ring slot (user part, the TX hole, or not yet submitted)


def krx(kid: int) -> int:
    """Owner code: given to the kernel for RX by socket ``kid`` (FILL ring, RX ring)."""
    return 2 + 2 * kid


def ktx(kid: int) -> int:
    """Owner code: given to the kernel for TX by socket ``kid`` (TX ring, COMPLETION)."""
    return 3 + 2 * kid


class BufferPool:
    """Who holds each UMEM chunk; shared by every ring of a port."""

    def __init__(self, nchunks: int, chunk_size: int, buf_offset: int):
        self.nchunks = nchunks
        self.chunk_size = chunk_size
        self.buf_offset = buf_offset  # where a netmap buffer starts inside its chunk
        self.owner = np.zeros(nchunks, dtype=np.int32)
        # Every ring's slots live in this one table: a ring made with buffers
        # first_buf .. first_buf+n-1 owns slots first_buf .. first_buf+n-1 of it, so a
        # slot has one global number. ``where[b]`` is the global slot we last put buffer
        # b in; a buf_idx the application moved is fine when that slot no longer holds
        # it (a swap, NS_BUF_CHANGED), and a copy when it still does (two slots, one
        # buffer), which is refused.
        self.slots = np.zeros(nchunks, dtype=SLOT_DTYPE)
        self.where = np.arange(nchunks, dtype=np.int64)
        self._slot_bufs = self.slots["buf_idx"]
        self.rings: list[HoldsBuffers] = []  # every ring on this memory (Memory keeps it)

    def take_free(self, first: int, n: int, who: str) -> np.ndarray:
        """``n`` free buffers for the slots ``first .. first+n-1``: the buffers of the same
        numbers when they are free (a fresh memory), else any free ones (a memory whose
        earlier ports swapped buffers around before closing). Records them as placed in
        those slots; the caller sets their owner."""
        own = np.arange(first, first + n, dtype=np.uint32)
        if (self.owner[own] == FREE).all():
            bufs = own
        else:
            bufs = np.flatnonzero(self.owner == FREE)[:n].astype(np.uint32)
            if bufs.size < n:
                raise InvariantError(f"{who}: {bufs.size} free buffers for {n} slots")
        self.where[bufs] = own
        return bufs

    def restore_slot(self, gslot: int) -> int | None:
        """Repair a slot the application overwrote with a copy of another slot's buf_idx:
        put back the buffer we last placed there, if no slot holds it now (so it is not
        lost). Returns that buffer, or None when it cannot be found."""
        cands = np.flatnonzero((self.where == gslot) & (self.owner == APP))
        if cands.size != 1:
            return None
        c = int(cands[0])
        held = [r.held_unchecked()[0] for r in self.rings]
        if held and (np.concatenate(held) == c).any():
            return None  # the application moved it to another slot: nothing was lost
        self._slot_bufs[gslot] = c
        return c

    def first_bad(self, bufs: np.ndarray, gslots: np.ndarray) -> tuple[int, str, int, int] | None:
        """The full check of user slots, in slot order: the first position whose buf_idx
        is out of range, not in a ring slot, in the batch twice, or still in another slot
        (copied, not swapped), as (position, reason, buf_idx, detail); detail is the
        owner code for "owner" and the other global slot for "copied". At one position
        the reasons rank in that order. None when all are fine."""
        b = bufs.astype(np.int64)
        rng = b >= self.nchunks
        safe = np.where(rng, 0, b)
        state = self.owner[safe]
        own = ~rng & (state != APP)
        order = np.argsort(b, kind="stable")
        same = b[order][1:] == b[order][:-1]
        dup_sorted = np.zeros(b.size, dtype=bool)
        dup_sorted[1:] |= same
        dup_sorted[:-1] |= same
        twice = np.empty(b.size, dtype=bool)
        twice[order] = dup_sorted
        twice &= ~rng
        rec = self.where[safe]
        copied = ~rng & (rec != gslots) & (self._slot_bufs[rec] == b)
        fail = rng | own | twice | copied
        if not fail.any():
            return None
        i = int(np.argmax(fail))
        if rng[i]:
            return i, "range", int(b[i]), 0
        if own[i]:
            return i, "owner", int(b[i]), int(state[i])
        if twice[i]:
            return i, "twice", int(b[i]), 0
        return i, "copied", int(b[i]), int(rec[i])

    def check_one(self, b: int, gslot: int) -> tuple[str, int] | None:
        """first_bad for one slot with Python scalars: (reason, detail) or None."""
        if b >= self.nchunks:
            return "range", 0
        state = int(self.owner[b])
        if state != APP:
            return "owner", state
        rec = int(self.where[b])
        if rec != gslot and int(self._slot_bufs[rec]) == b:
            return "copied", rec
        return None

    def returned(self, bufs: np.ndarray, expect: int, new: int, who: str) -> None:
        """Buffers the kernel handed back (RX or COMPLETION ring): each must be one we gave
        that socket (else InvariantError, nothing changed). The cheap half of move():
        the kernel reports every address once and inside the UMEM; check_invariant()
        re-proves uniqueness for tests."""
        state = self.owner[bufs]
        if (state != expect).any():
            i = int(np.flatnonzero(state != expect)[0])
            raise InvariantError(
                f"{who}: buf_idx {int(bufs[i])} is not "
                f"{self.describe(expect)} but {self.describe(int(state[i]))}"
            )
        self.owner[bufs] = new

    @staticmethod
    def describe(code: int) -> str:
        if code == FREE:
            return "free"
        if code == APP:
            return "in a ring slot"
        kid, tx = divmod(code - 2, 2)
        return f"with the kernel for {'TX' if tx else 'RX'} on socket {kid}"

    def count(self, code: int) -> int:
        return int(np.count_nonzero(self.owner == code))
