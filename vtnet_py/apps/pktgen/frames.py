"""Ethernet/IPv4/UDP frames for pkt-gen, built and patched in numpy batches.

pkt-gen keeps one template frame and, after each packet, moves the addresses
one step along the ranges given with ``-s``/``-d`` (``ip[:port][-ip[:port]]``).
The walk is an odometer whose digits are, fastest first: source port, source
address, destination port, destination address.  A digit below its upper end
steps by one and the walk stops; a digit at its end returns to its start and
carries into the next digit.  ``-z`` replaces both source digits with random
values on every step and always carries; ``-Z`` replaces the destination
digits with random values whenever a carry reaches them.  The first packet
always carries the range starts.

Here packet ``k`` (counting from 0) is computed directly from ``k`` by
mixed-radix arithmetic, so a whole batch is one set of numpy operations, and
the IPv4 header checksum and the UDP checksum are computed for the batch from
precomputed partial sums (no per-packet Python loop).  Unlike pkt-gen, whose
checksums are only patched incrementally and go stale with ``-l``/``-l``
random sizes, every frame built here carries correct lengths and checksums.

Nothing here touches the network: the functions fill numpy arrays (a UMEM
view or a private array).  On error nothing is written.  IPv6 frames (``-6``)
are frames6.FrameGen6, the same walk over one 16-bit group of the address;
``frames6.make_framegen`` picks the class.  A frame read from a pcap file (``-P``) is sent
as it is: ``FrameSpec.raw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vtnet_py.apps.pktgen.checksum import finish, fold, words32
from vtnet_py.apps.pktgen.spec import (
    ETH_HLEN,
    IP_HLEN,
    OFF_IP_LEN,
    OFF_PAYLOAD,
    OFF_STAMP,
    SEQ_LEN,
    STAMP_LEN,
    UDP_HLEN,
)
from vtnet_py.apps.pktgen.spec import FrameSpec as FrameSpec  # the frames' public type

# IPv4 header constants, as pkt-gen sets them: version 4 / IHL 5, TOS
# "low delay", id 0, Don't Fragment, TTL 64, protocol UDP.
_IP_VER_IHL = 0x45
_IP_TOS = 0x10
_IP_FRAG_DF = 0x4000
_IP_TTL = 64
_IPPROTO_UDP = 17

PAYLOAD_TEXT = b"vtnetmap pkt-gen payload over AF_XDP, netmap rings from Python.\n"

# The bytes of a frame that change from one packet to the next are bytes 16..46
# of the Ethernet frame: 15 big-endian 16-bit words.  A batch is built as an
# (n, 15) uint16 matrix, byte-swapped once, and written with one fancy-indexed
# assignment.
W_IP_LEN, W_IP_ID, W_IP_OFF, W_TTL_P, W_IP_SUM = range(5)
W_SRC_HI, W_SRC_LO, W_DST_HI, W_DST_LO = range(5, 9)
W_SPORT, W_DPORT, W_ULEN, W_USUM, W_SEQ_HI, W_SEQ_LO = range(9, 15)
N_WORDS = 15
PATCH_OFFSET = OFF_IP_LEN
PATCH_LEN_NOSEQ = OFF_PAYLOAD - OFF_IP_LEN  # 26
PATCH_LEN_SEQ = PATCH_LEN_NOSEQ + SEQ_LEN  # 30
# Walks with at most this many distinct positions are precomputed once.
TABLE_MAX = 1 << 16


def _payload_pattern(n: int) -> npt.NDArray[np.uint8]:
    reps = n // len(PAYLOAD_TEXT) + 1
    return np.frombuffer(PAYLOAD_TEXT * reps, dtype=np.uint8)[:n].copy()


@dataclass
class FrameBatch:
    """The changing words of a batch and the slot lengths.

    ``words`` is (n, 15) uint16 in host order (see ``W_*``); the address and
    port properties decode it (tests, diagnostics).  IPv6 batches (frames6) have
    their own word layout, which these properties do not decode.
    """

    words: npt.NDArray[np.uint16] = field(repr=False)
    length: npt.NDArray[np.uint16]  # Ethernet frame length (no vnet header)
    slot_len: npt.NDArray[np.uint16]  # what goes into slot.len: vnet header + frame
    stamp: npt.NDArray[np.uint64] | None = None  # ping send times (ns)

    def __len__(self) -> int:
        return int(self.words.shape[0])

    def _u32(self, hi: int) -> npt.NDArray[np.uint32]:
        w = self.words.astype(np.uint32)
        return ((w[:, hi] << np.uint32(16)) | w[:, hi + 1]).astype(np.uint32)

    @property
    def src(self) -> npt.NDArray[np.uint32]:
        return self._u32(W_SRC_HI)

    @property
    def dst(self) -> npt.NDArray[np.uint32]:
        return self._u32(W_DST_HI)

    @property
    def sport(self) -> npt.NDArray[np.uint16]:
        return self.words[:, W_SPORT]

    @property
    def dport(self) -> npt.NDArray[np.uint16]:
        return self.words[:, W_DPORT]

    @property
    def seq(self) -> npt.NDArray[np.uint32]:
        return self._u32(W_SEQ_HI)

    def patch_bytes(self, patch_len: int) -> npt.NDArray[np.uint8]:
        """The words as wire bytes, (n, patch_len)."""
        be = self.words.astype(">u2")
        return be.view(np.uint8).reshape(len(self), 2 * self.words.shape[1])[:, :patch_len]


class FrameGen:
    """Frames for one pkt-gen thread: a template plus vectorised per-batch patches.

    ``next_batch(n)`` returns the changing words of the next ``n`` packets of
    the walk; ``write(bufs, rows, batch)`` patches them into buffers that
    already hold the template (``init_rows``); ``frames(n)`` returns complete
    frames in a fresh array (tests, AF_PACKET senders).

    Walks of fixed-length frames with at most TABLE_MAX positions (the common
    case) are computed once into a table; a batch is then one ``take`` plus
    the sequence words and their checksum adjustment.
    """

    def __init__(self, spec: FrameSpec, seed: int | None = None) -> None:
        self.spec = spec
        self._rng = np.random.default_rng(seed)
        self._k = 0  # index of the next packet of the walk
        self._seq = 0  # next sequence number (txseq/ping), 32-bit wrapping
        # -Z: the destination last drawn and the carry count it belongs to.
        self._dst_carries = 0
        self._dst_last = (spec.dst.start, spec.dst.port0)
        self.vh = spec.vnet_hdr_len
        self._layout()
        self._table: npt.NDArray[np.uint16] | None = None
        self._table_usum: npt.NDArray[np.uint64] | None = None
        if spec.raw is not None:
            self.patch_len = 0  # nothing changes from one frame to the next
            self.template = np.concatenate(
                [np.zeros(self.vh, np.uint8), np.frombuffer(spec.raw, np.uint8)]
            )
            return
        self.template = self._build_template()
        period = self.period
        if period is not None and period <= TABLE_MAX and not spec.random_length:
            k = np.arange(period, dtype=np.int64)
            n = period
            words, usum = self._compute(
                k, np.full(n, spec.length, np.uint16), None, None, template_only=True
            )
            self._table, self._table_usum = words, usum

    @property
    def period(self) -> int | None:
        """Packets after which the walk repeats (None with -z/-Z)."""
        s = self.spec
        if s.random_src or s.random_dst:
            return None
        return s.src.n_ports * s.src.n_addrs * s.dst.n_ports * s.dst.n_addrs

    # -- template -----------------------------------------------------------

    def _layout(self) -> None:
        """Where the changing bytes are, and the constant parts of the checksums
        (everything but addresses, ports, lengths and payload)."""
        plain = self.spec.payload == "plain"
        self.patch_off = PATCH_OFFSET
        self.patch_len = PATCH_LEN_NOSEQ if plain else PATCH_LEN_SEQ
        self.payload_off = OFF_PAYLOAD
        self.stamp_off = OFF_STAMP
        self._w_seq = W_SEQ_HI
        self._w_usum = W_USUM
        self._ip_const = np.uint64(
            (_IP_VER_IHL << 8 | _IP_TOS) + _IP_FRAG_DF + (_IP_TTL << 8 | _IPPROTO_UDP)
        )
        self._udp_const = np.uint64(_IPPROTO_UDP)
        self._row0 = np.zeros(N_WORDS, np.uint16)
        self._row0[W_IP_OFF] = _IP_FRAG_DF
        self._row0[W_TTL_P] = _IP_TTL << 8 | _IPPROTO_UDP

    def _fixed_headers(self, e: npt.NDArray[np.uint8]) -> None:
        """The header bytes outside the patched words."""
        e[12:14] = (0x08, 0x00)
        e[14] = _IP_VER_IHL
        e[15] = _IP_TOS

    def _build_template(self) -> npt.NDArray[np.uint8]:
        s = self.spec
        t = np.zeros(self.vh + s.length, dtype=np.uint8)
        e = t[self.vh :]
        e[0:6] = np.frombuffer(s.dst_mac, np.uint8)
        e[6:12] = np.frombuffer(s.src_mac, np.uint8)
        self._fixed_headers(e)
        pay = _payload_pattern(s.length - self.payload_off)
        # Sequence and stamp bytes are zero in the template; their words are
        # added to the UDP checksum per packet.
        if s.payload != "plain":
            pay[:SEQ_LEN] = 0
        if s.payload == "ping":
            pay[SEQ_LEN : SEQ_LEN + STAMP_LEN] = 0
        e[self.payload_off :] = pay
        # Weighted prefix sums of the payload bytes: element m is the 16-bit
        # word sum (unfolded) of the first m payload bytes (an odd last byte
        # is a high byte), so any frame length's payload sum is one lookup.
        weights = np.where(np.arange(pay.shape[0]) % 2 == 0, 256, 1).astype(np.uint64)
        self._pay_prefix = np.concatenate(
            [np.zeros(1, np.uint64), np.cumsum(pay.astype(np.uint64) * weights, dtype=np.uint64)]
        )
        # Headers and checksums of packet 0 (range starts, full length),
        # without advancing the walk.
        words, usum = self._compute(
            np.zeros(1, np.int64), np.full(1, s.length, np.uint16), None, None, template_only=True
        )
        b = FrameBatch(words, np.full(1, s.length, np.uint16), np.zeros(1, np.uint16))
        e[self.patch_off : self.patch_off + self.patch_len] = b.patch_bytes(self.patch_len)[0]
        return t

    # -- the walk -----------------------------------------------------------

    def _walk(
        self, k: npt.NDArray[np.int64], template_only: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        s, d = self.spec.src, self.spec.dst
        n = k.shape[0]
        src: np.ndarray
        sport: np.ndarray
        dst: np.ndarray
        dport: np.ndarray
        if self.spec.random_src and not template_only:
            first = k == 0
            src = np.asarray(self._rng.integers(0, 1 << s.addr_bits, n, dtype=np.int64))
            sport = np.asarray(self._rng.integers(0, 1 << 16, n, dtype=np.int64))
            src[first] = s.start
            sport[first] = s.port0
            carries = k  # every step of a random source carries into dst
        else:
            sport = s.port0 + k % s.n_ports
            q = k // s.n_ports
            src = s.start + q % s.n_addrs
            carries = q // s.n_addrs
        if self.spec.random_dst and not template_only:
            dst, dport = self._random_dst(carries)
        else:
            dport = d.port0 + carries % d.n_ports
            dst = d.start + (carries // d.n_ports) % d.n_addrs
        return src, sport, dst, dport

    def _random_dst(
        self, carries: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        # carries is non-decreasing; each new carry count draws a new random
        # destination, carry count 0 keeps the range start.
        bits = self.spec.dst.addr_bits
        last = self._dst_carries
        new = np.unique(carries[carries > last])
        keys = np.concatenate([[last], new])
        addrs = np.concatenate(
            [[self._dst_last[0]], self._rng.integers(0, 1 << bits, new.shape[0], dtype=np.int64)]
        )
        ports = np.concatenate(
            [[self._dst_last[1]], self._rng.integers(0, 1 << 16, new.shape[0], dtype=np.int64)]
        )
        idx = np.searchsorted(keys, carries)
        self._dst_carries = int(keys[-1])
        self._dst_last = (int(addrs[-1]), int(ports[-1]))
        return addrs[idx], ports[idx]

    def _compute(
        self,
        k: npt.NDArray[np.int64],
        length: npt.NDArray[np.uint16],
        seq: npt.NDArray[np.uint64] | None,
        stamp: npt.NDArray[np.uint64] | None,
        template_only: bool = False,
    ) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.uint64]]:
        """Words of packets ``k`` and their unfolded UDP sums without seq/stamp words."""
        src, sport, dst, dport = self._walk(k, template_only)
        n = k.shape[0]
        src_u = src.astype(np.uint64)
        dst_u = dst.astype(np.uint64)
        ip_len = length.astype(np.uint64) - np.uint64(ETH_HLEN)
        ulen = ip_len - np.uint64(IP_HLEN)
        addr_words = words32(src_u) + words32(dst_u)
        w = np.empty((n, N_WORDS), np.uint16)
        w[:] = self._row0
        w[:, W_IP_LEN] = ip_len
        w[:, W_IP_SUM] = np.uint64(0xFFFF) - fold(self._ip_const + ip_len + addr_words)
        w[:, W_SRC_HI] = src_u >> np.uint64(16)
        w[:, W_SRC_LO] = src_u & np.uint64(0xFFFF)
        w[:, W_DST_HI] = dst_u >> np.uint64(16)
        w[:, W_DST_LO] = dst_u & np.uint64(0xFFFF)
        w[:, W_SPORT] = sport
        w[:, W_DPORT] = dport
        w[:, W_ULEN] = ulen
        pay_len = (ulen - np.uint64(UDP_HLEN)).astype(np.intp)
        usum = (
            self._udp_const
            + addr_words
            + (ulen << np.uint64(1))
            + sport.astype(np.uint64)
            + dport.astype(np.uint64)
            + self._pay_prefix[pay_len]
        )
        self._finish(w, usum, seq, stamp)
        return w, usum

    def _finish(
        self,
        w: npt.NDArray[np.uint16],
        usum: npt.NDArray[np.uint64],
        seq: npt.NDArray[np.uint64] | None,
        stamp: npt.NDArray[np.uint64] | None,
    ) -> None:
        """Put the sequence words in, and the UDP checksum over ``usum`` plus seq/stamp."""
        total = usum
        ws = self._w_seq
        if seq is not None:
            hi = seq >> np.uint64(16)
            lo = seq & np.uint64(0xFFFF)
            w[:, ws] = hi
            w[:, ws + 1] = lo
            total = total + hi + lo
        else:
            w[:, ws : ws + 2] = 0
        if stamp is not None:
            hi32, lo32 = stamp >> np.uint64(32), stamp & np.uint64(0xFFFFFFFF)
            total = total + words32(hi32) + words32(lo32)
        w[:, self._w_usum] = finish(total)

    # -- public -------------------------------------------------------------

    @property
    def packets_done(self) -> int:
        """How many packets of the walk were handed out so far."""
        return self._k

    def next_batch(self, n: int, stamp: npt.NDArray[np.uint64] | None = None) -> FrameBatch:
        """Changing words of the next ``n`` packets; advances the walk and the sequence.

        ``stamp`` (ping only) is the send time in ns of each packet, which
        goes into the payload and into the UDP checksum.
        """
        if n < 0:
            raise ValueError(f"negative batch size {n}")
        if stamp is not None and self.spec.payload != "ping":
            raise ValueError("stamp is only carried by ping frames")
        s = self.spec
        if s.raw is not None:
            length = np.full(n, s.length, np.uint16)
            self._k += n
            return FrameBatch(np.zeros((n, 0), np.uint16), length, length + np.uint16(self.vh))
        if s.payload == "ping" and stamp is None:
            stamp = np.zeros(n, np.uint64)
        seq = None
        if s.payload != "plain":
            seq = (np.arange(self._seq, self._seq + n, dtype=np.uint64)) & np.uint64(0xFFFFFFFF)
        if self._table is not None and self._table_usum is not None:
            length = np.full(n, s.length, np.uint16)
            period = self._table.shape[0]
            if period == 1:
                w = np.empty((n, self._table.shape[1]), np.uint16)
                w[:] = self._table[0]
                usum = np.full(n, self._table_usum[0], np.uint64)
            else:
                pos = np.arange(self._k, self._k + n, dtype=np.int64) % period
                w = self._table.take(pos, axis=0)
                usum = self._table_usum.take(pos)
            if seq is not None or stamp is not None:
                self._finish(w, usum, seq, stamp)
        else:
            k = np.arange(self._k, self._k + n, dtype=np.int64)
            if s.random_length:
                length = self._rng.integers(s.min_length, s.length, n).astype(np.uint16)
            else:
                length = np.full(n, s.length, dtype=np.uint16)
            w, _ = self._compute(k, length, seq, stamp)
        self._k += n
        self._seq = (self._seq + n) & 0xFFFFFFFF
        slot_len = length + np.uint16(self.vh) if self.vh else length
        return FrameBatch(words=w, length=length, slot_len=slot_len, stamp=stamp)

    def init_rows(self, bufs: npt.NDArray[np.uint8], rows: npt.NDArray[np.integer]) -> None:
        """Copy the template (packet 0, full length) into ``bufs[rows]``."""
        bufs[rows, : self.template.shape[0]] = self.template

    def write(
        self,
        bufs: npt.NDArray[np.uint8],
        rows: npt.NDArray[np.integer],
        batch: FrameBatch,
    ) -> None:
        """Patch the changing bytes of ``batch`` into ``bufs[rows]`` (rows hold the template).

        Also writes the ping stamp when the batch has one.  ``rows`` and the
        batch have the same length.
        """
        off = self.vh + self.patch_off
        bufs[rows, off : off + self.patch_len] = batch.patch_bytes(self.patch_len)
        if batch.stamp is not None:
            off = self.vh + self.stamp_off
            bufs[rows, off : off + STAMP_LEN] = (
                batch.stamp.astype(">u8").view(np.uint8).reshape(-1, STAMP_LEN)
            )

    def frames(self, n: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint16], FrameBatch]:
        """The next ``n`` complete frames in a new array ``(n, max_slot_len)``.

        Returns the array, each frame's slot length (vnet header included)
        and the batch.
        """
        b = self.next_batch(n)
        out = np.empty((n, self.template.shape[0]), dtype=np.uint8)
        rows = np.arange(n)
        self.init_rows(out, rows)
        self.write(out, rows, b)
        return out, b.slot_len, b
