"""pkt-gen's newer options without the kernel: -F/-M cutting, -X's dump format, the drop
field of the reports, IPv6 frames (checksums against a plain RFC 1071 sum over the RFC
8200 pseudo-header), IPv6 ranges, raw (-P) frames."""

from __future__ import annotations

import ipaddress
import struct

import numpy as np
import pytest
from nettest import PKTGEN_FINAL2, PKTGEN_PERIODIC

from vtnet_py.apps.pktgen.addresses import FrameSpecError, IPRange, IPRange6
from vtnet_py.apps.pktgen.config import Config, FragPlan
from vtnet_py.apps.pktgen.frames import FrameSpec
from vtnet_py.apps.pktgen.frames6 import make_framegen
from vtnet_py.apps.pktgen.report import Drops, Final, Periodic, d_prefix, hexdump


def rfc1071(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


# -- -F / -M -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "frags", "frag_size", "want"),
    [
        (60, 1, 0, (1, 60, 60)),  # the default: one slot
        (100, 3, 0, (3, 33, 34)),  # pkt-gen: length / frags each, the rest in the last
        (1000, 2, 100, (10, 100, 100)),  # -M below length / frags: as many as needed
        (9014, 1, 0, (3, 3840, 1334)),  # a jumbo frame cut at the buffer size
        (9014, 2, 0, (3, 3840, 1334)),
        (7681, 2, 0, (3, 3840, 1)),  # pkt-gen would put 3841 bytes in one buffer here
        (130, 4, 40, (4, 32, 34)),
    ],
)
def test_frag_plan_follows_pktgen(
    length: int, frags: int, frag_size: int, want: tuple[int, int, int]
) -> None:
    plan = FragPlan.make(length, frags, frag_size, 3840)
    assert (plan.count, plan.size, plan.last) == want
    lens = plan.slot_lens()
    assert sum(lens) == length and max(lens) <= min(frag_size or 3840, 3840)


def test_config_plans_only_for_senders() -> None:
    spec = FrameSpec(length=9014)
    assert Config(port="x", function="tx", spec=spec).frag_plan.count == 3
    assert Config(port="x", function="rx", spec=spec).frag_plan.count == 1


# -- -X ------------------------------------------------------------------------------------


def test_hexdump_is_pktgens_layout() -> None:
    data = bytes(range(0x3E, 0x3E + 20))
    out = hexdump(data, ring=1, cur=7, buf_idx=1234, flags=0x20).splitlines()
    assert out[0] == "ring 1 cur     7 [buf   1234 flags 0x0020 len    20]"
    # "%5d: " then 16 "%02x " then the printable characters, from column 55
    assert out[1] == "    0: " + " ".join(f"{b:02x}" for b in data[:16]) + " " + ">?@ABCDEFGHIJKLM"
    assert out[1].index(">?@") == 55
    assert out[2] == "   16: 4e 4f 50 51 " + " " * 36 + "NOPQ"
    assert hexdump(b"\x00\x7f ~", 0, 0, 0, 0).splitlines()[1].endswith(".. ~")


# -- drop counters -------------------------------------------------------------------------


def test_reports_without_drops_are_pktgens_lines() -> None:
    p = Periodic(1000, 1000, 480000.0, 1000000, 10.0, 5)
    line = d_prefix() + p.line()
    m = PKTGEN_PERIODIC.match(line)
    assert m is not None and m.group(1) is None and line.endswith("5 min_space")
    f = Final("Received", 10, 600, 2, 1.0)
    assert PKTGEN_FINAL2.match(f.lines()[1]) is not None and f.lines()[1].endswith("pkts")
    assert p.as_dict()["rx_dropped"] == 0 and f.as_dict()["fill_ring_empty"] == 0


def test_reports_with_drops_end_with_the_kernel_counters() -> None:
    p = Periodic(1000, 1000, 480000.0, 1000000, 10.0, 5, drops=Drops(7, 2, 7))
    m = PKTGEN_PERIODIC.match(d_prefix() + p.line())
    assert m is not None and m.group(1) == " drops 7 ring_full 2 fill_empty 7"
    f = Final("Received", 10, 600, 2, 1.0, drops=Drops(30, 0, 29))
    m2 = PKTGEN_FINAL2.match(f.lines()[1])
    assert m2 is not None and m2.groups()[1:] == ("30", "0", "29")
    d = f.as_dict()
    assert (d["rx_dropped"], d["rx_ring_full"], d["fill_ring_empty"]) == (30, 0, 29)
    assert Drops(5, 1, 2) - Drops(1, 1, 1) + Drops(0, 0, 1) == Drops(4, 0, 2)


# -- -6 ------------------------------------------------------------------------------------


