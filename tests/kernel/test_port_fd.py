"""The port's fd and poll() mean what they mean on a netmap fd (issue 12, items 1 and 2).

- fileno() is readable while a sync left frames between cur and tail (not only while the
  kernel RX ring has frames), stops being readable once the application moved cur to
  tail, and a port without RX rings is ready only while a TX ring has room;
- poll() returns netmap's revents, does the syncs netmap's poll does (NETMAP_NO_TX_POLL,
  NETMAP_DO_RX_POLL as open_port options) and sleeps in the kernel for the whole timeout,
  woken by a link message when the interface goes away or changes channels.

Every veth/namespace is made and removed by the fixtures.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time

import pytest
from nettest import TEST_ETHERTYPE, VethPair, frame, put_tx, sh

from vtnet_py import InterfaceChangedError, open_port
from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py.device.types import Channels
from vtnet_py.netmap.watch import DeviceWatch

pytestmark = pytest.mark.kernel

ETHERTYPE = TEST_ETHERTYPE


def readable(port, wait: float) -> bool:
    return select.select([port.fileno()], [], [], wait)[0] != []


def drain(port) -> None:
    """Release whatever arrived so far (sync, head = cur = tail, sync)."""
    for _ in range(2):
        port.rxsync()
        for r in port.rx_rings:
            r.head = r.cur = r.tail
    port.rxsync()


def unread(port) -> list[bytes]:
    """Our test frames between head and tail of every RX ring (not released)."""
    out = []
    for r in port.rx_rings:
        for i in r.slots_from_head(r.space()):
            data = bytes(port.buf(int(r.slot["buf_idx"][i]))[: int(r.slot["len"][i])])
            if data[12:14] == ETHERTYPE:
                out.append(data)
    return out


def test_fd_stays_readable_while_synced_frames_are_unread(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}-0", netns=veth.ns_a) as port:
        rx = port.rx_rings[0]
        drain(port)
        assert not readable(port, 0.2)
        sent = [frame(mac_a, mac_b, i) for i in range(3)]
        veth.send_on_queue(sent, 0)
        assert readable(port, 2.0)  # frames in the kernel RX ring
        deadline = time.monotonic() + 2
        while len(unread(port)) < 3 and time.monotonic() < deadline:
            port.rxsync()
        assert unread(port) == sent
        # the kernel ring is empty now, the frames wait in the slots: still readable
        assert rx.waiting() == 0 and rx.cur != rx.tail
        assert readable(port, 0.2)
        assert readable(port, 0.2)  # level-triggered: as often as asked
        # the application read one and moved cur and head past it: two still unread
        rx.head = rx.cur = rx.next(rx.head)
        assert readable(port, 0.2)
        # cur = tail without releasing (head stays): "wake me when more arrives"
        rx.cur = rx.tail
        assert not readable(port, 0.3)
        assert rx.space() == 2 and not rx.empty()  # nm_ring_space counts from head
        port.rxsync()  # releases nothing (head did not move), takes nothing
        assert not readable(port, 0.2)
        more = frame(mac_a, mac_b, 9)
        veth.send_on_queue([more], 0)
        assert readable(port, 2.0)
        port.rxsync()
        assert rx.cur != rx.tail and readable(port, 0.1)
        rx.head = rx.cur = rx.tail
        port.rxsync()
        assert rx.empty() and not readable(port, 0.3)
        port.check_invariant()


def epoll_targets(epfd: int) -> set[int]:
    """The fds registered in epoll ``epfd`` (its /proc fdinfo lists each as ``tfd:``)."""
    with open(f"/proc/self/fdinfo/{epfd}") as f:
        return {int(line.split()[1]) for line in f if line.startswith("tfd:")}


def test_sockets_join_the_fd_epoll_only_once_fileno_is_asked_for(veth: VethPair) -> None:
    """A socket in an epoll keeps a wait-queue entry, and every TX completion on it then
    runs a wake-up: the sockets join fileno()'s epoll when fileno() is first asked for,
    and poll() sleeps in poll(2), registered only while it sleeps."""
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        socks = set(port.socket_fds())
        epfd = port._epoll.fileno()
        assert port.poll(rx=True, timeout=0.05) == 0
        assert not socks & epoll_targets(epfd)
        assert port.fileno() == epfd
        assert socks <= epoll_targets(epfd)
        drain(port)
        veth.send_on_queue([frame(mac_a, mac_b, 1)], 0)
        assert readable(port, 2.0)


def test_asyncio_reader_that_reads_one_frame_per_call_gets_them_all(veth: VethPair) -> None:
    """The event loop that synced and left frames unread must be woken again (with the
    old fd it blocked forever: the kernel ring was empty)."""
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    sent = [frame(mac_a, mac_b, 40 + i, 60 + 30 * i) for i in range(5)]

    async def main(port) -> list[bytes]:
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        done = asyncio.Event()
        rx = port.rx_rings[0]

        def on_readable() -> None:
            if rx.cur == rx.tail:
                port.rxsync()
            if rx.cur != rx.tail:  # take one frame only, leave the rest for later calls
                i = rx.cur
                data = bytes(port.buf(int(rx.slot["buf_idx"][i]))[: int(rx.slot["len"][i])])
                if data[12:14] == ETHERTYPE:
                    got.append(data)
                rx.head = rx.cur = rx.next(i)
            if len(got) == len(sent):
                done.set()

        loop.add_reader(port.fileno(), on_readable)
        try:
            veth.send_on_queue(sent, 0)
            await asyncio.wait_for(done.wait(), 3.0)
        finally:
            loop.remove_reader(port.fileno())
        return got

    with open_port(f"netmap:{veth.a}-0", netns=veth.ns_a) as port:
        drain(port)
        assert asyncio.run(main(port)) == sent
        port.check_invariant()


def test_tx_only_fd_is_ready_only_while_a_tx_ring_has_room(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}-1/T", netns=veth.ns_a) as port:
        tx = port.tx_rings[0]
        assert port.rx_rings == []
        assert readable(port, 0.5)  # every slot is free
        # the application takes every slot (cur = tail): no room, nothing in flight
        tx.cur = tx.tail
        assert not readable(port, 0.3)
        assert tx.space() == tx.num_slots - 1  # head did not move: still the user's
        tx.cur = tx.head
        assert readable(port, 0.5)
        # a full ring handed over: ready again once the sync reaped the completions
        put_tx(port, tx, [frame(mac_b, mac_a, i) for i in range(tx.num_slots - 1)])
        assert tx.space() == 0
        deadline = time.monotonic() + 2
        while tx.space() == 0 and time.monotonic() < deadline:
            assert readable(port, 1.0)  # room, or frames in flight a sync will reap
            port.txsync()
        assert tx.space() > 0 and readable(port, 0.1)
        port.check_invariant()


def test_poll_returns_netmap_revents(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}-0", netns=veth.ns_a) as port:
        rx, tx = port.rx_rings[0], port.tx_rings[0]
        drain(port)
        assert port.poll(rx=True, timeout=0.2) == 0
        assert port.poll(rx=False, tx=True, timeout=0) == select.POLLOUT
        assert port.poll(rx=True, tx=True, timeout=0) == select.POLLOUT
        veth.send_on_queue([frame(mac_a, mac_b, 1)], 0)
        deadline = time.monotonic() + 2
        revents = 0
        while not revents & select.POLLIN and time.monotonic() < deadline:
            revents = port.poll(rx=True, tx=True, timeout=0.5)
        assert revents == select.POLLIN | select.POLLOUT
        assert port.poll(rx=True, timeout=0) == select.POLLIN  # unread: ready at once
        tx.cur = tx.tail  # no room wanted: only RX can be ready
        assert port.poll(rx=True, tx=True, timeout=0) == select.POLLIN
        tx.cur = tx.head
        rx.head = rx.cur = rx.tail
        assert port.poll(rx=True, timeout=0.1) == 0
        port.check_invariant()


def test_poll_pushes_tx_unless_no_tx_poll(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    for no_tx_poll in (False, True):
        with open_port(f"netmap:{veth.a}-0", netns=veth.ns_a, no_tx_poll=no_tx_poll) as port:
            tx = port.tx_rings[0]
            start = tx.hwcur
            put_tx(port, tx, [frame(mac_b, mac_a, i) for i in range(3)])
            port.poll(rx=True, timeout=0.05)
            if no_tx_poll:
                assert tx.hwcur == start  # NETMAP_NO_TX_POLL: only a poll for TX pushes
                assert port.poll(rx=False, tx=True, timeout=0.5) == select.POLLOUT
            assert tx.hwcur == tx.next(start, 3), no_tx_poll
            port.check_invariant()


def test_poll_for_tx_syncs_rx_only_with_do_rx_poll(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    for do_rx_poll in (False, True):
        with open_port(f"netmap:{veth.a}-0", netns=veth.ns_a, do_rx_poll=do_rx_poll) as port:
            rx = port.rx_rings[0]
            drain(port)
            veth.send_on_queue([frame(mac_a, mac_b, 7)], 0)
            deadline = time.monotonic() + 2
            while rx.waiting() == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert rx.waiting() >= 1
            before = rx.tail
            assert port.poll(rx=False, tx=True, timeout=0) == select.POLLOUT
            if do_rx_poll:
                assert rx.tail != before and rx.waiting() == 0
            else:
                assert rx.tail == before and rx.waiting() >= 1  # netmap: RX left alone
            port.check_invariant()


def test_idle_poll_sleeps_in_the_kernel(veth: VethPair) -> None:
    """No 100 ms health slices: an idle poll(timeout=0.5) returns from its wait once or
    twice (the timeout), not five times."""
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        drain(port)
        for r in port.tx_rings:
            r.cur = r.tail  # no room wanted either
        before = port.poll_wakeups
        t0 = time.monotonic()
        assert port.poll(rx=True, tx=True, timeout=0.5) == 0
        took = time.monotonic() - t0
        assert 0.45 <= took < 1.5
        assert port.poll_wakeups - before <= 2, port.poll_wakeups - before


def test_busy_poll_spins_and_still_hears_frames_and_link_changes(
    veth: VethPair,
) -> None:
    """open_port(busy_poll=True): poll() never sleeps (no wake-up is counted, the thread
    burns CPU for the whole timeout), returns POLLIN for a frame that arrives while it
    spins, and still fails promptly when the interface goes away."""
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}-0", netns=veth.ns_a, busy_poll=True) as port:
        drain(port)
        before, cpu0, t0 = port.poll_wakeups, time.thread_time(), time.monotonic()
        assert port.poll(rx=True, timeout=0.3) == 0
        took, cpu = time.monotonic() - t0, time.thread_time() - cpu0
        assert 0.28 <= took < 2.0
        assert port.poll_wakeups == before  # spun: never slept in poll(2)
        assert cpu > 0.1, f"busy poll used {cpu:.3f} s of CPU in {took:.3f} s"
        sender = threading.Timer(0.1, veth.send_on_queue, ([frame(mac_a, mac_b, 3)], 0))
        sender.start()
        try:
            deadline = time.monotonic() + 3
            revents = 0
            while not revents and time.monotonic() < deadline:
                revents = port.poll(rx=True, timeout=3.0)
                if revents and not unread(port):  # a stray frame: release it, go on
                    drain(port)
                    revents = 0
        finally:
            sender.join()
        assert revents == select.POLLIN
        assert [f[14:18] for f in unread(port)] == [(3).to_bytes(4, "big")]
        drain(port)
        poll_fails_once_the_peer_is_deleted(veth, port, f"{veth.a}.*(gone|went away|down)")


def _later(delay: float, cmd: list[str], at: list[float]) -> threading.Thread:
    def go() -> None:
        time.sleep(delay)
        at.append(time.monotonic())
        sh(cmd[0], cmd[1])

    t = threading.Thread(target=go)
    t.start()
    return t


def poll_fails_once_the_peer_is_deleted(veth: VethPair, port, pattern: str) -> None:  # type: ignore[no-untyped-def]
    """Delete the peer 0.4 s from now: port.poll(rx=True, timeout=5) raises
    InterfaceChangedError matching ``pattern`` within 1 s of that."""
    at: list[float] = []
    t = _later(0.4, [veth.ns_b, f"ip link del {veth.b}"], at)
    try:
        with pytest.raises(InterfaceChangedError, match=pattern):
            port.poll(rx=True, timeout=5.0)
        assert at and time.monotonic() - at[0] < 1.0
    finally:
        t.join()


def test_idle_poll_fails_promptly_when_the_interface_is_deleted(veth: VethPair) -> None:
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        drain(port)
        poll_fails_once_the_peer_is_deleted(veth, port, f"{veth.a}.*(gone|went away)")
        assert port.poll_wakeups <= 3


def test_idle_poll_fails_promptly_when_channels_change(veth_factory) -> None:
    v = veth_factory(queues=4)
    sh(v.ns_b, f"ethtool -L {v.b} tx 2")
    sh(v.ns_a, f"ethtool -L {v.a} rx 2 tx 2")
    with open_port(f"netmap:{v.a}", netns=v.ns_a) as port:
        drain(port)
        at: list[float] = []
        t = _later(0.4, [v.ns_a, f"ethtool -L {v.a} rx 3"], at)
        try:
            with pytest.raises(InterfaceChangedError, match="channels changed"):
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    if port.poll(rx=True, timeout=5.0):  # a stray frame: release, go on
                        for r in port.rx_rings:
                            r.head = r.cur = r.tail
            assert at and time.monotonic() - at[0] < 1.0
        finally:
            t.join()


def test_watch_hears_ethtool_channel_notifications_for_its_interface_only(veth_factory) -> None:
    """virtio_net sends no link message on `ethtool -L`; ethtool's own notification
    (ETHTOOL_MSG_CHANNELS_NTF on the "monitor" group) is heard instead. The link socket
    is closed here to stand for such a driver."""
    v = veth_factory(queues=4)
    sh(v.ns_a, f"ethtool -L {v.a} rx 2")
    with enter_netns(v.ns_a):
        w = DeviceWatch("netmap:x", v.a, Channels())
        w.ifindex = socket.if_nametoindex(v.a)
    try:
        if len(w.fds()) < 2:
            pytest.skip("this kernel has no ethtool netlink family")
        w._nl.close()
        w._nl = None
        sh(v.ns_b, f"ethtool -L {v.b} rx 2")  # the peer's change: not ours
        assert not (select.select(w.fds(), [], [], 0.5)[0] and w.events())
        sh(v.ns_a, f"ethtool -L {v.a} rx 3")
        assert select.select(w.fds(), [], [], 2.0)[0]
        assert w.events()
    finally:
        w.close()
