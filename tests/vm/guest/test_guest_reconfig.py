"""A queue-count change (``ethtool -L eth0 combined N``) on a real virtio_net NIC (main
profile): netmap_config's re-register.

virtio_net refuses a channel change while an XDP program is attached (EINVAL), so with
a port that receives the change happens between two opens, and the second open binds
the new count (plus the queue pairs virtio_net adds per CPU for XDP). A TX-only port
attaches no program: there the change happens under the open port, which notices it,
and ``port.reconfigure()`` rebuilds its TX rings to the new count; a frame sent on the
new ring leaves through the new virtio TX queue (the driver's own counters say so).
"""

from __future__ import annotations

import os
import time

import guestlib
import numpy as np
import pytest

from vtnet_py import InterfaceChangedError, open_port
from vtnet_py.admin.status import status

ETH_P_TEST = 0x88B5
SINK_MAC = bytes.fromhex("027674000009")  # nobody's: the host stack ignores these frames


def _rx_queues(iface: str) -> int:
    return len([q for q in os.listdir(f"/sys/class/net/{iface}/queues") if q.startswith("rx-")])


def _owners(iface: str) -> dict[int, int]:
    st = status(iface)["interfaces"][0]
    return {q["queue"]: q["owner_pid"] for q in st["queues"]}


def test_channel_change_between_two_opens(iface: str, restore_iface: str) -> None:
    before = guestlib.channels(iface)
    assert before.combined >= 2, before
    with open_port(f"netmap:{iface}") as port:
        n1 = len(port.rx_rings)
        assert n1 == _rx_queues(iface) == guestlib.channels(iface).combined
        # the channels are locked while the program is attached; the port keeps working
        r = guestlib.set_channels(iface, 1)
        assert r.returncode != 0 and "Invalid argument" in r.stdout + r.stderr
        port.reconfigure()  # no change: the same count again, every frame in its place
        assert len(port.rx_rings) == n1
        port.check_invariant()
    assert guestlib.xdp_mode(iface) == 0  # the implicit program left with the port
    assert guestlib.set_channels(iface, 1).returncode == 0
    with open_port(f"netmap:{iface}") as port:
        n2 = _rx_queues(iface)
        assert n2 < n1, (n1, n2)
        assert len(port.rx_rings) == n2 == guestlib.channels(iface).combined
        assert len(port.tx_rings) == 1  # the stack's one TX queue; XDP's are not AF_XDP's
        assert _owners(iface) == {q: os.getpid() for q in range(n2)}
        port.check_invariant()


def test_reconfigure_a_tx_port_after_ethtool_l(iface: str, restore_iface: str) -> None:
    assert guestlib.set_channels(iface, 1).returncode == 0
    with open_port(f"netmap:{iface}/T") as port:
        assert len(port.tx_rings) == 1 and not port.rx_rings
        assert guestlib.xdp_mode(iface) == 0  # TX only: no program, channels unlocked
        r = guestlib.set_channels(iface, 2)
        assert r.returncode == 0, r.stdout + r.stderr
        with pytest.raises(InterfaceChangedError, match="channels changed from combined 1"):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                # a wait with nothing to wait for (no RX ring): only the device check
                # can end it (a TX poll returns at once while a ring has room)
                port.poll(rx=True, timeout=0.3)
        port.reconfigure()
        assert [(t.ring_id, t.queue) for t in port.tx_rings] == [(0, 0), (1, 1)]
        port.check_invariant()
        before = guestlib.tx_queue_packets(iface)
        src = bytes.fromhex(os.environ.get("VTVM_GUEST_MAC", "52:54:00:76:74:02").replace(":", ""))
        frame = np.frombuffer(SINK_MAC + src + ETH_P_TEST.to_bytes(2, "big") + bytes(46), np.uint8)
        t = port.tx_rings[1]
        idx = t.slots_from_head(8)
        port.bufs[t.slot["buf_idx"][idx], : len(frame)] = frame
        t.slot["len"][idx] = len(frame)
        t.head = t.cur = t.next(t.head, 8)
        port.txsync()
        deadline = time.monotonic() + 10
        while guestlib.tx_queue_packets(iface).get(1, 0) - before.get(1, 0) < 8:
            assert time.monotonic() < deadline, (before, guestlib.tx_queue_packets(iface))
            time.sleep(0.2)
            port.txsync()
        port.check_invariant()
