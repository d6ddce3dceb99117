"""The guest's NIC is a real multiqueue virtio_net device, and the host TAP behind it
carries traffic both ways, counted exactly (the kernel-socket shape of seed Tests 1/2)."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time

import guestlib

N_DATAGRAMS = 200
PORT = 47000

# The host side of the exchanges below: a UDP receiver/sender run on the host through the
# host link, in the namespace holding the TAP. Payload i is derived from i, so both ends
# can hash what they saw and compare byte for byte. What is checked is that every
# datagram arrived exactly once, unchanged: a multiset digest (sha256 over the sorted
# per-datagram digests). Arrival order is not part of it: datagrams of one socket may
# leave through different TX queues of a multiqueue NIC (XPS follows the sending CPU),
# and queues are drained independently, so the order can change on the way.
_HOST_RX = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
digests, nbytes = [], 0
s.settimeout(60)
while len(digests) < int(sys.argv[3]):
    d = s.recv(65536)
    digests.append(hashlib.sha256(d).digest()); nbytes += len(d)
    s.settimeout(10)
print(len(digests), nbytes, hashlib.sha256(b"".join(sorted(digests))).hexdigest(), flush=True)
"""

_HOST_TX = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dest = (sys.argv[1], int(sys.argv[2]))
for i in range(int(sys.argv[3])):
    s.sendto(b"vtvm-h2g-%06d-" % i + bytes([i % 251]) * (64 + i % 700), dest)
    if i % 20 == 19:
        time.sleep(0.02)  # a TCG guest drains its RX queue slowly: do not overrun it
"""


def _payload(tag: bytes, i: int) -> bytes:
    return b"vtvm-%s-%06d-" % (tag, i) + bytes([i % 251]) * (64 + i % 700)


def multiset_digest(datagrams: list[bytes]) -> str:
    """Equal for the same datagrams in any order; differs if one is missing, repeated or
    changed (the same digest _HOST_RX computes)."""
    return hashlib.sha256(
        b"".join(sorted(hashlib.sha256(d).digest() for d in datagrams))
    ).hexdigest()


def test_driver_is_virtio_net(iface: str) -> None:
    assert guestlib.driver_of(iface) == "virtio_net"


def test_multiqueue_channels(iface: str) -> None:
    ch = guestlib.channels(iface)
    want_max = int(os.environ.get("VTVM_QUEUES", "4"))
    assert ch.max_combined == want_max, ch
    # virtio_net enables min(queue pairs, online CPUs) at probe.
    assert ch.combined == min(ch.max_combined, os.cpu_count() or 1), ch
    queues = os.listdir(f"/sys/class/net/{iface}/queues")
    assert {f"rx-{i}" for i in range(ch.combined)} <= set(queues), queues


def test_host_pings_guest(host_link: guestlib.HostLink) -> None:
    r = host_link.run(["ping", "-c", "3", "-i", "0.3", "-W", "5", guestlib.GUEST_IP], timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_guest_tx_counted_exactly_on_host_tap(host_link: guestlib.HostLink) -> None:
    before = host_link.tap_stats()
    h = host_link.spawn(
        [sys.executable, "-c", _HOST_RX, guestlib.HOST_IP, str(PORT), str(N_DATAGRAMS)]
    )
    # Wait until the receiver is bound: a datagram sent before would be refused.
    deadline = time.monotonic() + 30
    while True:
        r = host_link.run(["ss", "-Hunl", f"sport = :{PORT}"], timeout=10)
        if str(PORT) in r.stdout:
            break
        assert time.monotonic() < deadline, "host receiver did not start"
        time.sleep(0.2)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = [_payload(b"g2h", i) for i in range(N_DATAGRAMS)]
    for p in sent:
        s.sendto(p, (guestlib.HOST_IP, PORT))
    s.close()
    nbytes = sum(map(len, sent))
    r = host_link.wait(h, timeout=90)
    assert r.returncode == 0, r.stderr
    got = r.stdout.split()
    assert got[0] == "ready"
    assert got[1:] == [str(N_DATAGRAMS), str(nbytes), multiset_digest(sent)]
    after = host_link.tap_stats()
    assert after["rx_packets"] - before["rx_packets"] >= N_DATAGRAMS
    assert after["rx_bytes"] - before["rx_bytes"] >= nbytes + N_DATAGRAMS * 42


def test_host_tx_received_exactly_in_guest(host_link: guestlib.HostLink) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # SO_RCVBUFFORCE: past rmem_max, so a slow (TCG) guest does not drop the burst.
    s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 8 << 20)
    s.bind((guestlib.GUEST_IP, PORT + 1))
    s.settimeout(60)
    before = host_link.tap_stats()
    r = host_link.run(
        [sys.executable, "-c", _HOST_TX, guestlib.GUEST_IP, str(PORT + 1), str(N_DATAGRAMS)],
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    got: list[bytes] = []
    try:
        while len(got) < N_DATAGRAMS:
            got.append(s.recv(65536))
            s.settimeout(10)
    finally:
        s.close()
    assert multiset_digest(got) == multiset_digest(
        [_payload(b"h2g", i) for i in range(N_DATAGRAMS)]
    )
    after = host_link.tap_stats()
    assert after["tx_packets"] - before["tx_packets"] >= N_DATAGRAMS
