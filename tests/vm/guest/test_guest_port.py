"""netmap ports (``open_port("netmap:eth0")``) on a real multiqueue virtio_net NIC: ring i
is the guest's queue i in both directions, and every ring receives (main profile).

The host drives several UDP flows through the multiqueue TAP; the TAP spreads them over
its queues, each of which QEMU feeds into one virtio queue pair, so the guest receives on
all its queues. The mapping is checked against virtio_net's own per-queue counters, not
against the library: XDP redirects per RX queue (``ethtool -S``: rx_queue_N_xdp_redirects
on 6.1, rxN_xdp_redirects on 6.10+) and packets per TX queue (``tx_queue_N_packets`` on
6.1; 6.10+ moved them to the netdev netlink family's per-queue statistics).

Both ways of getting the steering program are covered: a port that attaches it itself
(implicit, for the life of the process) and a port joining `vtnetmap attach`'s.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import guestlib
import numpy as np
import pytest

from vtnet_py import Port, open_port
from vtnet_py.admin.attach import attach, detach

FLOWS = 64  # UDP destination ports; the TAP hashes flows onto its queues
ROUNDS = 4
BASE_PORT = 20000
TX_PER_RING = 8
ETH_P_TEST = 0x88B5  # IEEE local experimental ethertype: nothing else sends it
SINK_MAC = "02:76:74:00:00:09"  # nobody's: the host stack ignores these frames

# Host side: FLOWS x ROUNDS UDP datagrams, "<tag>-<flow>-<round>", paced for a TCG guest.
_HOST_FLOWS = r"""
import socket, sys, time
dst, base, tag = sys.argv[1], int(sys.argv[2]), sys.argv[5]
flows, rounds = int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for r in range(rounds):
    for f in range(flows):
        s.sendto(b"%s-%d-%d" % (tag.encode(), f, r), (dst, base + f))
    time.sleep(0.02)
"""

# Host side: count frames on the TAP (AF_PACKET, incoming only) from one source MAC with
# one ethertype; per-key counts (key = bytes at an offset) and the first frame, as JSON.
# Stops IDLE s after the last match once WANT were seen (so extra frames are counted too),
# 5 s after the last match while fewer came (they are lost), or at the deadline.
HOST_CAPTURE = r"""
import json, os, socket, sys, time
ifname, ready, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
idle, deadline = float(sys.argv[4]), time.monotonic() + float(sys.argv[5])
src, etype = bytes.fromhex(sys.argv[6]), bytes.fromhex(sys.argv[7])
koff, klen = int(sys.argv[8]), int(sys.argv[9])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
s.bind((ifname, 0))
open(ready, "w").close()
n, keys, first, last = 0, {}, None, None
while True:
    now = time.monotonic()
    if now > deadline or (last is not None and now - last > (idle if n >= want else 5)):
        break
    s.settimeout(0.1)
    try:
        data, addr = s.recvfrom(65536)
    except TimeoutError:
        continue
    if addr[2] == socket.PACKET_OUTGOING or data[6:12] != src or data[12:14] != etype:
        continue
    n += 1
    last = time.monotonic()
    k = data[koff:koff + klen].hex()
    keys[k] = keys.get(k, 0) + 1
    if first is None:
        first = data.hex()
print(json.dumps({"count": n, "keys": keys, "first": first}))
"""


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def rx_queue_count(iface: str) -> int:
    """The device's real_num_rx_queues, as sysfs lists them."""
    return len([q for q in os.listdir(f"/sys/class/net/{iface}/queues") if q.startswith("rx-")])


def tx_queue_count(iface: str) -> int:
    """The device's real_num_tx_queues, as sysfs lists them."""
    return len([q for q in os.listdir(f"/sys/class/net/{iface}/queues") if q.startswith("tx-")])


