"""A queue-count change (``ethtool -L``) under a port, on veth: netmap_config's answer.

The open port notices the change (InterfaceChangedError at the next poll), and then a
re-register works: a new ``open_port`` binds the new count, and ``port.reconfigure()``
rebuilds the rings of the same port object (same fileno, same shared Memory) with every
UMEM frame in exactly one place. ``status`` shows the new mapping, and while a port still
holds the old count it says which queue goes to the kernel's stack.

The machine has 2 CPUs and a packet socket sends on TX queue (cpu % queues), so the
tests grow 1 queue to 2 (veth shrinks nothing below a bound AF_XDP queue).
"""

from __future__ import annotations

import os
import select
import time

import numpy as np
import pytest
from nettest import VethPair

from vtnet_py import InterfaceChangedError, Memory, open_port
from vtnet_py.admin.status import status

pytestmark = pytest.mark.kernel

ETHERTYPE = b"\x88\xb5"


def frame(dst: bytes, src: bytes, seq: int) -> bytes:
    return dst + src + ETHERTYPE + seq.to_bytes(4, "big") + bytes(range(42))


def one_queue(v: VethPair) -> None:
    v.sh_b(f"ethtool -L {v.b} rx 1 tx 1")
    v.sh_a(f"ethtool -L {v.a} rx 1 tx 1")


def two_queues(v: VethPair) -> None:
    v.sh_a(f"ethtool -L {v.a} rx 2 tx 2")
    v.sh_b(f"ethtool -L {v.b} rx 2 tx 2")


def received(port, want: int, timeout: float = 3.0) -> dict[int, list[bytes]]:
    """Our test frames per RX ring id."""
    got: dict[int, list[bytes]] = {}
    n = 0
    deadline = time.monotonic() + timeout
    while n < want and time.monotonic() < deadline:
        port.poll(rx=True, timeout=0.2)
        for r in port.rx_rings:
            k = r.space()
            idx = r.slots_from_head(k)
            for bi, ln in zip(r.slot["buf_idx"][idx], r.slot["len"][idx], strict=True):
                data = bytes(port.buf(int(bi))[: int(ln)])
                if data[12:14] == ETHERTYPE:
                    got.setdefault(r.ring_id, []).append(data)
                    n += 1
            r.head = r.cur = r.next(r.head, k)
        port.rxsync()
    return got


def wait_changed(port) -> InterfaceChangedError:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            port.poll(rx=True, timeout=0.3)
        except InterfaceChangedError as exc:
            return exc
        for r in port.rx_rings:  # stray frames: release them
            r.head = r.cur = r.tail
    raise AssertionError("the channel change was not reported within 3 s")


def test_a_new_open_after_a_channel_change_binds_the_new_count(veth_factory) -> None:
    v = veth_factory(queues=2)
    one_queue(v)
    with open_port(f"netmap:{v.a}", netns=v.ns_a) as port:
        assert (len(port.rx_rings), len(port.tx_rings)) == (1, 1)
    two_queues(v)
    mac_a, mac_b = v.mac("a"), v.mac("b")
    with open_port(f"netmap:{v.a}", netns=v.ns_a) as port:
        assert (len(port.rx_rings), len(port.tx_rings)) == (2, 2)
        sent = [frame(mac_a, mac_b, i) for i in range(4)]
        v.send_on_queue(sent, 1)
        assert received(port, 4) == {1: sent}
        port.check_invariant()
        q = status(v.a, netns=v.ns_a)["interfaces"][0]["queues"]
        assert [(x["queue"], x["owner_pid"]) for x in q] == [(0, os.getpid()), (1, os.getpid())]


