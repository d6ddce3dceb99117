"""netmap's rule for the stack's egress (issue 12, item 4), against veth pairs in namespaces.

While NIC TX rings of IF are registered, by any process, the frames IF's stack transmits
go to the host RX ring if someone holds it, else they are dropped and counted; otherwise
they go to the wire. RX-only ports leave the egress alone. The peer (b) is the wire; what
it captures with an AF_PACKET socket is what left IF.
"""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Iterator

import pytest
from nettest import VethPair, cli, start_port_holder
from test_hostrings import (
    host_frames,
    recv_all,
    static_neighbours,
    take_rx,
    tc_filters,
    udp_dport,
    udp_frame,
    udp_socket,
    write_tx,
)

from vtnet_py import open_port
from vtnet_py._sys.netns import netns
from vtnet_py.netmap.hostrings import TC_MODE_ENV, cleanup_stale

pytestmark = pytest.mark.kernel


@pytest.fixture(params=["tcx", "clsact"])
def tc_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """tcx links, then the clsact/cls_bpf fallback of kernels without tcx (the 6.1 guest);
    the environment reaches the port holders started as subprocesses too."""
    monkeypatch.setenv(TC_MODE_ENV, request.param)
    yield request.param


ETH_P_ALL = 0x0003
ARP, IPV4 = b"\x08\x06", b"\x08\x00"


def peer_capture(veth: VethPair) -> socket.socket:
    """An AF_PACKET socket on the peer: every frame that reaches the wire from IF."""
    with netns(veth.ns_b):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((veth.b, 0))
    return s


def stack_frames_on_wire(veth: VethPair, cap: socket.socket) -> list[bytes]:
    """Make IF's stack talk (an ARP request, then pings) and return the ARP/IPv4 frames
    from IF's MAC address that the peer captured."""
    recv_all(cap, 0.05)
    veth.sh_a(f"ip neigh flush dev {veth.a}", check=False)
    veth.sh_a(f"ping -c 2 -i 0.2 -W 0.5 {veth.ip_b}", check=False)
    mac_a = veth.mac("a")
    return [f for f in recv_all(cap, 0.3) if f[6:12] == mac_a and f[12:14] in (ARP, IPV4)]


def test_nic_tx_rings_in_another_process_cut_the_stack_off(veth: VethPair, tc_mode: str) -> None:
    """netmap:IF (NIC rings, TX included) open in another process, nobody holding the host
    rings: nothing of IF's stack reaches the wire; after the holder dies (kill -9), at once
    everything does again."""
    cap = peer_capture(veth)
    try:
        assert stack_frames_on_wire(veth, cap), "the stack is not heard even before the test"
        holder = start_port_holder(f"netmap:{veth.a}", veth.ns_a)
        try:
            assert stack_frames_on_wire(veth, cap) == []
            # where the drops are counted for another process to see: vtnetmap status
            st = cli("status", veth.a, "--netns", veth.ns_a)
            line = [ln for ln in st.stdout.splitlines() if "stack egress" in ln]
            assert len(line) == 1, st.stdout + st.stderr
            assert f"{tc_mode} program, pids {holder.pid}" in line[0]
            dropped = re.search(r"(\d+) dropped", line[0])
            assert dropped and int(dropped.group(1)) >= 1, line[0]
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        t0 = time.monotonic()
        assert stack_frames_on_wire(veth, cap), "still cut off after the holder died"
        assert time.monotonic() - t0 < 2.0
        if tc_mode == "clsact":
            # the filter outlives its dead user and passes everything; cleanup removes it
            assert "vtnm_host_eg" in tc_filters(veth.ns_a, veth.a)
            assert "egress filter" in " ".join(cleanup_stale(veth.a, veth.ns_a))
        assert "vtnm_host_eg" not in tc_filters(veth.ns_a, veth.a)
    finally:
        cap.close()


