"""The netmap port API against real veth pairs in namespaces."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from nettest import PORT_HOLDER, TEST_ETHERTYPE, VethPair, frame, start_port_holder

from vtnet_py import BusyError, DeviceError, RingError, open_port

pytestmark = pytest.mark.kernel

ETHERTYPE = TEST_ETHERTYPE


def receive(port, want: int, timeout: float = 3.0) -> list[tuple[int, bytes]]:
    """(ring id, frame bytes) of our test frames received on any RX ring."""
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        port.poll(rx=True, timeout=0.2)
        for r in port.rx_rings:
            n = r.space()
            if not n:
                continue
            idx = r.slots_from_head(n)
            for bi, ln in zip(r.slot["buf_idx"][idx], r.slot["len"][idx], strict=True):
                data = bytes(port.buf(int(bi))[: int(ln)])
                if data[12:14] == ETHERTYPE:
                    got.append((r.ring_id, data))
            r.head = r.cur = r.next(r.head, n)
        port.rxsync()
    return got


def test_rx_frames_arrive_in_the_ring_of_their_queue(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        assert len(port.rx_rings) == 2 and len(port.tx_rings) == 2
        for q in (0, 1):
            sent = [frame(mac_a, mac_b, 100 * q + i, 60 + 37 * i) for i in range(5)]
            veth.send_on_queue(sent, q)
            got = receive(port, 5)
            assert [g[1] for g in got] == sent
            assert {g[0] for g in got} == {q}
            port.check_invariant()


def test_tx_frames_reach_the_peer_byte_exact(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    s = veth.raw_socket("b")
    s.settimeout(2.0)
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        for ring in port.tx_rings:
            sent = [frame(mac_b, mac_a, 1000 * ring.ring_id + i, 60 + 100 * i) for i in range(8)]
            idx = ring.slots_from_head(len(sent))
            for i, f in zip(idx, sent, strict=True):
                port.buf(int(ring.slot["buf_idx"][i]))[: len(f)] = np.frombuffer(f, np.uint8)
                ring.slot["len"][i] = len(f)
            ring.head = ring.cur = ring.next(ring.head, len(sent))
            assert port.txsync() == len(sent)
            got = []
            while len(got) < len(sent):
                data = s.recv(4096)
                if data[12:14] == ETHERTYPE:
                    got.append(data)
            assert got == sent
            port.txsync()  # completions come back: all but the hole are the user's again
            assert ring.space() == ring.num_slots - 1
            port.check_invariant()
    s.close()


def test_suffixes_open_only_what_they_name(veth: VethPair) -> None:
    with open_port(f"netmap:{veth.a}-1", netns=veth.ns_a) as p:
        assert [r.queue for r in p.rx_rings] == [1] and [r.queue for r in p.tx_rings] == [1]
        assert p.owner_of(1) == os.getpid() and p.owner_of(0) == 0
    with open_port(f"netmap:{veth.a}/R", netns=veth.ns_a) as p:
        assert len(p.rx_rings) == 2 and p.tx_rings == []
    with open_port(f"netmap:{veth.a}/T", netns=veth.ns_a) as p:
        assert p.rx_rings == [] and len(p.tx_rings) == 2
        assert not veth.xdp_attached("a")  # transmit-only needs no steering program
    with pytest.raises(DeviceError, match="host ring 7 does not exist"):
        open_port(f"netmap:{veth.a}^7", netns=veth.ns_a)
    assert not veth.xdp_attached("a")


def test_unowned_queue_stays_with_the_kernel(veth: VethPair) -> None:
    """netmap XOR kernel per queue: owning queue 1 leaves queue 0's frames to the stack
    (seen by a packet socket on a), and the stack sees none of queue 1's."""
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    stack = veth.raw_socket("a")
    stack.setblocking(False)

    def stack_saw() -> list[bytes]:
        out = []
        time.sleep(0.2)
        while True:
            try:
                data = stack.recv(4096)
            except BlockingIOError:
                return out
            if data[12:14] == ETHERTYPE:
                out.append(data)

    with open_port(f"netmap:{veth.a}-1", netns=veth.ns_a) as port:
        to_kernel = [frame(mac_a, mac_b, i) for i in range(4)]
        veth.send_on_queue(to_kernel, 0)
        assert stack_saw() == to_kernel
        assert receive(port, 1, timeout=0.3) == []
        to_port = [frame(mac_a, mac_b, 10 + i) for i in range(4)]
        veth.send_on_queue(to_port, 1)
        assert [g[1] for g in receive(port, 4)] == to_port
        assert stack_saw() == []
    stack.close()


