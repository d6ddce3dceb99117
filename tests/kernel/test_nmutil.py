"""netmap_user.h's helpers (nm_inject, nm_nextpkt, nm_dispatch) and bytes-like buffer
writes, against a real veth pair: injected frames reach the peer byte-exact; frames the
peer sends come out of nextpkt/dispatch in order, and the ring indices and the UMEM
accounting are what netmap's helpers leave (head = cur past the frames, no sync)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from nettest import TEST_ETHERTYPE, VethPair, frame

from vtnet_py import NM_MORE_PKTS, nm_dispatch, nm_inject, nm_nextpkt, open_port

pytestmark = pytest.mark.kernel

ETHERTYPE = TEST_ETHERTYPE


def wait_rx(port, n: int, timeout: float = 3.0) -> None:
    """poll until ``n`` frames sit between cur and tail (no slot is released)."""
    deadline = time.monotonic() + timeout
    while sum(r.space() for r in port.rx_rings) < n and time.monotonic() < deadline:
        port.poll(rx=True, timeout=0.2)


def test_buf_slices_and_write_take_bytes_likes(veth: VethPair) -> None:
    with open_port(f"netmap:{veth.a}-0", netns=veth.ns_a) as port:
        bi = int(port.tx_rings[0].slot["buf_idx"][0])
        port.buf(bi)[:5] = b"hello"
        port.buf(bi)[5:8] = bytearray(b"abc")
        port.buf(bi)[8:10] = memoryview(b"xy")
        assert bytes(port.bufs[bi, :10]) == b"helloabcxy"
        assert port.write(bi, b"0123", offset=2) == 4
        assert bytes(port.buf(bi)[:8]) == b"he0123bc"
        assert bytes(port.tx_rings[0].buf(bi)[:3]) == b"he0"  # NETMAP_BUF(ring, idx)
        with pytest.raises(ValueError, match=f"netmap:{veth.a}-0: 4000 bytes at offset 0"):
            port.write(bi, bytes(4000))
        port.buf(bi)[:2] = np.array([7, 8], np.uint8)  # numpy values still work as before
        assert bytes(port.buf(bi)[:2]) == b"\x07\x08"


def test_nm_inject_sends_frames_the_peer_receives(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    s = veth.raw_socket("b")
    s.settimeout(2.0)
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        sent = [frame(mac_b, mac_a, i, 60 + 13 * i) for i in range(20)]
        before = [(t.head, t.cur) for t in port.tx_rings]
        for i, f in enumerate(sent):
            data = f if i % 3 else bytearray(f)  # any bytes-like
            assert nm_inject(port, data) == len(f)
        # no sync yet: head = cur moved past 20 slots of the first ring, nothing sent
        t0 = port.tx_rings[port.cur_tx_ring]
        assert (t0.head - before[port.cur_tx_ring][0]) % t0.num_slots == 20
        assert t0.hwcur == before[port.cur_tx_ring][0]
        assert port.txsync() == 20
        got = []
        while len(got) < len(sent):
            data = s.recv(4096)
            if data[12:14] == ETHERTYPE:
                got.append(data)
        assert got == sent
        port.txsync()
        port.check_invariant()
        # a full ring: inject moves on to the next ring, and 0 when none has room
        for t in port.tx_rings:
            t.head = t.cur = t.tail  # hand every slot over (without a sync: stays ours)
        assert nm_inject(port, sent[0]) == 0
        for t in port.tx_rings:  # take them back, nothing was sent
            t.head = t.cur = t.hwcur
        assert nm_inject(port.tx_rings[1], sent[1]) == len(sent[1])  # one given ring
        assert port.txsync() == 1
        assert s.recv(4096) == sent[1]
        with pytest.raises(ValueError, match="does not fit one"):
            nm_inject(port, bytes(5000))
    s.close()


def test_nm_nextpkt_returns_the_peer_frames_in_order(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}-1", netns=veth.ns_a) as port:
        sent = [frame(mac_a, mac_b, i, 60 + i) for i in range(12)]
        veth.send_on_queue(sent, 1)
        wait_rx(port, 12)
        got = []
        while (pkt := nm_nextpkt(port)) is not None:
            hdr, data = pkt
            assert hdr.len == hdr.caplen == len(data) and hdr.ring == 0
            if data[12:14] == ETHERTYPE:
                got.append(data)
        assert got == sent
        rx = port.rx_rings[0]
        assert rx.head == rx.cur == rx.tail  # consumed, not yet given back
        assert port.check_invariant()["slots"] > 0
        port.rxsync()  # now the buffers go back to the kernel
        assert port.check_invariant()["kernel_rx"] == rx.num_slots
        assert port.nextpkt() is None


def test_nm_dispatch_calls_back_per_frame_with_cnt(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        sent = [frame(mac_a, mac_b, 100 + i, 64 + 2 * i) for i in range(10)]
        veth.send_on_queue(sent[:6], 0)
        veth.send_on_queue(sent[6:], 1)
        wait_rx(port, 10)
        seen: list[tuple[int, bytes, int]] = []

        def cb(hdr, data: memoryview) -> None:
            assert hdr.len == data.nbytes
            if bytes(data[12:14]) == ETHERTYPE:
                seen.append((hdr.ring, bytes(data), hdr.flags))

        n = nm_dispatch(port, 4, cb)
        assert n == 4
        assert sum(r.space() for r in port.rx_rings) >= 6  # the rest still waits
        n += port.dispatch(0, cb)  # 0: everything that is there
        assert [x[1] for x in seen] == sent
        assert [x[0] for x in seen] == [0] * 6 + [1] * 4
        # NM_MORE_PKTS on all but the last frame of each call
        flags = [x[2] for x in seen]
        assert flags[3] == 0 and flags[-1] == 0 and flags[0] == NM_MORE_PKTS
        assert all(r.cur == r.tail == r.head for r in port.rx_rings)
        port.rxsync()
        port.check_invariant()
