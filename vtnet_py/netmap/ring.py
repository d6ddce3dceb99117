# Over 500 lines: the reference model (PyRing) stays beside the compiled ring (CRing) and
# their shared base, so that the two sides of the differential test read together.
"""netmap rings on top of AF_XDP sockets: the data path.

A netmap ring is an array of slots (netmap_slot: buf_idx, len, flags, ptr) with three
indices. ``[head, tail)`` belongs to the application, everything else to the kernel, and
one slot is always left empty so that head == tail means "nothing for the user".

RX: every slot the user releases (``[hwcur, head)`` at rxsync) gives its buffer to the
kernel through the socket's FILL ring; frames the kernel delivers on the RX ring are
written into slots ``[tail, ...)`` with the buf_idx they arrived in. TX: slots the user
hands over (``[hwcur, head)`` at txsync) become TX descriptors; buffers the kernel returns
on the COMPLETION ring come back into the slots after ``tail`` and tail advances. The TX
slot at ``tail`` is netmap's empty hole; slots ``(tail, hwcur)`` are in flight.

As netmap_user.h has them, ``space()`` counts from ``head`` (nm_ring_space) and
``empty()`` is ``head == tail`` (nm_ring_empty); ``cur`` only says when to wake the
application (``cur == tail``: when more arrives), which ``Port.fileno()`` follows
(vtnet_py.netmap.ready). ``ts`` is netmap_ring.ts: set by an rxsync of a ring whose
``flags`` has NR_TIMESTAMP (netmap.c's ring_timestamp_set), as wall-clock seconds.

Every UMEM chunk is in exactly one place. ``BufferPool.owner`` says where (free, held by
a ring slot, or given to the kernel by a given socket as FILL/RX or TX/COMPLETION), every
transition checks the state it expects, and ``check_invariant`` proves the whole picture.

Two implementations keep these rules: ``CRing`` runs the sync in C (_ringcore.c, the
default) and ``PyRing`` in numpy, per batch, with no per-frame Python loop; PyRing is the
reference model the compiled one is tested against (``VTNETMAP_RINGCORE=py`` selects it).
"""

from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from vtnet_py._sys import abi as K
from vtnet_py.errors import InterfaceChangedError, InvariantError, RingError
from vtnet_py.netmap.buffer import Buffer, as_buffer
from vtnet_py.netmap.pool import APP, BufferPool, krx, ktx

if TYPE_CHECKING:
    from collections.abc import Callable

    from vtnet_py.netmap.ready import Readiness
    from vtnet_py.netmap.xsk import XskSocket

# sys/net/netmap.h: slot flags
NS_BUF_CHANGED = 0x0001
NS_REPORT = 0x0002
NS_FORWARD = 0x0004
NS_NO_LEARN = 0x0008
NS_INDIRECT = 0x0010
NS_MOREFRAG = 0x0020
# ring flags
NR_TIMESTAMP = 0x0002
NR_FORWARD = 0x0004


