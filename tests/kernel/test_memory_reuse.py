"""A Memory outlives its ports: closing a port gives its slots and buffers back, so ports
can be opened and closed on one Memory any number of times; closing the Memory while a
port uses it is refused (libxdp's xsk_umem__delete answers EBUSY)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from nettest import VethPair, kernel

from vtnet_py import open_port
from vtnet_py.errors import BusyError, UnsupportedError
from vtnet_py.netmap.memory import Memory
from vtnet_py.netmap.pool import FREE


def test_allocate_and_release_merge_free_ranges() -> None:
    mem = Memory(100)
    try:
        a = mem.allocate(40, "a")
        b = mem.allocate(40, "b")
        with pytest.raises(UnsupportedError, match="only 20 left of 100"):
            mem.allocate(30, "c")
        mem.release(a, 40)
        with pytest.raises(UnsupportedError, match=r"only 60 left \(40 in one piece\)"):
            mem.allocate(50, "c")
        mem.release(b, 40)  # merges with both neighbours: one piece again
        assert mem.allocate(100, "d") == 0
    finally:
        mem.close()


@kernel
def test_ports_open_and_close_on_one_memory_many_times(veth: VethPair) -> None:
    """Six opens of a 2048-buffer port on a 4096-buffer Memory, frames moved between
    rings by buffer swap each time (so a closed port leaves its buffers scattered), and
    two ports at once in between; the invariant holds throughout."""
    mem = Memory(4096)
    frame = veth.mac("a") + veth.mac("b") + b"\x88\xb5" + bytes(50)
    try:
        for round_ in range(6):
            with open_port(f"netmap:{veth.a}-0@conf:slots=1024", netns=veth.ns_a, memory=mem) as p:
                assert mem.users == 1
                rx, tx = p.rx_rings[0], p.tx_rings[0]
                veth.send_on_queue([frame], 0)
                deadline = time.monotonic() + 3
                while not rx.space() and time.monotonic() < deadline:
                    p.poll(rx=True, timeout=0.1)
                assert rx.space(), "the frame did not arrive"
                # echo it by swapping buffers: the RX buffer goes out of the TX ring
                i, j = rx.head, tx.head
                bi_rx, bi_tx = rx.slot["buf_idx"], tx.slot["buf_idx"]
                bi_rx[i], bi_tx[j] = int(bi_tx[j]), int(bi_rx[i])
                tx.slot["len"][j] = rx.slot["len"][i]
                rx.head = rx.cur = rx.next(i)
                tx.head = tx.cur = tx.next(j)
                p.txsync()
                p.rxsync()
                p.check_invariant()
                if round_ == 2:  # a second port beside the first, on the same memory
                    with open_port(
                        f"netmap:{veth.a}-1@conf:slots=1024", netns=veth.ns_a, memory=mem
                    ) as q:
                        assert mem.users == 2
                        q.check_invariant()
                        with pytest.raises(UnsupportedError, match="only 0 left"):
                            open_port(f"netmap:{veth.b}-0", netns=veth.ns_b, memory=mem)
            assert mem.users == 0
            assert np.count_nonzero(mem.pool.owner == FREE) == mem.nbufs
    finally:
        mem.close()


@kernel
def test_closing_a_memory_in_use_is_refused(veth: VethPair) -> None:
    mem = Memory(4096)
    port = open_port(f"netmap:{veth.a}-0@conf:slots=256", netns=veth.ns_a, memory=mem)
    try:
        with pytest.raises(BusyError, match="1 port"):
            mem.close()
        port.check_invariant()  # still usable: nothing was released
        port.rxsync()
    finally:
        port.close()
    mem.close()
    mem.close()  # idempotent