@pytest.mark.parametrize("shared", [False, True], ids=["own-memory", "shared-memory"])
def test_reconfigure_rebuilds_the_rings_to_the_new_count(veth_factory, shared: bool) -> None:
    v = veth_factory(queues=2)
    one_queue(v)
    mac_a, mac_b = v.mac("a"), v.mac("b")
    mem = Memory(8192) if shared else None
    port = open_port(f"netmap:{v.a}", netns=v.ns_a, memory=mem)
    try:
        fd, before = port.fileno(), port.memory
        old_rx = port.rx_rings[0]
        assert (len(port.rx_rings), len(port.tx_rings)) == (1, 1)
        two_queues(v)
        exc = wait_changed(port)
        assert f"{v.a} channels changed from rx 1, tx 1 to rx 2, tx 2" in str(exc)
        # status from outside the port: queue 1 is new and nobody's, so it goes to the stack
        st = status(v.a, netns=v.ns_a)["interfaces"][0]
        assert [(x["queue"], x["owner_pid"]) for x in st["queues"]] == [(0, os.getpid()), (1, 0)]
        assert (
            f"queue 1 is not held by pid {os.getpid()}, which holds queue 0: its frames go to "
            f"the kernel's stack (if that port was opened on every queue, the channels grew "
            f"since: port.reconfigure() or a new open takes it)"
        ) in st["notes"]

        port.reconfigure()
        assert port.fileno() == fd
        assert (len(port.rx_rings), len(port.tx_rings)) == (2, 2)
        assert [(r.ring_id, r.queue) for r in port.rx_rings] == [(0, 0), (1, 1)]
        assert port.rx_rings[0] is not old_rx
        if shared:
            assert port.memory is mem  # a shared Memory is always kept
        else:
            assert port.memory is not before  # the private one had to grow
        totals = port.check_invariant()
        assert totals["kernel_rx"] == 2 * (port.rx_rings[0].num_slots)
        assert port.poll(rx=True, timeout=0.3) in (True, False)  # no stale change reported
        # fileno() follows the new rings: a frame synced and left unread keeps it readable
        v.send_on_queue([frame(mac_a, mac_b, 99)], 1)
        r1 = port.rx_rings[1]
        deadline = time.monotonic() + 3
        while r1.space() == 0 and time.monotonic() < deadline:
            port.rxsync()
            time.sleep(0.01)
        assert r1.space() == 1
        assert select.select([fd], [], [], 0)[0] == [fd]
        r1.head = r1.cur = r1.tail
        port.rxsync()
        assert select.select([fd], [], [], 0)[0] == []

        for q in (0, 1):
            sent = [frame(mac_a, mac_b, 10 * q + i) for i in range(3)]
            v.send_on_queue(sent, q)
            assert received(port, 3) == {q: sent}
        # TX on the new ring reaches the peer
        s = v.raw_socket("b")
        s.settimeout(2.0)
        tx = port.tx_rings[1]
        f = frame(mac_b, mac_a, 77)
        i = tx.head
        port.buf(int(tx.slot["buf_idx"][i]))[: len(f)] = np.frombuffer(f, np.uint8)
        tx.slot["len"][i] = len(f)
        tx.head = tx.cur = tx.next(i)
        assert port.txsync() == 1
        while (data := s.recv(4096))[12:14] != ETHERTYPE:
            pass
        assert data == f
        s.close()
        port.check_invariant()
        st = status(v.a, netns=v.ns_a, ports=[port])["interfaces"][0]
        assert [(x["queue"], x["owner_pid"]) for x in st["queues"]] == [
            (0, os.getpid()),
            (1, os.getpid()),
        ]
        assert [len(x["rings"]) for x in st["queues"]] == [2, 2]
        assert not [n for n in st["notes"] if "not held" in n]
    finally:
        port.close()
        if mem is not None:
            assert mem.check_invariant()["free"] == mem.nbufs
            mem.close()


def test_reconfigure_without_a_change_keeps_the_memory_and_traffic(veth) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        mem = port.memory
        sent = [frame(mac_a, mac_b, i) for i in range(3)]
        veth.send_on_queue(sent, 0)
        time.sleep(0.2)
        port.rxsync()  # frames in the old rings: dropped by the rebuild, buffers back
        port.reconfigure()
        assert port.memory is mem
        assert port.check_invariant()["slots"] == sum(r.num_slots for r in port.tx_rings)  # + holes
        veth.send_on_queue(sent, 0)
        assert received(port, 3) == {0: sent}


def test_reconfigure_of_a_closed_port_is_refused(veth) -> None:
    from vtnet_py import PortClosedError

    port = open_port(f"netmap:{veth.a}-0", netns=veth.ns_a)
    port.close()
    with pytest.raises(PortClosedError, match=f"netmap:{veth.a}-0: port is closed"):
        port.reconfigure()


def test_reconfigure_that_cannot_fit_closes_the_port_and_leaves_nothing(veth_factory) -> None:
    from vtnet_py import PortClosedError, UnsupportedError

    v = veth_factory(queues=2)
    one_queue(v)
    mem = Memory(2 * 1024 + 10)  # one ring pair: too small for two
    port = open_port(f"netmap:{v.a}", netns=v.ns_a, memory=mem)
    two_queues(v)
    with pytest.raises(UnsupportedError, match=f"netmap:{v.a}: needs 4096 buffers"):
        port.reconfigure()
    with pytest.raises(PortClosedError):
        port.rxsync()
    assert mem.users == 0 and mem.check_invariant()["free"] == mem.nbufs
    assert not v.xdp_attached("a")  # the steering program left with the port
    mem.close()
    with open_port(f"netmap:{v.a}", netns=v.ns_a) as again:  # a new open takes the 2 queues
        assert len(again.rx_rings) == 2
