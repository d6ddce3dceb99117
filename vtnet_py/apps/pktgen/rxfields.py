"""The receive side of pkt-gen's frames: field gathers, sequence numbers, ping stamps.

rxseq and ping read a few bytes of many buffers at once (one 1-D fancy index per
field); SeqTracker does rxseq's accounting per batch.  IPv4 and IPv6 frames carry
the sequence number and the stamp right after their UDP header, so the offset
depends on the ethertype of each frame (``payload_offsets``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vtnet_py.apps.pktgen.frames6 import ETHERTYPE_IPV6, OFF6_PAYLOAD
from vtnet_py.apps.pktgen.spec import OFF_ETHERTYPE, OFF_PAYLOAD, OFF_SEQ, OFF_STAMP

ETHERTYPE_IP = 0x0800
# where each family's UDP payload starts (no IPv4 options, no IPv6 extension headers:
# pkt-gen's frames have none)
PAYLOAD_OFFSETS = ((ETHERTYPE_IP, OFF_PAYLOAD), (ETHERTYPE_IPV6, OFF6_PAYLOAD))


def field_view(bufs: npt.NDArray[np.uint8], offset: int, dtype: str) -> np.ndarray:
    """A 1-D view of one big-endian field at ``offset`` in every row of ``bufs``.

    ``field_view(bufs, 42, ">u4")[rows]`` gathers that field of many buffers
    with one 1-D fancy index, several times faster than a 2-D byte gather.
    """
    size = np.dtype(dtype).itemsize
    return bufs[:, offset : offset + size].view(dtype)[:, 0]


def read_seq(
    bufs: npt.NDArray[np.uint8], rows: npt.NDArray[np.integer], vnet_hdr_len: int = 0
) -> npt.NDArray[np.uint32]:
    """The 32-bit big-endian sequence numbers of frames in ``bufs[rows]``."""
    out: npt.NDArray[np.uint32] = field_view(bufs, vnet_hdr_len + OFF_SEQ, ">u4")[rows].astype(
        np.uint32
    )
    return out


def read_stamp(
    bufs: npt.NDArray[np.uint8], rows: npt.NDArray[np.integer], vnet_hdr_len: int = 0
) -> npt.NDArray[np.uint64]:
    """The 64-bit big-endian ping stamps of frames in ``bufs[rows]``."""
    return field_view(bufs, vnet_hdr_len + OFF_STAMP, ">u8")[rows].astype(np.uint64)


def payload_offsets(
    bufs: npt.NDArray[np.uint8],
    rows: npt.NDArray[np.integer],
    lens: npt.NDArray[np.integer],
    vnet_hdr_len: int,
    need: int,
) -> npt.NDArray[np.int64]:
    """Where the UDP payload of each frame in ``bufs[rows]`` starts (after the
    virtio-net header), or -1 for frames that are neither IPv4 nor IPv6 or hold
    fewer than ``need`` payload bytes (``lens`` are the slot lengths)."""
    et = field_view(bufs, vnet_hdr_len + OFF_ETHERTYPE, ">u2")[rows]
    out = np.full(rows.shape[0], -1, np.int64)
    for ethertype, off in PAYLOAD_OFFSETS:
        out[(et == ethertype) & (lens >= vnet_hdr_len + off + need)] = off
    return out


def gather(
    bufs: npt.NDArray[np.uint8],
    rows: npt.NDArray[np.integer],
    offsets: npt.NDArray[np.int64],
    vnet_hdr_len: int,
    dtype: str,
    skip: int = 0,
) -> npt.NDArray[np.uint64]:
    """The big-endian field ``skip`` bytes into each frame's payload (``offsets`` from
    payload_offsets, all >= 0), one 1-D gather per family present."""
    out = np.empty(rows.shape[0], np.uint64)
    # a loop over the two families, not np.unique: its first call costs tens of ms
    # (numpy imports on demand), long enough for the fill ring to run dry
    for _, off in PAYLOAD_OFFSETS:
        sel = offsets == off
        if sel.all():
            out[:] = field_view(bufs, vnet_hdr_len + off + skip, dtype)[rows]
            break
        if sel.any():
            out[sel] = field_view(bufs, vnet_hdr_len + off + skip, dtype)[rows[sel]]
    return out


@dataclass
class SeqTracker:
    """Sequence-number accounting for rxseq on one ring, vectorised per batch.

    Like pkt-gen, a packet whose number differs from the expected one is a
    *gap* when it is ahead (by less than 2**31) and *out of order* otherwise;
    the expectation then follows the packet.  ``lost`` is the exact count of
    numbers in ``[first, highest]`` never received (duplicates aside), from
    numbers unwrapped to 64 bits, so reordering does not inflate it.
    """

    received: int = 0
    gaps: int = 0
    gap_packets: int = 0
    out_of_order: int = 0
    first: int | None = None
    highest: int = 0
    _last_ext: int = 0
    _last: int = 0

    def update(self, seqs: npt.NDArray[np.uint32]) -> npt.NDArray[np.bool_]:
        """Account a batch; returns a mask of the packets that were not the expected one."""
        n = int(seqs.shape[0])
        if n == 0:
            return np.zeros(0, np.bool_)
        s = seqs.astype(np.uint32)
        if self.first is None:
            self.first = int(s[0])
            self._last = (int(s[0]) - 1) & 0xFFFFFFFF
            self._last_ext = self.first - 1
            self.highest = self.first - 1
        # Fast path: the batch continues the sequence exactly (uint32 wraps).
        if int(s[0]) == (self._last + 1) & 0xFFFFFFFF and (
            n == 1 or bool((np.diff(s) == np.uint32(1)).all())
        ):
            self.received += n
            self._last_ext += n
            self.highest = max(self.highest, self._last_ext)
            self._last = int(s[-1])
            return np.zeros(n, np.bool_)
        prev = np.empty(n, np.uint32)
        prev[0] = self._last
        prev[1:] = s[:-1]
        delta = (s - prev - np.uint32(1)).astype(np.uint32)  # 0 when in sequence
        ahead = (delta != 0) & (delta < np.uint32(0x7FFFFFFF))
        behind = delta >= np.uint32(0x7FFFFFFF)
        self.gaps += int(ahead.sum())
        self.gap_packets += int(delta[ahead].astype(np.int64).sum())
        self.out_of_order += int(behind.sum())
        step = (s - prev).astype(np.uint32).view(np.int32).astype(np.int64)
        ext = self._last_ext + np.cumsum(step)
        self.highest = max(self.highest, int(ext.max()))
        self._last_ext = int(ext[-1])
        self._last = int(s[-1])
        self.received += n
        return ahead | behind

    @property
    def lost(self) -> int:
        if self.first is None:
            return 0
        return max(0, self.highest - self.first + 1 - self.received)

    def as_dict(self) -> dict[str, int]:
        return {
            "received": self.received,
            "lost": self.lost,
            "gaps": self.gaps,
            "gap_packets": self.gap_packets,
            "out_of_order": self.out_of_order,
            "first": -1 if self.first is None else self.first,
            "highest": (self.highest & 0xFFFFFFFF) if self.first is not None else -1,
        }
