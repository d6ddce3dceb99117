"""A netmap memory region: one UMEM and its buffer pool, shared by one or more ports.

netmap ports that share a memory allocator can move frames between each other by
swapping ``buf_idx`` (zero copy). Here that allocator is a UMEM: every AF_XDP socket of
every port opened on the same Memory binds it (the first registers it, the others use
XDP_SHARED_UMEM, on any interface), so a buffer index means the same bytes in all of
them. ``open_port`` makes a private Memory sized for the port when none is given.
"""

from __future__ import annotations

import numpy as np

from vtnet_py._sys import abi as K
from vtnet_py.errors import BusyError, InvariantError, UnsupportedError
from vtnet_py.netmap.pool import APP, FREE, BufferPool, krx, ktx
from vtnet_py.netmap.xsk import CHUNK_SIZE, Umem, XskSocket, _close_mmap


class Memory:
    """``nbufs`` buffers of ``nr_buf_size`` bytes in one UMEM."""

    def __init__(self, nbufs: int):
        if nbufs < 2:
            raise UnsupportedError(f"a memory region needs at least 2 buffers, not {nbufs}")
        self.umem = Umem(nbufs, CHUNK_SIZE)
        self.pool = BufferPool(nbufs, CHUNK_SIZE, K.XDP_PACKET_HEADROOM)
        self.nbufs = nbufs
        self.nr_buf_size = CHUNK_SIZE - K.XDP_PACKET_HEADROOM
        # the netmap view: row i is buffer i, starting where frames start in chunk i
        self.bufs = self.umem.chunks[:, K.XDP_PACKET_HEADROOM :]
        self._free: list[tuple[int, int]] = [(0, nbufs)]  # slot ranges no port holds
        self._sockets: list[XskSocket] = []
        self._next_kid = 0
        self._rings: list = []
        self.users = 0

    def allocate(self, n: int, who: str) -> int:
        """Reserve ``n`` consecutive slots (and as many free buffers) for a port's rings;
        returns the first index. ``release`` gives them back when the port closes."""
        for i, (start, length) in enumerate(self._free):
            if length >= n:
                if length == n:
                    del self._free[i]
                else:
                    self._free[i] = (start + n, length - n)
                return start
        left = sum(length for _, length in self._free)
        largest = max((length for _, length in self._free), default=0)
        more = f" ({largest} in one piece)" if left >= n else ""
        raise UnsupportedError(
            f"{who}: needs {n} buffers but the shared memory region has only {left} left"
            f"{more} of {self.nbufs}; open the first port with a larger Memory"
        )

    def release(self, first: int, n: int) -> None:
        """Return slots ``first .. first+n-1`` reserved by ``allocate`` (a closed port's;
        its buffers, wherever they ended up, are already marked free)."""
        self._free.append((first, n))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for start, length in self._free:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((start, length))
        self._free = merged

    def share_socket(self) -> XskSocket | None:
        """A bound socket of this UMEM for XDP_SHARED_UMEM, or None for the first one."""
        for s in self._sockets:
            if s.sock is not None:
                return s
        return None

    def add_socket(self, s: XskSocket) -> int:
        self._sockets.append(s)
        kid = self._next_kid
        self._next_kid += 1
        return kid

    def add_rings(self, rings: list) -> None:
        self._rings.extend(rings)
        self.pool.rings = self._rings

    def remove_rings(self, rings: list) -> None:
        ids = {id(r) for r in rings}
        self._rings = [r for r in self._rings if id(r) not in ids]
        self.pool.rings = self._rings

    def check_invariant(self) -> dict[str, int]:
        """Prove every buffer is in exactly one place; raises InvariantError if not.

        Returns the count of buffers in each kind of place.
        """
        owner = self.pool.owner
        held = []
        expect_rx: dict[int, int] = {}
        expect_tx: dict[int, int] = {}
        for ring in self._rings:
            bufs, n_rx, n_tx = ring.held()
            held.append(bufs)
            if ring.is_tx:
                expect_tx[ring._kid] = n_tx
            else:
                expect_rx[ring._kid] = n_rx
        all_held = np.concatenate(held) if held else np.zeros(0, np.uint32)
        if all_held.size:
            if int(all_held.max()) >= self.nbufs:
                raise InvariantError(f"buf_idx {int(all_held.max())} in a slot is out of range")
            uniq, counts = np.unique(all_held, return_counts=True)
            if (counts > 1).any():
                raise InvariantError(f"buf_idx {int(uniq[counts > 1][0])} is in two slots")
            if not (owner[all_held] == APP).all():
                bad = int(all_held[owner[all_held] != APP][0])
                raise InvariantError(
                    f"buf_idx {bad} is in a slot but {self.pool.describe(int(owner[bad]))}"
                )
        if self.pool.count(APP) != all_held.size:
            raise InvariantError(
                f"{self.pool.count(APP)} buffers marked as in slots, {all_held.size} found in slots"
            )
        totals = {
            "slots": int(all_held.size),
            "kernel_rx": 0,
            "kernel_tx": 0,
            "free": self.pool.count(FREE),
        }
        for kid, n in expect_rx.items():
            if self.pool.count(krx(kid)) != n:
                raise InvariantError(
                    f"socket {kid}: {self.pool.count(krx(kid))} buffers with "
                    f"the kernel for RX, the ring expects {n}"
                )
            totals["kernel_rx"] += n
        for kid, n in expect_tx.items():
            if self.pool.count(ktx(kid)) != n:
                raise InvariantError(
                    f"socket {kid}: {self.pool.count(ktx(kid))} buffers with "
                    f"the kernel for TX, the ring expects {n}"
                )
            totals["kernel_tx"] += n
        if sum(totals.values()) != self.nbufs:
            raise InvariantError(
                f"{sum(totals.values())} buffers accounted for, {self.nbufs} exist: {totals}"
            )
        return totals

    def remove_sockets(self, sockets: list[XskSocket]) -> None:
        ids = {id(s) for s in sockets}
        self._sockets = [s for s in self._sockets if id(s) not in ids]

    def close(self) -> None:
        """Release the UMEM. Refused with BusyError while a port still uses it (as
        libxdp's xsk_umem__delete refuses with EBUSY); idempotent."""
        if self.users > 0:
            raise BusyError(
                f"memory region of {self.nbufs} buffers: {self.users} port(s) still use it; "
                f"close them first"
            )
        if self.umem.mm is None:
            return
        self._sockets.clear()
        self.bufs = None  # type: ignore[assignment]
        self.umem.close()


__all__ = ["Memory", "_close_mmap"]
