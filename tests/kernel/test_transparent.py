"""NS_FORWARD on a plain NIC port (issue 12, item 3), against veth pairs in namespaces.

netmap forwards released RX slots marked NS_FORWARD to the host stack from any NIC port
whose ring has NR_FORWARD. On ``netmap:IF`` (no host rings opened) the host TX ring is
started on demand. The filter here is netmap's use of it: inspect every received frame in
batches, mark the wanted flows NS_FORWARD, drop the others by releasing them unmarked.
"""

from __future__ import annotations

import socket
import subprocess
import time

import numpy as np
import pytest
from nettest import VethPair
from test_hostrings import helpers_in, recv_all, udp_frame, udp_socket
from test_stack_cutoff import peer_capture, stack_frames_on_wire

from vtnet_py import NR_FORWARD, NS_FORWARD, open_port
from vtnet_py._sys.netns import netns

pytestmark = pytest.mark.kernel

PASS_PORT, DROP_PORT = 7793, 7794


def mark_wanted(port, ip_a: bytes) -> int:
    """One batch per ring: NS_FORWARD on ARP, ICMP to IF's address and UDP to PASS_PORT
    (numpy over the slot array and the buffers, no per-frame Python); release everything."""
    bufs = port.bufs
    marked = 0
    for r in port.rx_rings:
        n = r.space()
        if not n:
            continue
        idx = r.slots_from_head(n)
        hdr = bufs[r.slot["buf_idx"][idx], :38]
        ethertype = hdr[:, 12].astype(np.uint16) << 8 | hdr[:, 13]
        ipv4 = ethertype == 0x0800
        to_me = (hdr[:, 30:34] == np.frombuffer(ip_a, np.uint8)).all(axis=1)
        icmp = ipv4 & to_me & (hdr[:, 23] == 1)
        dport = hdr[:, 36].astype(np.uint16) << 8 | hdr[:, 37]
        udp_ok = ipv4 & to_me & (hdr[:, 23] == 17) & (dport == PASS_PORT)
        want = (ethertype == 0x0806) | icmp | udp_ok
        r.slot["flags"][idx[want]] |= NS_FORWARD
        marked += int(want.sum())
        r.head = r.cur = r.next(r.head, n)
    port.rxsync()  # releases, which forwards the marked slots
    return marked


def send_udp(veth: VethPair, dports: list[int]) -> None:
    """Frames with complete checksums from the peer, one per destination port."""
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with netns(veth.ns_b):
        out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    out.bind((veth.b, 0))
    for i, d in enumerate(dports):
        out.send(udp_frame(mac_a, mac_b, veth.ip_b, veth.ip_a, 4000, d, b"p%d" % i))
    out.close()


def run_filter(port, veth: VethPair, until, seconds: float = 8.0) -> None:
    ip_a = socket.inet_aton(veth.ip_a)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        port.poll(rx=True, timeout=0.02)
        mark_wanted(port, ip_a)


@pytest.mark.parametrize("mode", ["/R", ""])
def test_ns_forward_on_a_plain_nic_port_passes_some_flows_up_and_drops_others(
    veth: VethPair, mode: str
) -> None:
    """netmap:IF/R: ping from the peer is answered (the reply leaves by the untouched
    egress), UDP to one port reaches its socket, UDP to another does not. netmap:IF (TX
    rings too): the same flows reach the stack, but its reply is cut off (netmap's rule:
    no host RX ring is open) and counted."""
    good = udp_socket(veth.ns_a, veth.ip_a, PASS_PORT)
    bad = udp_socket(veth.ns_a, veth.ip_a, DROP_PORT)
    cap = peer_capture(veth)
    try:
        with open_port(f"netmap:{veth.a}{mode}", netns=veth.ns_a) as port:
            for r in port.rx_rings:
                r.flags |= NR_FORWARD
            assert helpers_in(veth.ns_a) == []  # nothing forwarded yet: no helper
            ping = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    veth.ns_b,
                    "ping",
                    "-c",
                    "3",
                    "-i",
                    "0.2",
                    "-w",  # until 3 replies or the deadline: the first frames wait
                    "6" if mode == "/R" else "2",  # for the host TX ring to start
                    veth.ip_a,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            run_filter(port, veth, lambda: ping.poll() is not None, 10)
            ping_out = ping.communicate()[0]
            send_udp(veth, [PASS_PORT, DROP_PORT, PASS_PORT, DROP_PORT])
            got: list[bytes] = []
            run_filter(port, veth, lambda: got.extend(recv_all(good, 0.01)) or len(got) >= 2, 5)
            assert got == [b"p0", b"p2"]
            assert recv_all(bad) == []
            h = port.stats()["host"]
            assert h["forwarded_to_host"] >= 5 and h["forward_dropped"] == 0
            assert h["from_host_tx"] >= 5
            if mode == "/R":
                assert ping.returncode == 0, ping_out
            else:
                assert ping.returncode != 0, ping_out  # the replies are cut off
                assert port.stats()["stack_egress"]["stack_cut_dropped"] >= 3
                assert stack_frames_on_wire(veth, cap) == []
            port.check_invariant()
        assert helpers_in(veth.ns_a) == []
    finally:
        good.close()
        bad.close()
        cap.close()
