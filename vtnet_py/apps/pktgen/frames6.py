"""IPv6/UDP frames for pkt-gen's ``-6``: FrameGen's walk and batches, IPv6's layout.

pkt-gen's IPv6 frame: Ethernet, a 40-byte IPv6 header (version 6, traffic class and
flow label 0, next header UDP, hop limit 64), UDP, the payload.  The walk moves one
16-bit group of each address (addresses.IPRange6), so the changing bytes are bytes
18..62 of the frame (payload length, the two addresses, the UDP header) plus the
sequence number: 24 big-endian words, patched in one assignment per batch as for
IPv4.  IPv6 has no header checksum; the UDP checksum is mandatory and covers the
pseudo-header of RFC 8200 section 8.1 (source, destination, upper-layer length,
next header), computed here for the batch from precomputed partial sums.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vtnet_py.apps.pktgen.addresses import IPRange6
from vtnet_py.apps.pktgen.checksum import words_of
from vtnet_py.apps.pktgen.frames import FrameGen
from vtnet_py.apps.pktgen.spec import ETH_HLEN, HDRS6_LEN, IP6_HLEN, SEQ_LEN, UDP_HLEN, FrameSpec

ETHERTYPE_IPV6 = 0x86DD
OFF6_PLEN = 18
OFF6_PAYLOAD = HDRS6_LEN
OFF6_SEQ = OFF6_PAYLOAD
OFF6_STAMP = OFF6_PAYLOAD + SEQ_LEN
_IP6_VFC = 0x60  # version 6, traffic class 0 (its high nibble)
_IPPROTO_UDP = 17
_IP6_HLIM = 64  # IPV6_DEFHLIM, as pkt-gen

# word indexes in the patch, which starts at the payload length (byte 18)
W6_PLEN, W6_NH_HLIM = 0, 1
W6_SRC, W6_DST = 2, 10  # eight words each
W6_SPORT, W6_DPORT, W6_ULEN, W6_USUM, W6_SEQ = 18, 19, 20, 21, 22
N6_WORDS = 24
PATCH6_LEN_NOSEQ = OFF6_PAYLOAD - OFF6_PLEN  # 44
PATCH6_LEN_SEQ = PATCH6_LEN_NOSEQ + SEQ_LEN  # 48


def _addr_words(addr: int) -> npt.NDArray[np.uint16]:
    return np.array([(addr >> (16 * (7 - i))) & 0xFFFF for i in range(8)], np.uint16)


class FrameGen6(FrameGen):
    """FrameGen for IPv6 ranges (``spec.src`` and ``spec.dst`` are IPRange6)."""

    def _layout(self) -> None:
        src, dst = self.spec.src, self.spec.dst
        assert isinstance(src, IPRange6) and isinstance(dst, IPRange6)
        self.patch_off = OFF6_PLEN
        self.patch_len = PATCH6_LEN_NOSEQ if self.spec.payload == "plain" else PATCH6_LEN_SEQ
        self.payload_off = OFF6_PAYLOAD
        self.stamp_off = OFF6_STAMP
        self._w_seq = W6_SEQ
        self._w_usum = W6_USUM
        self._src_word = W6_SRC + src.group
        self._dst_word = W6_DST + dst.group
        self._row0 = np.zeros(N6_WORDS, np.uint16)
        self._row0[W6_NH_HLIM] = _IPPROTO_UDP << 8 | _IP6_HLIM
        self._row0[W6_SRC : W6_SRC + 8] = _addr_words(src.base)
        self._row0[W6_DST : W6_DST + 8] = _addr_words(dst.base)
        # pseudo-header: the fixed groups of both addresses and the next header
        self._udp_const = np.uint64(words_of(src.base, 16) + words_of(dst.base, 16) + _IPPROTO_UDP)

    def _fixed_headers(self, e: npt.NDArray[np.uint8]) -> None:
        e[12:14] = (ETHERTYPE_IPV6 >> 8, ETHERTYPE_IPV6 & 0xFF)
        e[14] = _IP6_VFC

    def _compute(
        self,
        k: npt.NDArray[np.int64],
        length: npt.NDArray[np.uint16],
        seq: npt.NDArray[np.uint64] | None,
        stamp: npt.NDArray[np.uint64] | None,
        template_only: bool = False,
    ) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.uint64]]:
        src, sport, dst, dport = self._walk(k, template_only)
        n = k.shape[0]
        ulen = length.astype(np.uint64) - np.uint64(ETH_HLEN + IP6_HLEN)
        w = np.empty((n, N6_WORDS), np.uint16)
        w[:] = self._row0
        w[:, W6_PLEN] = ulen  # the payload length is the UDP length: no extension headers
        w[:, self._src_word] = src
        w[:, self._dst_word] = dst
        w[:, W6_SPORT] = sport
        w[:, W6_DPORT] = dport
        w[:, W6_ULEN] = ulen
        pay_len = (ulen - np.uint64(UDP_HLEN)).astype(np.intp)
        # the upper-layer length is in the pseudo-header and in the UDP header
        usum = (
            self._udp_const
            + src.astype(np.uint64)
            + dst.astype(np.uint64)
            + (ulen << np.uint64(1))
            + sport.astype(np.uint64)
            + dport.astype(np.uint64)
            + self._pay_prefix[pay_len]
        )
        self._finish(w, usum, seq, stamp)
        return w, usum


def make_framegen(spec: FrameSpec, seed: int | None = None) -> FrameGen:
    """The generator for ``spec``: IPv6 frames (FrameGen6) or IPv4 ones (FrameGen)."""
    if spec.ipv6 and spec.raw is None:
        return FrameGen6(spec, seed)
    return FrameGen(spec, seed)
