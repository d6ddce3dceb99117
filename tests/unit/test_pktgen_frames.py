"""pkt-gen frames: checksums against a plain RFC 1071 implementation, the range walk
against a step-by-step model of pkt-gen's update_ip(), lengths, sequence accounting."""

from __future__ import annotations

import ipaddress
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtnet_py.apps.pktgen.addresses import FrameSpecError, IPRange, parse_mac
from vtnet_py.apps.pktgen.frames import FrameGen, FrameSpec
from vtnet_py.apps.pktgen.rxfields import SeqTracker, read_seq, read_stamp

# -- an independent, deliberately naive reference --------------------------------------


def rfc1071(data: bytes) -> int:
    """One's-complement sum of 16-bit big-endian words (odd byte padded), folded."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for (w,) in struct.iter_unpack("!H", data):
        s += w
        s = (s & 0xFFFF) + (s >> 16)
    return s


def check_frame(frame: bytes) -> dict[str, int]:
    """Parse one Ethernet/IPv4/UDP frame, assert every length and checksum, return fields."""
    assert frame[12:14] == b"\x08\x00"
    ip = frame[14:34]
    ver_ihl, tos, ip_len, _id, off, ttl, proto, _sum, src, dst = struct.unpack("!BBHHHBBHII", ip)
    assert (ver_ihl, tos, off, ttl, proto) == (0x45, 0x10, 0x4000, 64, 17)
    assert ip_len == len(frame) - 14
    assert rfc1071(ip) == 0xFFFF, "IPv4 header checksum"
    udp = frame[34:]
    sport, dport, ulen, usum = struct.unpack("!HHHH", udp[:8])
    assert ulen == len(udp)
    assert usum != 0
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, ulen)
    assert rfc1071(pseudo + udp) == 0xFFFF, "UDP checksum"
    return {"src": src, "dst": dst, "sport": sport, "dport": dport}


def pktgen_walk_model(spec: FrameSpec, n: int) -> list[tuple[int, int, int, int]]:
    """pkt-gen's update_ip() for non-random ranges, one packet at a time."""
    s, d = spec.src, spec.dst
    cur = [s.start, s.port0, d.start, d.port0]
    out = []
    for _ in range(n):
        out.append((cur[0], cur[1], cur[2], cur[3]))
        # source port, then source address, then destination port, then address
        if cur[1] < s.port1:
            cur[1] += 1
            continue
        cur[1] = s.port0
        if cur[0] < s.end:
            cur[0] += 1
            continue
        cur[0] = s.start
        if cur[3] < d.port1:
            cur[3] += 1
            continue
        cur[3] = d.port0
        if cur[2] < d.end:
            cur[2] += 1
            continue
        cur[2] = d.start
    return out


def frames_of(gen: FrameGen, n: int) -> tuple[list[bytes], np.ndarray]:
    arr, slot_len, batch = gen.frames(n)
    vh = gen.spec.vnet_hdr_len
    out = []
    for i in range(n):
        row = bytes(arr[i, : int(slot_len[i])])
        assert row[:vh] == b"\0" * vh
        out.append(row[vh:])
    return out, slot_len


# -- parsing ---------------------------------------------------------------------------


def ip(a: str) -> int:
    return int(ipaddress.IPv4Address(a))


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10.0.0.1", (ip("10.0.0.1"), ip("10.0.0.1"), 1234, 1234)),
        ("10.0.0.1:99", (ip("10.0.0.1"), ip("10.0.0.1"), 99, 99)),
        ("10.0.0.1-10.0.0.9", (ip("10.0.0.1"), ip("10.0.0.9"), 1234, 1234)),
        ("10.0.0.1:5-10.0.0.4:8", (ip("10.0.0.1"), ip("10.0.0.4"), 5, 8)),
        # reversed ends are swapped, as pkt-gen does
        ("10.0.0.9:8-10.0.0.1:5", (ip("10.0.0.1"), ip("10.0.0.9"), 5, 8)),
        # end port alone given: start port keeps the default 1234
        ("10.0.0.1-10.0.0.1:2000", (ip("10.0.0.1"), ip("10.0.0.1"), 1234, 2000)),
    ],
)
def test_ip_range_parse(text: str, want: tuple[int, int, int, int]) -> None:
    r = IPRange.parse(text)
    assert (r.start, r.end, r.port0, r.port1) == want


@pytest.mark.parametrize("bad", ["10.0.0", "10.0.0.1:70000", "10.0.0.1:x", "host:1", "", "-"])
def test_ip_range_parse_rejects(bad: str) -> None:
    with pytest.raises(FrameSpecError):
        IPRange.parse(bad)