def test_a_closed_port_gives_the_wire_back_and_counts_the_drops(
    veth: VethPair, tc_mode: str
) -> None:
    cap = peer_capture(veth)
    try:
        with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
            assert stack_frames_on_wire(veth, cap) == []
            dropped = port.stats()["stack_egress"]["stack_cut_dropped"]
            assert dropped >= 1  # the ARP request at least (the pings wait for it)
            port.check_invariant()
        assert stack_frames_on_wire(veth, cap)
        assert "bpf" not in tc_filters(veth.ns_a, veth.a)
    finally:
        cap.close()


def test_rx_only_ports_leave_the_stack_egress_alone(veth: VethPair) -> None:
    cap = peer_capture(veth)
    try:
        with open_port(f"netmap:{veth.a}/R", netns=veth.ns_a) as port:
            assert stack_frames_on_wire(veth, cap)
            assert "stack_egress" not in port.stats()
    finally:
        cap.close()


def test_host_rings_get_the_stack_frames_while_another_process_holds_nic_tx(
    veth: VethPair, tc_mode: str
) -> None:
    """Host rings here, NIC rings in another process: the stack's datagram arrives in the
    host RX ring and not on the wire; once the NIC holder is gone, on the wire again."""
    static_neighbours(veth)
    peer = udp_socket(veth.ns_b, veth.ip_b, 7790)
    with netns(veth.ns_a):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder = start_port_holder(f"netmap:{veth.a}", veth.ns_a)
    try:
        with open_port(f"netmap:{veth.a}^", netns=veth.ns_a) as host:
            s.sendto(b"one", (veth.ip_b, 7790))
            assert [f[42:] for f in host_frames(host, 7790, 1)] == [b"one"]
            assert recv_all(peer) == []
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            s.sendto(b"two", (veth.ip_b, 7790))
            assert recv_all(peer, 1.0) == [b"two"]
            assert host_frames(host, 7790, 1, timeout=0.3) == []
            assert host.stats()["host"]["to_host_rx"] >= 1
            host.check_invariant()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        s.close()
        peer.close()


def test_ingress_only_inspection_rx_port_and_host_tx_in_one_process(veth: VethPair) -> None:
    """netmap issue #433's pattern: IF/R plus IF^/T in one process. Every received frame
    is inspected; UDP to one port is passed up the stack, UDP to another dropped; the
    stack's own egress (its replies) is untouched and reaches the wire."""
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    good = udp_socket(veth.ns_a, veth.ip_a, 7791)
    bad = udp_socket(veth.ns_a, veth.ip_a, 7792)
    cap = peer_capture(veth)
    try:
        with (
            open_port(f"netmap:{veth.a}/R", netns=veth.ns_a) as rx,
            open_port(f"netmap:{veth.a}^/T", netns=veth.ns_a) as up,
        ):
            # the peer sends; the test process plays "the wire" by writing frames into b
            with netns(veth.ns_b):
                out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            out.bind((veth.b, 0))
            frames = [
                udp_frame(mac_a, mac_b, veth.ip_b, veth.ip_a, 4000, port, b"x%d" % i)
                for i, port in enumerate([7791, 7792, 7791, 7792])
            ]
            for f in frames:
                out.send(f)
            out.close()
            got: list[bytes] = []
            deadline = time.monotonic() + 3
            while len(got) < len(frames) and time.monotonic() < deadline:
                rx.poll(rx=True, timeout=0.1)
                got += [f for r in rx.rx_rings for f in take_rx(rx, r)]
            seen = [f for f in got if udp_dport(f) in (7791, 7792)]
            assert len(seen) == 4
            keep = [f for f in seen if udp_dport(f) == 7791]
            write_tx(up, up.tx_rings[0], keep)
            up.txsync()
            assert recv_all(good, 1.0) == [b"x0", b"x2"]
            assert recv_all(bad) == []
            # the stack still talks to the wire directly
            assert stack_frames_on_wire(veth, cap)
            rx.check_invariant()
            up.check_invariant()
    finally:
        good.close()
        bad.close()
        cap.close()
