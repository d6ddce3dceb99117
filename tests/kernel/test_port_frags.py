"""Multi-buffer frames (NS_MOREFRAG <-> AF_XDP XDP_USE_SG / XDP_PKT_CONTD) on a 9000-MTU veth.

A frame larger than one buffer is a chain of slots: every slot but the last carries
NS_MOREFRAG. These tests check both directions byte-exact against a raw socket on the
peer, that an unfinished TX chain is held back, and that a port refused multi-buffer on
such an MTU fails clearly. Every veth/namespace is removed by the fixture.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from nettest import VethPair, peer_frames

from vtnet_py import NS_MOREFRAG, UnsupportedError, open_port

pytestmark = pytest.mark.kernel

ETHERTYPE = b"\x88\xb5"
MTU = 9000
PACKET_OUTGOING = 4


def big_frame(dst: bytes, src: bytes, seq: int, size: int) -> bytes:
    rng = np.random.default_rng(seq)
    body = seq.to_bytes(4, "big") + rng.integers(0, 256, size - 18, dtype=np.uint8).tobytes()
    return dst + src + ETHERTYPE + body


def receive_chains(port, want: int, timeout: float = 3.0) -> list[tuple[int, list[int], bytes]]:
    """Reassemble ``want`` frames from the RX rings: (ring id, slot lengths, bytes)."""
    got: list[tuple[int, list[int], bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        port.poll(rx=True, timeout=0.2)
        for r in port.rx_rings:
            n = r.space()
            if not n:
                continue
            idx = r.slots_from_head(n)
            more = (r.slot["flags"][idx] & NS_MOREFRAG) != 0
            # take whole chains only: a chain's tail may still be in the kernel
            ends = np.flatnonzero(~more)
            if not ends.size:
                continue
            take = int(ends[-1]) + 1
            idx = idx[:take]
            bufs = r.slot["buf_idx"][idx]
            lens = r.slot["len"][idx]
            starts = np.concatenate(([0], ends[:-1] + 1))
            for s0, e in zip(starts, ends[: starts.size], strict=True):
                parts = [
                    bytes(port.buf(int(b))[: int(ln)])
                    for b, ln in zip(bufs[s0 : e + 1], lens[s0 : e + 1], strict=True)
                ]
                data = b"".join(parts)
                if data[12:14] == ETHERTYPE:
                    got.append((r.ring_id, [int(x) for x in lens[s0 : e + 1]], data))
            r.head = r.cur = r.next(r.head, take)
        port.rxsync()
    return got


def put_chain(port, ring, data: bytes, chunk: int, last_more: bool = False) -> int:
    """Write ``data`` into slots from ring.head in pieces of ``chunk`` bytes, NS_MOREFRAG on
    all but the last (and on the last too if ``last_more``); advance head/cur. Returns the
    number of slots used."""
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    idx = ring.slots_from_head(len(pieces))
    for i, piece in zip(idx, pieces, strict=True):
        port.buf(int(ring.slot["buf_idx"][i]))[: len(piece)] = np.frombuffer(piece, np.uint8)
    ring.slot["len"][idx] = [len(p) for p in pieces]
    flags = np.full(len(pieces), NS_MOREFRAG, np.uint16)
    if not last_more:
        flags[-1] = 0
    ring.slot["flags"][idx] = flags
    ring.head = ring.cur = ring.next(ring.head, len(pieces))
    return len(pieces)


@pytest.fixture
def jumbo(veth_factory) -> VethPair:
    return veth_factory(queues=2, mtu=MTU)


def test_rx_jumbo_frame_arrives_as_a_morefrag_chain(jumbo: VethPair) -> None:
    mac_a, mac_b = jumbo.mac("a"), jumbo.mac("b")
    with open_port(f"netmap:{jumbo.a}", netns=jumbo.ns_a) as port:
        assert port.frags is True
        nbs = port.nr_buf_size
        # 9000 bytes, the largest frame the MTU allows (9014) and one that fits one buffer
        sizes = [9000, MTU + 14, 1000, nbs, nbs + 1]
        sent = [big_frame(mac_a, mac_b, 40 + i, sz) for i, sz in enumerate(sizes)]
        jumbo.send_on_queue(sent, 1)
        got = receive_chains(port, len(sent))
        assert [g[2] for g in got] == sent
        assert {g[0] for g in got} == {1}
        for (_, lens, data), size in zip(got, sizes, strict=True):
            # every fragment but the last is a full buffer; the chain is as short as can be
            assert len(lens) == -(-size // nbs), lens
            assert all(ln == nbs for ln in lens[:-1]) and sum(lens) == size == len(data)
        port.check_invariant()


def test_tx_morefrag_chain_reaches_the_peer_as_one_frame(jumbo: VethPair) -> None:
    mac_a, mac_b = jumbo.mac("a"), jumbo.mac("b")
    s = jumbo.raw_socket("b")
    try:
        with open_port(f"netmap:{jumbo.a}-0", netns=jumbo.ns_a) as port:
            assert port.frags is True
            tx = port.tx_rings[0]
            data = big_frame(mac_b, mac_a, 7, 9000)
            assert put_chain(port, tx, data, port.nr_buf_size) == 3
            assert port.txsync() == 3
            assert peer_frames(s, 1, 2.0, src=mac_a) == [data]
            # fragments need not fill their buffers: 3 x 3000 bytes
            data2 = big_frame(mac_b, mac_a, 8, 9000)
            assert put_chain(port, tx, data2, 3000) == 3
            assert port.txsync() == 3
            assert peer_frames(s, 1, 2.0, src=mac_a) == [data2]
            port.txsync()
            assert not tx.tx_pending()
            port.check_invariant()
    finally:
        s.close()


def test_unfinished_tx_chain_is_held_until_completed(jumbo: VethPair) -> None:
    mac_a, mac_b = jumbo.mac("a"), jumbo.mac("b")
    s = jumbo.raw_socket("b")
    try:
        with open_port(f"netmap:{jumbo.a}-0", netns=jumbo.ns_a) as port:
            tx = port.tx_rings[0]
            nbs = port.nr_buf_size
            data = big_frame(mac_b, mac_a, 9, 9000)
            start = tx.head
            # the first two pieces, both flagged NS_MOREFRAG: the frame is not finished
            assert put_chain(port, tx, data[: 2 * nbs], nbs, last_more=True) == 2
            assert port.txsync() == 0
            assert port.poll(rx=False, tx=False, timeout=0.1) == 0
            assert tx.hwcur == start and tx.head == tx.next(start, 2)
            assert peer_frames(s, 1, 0.3, src=mac_a) == []
            port.check_invariant()
            # the last piece completes it: the three slots go out as one frame
            assert put_chain(port, tx, data[2 * nbs :], nbs) == 1
            assert port.txsync() == 3
            assert tx.hwcur == tx.head
            assert peer_frames(s, 2, 1.0, src=mac_a) == [data]
            port.txsync()
            port.check_invariant()
    finally:
        s.close()


def test_frags_false_on_jumbo_mtu_fails_clearly(jumbo: VethPair) -> None:
    with pytest.raises(UnsupportedError, match=rf"MTU {MTU} .*frags=True"):
        open_port(f"netmap:{jumbo.a}", netns=jumbo.ns_a, frags=False)
    assert not jumbo.xdp_attached("a")  # nothing left behind by the failed open
    # a transmit-only port receives nothing, so it may still be opened without frags
    with open_port(f"netmap:{jumbo.a}/T", netns=jumbo.ns_a, frags=False) as port:
        assert port.frags is False