def test_second_process_gets_busy_error_naming_queue(veth: VethPair) -> None:
    holder = start_port_holder(f"netmap:{veth.a}-0", veth.ns_a)
    try:
        r = subprocess.run(
            [sys.executable, "-c", PORT_HOLDER, f"netmap:{veth.a}-0", veth.ns_a],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 3, r.stderr
        assert f"{veth.a} queue 0 is busy" in r.stdout
        # the other queue is free, from this process, sharing the program
        with open_port(f"netmap:{veth.a}-1", netns=veth.ns_a) as p:
            assert p.owner_of(0) == holder.pid
        with pytest.raises(BusyError, match=f"{veth.a} queue 0"):
            open_port(f"netmap:{veth.a}-0", netns=veth.ns_a)
    finally:
        holder.kill()
        holder.wait()


def test_kill_9_returns_queues_to_the_kernel_within_1s(veth: VethPair) -> None:
    holder = start_port_holder(f"netmap:{veth.a}", veth.ns_a)
    try:
        assert veth.xdp_attached("a")
        assert veth.sh_b(f"ping -c 1 -W 1 {veth.ip_a}", check=False).returncode != 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    t0 = time.monotonic()
    while veth.sh_b(f"ping -c 1 -W 0.2 {veth.ip_a}", check=False).returncode != 0:
        assert time.monotonic() - t0 < 1.0, "no ping answer within 1 s of kill -9"
    assert not veth.xdp_attached("a")


def test_bad_ring_moves_are_refused_and_nothing_is_sent_or_lost(veth: VethPair) -> None:
    s = veth.raw_socket("b")
    s.setblocking(False)
    with open_port(f"netmap:{veth.a}-0", netns=veth.ns_a) as port:
        rx, tx = port.rx_rings[0], port.tx_rings[0]
        rx.head = rx.cur = 5  # beyond tail (0): frames the user never had
        with pytest.raises(RingError, match="outside"):
            port.rxsync()
        assert rx.head == rx.cur == rx.hwcur == 0
        port.check_invariant()

        tx.slot["len"][:] = 60
        tx.slot["len"][3] = tx.nr_buf_size + 1
        tx.head = tx.cur = 8
        with pytest.raises(RingError, match="len 3841"):
            port.txsync()
        tx.slot["len"][3] = 60
        tx.slot["buf_idx"][2] = tx.slot["buf_idx"][1]  # one buffer in two slots
        tx.head = tx.cur = 8
        with pytest.raises(RingError, match="twice"):
            port.txsync()
        saved = int(tx.slot["buf_idx"][2])
        tx.slot["buf_idx"][2] = 10**6
        tx.head = tx.cur = 8
        with pytest.raises(RingError, match="out of range"):
            port.txsync()
        assert tx.head == tx.cur == tx.hwcur == 0
        tx.slot["buf_idx"][2] = saved + 1  # put the right buffer back (ring built in order)
        port.check_invariant()
        tx.head = tx.cur = 8
        assert port.txsync() == 8  # the repaired batch goes out whole
        port.check_invariant()
    time.sleep(0.1)
    got = []
    while True:
        try:
            data = s.recv(4096)
        except BlockingIOError:
            break
        got.append(data)
    assert len(got) == 8  # only the repaired batch, once


def test_port_fd_is_pollable(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        port.rxsync()
        for r in port.rx_rings:  # drop anything that arrived meanwhile
            r.head = r.cur = r.tail
        port.rxsync()
        assert select.select([port], [], [], 0.2)[0] == []
        veth.send_on_queue([frame(mac_a, mac_b, 7)], 1)
        assert select.select([port], [], [], 2.0)[0] == [port]
        assert receive(port, 1)[0][0] == 1


def test_vnet_header_prepended_on_rx_and_stripped_on_tx(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    s = veth.raw_socket("b")
    s.settimeout(2.0)
    with open_port(f"netmap:{veth.a}-0", netns=veth.ns_a, vnet_hdr=12) as port:
        assert port.nr_buf_size == port.rx_rings[0].nr_buf_size
        port.buf(int(port.rx_rings[0].slot["buf_idx"][0]))[:12] = 0xAA  # must be zeroed
        sent = frame(mac_a, mac_b, 5)
        veth.send_on_queue([sent], 0)
        got = []
        deadline = time.monotonic() + 3
        rx = port.rx_rings[0]
        while not got and time.monotonic() < deadline:
            port.poll(rx=True, timeout=0.2)
            for i in rx.slots_from_head(rx.space()):
                data = bytes(port.buf(int(rx.slot["buf_idx"][i]))[: int(rx.slot["len"][i])])
                if data[12 + 12 : 12 + 14] == ETHERTYPE:
                    got.append(data)
            rx.head = rx.cur = rx.tail
        assert got == [bytes(12) + sent]

        tx = port.tx_rings[0]
        out = [frame(mac_b, mac_a, 40 + i) for i in range(3)]
        for k, (i, f) in enumerate(zip(tx.slots_from_head(3), out, strict=True)):
            hdr = bytearray(12)
            if k == 1:
                hdr[0] = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM: offloads are off, refused
            data = bytes(hdr) + f
            port.buf(int(tx.slot["buf_idx"][i]))[: len(data)] = np.frombuffer(data, np.uint8)
            tx.slot["len"][i] = len(data)
        tx.head = tx.cur = tx.next(tx.head, 3)
        port.txsync()
        received = []
        while len(received) < 2:
            data = s.recv(4096)
            if data[12:14] == ETHERTYPE:
                received.append(data)
        assert received == [out[0], out[2]]
        port.txsync()
        assert tx.stats["hdr_refused"] == 1
        assert tx.space() == tx.num_slots - 1  # the refused slot came back too
        port.check_invariant()
    s.close()


def test_interface_deleted_while_open_fails_the_next_poll(veth: VethPair) -> None:
    from vtnet_py import InterfaceChangedError

    port = open_port(f"netmap:{veth.a}", netns=veth.ns_a)
    try:
        veth.sh_b(f"ip link del {veth.b}")  # takes the peer, a, with it
        t0 = time.monotonic()
        with pytest.raises(InterfaceChangedError, match=veth.a):
            port.poll(rx=True, timeout=5.0)
        assert time.monotonic() - t0 < 2.0
        with pytest.raises(InterfaceChangedError):  # and it stays failed
            port.rxsync()
    finally:
        port.close()
    fds = os.listdir("/proc/self/fd")
    assert not any(
        "xdp" in os.readlink(f"/proc/self/fd/{fd}")
        for fd in fds
        if os.path.exists(f"/proc/self/fd/{fd}")
    )
