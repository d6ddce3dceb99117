"""The one-frame path of ping and pong: a round trip carries one frame per sync.

pkt-gen's ping sends a frame and waits for its reply, so its batches are one frame long,
and numpy's per-call cost (a microsecond or more each; ping's batch path makes some forty
calls per frame) is most of the time between two syscalls. For a batch of one these
helpers do the same work with integer and memoryview operations on the UMEM:

* :class:`PingFrames` hands out ping frames from a precomputed run of the frame
  generator's batches (every frame's changing bytes with a zero stamp, made by numpy
  ``RUN`` frames at a time), then writes the send time and corrects the UDP checksum
  for it (RFC 1624: the stamp's words are added to the one's-complement sum);
* :func:`ping_rtt` reads the stamp back out of a received frame;
* :func:`reflect` is pong's answer to one frame: copy, swap the MAC addresses and the
  IPv4 or IPv6 addresses (a swap keeps the UDP checksum right).

The batch path (frames.py, rxfields.py and pingpong.py's numpy code) stays the reference:
tests/unit/test_pktgen_oneslot.py requires byte-identical frames and equal times from
both. :class:`Umem` is a flat memoryview of the port's buffers; it must be released
before the port closes (an exported buffer keeps the mapping from being unmapped).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vtnet_py.apps.pktgen.frames6 import ETHERTYPE_IPV6
from vtnet_py.apps.pktgen.rxfields import PAYLOAD_OFFSETS
from vtnet_py.apps.pktgen.spec import OFF_ETHERTYPE, SEQ_LEN, STAMP_LEN

RUN = 512  # ping frames precomputed per numpy call
_PAYLOAD_AT = dict(PAYLOAD_OFFSETS)  # ethertype -> UDP payload offset
_MAX_RTT_NS = 60_000_000_000  # a stamp further back is not ours


class Umem:
    """A flat byte view of ``bufs`` (a port's ``bufs``: rows of one UMEM at a fixed
    stride), or ``None`` from :meth:`of` when the array is not laid out that way."""

    def __init__(self, mv: memoryview, first: int, stride: int) -> None:
        self.mv = mv
        self.first = first
        self.stride = stride

    @classmethod
    def of(cls, bufs: np.ndarray) -> Umem | None:
        root = bufs
        while isinstance(root.base, np.ndarray):
            root = root.base
        if not root.flags.c_contiguous or bufs.ndim != 2 or bufs.strides[1] != 1:
            return None
        first = bufs.ctypes.data - root.ctypes.data
        if first < 0:
            return None
        try:
            mv = memoryview(root).cast("B")  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return cls(mv, first, bufs.strides[0])

    def at(self, buf_idx: int) -> int:
        """Offset of buffer ``buf_idx`` in :attr:`mv`."""
        return self.first + buf_idx * self.stride

    def release(self) -> None:
        self.mv.release()


class PingFrames:
    """Ping frames one at a time, byte for byte what ``gen.next_batch(1, stamp)`` and
    ``gen.write`` make, at integer cost. ``gen`` must be a ping generator with a fixed
    frame length (no second -l, no -P)."""

    def __init__(self, gen: Any, vnet_hdr_len: int) -> None:
        self.gen = gen
        self.plen = int(gen.patch_len)
        self.patch_at = vnet_hdr_len + int(gen.patch_off)
        self.sum_at = 2 * int(gen._w_usum)  # the UDP checksum's place in the patch
        self.stamp_at = vnet_hdr_len + int(gen.stamp_off)
        self._patches = memoryview(b"")
        self._sums: list[int] = []
        self._lens: list[int] = []
        self._i = self._n = 0

    def _refill(self) -> None:
        b = self.gen.next_batch(RUN, stamp=np.zeros(RUN, np.uint64))
        patch = np.ascontiguousarray(b.patch_bytes(self.plen))
        self._patches = memoryview(patch.tobytes())
        sums = patch[:, self.sum_at : self.sum_at + 2].astype(np.uint16)
        self._sums = ((sums[:, 0] << 8) | sums[:, 1]).tolist()
        self._lens = b.slot_len.tolist()
        self._i, self._n = 0, RUN

    def write(self, umem: Umem, buf_idx: int, stamp: int) -> int:
        """Write the next frame's changing bytes with send time ``stamp`` (ns) into
        buffer ``buf_idx`` (which holds the template); returns the slot length."""
        if self._i == self._n:
            self._refill()
        i = self._i
        self._i = i + 1
        plen = self.plen
        mv, base = umem.mv, umem.at(buf_idx)
        at = base + self.patch_at
        mv[at : at + plen] = self._patches[i * plen : (i + 1) * plen]
        # RFC 1624: the checksum made with a zero stamp, plus the stamp's four words
        total = (0xFFFF - self._sums[i]) + (
            (stamp >> 48) + ((stamp >> 32) & 0xFFFF) + ((stamp >> 16) & 0xFFFF) + (stamp & 0xFFFF)
        )
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        csum = (0xFFFF - total) or 0xFFFF
        mv[at + self.sum_at : at + self.sum_at + 2] = csum.to_bytes(2, "big")
        st = base + self.stamp_at
        mv[st : st + STAMP_LEN] = stamp.to_bytes(STAMP_LEN, "big")
        return int(self._lens[i])


def ping_rtt(umem: Umem, buf_idx: int, slot_len: int, vh: int, now: int) -> int | None:
    """The round-trip time of one received ping frame, or None for a frame that is not
    IPv4/IPv6 with a seq and stamp, or whose stamp is not from this run's clock."""
    mv, base = umem.mv, umem.at(buf_idx) + vh
    et = int.from_bytes(mv[base + OFF_ETHERTYPE : base + OFF_ETHERTYPE + 2], "big")
    off = _PAYLOAD_AT.get(et)
    if off is None or slot_len < vh + off + SEQ_LEN + STAMP_LEN:
        return None
    at = base + off + SEQ_LEN
    rtt = now - int.from_bytes(mv[at : at + STAMP_LEN], "big")
    return rtt if 0 <= rtt < _MAX_RTT_NS else None


def reflect(umem: Umem, src: int, dst: int, slot_len: int, vh: int) -> None:
    """Pong's answer: frame ``src`` copied into ``dst`` with the MAC addresses swapped,
    and the IPv4 or IPv6 addresses swapped when the frame is long enough to hold them."""
    mv = umem.mv
    s, d = umem.at(src), umem.at(dst)
    mv[d : d + slot_len] = mv[s : s + slot_len]
    e, f = s + vh, d + vh
    mv[f : f + 6] = mv[e + 6 : e + 12]
    mv[f + 6 : f + 12] = mv[e : e + 6]
    et = int.from_bytes(mv[e + OFF_ETHERTYPE : e + OFF_ETHERTYPE + 2], "big")
    if et == 0x0800 and slot_len >= vh + 34:
        mv[f + 26 : f + 30] = mv[e + 30 : e + 34]
        mv[f + 30 : f + 34] = mv[e + 26 : e + 30]
    elif et == ETHERTYPE_IPV6 and slot_len >= vh + 54:
        mv[f + 22 : f + 38] = mv[e + 38 : e + 54]
        mv[f + 38 : f + 54] = mv[e + 22 : e + 38]
