"""pkt-gen's -P reader: classic pcap in both byte orders and both time-stamp units,
and one-line refusals of what holds no frame to send. No kernel needed."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vtnet_py.apps.pktgen.pcap import PcapError, first_packet

FRAME = bytes(range(64))


def pcap_bytes(
    endian: str = "<",
    magic: int = 0xA1B2C3D4,
    linktype: int = 1,
    records: list[bytes] | None = None,
    caplen_delta: int = 0,
) -> bytes:
    """A pcap file written field by field from the format description (libpcap's
    pcap-savefile(5)), independent of the reader under test."""
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for i, data in enumerate(records if records is not None else [FRAME]):
        out += struct.pack(endian + "IIII", 1000 + i, 7, len(data) + caplen_delta, len(data) + 4)
        out += data
    return out


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("magic", [0xA1B2C3D4, 0xA1B23C4D])
def test_first_packet_in_either_byte_order_and_unit(
    tmp_path: Path, endian: str, magic: int
) -> None:
    f = tmp_path / "x.pcap"
    f.write_bytes(pcap_bytes(endian, magic, records=[FRAME, b"second" * 20]))
    p = first_packet(str(f))
    assert p.data == FRAME
    assert (p.seconds, p.fraction, p.orig_len) == (1000, 7, len(FRAME) + 4)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "not a pcap file (empty or too short)"),
        (b"\x0a\x0d\x0d\x0a" + b"\0" * 40, "a pcapng file"),
        (b"GIF89a" + b"\0" * 40, "not a pcap file (magic 47494638)"),
        (pcap_bytes(linktype=113), "link type 113, not Ethernet"),
        (pcap_bytes(records=[]), "no packet in the file"),
        (pcap_bytes()[:30], "the first record header is cut short"),
        (pcap_bytes()[:20], "the file header is cut short"),
        (pcap_bytes(caplen_delta=10), "the first record is cut short (64 of 74 bytes"),
        (pcap_bytes(records=[b"x" * 10], caplen_delta=1 << 20), "claims 1048586 bytes"),
    ],
)
def test_files_without_a_frame_are_refused_in_one_line(
    tmp_path: Path, content: bytes, needle: str
) -> None:
    f = tmp_path / "bad.pcap"
    f.write_bytes(content)
    with pytest.raises(PcapError) as exc:
        first_packet(str(f))
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"-P {f}: ") and needle in msg, msg


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PcapError, match=r"^-P .*/missing.pcap: No such file"):
        first_packet(str(tmp_path / "missing.pcap"))
    with pytest.raises(PcapError, match="Is a directory"):
        first_packet(str(tmp_path))
