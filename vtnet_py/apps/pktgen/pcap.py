"""A reader for the first packet of a classic pcap file (pkt-gen's ``-P``).

Classic format (not pcapng): a 24-byte file header whose magic number gives the byte
order and the time-stamp unit (0xa1b2c3d4 microseconds, 0xa1b23c4d nanoseconds,
written in either byte order), then records of a 16-byte header (seconds, fraction,
captured length, original length) and the captured bytes.  Only Ethernet captures
(link type 1) hold frames pkt-gen can send.  Errors are one line naming the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vtnet_py.apps.pktgen.addresses import FrameSpecError

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
MAGIC_PCAPNG = 0x0A0D0D0A  # a pcapng section header block
LINKTYPE_ETHERNET = 1
FILE_HDR = 24
REC_HDR = 16
MAX_CAPLEN = 0x40000  # libpcap's MAXIMUM_SNAPLEN: anything larger is a corrupt record


class PcapError(FrameSpecError):
    """A -P file that holds no frame we can send (the message names the file)."""


@dataclass(frozen=True)
class PcapPacket:
    """One record: the captured bytes and what the header says about them."""

    data: bytes
    orig_len: int
    seconds: int
    fraction: int  # microseconds or nanoseconds, per the file's magic number


def first_packet(path: str) -> PcapPacket:
    """The first record of the pcap file at ``path``."""
    try:
        with open(path, "rb") as f:
            head = f.read(FILE_HDR)
            rec = f.read(REC_HDR)
            body_start = f.tell()
            endian, caplen = _check(path, head, rec)
            data = f.read(caplen)
    except OSError as exc:
        raise PcapError(f"-P {path}: {exc.strerror}") from exc
    if len(data) != caplen:
        raise PcapError(
            f"-P {path}: the first record is cut short ({len(data)} of {caplen} bytes "
            f"after offset {body_start})"
        )
    secs, frac, _, orig = struct.unpack(endian + "IIII", rec)
    return PcapPacket(data, orig, secs, frac)


def _check(path: str, head: bytes, rec: bytes) -> tuple[str, int]:
    """The byte order ('<' or '>') and the first record's captured length."""
    if len(head) < 4:
        raise PcapError(f"-P {path}: not a pcap file (empty or too short)")
    for endian in ("<", ">"):
        (magic,) = struct.unpack(endian + "I", head[:4])
        if magic in (MAGIC_USEC, MAGIC_NSEC):
            break
        if magic == MAGIC_PCAPNG:
            raise PcapError(f"-P {path}: a pcapng file; save it as pcap (editcap -F pcap)")
    else:
        raise PcapError(f"-P {path}: not a pcap file (magic {head[:4].hex()})")
    if len(head) < FILE_HDR:
        raise PcapError(f"-P {path}: the file header is cut short")
    (linktype,) = struct.unpack(endian + "I", head[20:24])
    # the low 16 bits are the link type; the upper bits may carry FCS information
    if linktype & 0xFFFF != LINKTYPE_ETHERNET:
        raise PcapError(
            f"-P {path}: link type {linktype & 0xFFFF}, not Ethernet (1): no frame to send"
        )
    if len(rec) == 0:
        raise PcapError(f"-P {path}: no packet in the file")
    if len(rec) < REC_HDR:
        raise PcapError(f"-P {path}: the first record header is cut short")
    caplen = struct.unpack(endian + "I", rec[8:12])[0]
    if caplen > MAX_CAPLEN:
        raise PcapError(f"-P {path}: the first record claims {caplen} bytes: corrupt file")
    return endian, caplen
