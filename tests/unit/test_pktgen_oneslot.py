"""The one-frame path of ping/pong (pktgen/oneslot.py) against the batch path.

The batch code (frames.py's next_batch/write, rxfields.py, pingpong.py's numpy reflect)
is the reference: the integer path must make byte-identical ping frames (sequence
numbers, stamps and UDP checksums included), read the same round-trip times, and
reflect frames exactly as pong's batch code does, for IPv4 and IPv6, with and without a
virtio-net header.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtnet_py.apps.pktgen.frames6 import make_framegen
from vtnet_py.apps.pktgen.oneslot import RUN, PingFrames, Umem, ping_rtt, reflect
from vtnet_py.apps.pktgen.rxfields import gather, payload_offsets
from vtnet_py.apps.pktgen.spec import SEQ_LEN, STAMP_LEN, FrameSpec
from vtnet_py.netmap.memory import Memory

SPECS = {
    "ipv4": dict(payload="ping"),
    "ipv4-vnet": dict(payload="ping", vnet_hdr_len=12),
    "ipv4-long": dict(payload="ping", length=300),
}


def _spec(kind: str) -> FrameSpec:
    if kind == "ipv6":
        from vtnet_py.apps.pktgen.addresses import IPRange6

        return FrameSpec(
            payload="ping",
            src=IPRange6.parse("2001:db8::1"),
            dst=IPRange6.parse("2001:db8::2"),
            length=80,
        )
    return FrameSpec(**SPECS[kind])  # type: ignore[arg-type]


def _bufs(n: int = 64) -> tuple[Memory, np.ndarray]:
    mem = Memory(n)
    return mem, mem.bufs


KINDS = [*SPECS, "ipv6"]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=25, deadline=None)
@given(stamps=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=40))
def test_ping_frames_match_the_batch_path(kind: str, stamps: list[int]) -> None:
    spec = _spec(kind)
    ref_gen, one_gen = make_framegen(spec, seed=7), make_framegen(spec, seed=7)
    mem, bufs = _bufs()
    umem = Umem.of(bufs)
    assert umem is not None
    try:
        rows = np.arange(2, dtype=np.uint32)
        ref_gen.init_rows(bufs, rows[:1])
        one_gen.init_rows(bufs, rows[1:])
        one = PingFrames(one_gen, spec.vnet_hdr_len)
        for stamp in stamps:
            b = ref_gen.next_batch(1, stamp=np.array([stamp], np.uint64))
            ref_gen.write(bufs, rows[:1], b)
            slot_len = one.write(umem, 1, stamp)
            assert slot_len == int(b.slot_len[0])
            assert bytes(bufs[1, :slot_len]) == bytes(bufs[0, :slot_len])
    finally:
        umem.release()
        mem.close()


def test_ping_frames_cross_a_precomputed_run() -> None:
    """Frames RUN and RUN+1 come from the second precomputed run: the sequence goes on."""
    spec = _spec("ipv4")
    ref_gen, one_gen = make_framegen(spec, seed=1), make_framegen(spec, seed=1)
    mem, bufs = _bufs()
    umem = Umem.of(bufs)
    assert umem is not None
    try:
        rows = np.arange(2, dtype=np.uint32)
        ref_gen.init_rows(bufs, rows[:1])
        one_gen.init_rows(bufs, rows[1:])
        one = PingFrames(one_gen, 0)
        for i in range(RUN + 3):
            stamp = 1_000_000_007 * (i + 1)
            ref_gen.write(bufs, rows[:1], ref_gen.next_batch(1, stamp=np.array([stamp], np.uint64)))
            ln = one.write(umem, 1, stamp)
            assert bytes(bufs[1, :ln]) == bytes(bufs[0, :ln]), f"frame {i}"
    finally:
        umem.release()
        mem.close()


@pytest.mark.parametrize("kind", KINDS)
def test_ping_rtt_matches_gather(kind: str) -> None:
    spec = _spec(kind)
    gen = make_framegen(spec, seed=3)
    mem, bufs = _bufs()
    umem = Umem.of(bufs)
    assert umem is not None
    try:
        rows = np.arange(1, dtype=np.uint32)
        gen.init_rows(bufs, rows)
        vh = spec.vnet_hdr_len
        for stamp, now in ((5, 100), (10**12, 10**12 + 12345), (200, 100)):
            b = gen.next_batch(1, stamp=np.array([stamp], np.uint64))
            gen.write(bufs, rows, b)
            lens = b.slot_len
            offs = payload_offsets(bufs, rows, lens, vh, SEQ_LEN + STAMP_LEN)
            st_ = gather(bufs, rows, offs, vh, ">u8", SEQ_LEN).astype(np.int64)
            ref = int(now - st_[0])
            want = ref if 0 <= ref < 60_000_000_000 else None
            assert ping_rtt(umem, 0, int(lens[0]), vh, now) == want
        # too short to hold a stamp, or not IP: not a ping frame
        assert ping_rtt(umem, 0, vh + 20, vh, 10**6) is None
        bufs[0, vh + 12 : vh + 14] = (0x08, 0x06)  # ARP
        assert ping_rtt(umem, 0, int(lens[0]), vh, 10**6) is None
    finally:
        umem.release()
        mem.close()


def _reflect_reference(bufs: np.ndarray, src: int, dst: int, ln: int, vh: int) -> None:
    """pingpong.py's batch reflect for one frame (the same numpy operations)."""
    from vtnet_py.apps.pktgen.frames6 import ETHERTYPE_IPV6
    from vtnet_py.apps.pktgen.rxfields import field_view
    from vtnet_py.apps.pktgen.spec import OFF_ETHERTYPE

    s, d = np.array([src]), np.array([dst])
    lens = np.array([ln])
    bufs[d, :ln] = bufs[s, :ln]
    bufs[d, vh : vh + 6] = bufs[s, vh + 6 : vh + 12]
    bufs[d, vh + 6 : vh + 12] = bufs[s, vh : vh + 6]
    et = field_view(bufs, vh + OFF_ETHERTYPE, ">u2")[s]
    v4 = (et == 0x0800) & (lens >= vh + 34)
    if v4.any():
        bufs[d[v4], vh + 26 : vh + 30] = bufs[s[v4], vh + 30 : vh + 34]
        bufs[d[v4], vh + 30 : vh + 34] = bufs[s[v4], vh + 26 : vh + 30]
    v6 = (et == ETHERTYPE_IPV6) & (lens >= vh + 54)
    if v6.any():
        bufs[d[v6], vh + 22 : vh + 38] = bufs[s[v6], vh + 38 : vh + 54]
        bufs[d[v6], vh + 38 : vh + 54] = bufs[s[v6], vh + 22 : vh + 38]