class Ring:
    """One netmap ring (RX or TX) of a port, backed by one AF_XDP socket's rings.

    ``Ring(...)`` makes the compiled ring (:class:`CRing`) unless the environment sets
    ``VTNETMAP_RINGCORE=py``, which selects :class:`PyRing`: the same rules in numpy,
    the reference model the compiled core is tested against.
    """

    # the Readiness behind Port.fileno(), once a caller asked for the fd (None: nobody
    # waits on it, and a sync pays nothing for it)
    _ready: Readiness | None = None
    _cur = 0
    # netmap_ring.ts: wall-clock seconds of the last rxsync of a ring whose flags have
    # NR_TIMESTAMP (netmap.c's ring_timestamp_set); 0.0 until then
    ts = 0.0

    def __new__(cls, **kwargs: Any) -> Ring:
        if cls is Ring:
            cls = PyRing if os.environ.get("VTNETMAP_RINGCORE") == "py" else CRing
        return object.__new__(cls)

    def __init__(
        self,
        *,
        port_name: str,
        ring_id: int,
        queue: int,
        is_tx: bool,
        host: bool,
        num_slots: int,
        pool: BufferPool,
        xsk: XskSocket,
        kid: int,
        first_buf: int,
        frags: bool,
        max_frags: int,
        chunks: np.ndarray | None = None,
        vnet_hdr: int = 0,
    ):
        self.port_name = port_name
        self.ring_id = ring_id
        self.queue = queue
        self.is_tx = is_tx
        self.is_host = host
        self.num_slots = num_slots
        # With a virtio-net header (netmap's NETMAP_REQ_PORT_HDR_SET) the buffer starts
        # that many bytes before the frame: RX prepends a zeroed header, TX strips it.
        self._hdr = vnet_hdr
        self._buf_off = K.XDP_PACKET_HEADROOM - vnet_hdr
        self._chunks = chunks
        self.nr_buf_size = pool.chunk_size - self._buf_off
        self.flags = 0  # netmap ring flags: NR_FORWARD, NR_TIMESTAMP
        # NS_FORWARD transparent mode (set by the port on every NIC RX ring: host rings
        # when the port has them, a host TX ring started on demand otherwise): called
        # with the slots being released when NR_FORWARD is set
        self._forward: Callable[[Ring, np.ndarray], None] | None = None
        self.first_buf = first_buf
        self.slot = pool.slots[first_buf : first_buf + num_slots]
        self.slot[:] = 0
        self._bi = self.slot["buf_idx"]
        self._len = self.slot["len"]
        self._fl = self.slot["flags"]
        self._pos = np.arange(2 * num_slots, dtype=np.intp) % num_slots
        self._gpos = self._pos + first_buf  # global slot numbers (BufferPool.slots)
        self._pool = pool
        self._shift = pool.chunk_size.bit_length() - 1  # chunks are a power of two
        self._chunk_mask = np.uint64(pool.chunk_size - 1)
        self._xsk = xsk
        self._kid = kid
        self._frags = frags
        self._max_frags = max_frags
        self._what = f"{port_name} {'TX' if is_tx else 'RX'} ring {ring_id} (queue {queue})"
        bufs = pool.take_free(first_buf, num_slots, self._what)
        self._bi[:] = bufs
        self.head = self.cur = 0
        if is_tx:
            pool.owner[bufs] = APP
            self._start(tail=num_slots - 1, kernel_rx=0)  # all but the hole: the user's
        else:
            # every buffer of an RX ring starts on the FILL ring, as a NIC's do
            pool.owner[bufs] = krx(kid)
            fill = xsk.fill
            assert fill is not None and fill.free(num_slots) >= num_slots
            fill.desc[fill.slots(num_slots)] = bufs.astype(np.uint64) * pool.chunk_size
            fill.submit(num_slots)
            self._start(tail=0, kernel_rx=num_slots)

    def _start(self, tail: int, kernel_rx: int) -> None:
        self._tail = tail
        self._hwcur = 0
        self._inflight = 0
        self._kernel_rx = kernel_rx
        self._local_done: list[np.ndarray] = []
        self.stats = dict.fromkeys(STATS, 0)

    # --- what netmap users call ---------------------------------------------------------
    @property
    def tail(self) -> int:
        return self._tail

    def next(self, i: int, n: int = 1) -> int:
        """nm_ring_next, generalised: the slot ``n`` after ``i``."""
        return (i + n) % self.num_slots

    def space(self) -> int:
        """nm_ring_space: slots between head and tail (frames to read / slots to fill).
        Like netmap's it counts from ``head``: slots the application moved ``cur`` past
        but did not release are still its own."""
        return (self._tail - self.head) % self.num_slots

    def empty(self) -> bool:
        """nm_ring_empty: head == tail (nothing of the application's left in the ring)."""
        return self.head == self._tail

    @property
    def cur(self) -> int:
        """netmap's ``cur``: where the application wants to be woken. ``cur == tail`` asks
        to sleep until more arrives (RX) or more room is back (TX); see Port.fileno()."""
        return self._cur

    @cur.setter
    def cur(self, value: int) -> None:
        self._cur = value
        ready = self._ready
        # fileno() changes only when the application catches up with tail (ready ->
        # not ready) or moves cur back from it (not ready -> ready)
        if ready is not None and (ready.raised or value != self.tail):
            ready.update()

    def tx_pending(self) -> bool:
        """nm_tx_pending: transmissions handed to the kernel and not yet completed."""
        return self.next(self._tail) != self.head

    def slots_from_head(self, n: int) -> np.ndarray:
        """Slot indices head .. head+n-1 (mod num_slots), for batch work on ``slot``."""
        if not 0 <= n <= self.num_slots:
            raise RingError(
                f"{self._what}: {n} slots asked for, the ring has {self.num_slots}",
                reason="count",
            )
        return self._pos[self.head : self.head + n]

    def slots_from(self, start: int, n: int) -> np.ndarray:
        return self._pos[start % self.num_slots : start % self.num_slots + n]

    @property
    def hwcur(self) -> int:
        return self._hwcur

    def waiting(self) -> int:
        """What the kernel handed back that no sync has taken yet (TX: completions, RX:
        frames on the socket's RX ring)."""
        kring = self._xsk.comp if self.is_tx else self._xsk.rx
        return kring.available() if kring is not None else 0

    def buf(self, buf_idx: int) -> Buffer:
        """NETMAP_BUF(ring, buf_idx): buffer ``buf_idx`` of the port's memory as a
        writable uint8 array of nr_buf_size bytes (no copy; slices take bytes-likes)."""
        chunks = self._chunks
        if chunks is None:
            raise ValueError(f"{self._what}: the port is closed")
        if not 0 <= buf_idx < chunks.shape[0]:
            raise IndexError(
                f"{self._what}: buf_idx {buf_idx} out of range 0..{chunks.shape[0] - 1}"
            )
        return as_buffer(chunks[buf_idx, self._buf_off :])

    # --- refusals (shared by both implementations) ----------------------------------------
    def _refusal(
        self, reason: str, slot: int | None, buf_idx: int | None, detail: int, nothing: str
    ) -> RingError:
        """The RingError of a refused sync, after netmap_ring_reinit's answer (head = cur
        = hwcur); a copied buf_idx also gets the slot's own buffer back when it can."""
        hw = self._hwcur
        h, c = self.head, self.cur
        self.head = self.cur = hw
        if reason == "head_cur":
            return RingError(
                f"{self._what}: head {h} / cur {c} outside [hwcur {hw}, tail {self._tail}]; "
                f"ring reset to head = cur = {hw}, nothing sent or released",
                reason=reason,
            )
        b = buf_idx
        if reason == "len":
            why = f"slot {slot}: len {detail} outside {self._hdr + 1}..{self.nr_buf_size}"
        elif reason == "range":
            why = (
                f"slot {slot}: buf_idx {b} out of range (the port has {self._pool.nchunks} buffers)"
            )
        elif reason == "owner":
            why = (
                f"slot {slot}: buf_idx {b} is not in a ring slot but {BufferPool.describe(detail)}"
            )
        elif reason == "twice":
            why = f"slot {slot}: buf_idx {b} appears twice in one batch"
        elif reason == "copied":
            why = (
                f"slot {slot}: buf_idx {b} is still in another slot (global slot {detail}): "
                f"copied, not swapped"
            )
            assert slot is not None
            own = self._pool.restore_slot(self.first_buf + slot)
            if own is not None:
                why += f"; the slot's own buffer {own} was put back"
        elif reason == "morefrag":
            why = (
                f"slot {slot}+: NS_MOREFRAG on a port opened without multi-buffer support "
                f"(open it with frags=True)"
            )
        elif reason == "never_ends":
            why = (
                f"slot {slot}: NS_MOREFRAG chain of {detail} slots never ends "
                f"(at most {self._max_frags} fragments per frame)"
            )
        else:  # "frags"
            why = f"slot {slot}: a frame of more than {self._max_frags} fragments"
        return RingError(
            f"{self._what}: {why}; ring reset to head = cur = {hw}, nothing {nothing}",
            slot=slot,
            buf_idx=b,
            reason=reason,
        )

    def _refuse(
        self,
        reason: str,
        slot: int | None = None,
        buf_idx: int | None = None,
        detail: int = 0,
        nothing: str = "sent",
    ) -> NoReturn:
        self.stats["refused"] += 1
        raise self._refusal(reason, slot, buf_idx, detail, nothing)

    def set_forward(self, hook: Callable[[Ring, np.ndarray], None] | None) -> None:
        """Install (or remove, with None) the NS_FORWARD hook: rxsync calls it with the
        slots being released while the ring's NR_FORWARD flag is set."""
        self._forward = hook

    def detach(self) -> None:
        """Forget the UMEM and the socket's rings (the port closed): a Ring the
        application keeps must not keep them mapped."""
        self._chunks = None

    def txsync(self) -> int:
        raise NotImplementedError

    def rxsync(self) -> int:
        raise NotImplementedError

    # --- the invariant --------------------------------------------------------------------
    def held_unchecked(self) -> tuple[np.ndarray, int, int]:
        """Like held(), without checking anything (for teardown)."""
        n = self.num_slots
        hw, t = self._hwcur, self._tail
        if self.is_tx:
            # not yet submitted [hwcur, head), the user's [head, tail) and the hole at tail
            span = (t - hw) % n + 1
            return self._bi[self._pos[hw : hw + span]], 0, 0
        held = (t - hw) % n
        return self._bi[self._pos[hw : hw + held]], 0, 0

    def held(self) -> tuple[np.ndarray, int, int]:
        """(buf_idx held in slots, count expected with the kernel for RX, for TX)."""
        n = self.num_slots
        hw, t, inflight, kernel_rx = self._hwcur, self._tail, self._inflight, self._kernel_rx
        if self.is_tx:
            # not yet submitted [hwcur, head), the user's [head, tail) and the hole at tail
            # (by hwcur and tail only: head is the application's and may be out of bounds)
            idx = self._pos[hw : hw + (t - hw) % n + 1]
            inflight_idx = self._pos[t + 1 : t + 1 + inflight]
            if (hw - t - 1) % n != inflight:
                raise InvariantError(
                    f"{self._what}: {inflight} in flight but slots "
                    f"({t}, {hw}) count {(hw - t - 1) % n}"
                )
            inflight_bufs = self._bi[inflight_idx]
            if not (self._pool.owner[inflight_bufs] == ktx(self._kid)).all():
                raise InvariantError(
                    f"{self._what}: an in-flight slot's buffer is not with the kernel"
                )
            return self._bi[idx], 0, inflight
        # [hwcur, head) was released by the user but not yet synced: still in the slots
        held = (t - hw) % n
        idx = self._pos[hw : hw + held]
        if kernel_rx + held != n:
            raise InvariantError(
                f"{self._what}: {kernel_rx} buffers with the kernel + {held} in slots != {n} slots"
            )
        return self._bi[idx], kernel_rx, 0


