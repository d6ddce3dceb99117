"""Zero copy by buf_idx swap (NS_BUF_CHANGED), within a port and between ports that share
one Memory, and NS_REPORT.

No frame byte is copied by the forwarding code below: RX slots and TX slots exchange
buffer indices (numpy batches over the slot arrays) and the only edit is a MAC rewrite
in place in the UMEM. The peer checks every frame byte-exact with a raw socket. Every
veth/namespace is removed by the fixtures.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from nettest import peer_frames

from vtnet_py import NS_BUF_CHANGED, NS_REPORT, Memory, open_port

pytestmark = pytest.mark.kernel

ETHERTYPE = b"\x88\xb5"
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33


def peer_socket(pair) -> socket.socket:
    """Raw socket on ``pair``'s b end, with room for a whole batch of frames."""
    s = pair.raw_socket("b")
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    return s


def frames(dst: bytes, src: bytes, first: int, n: int) -> list[bytes]:
    """``n`` distinct frames, sizes 60..1514, numbered from ``first``."""
    out = []
    for seq in range(first, first + n):
        size = 60 + (seq * 97) % 1455
        body = seq.to_bytes(4, "big") + bytes((seq * 7 + i) & 0xFF for i in range(size - 18))
        out.append(dst + src + ETHERTYPE + body)
    return out


def rewrite(f: bytes, dst: bytes, src: bytes) -> bytes:
    return dst + src + f[12:]


class Forwarder:
    """Move received frames from ``rx`` to ``tx`` by buf_idx swap (the two rings may
    belong to different ports on one Memory), rewriting MACs in place. Records, for every
    frame forwarded, the buf_idx it arrived in and the one the TX slot holds after the
    swap."""

    def __init__(self, port_in, rx, port_out, tx, dst: bytes, src: bytes):
        self.port_in, self.rx, self.port_out, self.tx = port_in, rx, port_out, tx
        self.mac = np.frombuffer(dst + src, np.uint8)
        self.rx_bufs: list[np.ndarray] = []
        self.tx_bufs: list[np.ndarray] = []

    def step(self) -> int:
        rx, tx = self.rx, self.tx
        n = min(rx.space(), tx.space())
        if n:
            ri = rx.slots_from_head(n)
            ti = tx.slots_from_head(n)
            rb = rx.slot["buf_idx"][ri].copy()
            tb = tx.slot["buf_idx"][ti].copy()
            self.port_in.bufs[rb, :12] = self.mac  # in place, in the UMEM
            tx.slot["buf_idx"][ti] = rb
            tx.slot["len"][ti] = rx.slot["len"][ri]
            tx.slot["flags"][ti] = NS_BUF_CHANGED
            rx.slot["buf_idx"][ri] = tb
            rx.slot["flags"][ri] = NS_BUF_CHANGED
            self.rx_bufs.append(rb)
            self.tx_bufs.append(tx.slot["buf_idx"][ti].copy())
            rx.head = rx.cur = rx.next(rx.head, n)
            tx.head = tx.cur = tx.next(tx.head, n)
        self.port_out.txsync()
        if self.port_in is not self.port_out:
            self.port_in.rxsync()
        return n


def forward_batches(
    pair_in,
    port_in,
    fw: Forwarder,
    peer_out: socket.socket,
    out_src: bytes,
    out_dst: bytes,
    total: int,
    batch: int,
) -> None:
    """Send ``total`` frames from the peer of ``port_in`` in batches, forward each batch,
    and check the egress peer gets each byte-exact, in order."""
    mac_in, mac_peer = pair_in.mac("a"), pair_in.mac("b")
    for first in range(0, total, batch):
        sent = frames(mac_in, mac_peer, first, min(batch, total - first))
        pair_in.send_on_queue(sent, 0)
        done = 0
        deadline = time.monotonic() + 5.0
        while done < len(sent) and time.monotonic() < deadline:
            port_in.poll(rx=True, timeout=0.1)
            done += fw.step()
        assert done == len(sent), f"batch at {first}: {done} of {len(sent)} received"
        got = peer_frames(peer_out, len(sent), 3.0, src=out_src)
        assert got == [rewrite(f, out_dst, out_src) for f in sent], f"batch at {first}"
        fw.port_out.check_invariant()
        fw.port_in.check_invariant()
    fwd_rx = np.concatenate(fw.rx_bufs)
    fwd_tx = np.concatenate(fw.tx_bufs)
    assert fwd_rx.size == total
    assert np.array_equal(fwd_rx, fwd_tx)  # the very buffer each frame arrived in went out


