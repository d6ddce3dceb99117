"""What a pkt-gen frame is: the Ethernet/IPv4/UDP and IPv6/UDP layouts and FrameSpec,
the frame options (-l, -s/-d, -z/-Z, -H, -P) checked into one value.

Building the frames is frames.py's (IPv4) and frames6.py's (IPv6) work; the receive
side reads the same offsets (rxfields.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vtnet_py._sys.abi import VNET_HDR_LENS
from vtnet_py.apps.pktgen.addresses import (
    DEFAULT_DST,
    DEFAULT_SRC,
    AnyRange,
    FrameSpecError,
    IPRange,
    IPRange6,
)

ETH_HLEN = 14
IP_HLEN = 20
UDP_HLEN = 8
HDRS_LEN = ETH_HLEN + IP_HLEN + UDP_HLEN  # 42: where the UDP payload starts

# Offsets inside the Ethernet frame (after any virtio-net header).
OFF_ETHERTYPE = 12
OFF_IP_LEN = 16
OFF_IP_SUM = 24
OFF_IP_SRC = 26
OFF_IP_DST = 30
OFF_UDP_SPORT = 34
OFF_UDP_DPORT = 36
OFF_UDP_LEN = 38
OFF_UDP_SUM = 40
OFF_PAYLOAD = HDRS_LEN
OFF_SEQ = OFF_PAYLOAD  # txseq/rxseq/ping: 32-bit big-endian sequence number
OFF_STAMP = OFF_PAYLOAD + 4  # ping: 64-bit big-endian send time in ns

SEQ_LEN = 4
STAMP_LEN = 8

DEFAULT_DST_MAC = "ff:ff:ff:ff:ff:ff"

PayloadKind = Literal["plain", "seq", "ping"]

IP6_HLEN = 40
HDRS6_LEN = ETH_HLEN + IP6_HLEN + UDP_HLEN  # 62: where an IPv6 frame's UDP payload starts
MIN_RAW_LEN = ETH_HLEN + 1  # -P: an Ethernet header and something after it


def min_frame_len(payload: PayloadKind, ipv6: bool = False) -> int:
    """The shortest frame (no vnet header) that holds the headers and the payload fields."""
    hdrs = HDRS6_LEN if ipv6 else HDRS_LEN
    return hdrs + {"plain": 0, "seq": SEQ_LEN, "ping": SEQ_LEN + STAMP_LEN}[payload]


@dataclass(frozen=True)
class FrameSpec:
    """What pkt-gen's frame options ask for.

    ``length`` is ``-l`` (frame length without CRC and without the virtio-net
    header).  ``min_length`` is a second ``-l``: when non-zero, every frame
    gets its own random length in ``[min_length, length)`` (pkt-gen draws one
    length per batch and leaves the lengths in the headers stale; here each
    frame's headers and checksums match its length).  IPv6 ranges (IPRange6) make
    IPv6/UDP frames.  ``raw`` (``-P``) is a whole Ethernet frame sent as it is: then
    ``length`` is its length and the address, size and payload options do not apply.
    """

    src_mac: bytes = b"\x00" * 6
    dst_mac: bytes = b"\xff" * 6
    src: AnyRange = field(default_factory=lambda: IPRange.parse(DEFAULT_SRC))
    dst: AnyRange = field(default_factory=lambda: IPRange.parse(DEFAULT_DST))
    length: int = 60
    min_length: int = 0
    random_src: bool = False
    random_dst: bool = False
    vnet_hdr_len: int = 0
    payload: PayloadKind = "plain"
    raw: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.src_mac) != 6 or len(self.dst_mac) != 6:
            raise FrameSpecError("MAC addresses are 6 bytes")
        if self.vnet_hdr_len not in VNET_HDR_LENS:
            raise FrameSpecError(
                f"-H {self.vnet_hdr_len}: virtio-net header length must be 0, 10 or 12"
            )
        if isinstance(self.src, IPRange6) != isinstance(self.dst, IPRange6):
            raise FrameSpecError("-s/-d: both IPv4 or both IPv6 (-6)")
        if self.raw is not None:
            self._check_raw(self.raw)
            return
        lo = min_frame_len(self.payload, self.ipv6)
        if self.length < lo or self.length > 0xFFFF:
            raise FrameSpecError(
                f"-l {self.length}: an {'IPv6' if self.ipv6 else 'IPv4'}/UDP frame for "
                f"-f {self._mode_word()} needs {lo}..65535 bytes"
            )
        if self.min_length:
            if self.min_length < lo or self.min_length > self.length:
                raise FrameSpecError(
                    f"-l {self.min_length}: the minimum size must be in {lo}..{self.length}"
                )

    def _check_raw(self, raw: bytes) -> None:
        if not MIN_RAW_LEN <= len(raw) <= 0xFFFF:
            raise FrameSpecError(
                f"-P: a frame of {len(raw)} bytes (an Ethernet frame has {MIN_RAW_LEN}..65535)"
            )
        if self.payload != "plain" or self.min_length or self.random_src or self.random_dst:
            raise FrameSpecError(
                f"-P: the frame is sent as read; -f {self._mode_word()}, a second -l, "
                "-z and -Z do not apply"
            )
        if not (self.src.is_single and self.dst.is_single):
            raise FrameSpecError("-P: the frame is sent as read; -s/-d ranges do not apply")
        # the frozen dataclass's length follows the frame
        object.__setattr__(self, "length", len(raw))

    @property
    def ipv6(self) -> bool:
        return isinstance(self.src, IPRange6)

    def _mode_word(self) -> str:
        return {"plain": "tx", "seq": "txseq", "ping": "ping"}[self.payload]

    @property
    def varies(self) -> bool:
        """True when consecutive frames differ (so TX must patch every frame)."""
        if self.raw is not None:
            return False
        return (
            not self.src.is_single
            or not self.dst.is_single
            or self.random_src
            or self.random_dst
            or self.payload != "plain"
            or self.random_length
        )

    @property
    def random_length(self) -> bool:
        return bool(self.min_length) and self.min_length < self.length

    @property
    def max_slot_len(self) -> int:
        """Bytes a buffer must hold: virtio-net header plus the longest frame."""
        return self.vnet_hdr_len + self.length
