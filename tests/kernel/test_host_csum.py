"""Host rings with a veth peer that has default offloads (issue 12, "Host rings on veth").

A veth whose peer checksums by offload (tx checksumming on: every container's default)
hands TCP and UDP frames over with the checksum unfinished; AF_XDP copies the bytes as
they are. Frames that go up the stack through the host TX ring get the checksum completed
on the way (bpf/host.c, vtnm_host_in). Nothing here turns the peer's offloads off.
"""

from __future__ import annotations

import socket
import time

import pytest
from nettest import VethPair
from test_bridge import BridgeProc, bridge_proc, tcp_transfer  # noqa: F401 (fixture)
from test_hostrings import recv_all, udp_socket

from vtnet_py import NR_FORWARD, NS_FORWARD, open_port
from vtnet_py._sys.netns import netns

pytestmark = pytest.mark.kernel


def peer_checksums_by_offload(veth: VethPair) -> bool:
    out = veth.sh_b(f"ethtool -k {veth.b}").stdout
    return "tx-checksumming: on" in out


def test_tcp_from_a_default_peer_through_the_host_bridge(veth: VethPair, bridge_proc) -> None:  # noqa: F811
    """`vtnetmap bridge -i netmap:IF` with the peer as it comes: a 1 MB TCP transfer from
    the peer to a listener on IF's stack completes, byte-exact."""
    assert peer_checksums_by_offload(veth)
    br: BridgeProc = bridge_proc(veth.ns_a, ["-w", "0", "-T", "0", "-i", f"netmap:{veth.a}"])
    br.wait_for("Ready to go")
    sent, got = tcp_transfer(veth, 1 << 20, port=5211, seed=11, timeout=60)
    assert sent == got, (sent, got)
    assert br.p.poll() is None, br.lines
    assert peer_checksums_by_offload(veth)  # the test did not change the world


def test_udp_from_a_default_peer_forwarded_up_gets_its_checksum(veth: VethPair) -> None:
    """NS_FORWARD of datagrams a default peer sent (checksum left to offload): the socket
    on IF's stack receives them, and the host TX program counts the completions."""
    assert peer_checksums_by_offload(veth)
    local = udp_socket(veth.ns_a, veth.ip_a, 7795)
    with netns(veth.ns_b):
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with open_port(f"netmap:{veth.a}/R", netns=veth.ns_a) as port:
            for r in port.rx_rings:
                r.flags |= NR_FORWARD
            veth.sh_a(
                f"ip neigh replace {veth.ip_b} lladdr {veth.mac('b').hex(':')} "
                f"dev {veth.a} nud permanent"
            )
            veth.sh_b(
                f"ip neigh replace {veth.ip_a} lladdr {veth.mac('a').hex(':')} "
                f"dev {veth.b} nud permanent"
            )
            payloads = [b"odd", b"even", bytes(range(256)) * 5 + b"x"]
            got: list[bytes] = []
            for p in payloads:
                peer.sendto(p, (veth.ip_a, 7795))
            deadline = time.monotonic() + 8
            while len(got) < len(payloads) and time.monotonic() < deadline:
                port.poll(rx=True, timeout=0.05)
                for r in port.rx_rings:
                    n = r.space()
                    idx = r.slots_from_head(n)
                    r.slot["flags"][idx] |= NS_FORWARD
                    r.head = r.cur = r.next(r.head, n)
                port.rxsync()
                got += recv_all(local, 0.01)
            assert got == payloads
            h = port.stats()["host"]
            assert h["host_tx_csum_completed"] >= len(payloads)
            port.check_invariant()
    finally:
        peer.close()
        local.close()