class HostCapture:
    """HOST_CAPTURE running on the host, ready once this returns."""

    def __init__(
        self,
        link: guestlib.HostLink,
        src_mac: str,
        ethertype: int,
        want: int,
        key: tuple[int, int],
        idle: float = 1.0,
        deadline: float = 60.0,
    ) -> None:
        self.link = link
        res = Path(os.environ.get("VTVM_RESULTS", "/tmp"))
        self.ready = res / f"capture-{secrets.token_hex(4)}.ready"
        self.handle = link.spawn(
            [
                sys.executable,
                "-c",
                HOST_CAPTURE,
                link.info()["tap"],
                str(self.ready),
                str(want),
                str(idle),
                str(deadline),
                mac_bytes(src_mac).hex(),
                f"{ethertype:04x}",
                str(key[0]),
                str(key[1]),
            ]
        )
        # The results directory is shared with the host: the file appears once bound.
        end = time.monotonic() + 30
        while not self.ready.exists():
            if time.monotonic() > end:
                r = link.wait(self.handle, timeout=5)
                pytest.fail(f"host capture did not start: rc={r.returncode} {r.stderr}")
            time.sleep(0.05)

    def result(self, timeout: float = 90) -> dict[str, object]:
        r = self.link.wait(self.handle, timeout=timeout)
        self.ready.unlink(missing_ok=True)
        assert r.returncode == 0, r.stderr
        out: dict[str, object] = json.loads(r.stdout)
        return out


def receive_flows(
    port: Port, expected: int, tag: bytes, timeout: float = 15.0
) -> tuple[np.ndarray, np.ndarray]:
    """Drain every RX ring until ``expected`` test datagrams arrived (then 0.5 s more,
    to see any extra). Returns per-ring counts of (all frames, test datagrams)."""
    n = len(port.rx_rings)
    frames = np.zeros(n, np.int64)
    ours = np.zeros(n, np.int64)
    bufs = port.bufs
    prefix = np.frombuffer(tag + b"-", np.uint8)
    end = time.monotonic() + timeout
    settle: float | None = None
    while time.monotonic() < (settle or end):
        port.poll(rx=True, timeout=0.2)
        for r in port.rx_rings:
            k = r.space()
            if not k:
                continue
            idx = r.slots_from_head(k)
            b = bufs[r.slot["buf_idx"][idx]]
            lens = r.slot["len"][idx]
            dport = b[:, 36].astype(np.int64) << 8 | b[:, 37]
            pay = b[:, 42 : 42 + prefix.size]
            hit = (
                (b[:, 12] == 0x08)
                & (b[:, 13] == 0x00)
                & (b[:, 23] == 17)
                & (dport >= BASE_PORT)
                & (dport < BASE_PORT + FLOWS)
                & (lens >= 42 + prefix.size)
                & (pay == prefix).all(axis=1)
            )
            frames[r.ring_id] += k
            ours[r.ring_id] += int(hit.sum())
            r.head = r.cur = r.next(r.head, k)
        port.rxsync()
        if settle is None and ours.sum() >= expected:
            settle = time.monotonic() + 0.5
    return frames, ours


def release_received(port: Port, frames: np.ndarray | None = None) -> int:
    """Release every frame waiting in the RX rings (counted per ring into ``frames``)."""
    port.rxsync()
    total = 0
    for r in port.rx_rings:
        k = r.space()
        if k:
            if frames is not None:
                frames[r.ring_id] += k
            r.head = r.cur = r.next(r.head, k)
            total += k
    port.rxsync()
    return total


def settled_stats(port: Port, iface: str, frames: np.ndarray | None = None) -> dict[str, int]:
    """`ethtool -S` at a moment no frame stands between virtio_net's redirect counter
    and the RX rings. The driver counts a redirect before the frame shows in the ring
    (at the end of its NAPI poll), so a stray frame (the host's IPv6 neighbour traffic)
    can fall between a counter read and a ring read: read, wait, and read again if a
    frame came in meanwhile (released, and counted into ``frames`` when given)."""
    release_received(port, frames)
    for _ in range(50):
        stats = guestlib.ethtool_stats(iface)
        time.sleep(0.2)
        if not release_received(port, frames):
            return stats
    pytest.fail(f"{iface}: frames kept arriving for 10 s: no quiet moment to read counters")


@pytest.fixture(params=["implicit", "attached"])
def steering(request: pytest.FixtureRequest, iface: str, restore_iface: str) -> Iterator[str]:
    """ "implicit": the port attaches the steering program itself; "attached": it joins
    the program `vtnetmap attach` left pinned (the library call behind the command)."""
    if request.param == "attached":
        attach(iface)
    try:
        yield request.param
    finally:
        if request.param == "attached":
            detach(iface)