def test_reflector_swaps_rx_buffers_into_tx_slots(veth) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    peer = peer_socket(veth)
    try:
        with open_port(f"netmap:{veth.a}-0@conf:slots=256", netns=veth.ns_a) as port:
            rx, tx = port.rx_rings[0], port.tx_rings[0]
            rx_start = set(rx.slot["buf_idx"].tolist())
            tx_start = set(tx.slot["buf_idx"].tolist())
            fw = Forwarder(port, rx, port, tx, mac_b, mac_a)
            forward_batches(veth, port, fw, peer, mac_a, mac_b, total=2000, batch=100)
            # frames left in buffers the RX ring started with: a real swap, not a copy
            # into the TX ring's own buffers
            sent_from = set(np.concatenate(fw.tx_bufs).tolist())
            assert sent_from <= rx_start | tx_start and sent_from & rx_start
            port.txsync()
            assert not tx.tx_pending()
            port.rxsync()
            totals = port.check_invariant()
            assert totals["kernel_tx"] == 0
            # every buffer the port started with is still its own, each exactly once
            held = set(rx.slot["buf_idx"].tolist()) | set(tx.slot["buf_idx"].tolist())
            assert held <= rx_start | tx_start
            assert rx.stats["frames"] == tx.stats["frames"] == 2000
    finally:
        peer.close()


def test_forward_between_ports_sharing_memory(veth_factory) -> None:
    p1 = veth_factory(queues=1)
    p2 = veth_factory(queues=1)
    mac2a, mac2b = p2.mac("a"), p2.mac("b")
    peer = peer_socket(p2)
    mem = Memory(4 * 256)
    try:
        with (
            open_port(f"netmap:{p1.a}-0@conf:slots=256", netns=p1.ns_a, memory=mem) as a,
            open_port(f"netmap:{p2.a}-0@conf:slots=256", netns=p2.ns_a, memory=mem) as c,
        ):
            assert a.memory is c.memory is mem
            rx, tx = a.rx_rings[0], c.tx_rings[0]
            a_bufs = set(rx.slot["buf_idx"].tolist()) | set(a.tx_rings[0].slot["buf_idx"])
            fw = Forwarder(a, rx, c, tx, mac2b, mac2a)
            forward_batches(p1, a, fw, peer, mac2a, mac2b, total=600, batch=100)
            # C transmitted from buffers that A's RX ring received into
            assert set(np.concatenate(fw.tx_bufs).tolist()) & a_bufs
            c.txsync()
            a.rxsync()
            totals = mem.check_invariant()
            assert sum(totals.values()) == mem.nbufs
    finally:
        peer.close()
        assert mem.users == 0  # both ports let go of it
        mem.close()


def test_ns_report_slot_is_completed_by_the_txsync_that_submits_it(veth) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    peer = peer_socket(veth)
    try:
        with open_port(f"netmap:{veth.a}-0@conf:slots=16", netns=veth.ns_a) as port:
            tx = port.tx_rings[0]
            for round_ in range(6):  # wraps the 16-slot ring
                sent = frames(mac_b, mac_a, 100 * round_, 5)
                idx = tx.slots_from_head(len(sent))
                for i, f in zip(idx, sent, strict=True):
                    port.buf(int(tx.slot["buf_idx"][i]))[: len(f)] = np.frombuffer(f, np.uint8)
                tx.slot["len"][idx] = [len(f) for f in sent]
                tx.slot["flags"][idx] = 0
                tx.slot["flags"][idx[2]] = NS_REPORT
                report_slot = int(idx[2])
                tx.head = tx.cur = tx.next(tx.head, len(sent))
                assert port.txsync() == len(sent)
                # the tail moved past the reported slot: it is back with the user, or
                # is the hole the ring keeps; slots (tail, hwcur) are the ones in flight
                in_flight = (tx.hwcur - tx.tail - 1) % tx.num_slots
                after_tail = (report_slot - tx.tail) % tx.num_slots
                assert not 0 < after_tail <= in_flight, (round_, tx.tail, report_slot)
                assert peer_frames(peer, len(sent), 2.0, src=mac_a) == sent
                port.check_invariant()
    finally:
        peer.close()