def test_mac_parse() -> None:
    assert parse_mac("aa:bb:cc:0:1:ff") == bytes([0xAA, 0xBB, 0xCC, 0, 1, 0xFF])
    for bad in ("aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:fg", "aabbccddeeff"):
        with pytest.raises(FrameSpecError):
            parse_mac(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"length": 41},
        {"length": 45, "payload": "seq"},
        {"length": 53, "payload": "ping"},
        {"length": 60, "min_length": 61},
        {"length": 60, "min_length": 30},
        {"vnet_hdr_len": 11},
    ],
)
def test_spec_refuses(kwargs: dict) -> None:
    with pytest.raises(FrameSpecError):
        FrameSpec(**kwargs)


# -- frames ----------------------------------------------------------------------------


def test_default_frame_is_pktgen_default() -> None:
    g = FrameGen(FrameSpec(src_mac=b"\x02\0\0\0\0\x01"))
    frames, slot_len = frames_of(g, 3)
    assert all(len(f) == 60 for f in frames) and list(slot_len) == [60, 60, 60]
    f = check_frame(frames[0])
    assert f == {"src": ip("10.0.0.1"), "dst": ip("10.1.0.1"), "sport": 1234, "dport": 1234}
    assert frames[0][:6] == b"\xff" * 6 and frames[0][6:12] == b"\x02\0\0\0\0\x01"
    # no range: every frame is the template
    assert frames[0] == frames[1] == frames[2] == bytes(g.template)
    assert not g.spec.varies


def test_walk_matches_pktgen_model() -> None:
    spec = FrameSpec(
        src=IPRange.parse("10.0.0.1:100-10.0.0.3:102"),
        dst=IPRange.parse("10.1.0.250:7-10.1.1.1:8"),
    )
    g = FrameGen(spec)
    n = 3 * 3 * 2 * 8 + 17  # more than one full period
    got: list[tuple[int, int, int, int]] = []
    for size in (1, 5, 64, n):  # batch boundaries anywhere
        frames, _ = frames_of(g, size)
        for fr in frames:
            f = check_frame(fr)
            got.append((f["src"], f["sport"], f["dst"], f["dport"]))
    assert got == pktgen_walk_model(spec, len(got))
    # the destination crossed an octet boundary (10.1.0.255 -> 10.1.1.0)
    assert ip("10.1.1.0") in {g_[2] for g_ in got}


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(46, 1514),
    min_length=st.one_of(st.just(0), st.integers(46, 1514)),
    vh=st.sampled_from([0, 10, 12]),
    payload=st.sampled_from(["plain", "seq"]),
    nsrc=st.integers(1, 4),
    nport=st.integers(1, 5),
    rnd=st.sampled_from([(False, False), (True, False), (False, True), (True, True)]),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 70),
)
def test_checksums_and_lengths(
    length: int,
    min_length: int,
    vh: int,
    payload: str,
    nsrc: int,
    nport: int,
    rnd: tuple[bool, bool],
    seed: int,
    n: int,
) -> None:
    min_length = min(min_length, length)
    spec = FrameSpec(
        src=IPRange(ip("203.0.113.1"), ip("203.0.113.1") + nsrc - 1, 4000, 4000 + nport - 1),
        dst=IPRange(ip("203.0.113.200"), ip("203.0.113.200"), 9, 9),
        length=length,
        min_length=min_length,
        vnet_hdr_len=vh,
        payload=payload,  # type: ignore[arg-type]
        random_src=rnd[0],
        random_dst=rnd[1],
    )
    g = FrameGen(spec, seed=seed)
    frames, slot_len = frames_of(g, n)
    for i, fr in enumerate(frames):
        check_frame(fr)
        assert int(slot_len[i]) == vh + len(fr)
        if spec.random_length:
            assert min_length <= len(fr) < length
        else:
            assert len(fr) == length
        if payload == "seq":
            assert struct.unpack("!I", fr[42:46])[0] == i


def test_random_lengths_cover_the_range() -> None:
    g = FrameGen(FrameSpec(length=70, min_length=60), seed=1)
    frames, _ = frames_of(g, 2000)
    assert {len(f) for f in frames} == set(range(60, 70))


def test_random_src_and_dst_follow_pktgen_carry_rules() -> None:
    # -z: packet 0 has the range start, then the source is random and the
    # destination walks one step every packet (a random source always carries).
    spec = FrameSpec(random_src=True, dst=IPRange.parse("10.1.0.1:1-10.1.0.1:3"))
    frames, _ = frames_of(FrameGen(spec, seed=7), 7)
    f = [check_frame(x) for x in frames]
    assert f[0]["src"] == ip("10.0.0.1") and f[0]["sport"] == 1234
    assert len({x["src"] for x in f[1:]}) == 6
    assert [x["dport"] for x in f] == [1, 2, 3, 1, 2, 3, 1]
    # -Z with a 2x2 source range: the destination is redrawn only when the
    # source wraps (every 4 packets); packets 0..3 keep the start.
    spec = FrameSpec(random_dst=True, src=IPRange.parse("10.0.0.1:1-10.0.0.2:2"))
    g = FrameGen(spec, seed=3)
    f = [check_frame(x) for x in frames_of(g, 5)[0] + frames_of(g, 7)[0]]
    dsts = [(x["dst"], x["dport"]) for x in f]
    assert dsts[0:4] == [(ip("10.1.0.1"), 1234)] * 4
    assert len(set(dsts[4:8])) == 1 and len(set(dsts[8:12])) == 1
    assert dsts[4] != dsts[0] and dsts[8] != dsts[4]