@settings(max_examples=60, deadline=None)
@given(
    frame=st.binary(min_size=14, max_size=200),
    ethertype=st.sampled_from([0x0800, 0x86DD, 0x0806]),
    vh=st.sampled_from([0, 10, 12]),
)
def test_reflect_matches_the_batch_path(frame: bytes, ethertype: int, vh: int) -> None:
    mem, bufs = _bufs(8)
    umem = Umem.of(bufs)
    assert umem is not None
    try:
        data = bytearray(bytes(vh) + frame)
        data[vh + 12 : vh + 14] = ethertype.to_bytes(2, "big")
        ln = len(data)
        bufs[0, :ln] = np.frombuffer(bytes(data), np.uint8)
        bufs[1, :] = 0xAA
        bufs[2, :] = 0xAA
        _reflect_reference(bufs, 0, 1, ln, vh)
        reflect(umem, 0, 2, ln, vh)
        assert bytes(bufs[2]) == bytes(bufs[1])
    finally:
        umem.release()
        mem.close()


def test_umem_view_needs_rows_of_one_buffer() -> None:
    mem, bufs = _bufs(4)
    try:
        assert Umem.of(bufs[:, ::2]) is None  # not byte-contiguous rows
        u = Umem.of(bufs)
        assert u is not None
        assert u.stride == bufs.strides[0]
        bufs[3, 5] = 77
        assert u.mv[u.at(3) + 5] == 77
        u.release()
    finally:
        mem.close()