STATS = (
    "frames",
    "bytes",
    "syncs",
    "kicks",
    "kick_retry",
    "refused",
    "hdr_refused",
    "tx_dropped",
)


class PyRing(Ring):
    """The reference model: every rule of a sync in numpy (batches) and Python scalars
    (one slot), checking every released or submitted slot in full."""

    def _check_indices(self) -> None:
        """netmap's *_prologue: head and cur must lie in [hwcur, tail]. On violation netmap
        reinitialises the ring; we do the same (head = cur = hwcur, nothing moved)."""
        n = self.num_slots
        h, c, hw, t = self.head, self.cur, self._hwcur, self._tail
        ok = (
            isinstance(h, int | np.integer)
            and isinstance(c, int | np.integer)
            and 0 <= h < n
            and 0 <= c < n
            and (h - hw) % n <= (t - hw) % n
            and (c - h) % n <= (t - h) % n
        )
        if not ok:
            self._refuse("head_cur")

    def _first_bad(self, start: int, count: int) -> None:
        """The full ownership check of ``count`` user slots from ``start``; refuses."""
        if count == 1:
            bad1 = self._pool.check_one(int(self._bi[start]), int(self._gpos[start]))
            if bad1 is not None:
                reason, detail = bad1
                self._refuse(reason, start, int(self._bi[start]), detail, self._nothing)
            return
        span = self._span(start, count)
        bad = self._pool.first_bad(self._bi[span], self._gpos[span])
        if bad is not None:
            i, reason, b, detail = bad
            self._refuse(reason, (start + i) % self.num_slots, b, detail, self._nothing)

    @property
    def _nothing(self) -> str:
        return "sent" if self.is_tx else "released"

    def rxsync(self) -> int:
        """Release ``[hwcur, head)`` to the kernel, then take what arrived. Returns the
        number of new frames."""
        self._check_indices()
        n = self.num_slots
        xsk = self._xsk
        fill, rx = xsk.fill, xsk.rx
        if fill is None or rx is None:
            raise InterfaceChangedError(f"{self._what}: socket closed")
        self.stats["syncs"] += 1
        hw = self._hwcur
        head = int(self.head)
        released = (head - hw) % n
        if released:
            if self._forward is not None and self.flags & NR_FORWARD:
                # NS_FORWARD slots swap buffers with the other side's TX ring first
                self._forward(self, self._pos[hw : hw + released])
            self._first_bad(hw, released)
            if released == 1:
                b = int(self._bi[hw])
                self._pool.owner[b] = krx(self._kid)
                fill.desc[fill.cached & fill.mask] = b << self._shift
            else:
                bufs = self._bi[self._span(hw, released)]
                self._pool.owner[bufs] = krx(self._kid)
                fill.desc[fill.slots(released)] = bufs.astype(np.uint64) << self._shift
            fill.submit(released)
            self._kernel_rx += released
            self._hwcur = head
            if fill.needs_wakeup():
                xsk.wake_rx()
        busy = (self._tail - head) % n
        got = rx.available(n - 1 - busy)
        if got:
            desc = rx.desc[rx.slots(got)]  # a view while the span does not wrap
            addr = desc["addr"]
            bufs = (addr >> self._shift).astype(np.uint32)
            if ((addr & self._chunk_mask) != K.XDP_PACKET_HEADROOM).any():
                raise InvariantError(
                    f"{self._what}: the kernel placed a frame at an offset "
                    f"other than {K.XDP_PACKET_HEADROOM} in its buffer"
                )
            self._pool.returned(bufs, krx(self._kid), APP, f"{self._what} RX ring")
            t = self._tail
            idx = self._span(t, got)
            lens = desc["len"]
            self._bi[idx] = bufs
            self._pool.where[bufs] = self._gpos[idx]
            if self._hdr:
                assert self._chunks is not None
                self._chunks[bufs, self._buf_off : K.XDP_PACKET_HEADROOM] = 0
                lens = lens + self._hdr
            self._len[idx] = lens
            if self._frags:
                self._fl[idx] = (desc["options"] & K.XDP_PKT_CONTD) * NS_MOREFRAG
            else:
                self._fl[idx] = 0
            self.stats["bytes"] += int(self._len[idx].astype(np.int64).sum())
            rx.release(got)  # only now: desc may be a view of the kernel's ring
            self._kernel_rx -= got
            self._tail = (t + got) % n
            self.stats["frames"] += got
        if self.flags & NR_TIMESTAMP:
            self.ts = time.time()
        if self._ready is not None:
            self._ready.update()
        return got

    def _span(self, start: int, count: int) -> slice | np.ndarray:
        """Slots start .. start+count-1 (mod num_slots): a slice when they do not wrap
        (numpy then works on views), else an index array."""
        if start + count <= self.num_slots:
            return slice(start, start + count)
        return self._pos[start : start + count]

    def txsync(self) -> int:
        """Hand ``[hwcur, head)`` to the kernel, push it out, reclaim completions.

        Returns the number of slots submitted. A batch with a bad slot (buf_idx out of
        range or not the ring's, len 0 or over nr_buf_size, a fragment chain too long) is
        refused whole: RingError, the ring reset to head = cur = hwcur, nothing sent.
        """
        self._check_indices()
        n = self.num_slots
        xsk = self._xsk
        tx = xsk.tx
        if tx is None:
            raise InterfaceChangedError(f"{self._what}: socket closed")
        self.stats["syncs"] += 1
        hw = self._hwcur
        new = (int(self.head) - hw) % n
        sent = 0
        report = False
        if new == 1 and not self._hdr and not int(self._fl[hw]) & NS_MOREFRAG:
            report = self._submit_one(hw)
            sent = 1
        elif new:
            flags = self._fl[self._span(hw, new)]
            more = (flags & NS_MOREFRAG) != 0
            count = new
            if more[-1]:
                if not self._frags:  # no chain can ever go out here: refuse it now
                    self._refuse("morefrag", hw)
                # an unfinished fragment chain waits for its last slot
                ends = np.flatnonzero(~more)
                count = int(ends[-1]) + 1 if ends.size else 0
                if new - count >= self._max_frags:
                    self._refuse("never_ends", hw, None, new - count)
            if count:
                report = bool((flags[:count] & NS_REPORT).any())
                sent = self._submit(self._span(hw, count), count, more[:count], flags[:count])
        self._push(report)
        self._reap()
        if self._ready is not None:
            self._ready.update()
        return sent

    def _submit_one(self, i: int) -> bool:
        """_submit for one slot with Python scalars (ping/pong latency): the same checks."""
        b, ln, fl = int(self._bi[i]), int(self._len[i]), int(self._fl[i])
        if not 0 < ln <= self.nr_buf_size:
            self._refuse("len", i, None, ln)
        self._first_bad(i, 1)
        self._pool.owner[b] = ktx(self._kid)
        tx = self._xsk.tx
        assert tx is not None
        tx.desc[tx.cached & tx.mask] = ((b << self._shift) + K.XDP_PACKET_HEADROOM, ln, 0)
        tx.submit(1)
        self._fl[i] = fl & ~NS_BUF_CHANGED
        self._hwcur = (i + 1) % self.num_slots
        self._inflight += 1
        self.stats["frames"] += 1
        self.stats["bytes"] += ln
        return bool(fl & NS_REPORT)

    def _submit(
        self, idx: slice | np.ndarray, count: int, more: np.ndarray, flags: np.ndarray
    ) -> int:
        hw = self._hwcur
        bufs = self._bi[idx]
        lens = self._len[idx]
        if more.any():
            if not self._frags:
                self._refuse("morefrag", hw)
            # runs of consecutive MOREFRAG slots: a frame is its run plus the slot after
            m8 = more.astype(np.int8)
            starts = np.flatnonzero(np.diff(np.concatenate(([0], m8))) == 1)
            stops = np.flatnonzero(np.diff(np.concatenate((m8, [0]))) == -1)
            long_runs = np.flatnonzero(stops - starts + 2 > self._max_frags)
            if long_runs.size:
                self._refuse("frags", (hw + int(starts[long_runs[0]])) % self.num_slots)
        bad_len = (lens <= self._hdr) | (lens > self.nr_buf_size)
        if bad_len.any():
            i = int(np.argmax(bad_len))
            self._refuse("len", (hw + i) % self.num_slots, None, int(lens[i]))
        self._first_bad(hw, count)
        self._pool.owner[bufs] = ktx(self._kid)
        tx = self._xsk.tx
        assert tx is not None
        if self._hdr:
            # offloads are off, so a header asking for a checksum or segmentation would
            # go out corrupt: such slots are refused one by one, counted, and come back
            # at the next reap as if completed
            assert self._chunks is not None
            hdr = self._chunks[bufs, self._buf_off : self._buf_off + 2]
            bad = ((hdr[:, 0] & K.VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0) | (hdr[:, 1] != 0)
            if bad.any():
                self._local_done.append(bufs[bad])
                self.stats["hdr_refused"] += int(bad.sum())
                keep = ~bad
                bufs, lens, more = bufs[keep], lens[keep], more[keep]
            lens = lens - self._hdr
        kpos = tx.slots(bufs.size)
        tx.desc["addr"][kpos] = (bufs.astype(np.uint64) << self._shift) + K.XDP_PACKET_HEADROOM
        tx.desc["len"][kpos] = lens
        tx.desc["options"][kpos] = more.astype(np.uint32) * K.XDP_PKT_CONTD
        tx.submit(bufs.size)
        self._fl[idx] = flags & ~np.uint16(NS_BUF_CHANGED)
        self._hwcur = (hw + count) % self.num_slots
        self._inflight += count
        self.stats["frames"] += bufs.size
        self.stats["bytes"] += int(lens.astype(np.int64).sum())
        return count

    def _push(self, report: bool) -> None:
        """Make the kernel consume the TX ring. Copy mode sends at most a few dozen frames
        per sendto(), so kick while it makes progress; a transient refusal (EAGAIN, ENOBUFS,
        EBUSY) is counted and retried at the next sync."""
        xsk = self._xsk
        tx = xsk.tx
        assert tx is not None
        while tx.pending() and (report or tx.needs_wakeup()):
            before = int(tx.consumer[0])
            err = xsk.kick_tx()
            self.stats["kicks"] += 1
            if err == errno.EBUSY and not xsk.zerocopy:
                # copy mode: the device refused the frame just taken (NET_XMIT_DROP, e.g.
                # no carrier); the kernel completes it unsent, so count it as dropped
                self.stats["tx_dropped"] += 1
            if int(tx.consumer[0]) == before:
                if err:
                    self.stats["kick_retry"] += 1
                break

    def _reap(self) -> None:
        comp = self._xsk.comp
        assert comp is not None
        kgot = comp.available(self._inflight)
        if not kgot and not self._local_done:
            return
        first = (self._tail + 1) % self.num_slots
        if kgot == 1 and not self._local_done:
            b = int(comp.desc[comp.cached & comp.mask]) >> self._shift
            if int(self._bi[first]) == b and int(self._pool.owner[b]) == ktx(self._kid):
                self._pool.owner[b] = APP  # in order, as expected: the scalar fast path
                self._pool.where[b] = self._gpos[first]
                comp.release(1)
                self._inflight -= 1
                self._tail = first
                return
        bufs = (comp.desc[comp.slots(kgot)] >> self._shift).astype(np.uint32)
        if self._local_done:
            bufs = np.concatenate([bufs, *self._local_done])
            self._local_done.clear()
        got = bufs.size
        self._pool.returned(bufs, ktx(self._kid), APP, f"{self._what} COMPLETION ring")
        comp.release(kgot)
        if not np.array_equal(self._bi[self._span(first, got)], bufs):
            inflight_idx = self._pos[first : first + self._inflight]
            # completions out of submission order: the completed buffers fill the first
            # slots, the still-in-flight ones keep their order behind them
            current = self._bi[inflight_idx]
            rest = current[~np.isin(current, bufs)]
            self._bi[inflight_idx] = np.concatenate((bufs, rest))
        done = self._span(first, got)
        self._pool.where[self._bi[done]] = self._gpos[done]
        self._inflight -= got
        self._tail = (self._tail + got) % self.num_slots


class CRing(Ring):
    """The compiled ring: the same rules as PyRing, run by _ringcore.Core over the same
    memory, checking in full only the slots whose buf_idx the application changed."""

    def _start(self, tail: int, kernel_rx: int) -> None:
        from vtnet_py.netmap import _ringcore

        self._Refused = _ringcore.Refused
        xsk = self._xsk
        pool = self._pool
        chunks = self._chunks
        refs: list[object] = [pool.slots, pool.owner, pool.where, chunks]
        krings: list[tuple[int, ...] | None] = []
        for kr in (xsk.fill, xsk.comp, xsk.rx, xsk.tx):
            if kr is None:
                krings.append(None)
                continue
            refs.append(kr)
            refs.extend((kr.producer, kr.consumer, kr.flags, kr.desc))
            krings.append(
                (
                    kr.producer.ctypes.data,
                    kr.consumer.ctypes.data,
                    kr.flags.ctypes.data,
                    kr.desc.ctypes.data,
                    kr.size,
                    kr.cached,
                    kr.peer,
                )
            )
        for arr in (pool.slots, pool.owner, pool.where):
            assert arr.flags["C_CONTIGUOUS"]
        self._core = _ringcore.Core(
            refs=tuple(refs),
            xsk=xsk,
            what=self._what,
            gslots=pool.slots.ctypes.data,
            owner=pool.owner.ctypes.data,
            where=pool.where.ctypes.data,
            chunks=chunks.ctypes.data if chunks is not None else 0,
            nchunks=pool.nchunks,
            chunk_size=pool.chunk_size,
            first_buf=self.first_buf,
            num_slots=self.num_slots,
            is_tx=self.is_tx,
            kid=self._kid,
            hdr=self._hdr,
            nr_buf_size=self.nr_buf_size,
            frags=self._frags,
            max_frags=self._max_frags,
            zerocopy=bool(getattr(xsk, "zerocopy", False)),
            fd=xsk.fileno(),
            fill=krings[0],
            comp=krings[1],
            rx=krings[2],
            tx=krings[3],
            tail=tail,
            kernel_rx=kernel_rx,
        )
        if self._hdr and chunks is None:
            raise ValueError(f"{self._what}: a virtio-net header needs the buffers")
        self._txsync = self._core.txsync
        self._rxsync = self._core.rxsync

    @property
    def _tail(self) -> int:  # type: ignore[override]
        return int(self._core.tail)

    @property
    def _hwcur(self) -> int:  # type: ignore[override]
        return int(self._core.hwcur)

    @property
    def _inflight(self) -> int:  # type: ignore[override]
        return int(self._core.inflight)

    @property
    def _kernel_rx(self) -> int:  # type: ignore[override]
        return int(self._core.kernel_rx)

    @property
    def tail(self) -> int:
        return self._core.tail

    @property
    def hwcur(self) -> int:
        return self._core.hwcur

    @property
    def stats(self) -> dict[str, int]:  # type: ignore[override]
        return dict(zip(STATS, self._core.counters(), strict=True))

    @property
    def ts(self) -> float:  # type: ignore[override]
        return float(self._core.ts)

    def waiting(self) -> int:
        return int(self._core.waiting())

    def detach(self) -> None:
        super().detach()
        self._core.close()

    def txsync(self) -> int:
        """Hand ``[hwcur, head)`` to the kernel, push it out, reclaim completions (see
        PyRing.txsync for the rules)."""
        if self._xsk.tx is None:
            raise InterfaceChangedError(f"{self._what}: socket closed")
        try:
            sent = self._txsync(self.head, self._cur)
        except self._Refused as r:
            reason, slot, buf_idx, detail = r.args
            raise self._refusal(reason, slot, buf_idx, detail, "sent") from None
        if self._ready is not None:
            self._ready.update()
        return sent

    def rxsync(self) -> int:
        """Release ``[hwcur, head)`` to the kernel, then take what arrived (see
        PyRing.rxsync for the rules)."""
        if self._xsk.rx is None:
            raise InterfaceChangedError(f"{self._what}: socket closed")
        try:
            if self._forward is not None and self.flags & NR_FORWARD:
                self._core.prologue(self.head, self.cur)
                hw = self._core.hwcur
                released = (self.head - hw) % self.num_slots
                if released:
                    self._forward(self, self._pos[hw : hw + released])
            got = self._rxsync(self.head, self._cur, self.flags)
        except self._Refused as r:
            reason, slot, buf_idx, detail = r.args
            raise self._refusal(reason, slot, buf_idx, detail, "released") from None
        if self._ready is not None:
            self._ready.update()
        return got