def test_write_patches_buffers_like_frames() -> None:
    spec = FrameSpec(src=IPRange.parse("10.0.0.1:1-10.0.0.1:50"), payload="seq", vnet_hdr_len=12)
    want, want_len, _ = FrameGen(spec).frames(80)
    g = FrameGen(spec)
    bufs = np.full((64, 2048), 0xEE, dtype=np.uint8)
    rows = np.arange(40)[::-1] + 10
    g.init_rows(bufs, rows)
    for half in (0, 1):  # the second batch patches rows that hold the first one
        b = g.next_batch(40)
        g.write(bufs, rows, b)
        sl = slice(40 * half, 40 * half + 40)
        assert np.array_equal(bufs[rows, : want.shape[1]], want[sl])
        assert np.array_equal(b.slot_len, want_len[sl])
        assert list(read_seq(bufs, rows, 12)) == list(range(40 * half, 40 * half + 40))
    assert (bufs[rows, want.shape[1] :] == 0xEE).all()  # nothing written past the frame


def test_ping_stamp_is_in_payload_and_checksum() -> None:
    g = FrameGen(FrameSpec(payload="ping"))
    stamp = np.array([0x0102030405060708, 2**64 - 1, 0], dtype=np.uint64)
    b = g.next_batch(3, stamp=stamp)
    bufs = np.zeros((3, 128), np.uint8)
    rows = np.arange(3)
    g.init_rows(bufs, rows)
    g.write(bufs, rows, b)
    for i in range(3):
        check_frame(bytes(bufs[i, :60]))
    assert list(read_stamp(bufs, rows)) == list(stamp)
    assert list(read_seq(bufs, rows)) == [0, 1, 2]


def test_sequence_wraps_at_32_bits() -> None:
    g = FrameGen(FrameSpec(payload="seq"))
    g._seq = 2**32 - 2  # start near the wrap
    frames, _ = frames_of(g, 4)
    assert [struct.unpack("!I", f[42:46])[0] for f in frames] == [2**32 - 2, 2**32 - 1, 0, 1]
    for f in frames:
        check_frame(f)


# -- sequence accounting ------------------------------------------------------------------


def feed(t: SeqTracker, seqs: list[int], chunk: int) -> None:
    for i in range(0, len(seqs), chunk):
        t.update(np.array(seqs[i : i + chunk], dtype=np.uint32))


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_seq_tracker_counts_loss_and_reordering(chunk: int) -> None:
    seqs = list(range(10, 20)) + list(range(25, 30)) + [22] + list(range(30, 40))
    t = SeqTracker()
    feed(t, seqs, chunk)
    # 20..24 missing except 22, which came late: 4 lost
    assert t.received == len(seqs)
    assert t.lost == 4
    # pkt-gen's view: 25 after 19 is a gap (5), 22 after 29 out of order,
    # 30 after 22 a gap again (7)
    assert (t.gaps, t.gap_packets, t.out_of_order) == (2, 12, 1)
    assert t.first == 10 and t.highest == 39


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_seq_tracker_across_wrap(chunk: int) -> None:
    seqs = [(2**32 - 5 + i) & 0xFFFFFFFF for i in range(12) if i != 6]
    t = SeqTracker()
    feed(t, seqs, chunk)
    assert (t.received, t.lost, t.gaps, t.out_of_order) == (11, 1, 1, 0)


def test_seq_tracker_in_order_is_clean() -> None:
    t = SeqTracker()
    feed(t, list(range(1000)), 128)
    assert (t.lost, t.gaps, t.out_of_order) == (0, 0, 0)


@pytest.mark.parametrize("payload", ["plain", "seq", "ping"])
def test_precomputed_walk_equals_direct_computation(
    payload: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = FrameSpec(
        src=IPRange.parse("10.0.0.1:1-10.0.0.3:4"),
        dst=IPRange.parse("10.1.0.1:7-10.1.0.2:7"),
        payload=payload,
    )  # type: ignore[arg-type]
    fast = FrameGen(spec)
    assert fast._table is not None and fast._table.shape[0] == 24
    monkeypatch.setattr("vtnet_py.apps.pktgen.frames.TABLE_MAX", 0)
    slow = FrameGen(spec)
    assert slow._table is None
    for n in (1, 23, 50):
        a, la, _ = fast.frames(n)
        b, lb, _ = slow.frames(n)
        assert np.array_equal(a, b) and np.array_equal(la, lb)
