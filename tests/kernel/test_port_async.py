"""A port's fileno() as a netmap fd: select.select, select.poll and asyncio add_reader.

The fd is readable when an RX ring has frames waiting and not before; for a transmit-only
port (/T) it is readable when TX has room. Every veth/namespace is removed by the fixture.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time

import numpy as np
import pytest
from nettest import TEST_ETHERTYPE, VethPair, frame

from vtnet_py import PortClosedError, open_port

pytestmark = pytest.mark.kernel

ETHERTYPE = TEST_ETHERTYPE

PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33  # a 1023-frame burst overflows the default receive buffer


def take_all(port) -> list[bytes]:
    """rxsync, return our test frames now in the RX rings, and release them."""
    port.rxsync()
    out = []
    for r in port.rx_rings:
        n = r.space()
        idx = r.slots_from_head(n)
        for bi, ln in zip(r.slot["buf_idx"][idx], r.slot["len"][idx], strict=True):
            data = bytes(port.buf(int(bi))[: int(ln)])
            if data[12:14] == ETHERTYPE:
                out.append(data)
        r.head = r.cur = r.next(r.head, n)
    port.rxsync()
    return out


def quiet(port) -> None:
    """Drop whatever arrived so far, so that the fd starts not readable."""
    take_all(port)
    assert take_all(port) == []


def test_select_select_wakes_on_a_peer_frame(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        quiet(port)
        assert select.select([port], [], [], 0.2)[0] == []
        f = frame(mac_a, mac_b, 1)
        veth.send_on_queue([f], 0)
        assert select.select([port], [], [], 2.0)[0] == [port]
        assert take_all(port) == [f]
        # consumed: the fd goes quiet again (level-triggered, like netmap's poll)
        assert select.select([port.fileno()], [], [], 0.2)[0] == []


def test_select_poll_wakes_on_a_peer_frame_on_either_queue(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        p = select.poll()
        p.register(port.fileno(), select.POLLIN)
        quiet(port)
        for q in (0, 1):
            assert p.poll(200) == []
            f = frame(mac_a, mac_b, 10 + q)
            veth.send_on_queue([f], q)
            ev = p.poll(2000)
            assert ev and ev[0][0] == port.fileno() and ev[0][1] & select.POLLIN
            assert take_all(port) == [f]


def test_asyncio_add_reader_is_woken_by_a_peer_frame(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    sent = [frame(mac_a, mac_b, 20 + i, 60 + 50 * i) for i in range(3)]

    async def main(port) -> tuple[bool, list[bytes]]:
        loop = asyncio.get_running_loop()
        woke = asyncio.Event()
        got: list[bytes] = []

        def on_readable() -> None:
            got.extend(take_all(port))
            woke.set()

        loop.add_reader(port.fileno(), on_readable)
        try:
            await asyncio.sleep(0.2)
            early = woke.is_set()  # nothing was sent yet: must not have fired
            veth.send_on_queue(sent, 1)
            await asyncio.wait_for(woke.wait(), 2.0)
            while len(got) < len(sent):  # the rest of the burst wakes it again
                woke.clear()
                await asyncio.wait_for(woke.wait(), 2.0)
        finally:
            loop.remove_reader(port.fileno())
        return early, got

    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        quiet(port)
        early, got = asyncio.run(main(port))
        assert not early
        assert got == sent
        port.check_invariant()


def test_tx_only_port_fd_is_ready_when_tx_has_room(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    peer = veth.raw_socket("b")
    peer.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    try:
        # queue 0 with RX, queue 1 transmit-only (a queue takes one socket)
        with (
            open_port(f"netmap:{veth.a}-0", netns=veth.ns_a) as rxtx,
            open_port(f"netmap:{veth.a}-1/T", netns=veth.ns_a) as port,
        ):
            assert port.rx_rings == [] and len(port.tx_rings) == 1
            # on the same interface, a port with an RX ring: not readable while idle
            quiet(rxtx)
            assert select.select([rxtx], [], [], 0.1)[0] == []
            assert select.select([port], [], [], 1.0)[0] == [port]
            ep = select.epoll()
            try:
                ep.register(port.fileno(), select.EPOLLIN)
                assert ep.poll(1.0) == [(port.fileno(), select.EPOLLIN)]
                # still ready after a burst through it (the kernel drains TX at once)
                tx = port.tx_rings[0]
                sent = [frame(mac_b, mac_a, 30 + i) for i in range(tx.num_slots - 1)]
                idx = tx.slots_from_head(len(sent))
                for i, f in zip(idx, sent, strict=True):
                    port.buf(int(tx.slot["buf_idx"][i]))[: len(f)] = np.frombuffer(f, np.uint8)
                tx.slot["len"][idx] = [len(f) for f in sent]
                tx.head = tx.cur = tx.next(tx.head, len(sent))
                assert port.txsync() == len(sent)
                assert ep.poll(1.0) == [(port.fileno(), select.EPOLLIN)]
            finally:
                ep.close()

            async def wait_ready() -> None:
                loop = asyncio.get_running_loop()
                ready = asyncio.Event()
                loop.add_reader(port.fileno(), ready.set)
                try:
                    await asyncio.wait_for(ready.wait(), 1.0)
                finally:
                    loop.remove_reader(port.fileno())

            asyncio.run(wait_ready())
            seen = 0
            deadline = time.monotonic() + 3.0
            peer.settimeout(0.5)
            while seen < len(sent) and time.monotonic() < deadline:
                try:
                    data, addr = peer.recvfrom(4096)
                except TimeoutError:
                    continue
                if addr[2] != PACKET_OUTGOING and data[6:12] == mac_a:
                    assert data == sent[seen]
                    seen += 1
            assert seen == len(sent)
            port.check_invariant()
        with pytest.raises(PortClosedError):
            port.fileno()
    finally:
        peer.close()