def test_rings_map_to_queues_and_every_ring_receives(
    iface: str, steering: str, host_link: guestlib.HostLink
) -> None:
    with open_port(f"netmap:{iface}") as port:
        # With a program attached, virtio_net receives on every enabled queue pair (its
        # XDP TX pairs included): the port must have one RX ring per RX queue.
        nq = rx_queue_count(iface)
        assert len(port.rx_rings) == nq, (len(port.rx_rings), nq)
        assert nq == guestlib.channels(iface).combined
        assert [(r.ring_id, r.queue) for r in port.rx_rings] == [(i, i) for i in range(nq)]
        # TX: virtio_net's XDP queue pairs are not the stack's TX queues (real_num_tx_queues
        # stays at the channel count) and AF_XDP cannot transmit on them, so one TX ring
        # per TX queue of the device.
        ntxq = tx_queue_count(iface)
        assert [(r.ring_id, r.queue) for r in port.tx_rings] == [(i, i) for i in range(ntxq)]
        assert {port.owner_of(q) for q in range(nq)} == {os.getpid()}

        tag = f"vtvm-port-{steering}"
        before = settled_stats(port, iface)
        host_before = host_link.tap_stats()
        r = host_link.run(
            [
                sys.executable,
                "-c",
                _HOST_FLOWS,
                guestlib.GUEST_IP,
                str(BASE_PORT),
                str(FLOWS),
                str(ROUNDS),
                tag,
            ],
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        frames, ours = receive_flows(port, FLOWS * ROUNDS, tag.encode())
        after = settled_stats(port, iface, frames)
        host_sent = host_link.tap_stats()["tx_packets"] - host_before["tx_packets"]

        assert int(ours.sum()) == FLOWS * ROUNDS, (ours, host_sent)
        assert (ours > 0).all(), f"rings without traffic: {ours}"
        # Ring i got exactly what virtio_net redirected from its queue i.
        redirected = np.array(
            [
                guestlib.rx_xdp_redirects(after, q) - guestlib.rx_xdp_redirects(before, q)
                for q in range(nq)
            ]
        )
        assert (redirected == frames).all(), (redirected, frames)
        port.check_invariant()

        # TX: ring i leaves through virtio TX queue i and reaches the host.
        src = mac_bytes(os.environ.get("VTVM_GUEST_MAC", "52:54:00:76:74:02"))
        ntx = len(port.tx_rings)
        cap = HostCapture(host_link, src.hex(":"), ETH_P_TEST, ntx * TX_PER_RING, key=(14, 1))
        before_tx = guestlib.tx_queue_packets(iface)
        frame = np.zeros(60, np.uint8)
        frame[0:6] = np.frombuffer(mac_bytes(SINK_MAC), np.uint8)
        frame[6:12] = np.frombuffer(src, np.uint8)
        frame[12:14] = (ETH_P_TEST >> 8, ETH_P_TEST & 0xFF)
        for t in port.tx_rings:
            idx = t.slots_from_head(TX_PER_RING)
            bi = t.slot["buf_idx"][idx]
            frame[14] = t.ring_id
            port.bufs[bi, :60] = frame
            t.slot["len"][idx] = 60
            t.head = t.cur = t.next(t.head, TX_PER_RING)
        port.txsync()
        end = time.monotonic() + 10
        while any(t.tx_pending() for t in port.tx_rings) and time.monotonic() < end:
            port.poll(rx=False, tx=True, timeout=0.2)
        got = cap.result()
        after_tx = guestlib.tx_queue_packets(iface)
        assert got["count"] == ntx * TX_PER_RING, got
        assert got["keys"] == {f"{i:02x}": TX_PER_RING for i in range(ntx)}, got
        for q in range(ntx):
            sent = after_tx[q] - before_tx[q]
            assert sent >= TX_PER_RING, (q, sent)
        port.check_invariant()

    # Closed: the queues are the kernel's again (implicit: the program is gone too).
    p = host_link.run(["ping", "-c", "2", "-i", "0.2", "-W", "3", guestlib.GUEST_IP], timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr
    if steering == "implicit":
        assert guestlib.xdp_mode(iface) == 0