def check_ipv6_udp(frame: bytes) -> tuple[str, int, str, int, bytes]:
    """Parse one frame independently; assert its lengths and UDP checksum."""
    assert frame[12:14] == b"\x86\xdd" and frame[14] >> 4 == 6
    plen, nh, hlim = struct.unpack("!HBB", frame[18:22])
    assert (nh, hlim) == (17, 64) and plen == len(frame) - 54
    src, dst = frame[22:38], frame[38:54]
    udp = frame[54:]
    sport, dport, ulen, usum = struct.unpack("!HHHH", udp[:8])
    assert ulen == plen and usum != 0
    pseudo = src + dst + struct.pack("!I3xB", ulen, 17)
    assert rfc1071(pseudo + udp) == 0xFFFF
    return (
        str(ipaddress.IPv6Address(src)),
        sport,
        str(ipaddress.IPv6Address(dst)),
        dport,
        udp[8:],
    )


@pytest.mark.parametrize("payload", ["plain", "seq", "ping"])
def test_ipv6_frames_walk_one_group_with_valid_checksums(payload: str) -> None:
    spec = FrameSpec(
        src=IPRange6.parse("[2001:db8::ffff:1]:5000-[2001:db8::ffff:2]:5001", "-s"),
        dst=IPRange6.parse("5@[2001:db8:1::9]:9-[2001:db8:1:0:0:3::9]:9", "-d"),
        length=120,
        min_length=80 if payload == "plain" else 0,
        payload=payload,  # type: ignore[arg-type]
        vnet_hdr_len=10,
    )
    gen = make_framegen(spec, seed=3)
    frames, slot_len, _ = gen.frames(40)
    seen = []
    for row, n in zip(frames, slot_len, strict=True):
        assert not row[:10].any()  # the virtio-net header
        seen.append(check_ipv6_udp(bytes(row[10:n])))
    # odometer: source port fastest, then source group, then destination group
    assert [(s[1], s[0]) for s in seen[:5]] == [
        (5000, "2001:db8::ffff:1"),
        (5001, "2001:db8::ffff:1"),
        (5000, "2001:db8::ffff:2"),
        (5001, "2001:db8::ffff:2"),
        (5000, "2001:db8::ffff:1"),
    ]
    assert [s[2] for s in seen[::4][:4]] == [
        str(ipaddress.IPv6Address(f"2001:db8:1:0:0:{g}:0:9")) for g in range(4)
    ]
    if payload != "plain":
        assert [struct.unpack("!I", s[4][:4])[0] for s in seen] == list(range(40))


def test_ipv6_random_addresses_move_only_the_group() -> None:
    spec = FrameSpec(
        src=IPRange6.parse("[2001:db8::1]:1", "-s"),
        dst=IPRange6.parse("[2001:db8:1::1]:2", "-d"),
        random_src=True,
        random_dst=True,
        length=80,
    )
    frames, lens, _ = make_framegen(spec, seed=9).frames(50)
    srcs = {check_ipv6_udp(bytes(f[:n]))[0] for f, n in zip(frames, lens, strict=True)}
    assert len(srcs) > 40
    prefix = ipaddress.IPv6Address("2001:db8::").packed[:14]
    assert all(ipaddress.IPv6Address(s).packed[:14] == prefix for s in srcs)


def test_ipv6_ranges_parse_as_pktgen() -> None:
    r = IPRange6.parse("[2001:db8::5]:9-[2001:db8::2]:7")
    assert (r.group, r.start, r.end, r.port0, r.port1) == (7, 2, 5, 7, 9)
    assert str(r) == "[2001:db8::2]:7-[2001:db8::5]:9"
    assert str(IPRange6.parse("2001:db8::1")) == "[2001:db8::1]:1234"
    with pytest.raises(FrameSpecError, match="may differ only in group 3"):
        IPRange6.parse("3@[2001:db8::1]:1-[2001:db8::2]:1", "-d")
    with pytest.raises(FrameSpecError, match="both IPv4 or both IPv6"):
        FrameSpec(src=IPRange.parse("1.2.3.4"), dst=IPRange6.parse("::1"))


# -- -P ------------------------------------------------------------------------------------


def test_raw_frames_are_sent_as_read() -> None:
    raw = bytes(range(200)) * 3
    spec = FrameSpec(raw=raw, vnet_hdr_len=12)
    assert spec.length == len(raw) and not spec.varies and spec.max_slot_len == 612
    frames, lens, _ = make_framegen(spec).frames(3)
    assert (lens == 612).all() and all(bytes(f[12:]) == raw for f in frames)
    with pytest.raises(FrameSpecError, match="-P: a frame of 10 bytes"):
        FrameSpec(raw=bytes(10))
    with pytest.raises(FrameSpecError, match="-P: the frame is sent as read; -f txseq"):
        FrameSpec(raw=raw, payload="seq")
    with pytest.raises(FrameSpecError, match="-s/-d ranges do not apply"):
        FrameSpec(raw=raw, dst=IPRange.parse("1.1.1.1:1-1.1.1.1:5"))


def test_ipv6_spec_lengths() -> None:
    with pytest.raises(FrameSpecError, match="IPv6/UDP frame for -f ping needs 74"):
        FrameSpec(src=IPRange6.parse("::1"), dst=IPRange6.parse("::2"), length=73, payload="ping")
    assert np.frombuffer(
        make_framegen(
            FrameSpec(src=IPRange6.parse("::1"), dst=IPRange6.parse("::2"), length=62)
        ).template.tobytes(),
        np.uint8,
    ).shape == (62,)
