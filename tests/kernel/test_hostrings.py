"""Host rings (netmap:IF^, IF*, IF+) against veth pairs in namespaces.

The peer (b) is "the wire"; IF is a, whose network stack the host rings connect to.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest
from nettest import VethPair, run, start_port_holder

from vtnet_py import (
    NR_FORWARD,
    NS_FORWARD,
    BusyError,
    UnsupportedError,
    open_port,
)
from vtnet_py._sys.netns import netns
from vtnet_py.netmap.hostrings import TC_MODE_ENV, cleanup_stale, helper_names

pytestmark = pytest.mark.kernel

UDP_SEGMENT = 103  # include/uapi/linux/udp.h: UDP GSO segment size (socket option)


# --- frames -------------------------------------------------------------------------------


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = int(np.frombuffer(data, dtype=">u2").astype(np.uint32).sum())
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def udp_frame(
    dst_mac: bytes,
    src_mac: bytes,
    src_ip: str,
    dst_ip: str,
    sport: int,
    dport: int,
    payload: bytes,
    *,
    ident: int = 0,
    frag: int = 0x4000,
    ttl: int = 64,
    tos: int = 0,
) -> bytes:
    """An Ethernet/IPv4/UDP frame with correct checksums."""
    s, d = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    ulen = 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + ulen, ident, frag, ttl, 17, 0, s, d)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    pseudo = s + d + struct.pack("!BBH", 0, 17, ulen)
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    c = csum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def udp_dport(frame: bytes) -> int | None:
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    ihl = (frame[14] & 0xF) * 4
    return int(struct.unpack_from("!H", frame, 14 + ihl + 2)[0])


def write_tx(port, ring, frames: list[bytes]) -> None:
    idx = ring.slots_from_head(len(frames))
    for i, f in zip(idx, frames, strict=True):
        port.buf(int(ring.slot["buf_idx"][i]))[: len(f)] = np.frombuffer(f, np.uint8)
        ring.slot["len"][i] = len(f)
    ring.head = ring.cur = ring.next(ring.head, len(frames))


def take_rx(port, ring) -> list[bytes]:
    """Every frame in the ring now, released."""
    n = ring.space()
    idx = ring.slots_from_head(n)
    out = [
        bytes(port.buf(int(b))[: int(ln)])
        for b, ln in zip(ring.slot["buf_idx"][idx], ring.slot["len"][idx], strict=True)
    ]
    ring.head = ring.cur = ring.next(ring.head, n)
    return out


def host_frames(port, dport: int, want: int, timeout: float = 3.0) -> list[bytes]:
    """UDP frames to ``dport`` that arrive in the port's host RX ring."""
    ring = port.rx_rings[-1]
    assert ring.is_host
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        port.poll(rx=True, timeout=0.1)
        got += [f for f in take_rx(port, ring) if udp_dport(f) == dport]
        for r in port.rx_rings[:-1]:  # keep NIC rings drained
            take_rx(port, r)
    return got


def udp_socket(ns: str, ip: str, port: int, timeout: float = 2.0) -> socket.socket:
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, port))
    s.settimeout(timeout)
    return s


def recv_all(s: socket.socket, wait: float = 0.3) -> list[bytes]:
    out = []
    s.settimeout(wait)
    while True:
        try:
            out.append(s.recv(65536))
        except TimeoutError:
            return out


def static_neighbours(veth: VethPair) -> None:
    """ARP entries on both sides, so a datagram is the only frame the stack sends."""
    veth.sh_a(
        f"ip neigh replace {veth.ip_b} lladdr {veth.mac('b').hex(':')} dev {veth.a} nud permanent"
    )
    veth.sh_b(
        f"ip neigh replace {veth.ip_a} lladdr {veth.mac('a').hex(':')} dev {veth.b} nud permanent"
    )


def wire_like_peer(veth: VethPair) -> None:
    """Make the peer send what a wire carries. A veth hands its peer frames whose checksum
    offload is still pending (CHECKSUM_PARTIAL), and AF_XDP copies them as they are, with
    the checksum unfinished; a real wire (and virtio_net with guest checksum offload off,
    which XDP needs) never delivers such frames. So the peer computes its checksums."""
    veth.sh_b(f"ethtool -K {veth.b} tx off")


def helpers_in(ns: str) -> list[str]:
    out = run("ip", "-n", ns, "-o", "link", "show").stdout
    return [ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines() if ": vtnmh" in ln]


def tc_filters(ns: str, dev: str) -> str:
    return run("tc", "-n", ns, "filter", "show", "dev", dev, "egress").stdout


@pytest.fixture(params=["tcx", "clsact"])
def tc_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test with tcx links and again with the clsact/cls_bpf fallback (the 6.1 guest
    kernel has no tcx; this one has both)."""
    monkeypatch.setenv(TC_MODE_ENV, request.param)
    yield request.param


# --- structure ----------------------------------------------------------------------------


def test_host_rings_come_last_share_memory_and_leave_nothing(veth: VethPair) -> None:
    with open_port(f"netmap:{veth.a}*", netns=veth.ns_a) as port:
        assert [r.is_host for r in port.rx_rings] == [False, False, True]
        assert [r.is_host for r in port.tx_rings] == [False, False, True]
        assert [r.ring_id for r in port.rx_rings] == [0, 1, 2]
        host_rx, host_tx = port.rx_rings[-1], port.tx_rings[-1]
        # one memory: the host rings' buffers are rows of the same port.bufs
        all_bufs = np.concatenate([r.slot["buf_idx"] for r in port.rx_rings + port.tx_rings])
        assert np.unique(all_bufs).size == all_bufs.size
        assert int(all_bufs.max()) < port.bufs.shape[0]
        assert host_rx._pool is port.rx_rings[0]._pool and host_tx._pool is host_rx._pool
        near, _ = helper_names(port.ifindex)
        assert helpers_in(veth.ns_a) == [near]
        alias = run("ip", "-n", veth.ns_a, "-d", "link", "show", near).stdout
        assert f"vtnetmap host rings of {veth.a}: pid {os.getpid()}" in alias
        assert port.stats()["host"]["tc"] in ("tcx", "clsact")
        port.check_invariant()
    assert helpers_in(veth.ns_a) == []
    assert "bpf" not in tc_filters(veth.ns_a, veth.a)
    with open_port(f"netmap:{veth.a}^", netns=veth.ns_a) as port:
        assert [r.is_host for r in port.rx_rings + port.tx_rings] == [True, True]
        assert port.owner_of(0) == 0  # host rings alone take no NIC queue
        assert not veth.xdp_attached("a")
    with open_port(f"netmap:{veth.a}^0/R", netns=veth.ns_a) as port:
        assert len(port.rx_rings) == 1 and port.tx_rings == []
    with pytest.raises(Exception, match="host ring 1 does not exist"):
        open_port(f"netmap:{veth.a}^1", netns=veth.ns_a)
    with pytest.raises(UnsupportedError, match="copy mode"):
        open_port(f"netmap:{veth.a}*", netns=veth.ns_a, zerocopy="on")
    assert helpers_in(veth.ns_a) == []


# --- host TX: into the stack ----------------------------------------------------------------


@pytest.mark.parametrize("xdp", ["native", "generic"])
def test_host_tx_frames_are_received_by_a_socket(veth: VethPair, xdp: str, tc_mode: str) -> None:
    """Frames written to the host TX ring arrive at a UDP socket of IF's stack. With the
    NIC rings open too (in native or generic XDP), they do not come back into the NIC RX
    rings: the stack gets them, exactly once."""
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    s = udp_socket(veth.ns_a, veth.ip_a, 5001)
    nic = open_port(f"netmap:{veth.a}", netns=veth.ns_a, mode=xdp)
    try:
        assert nic.xdp_mode == xdp
        with open_port(f"netmap:{veth.a}^", netns=veth.ns_a, memory=None) as port:
            assert port.stats()["host"]["tc"] == tc_mode
            payloads = [bytes([i]) * (20 + 300 * i) for i in range(5)]
            frames = [
                udp_frame(mac_a, mac_b, veth.ip_b, veth.ip_a, 4000, 5001, p) for p in payloads
            ]
            write_tx(port, port.tx_rings[0], frames)
            assert port.txsync() == len(frames)
            got = recv_all(s, wait=1.0)
            assert got == payloads
            assert port.stats()["host"]["from_host_tx"] == len(frames)
            nic.rxsync()
            leaked = [f for r in nic.rx_rings for f in take_rx(nic, r) if udp_dport(f) == 5001]
            assert leaked == []
            port.txsync()
            assert port.tx_rings[0].space() == port.tx_rings[0].num_slots - 1
            port.check_invariant()
    finally:
        nic.close()
        s.close()


# --- host RX: from the stack ----------------------------------------------------------------


def test_stack_datagram_appears_in_host_rx_byte_exact(veth: VethPair, tc_mode: str) -> None:
    static_neighbours(veth)
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    peer = udp_socket(veth.ns_b, veth.ip_b, 7777)
    with open_port(f"netmap:{veth.a}*", netns=veth.ns_a) as port:
        with netns(veth.ns_a):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((veth.ip_a, 6000))
        payload = bytes(range(256)) * 5 + b"end"
        s.sendto(payload, (veth.ip_b, 7777))
        frames = host_frames(port, 7777, 1)
        assert len(frames) == 1
        f = frames[0]
        ident, frag = struct.unpack_from("!HH", f, 18)
        ttl, tos = f[22], f[15]
        # the whole frame as it would be on the wire: addresses, lengths, both checksums
        # (the socket left the UDP checksum to offload; the host ring gets it complete)
        assert f == udp_frame(
            mac_b,
            mac_a,
            veth.ip_a,
            veth.ip_b,
            6000,
            7777,
            payload,
            ident=ident,
            frag=frag,
            ttl=ttl,
            tos=tos,
        )
        assert recv_all(peer) == []  # diverted: the wire did not see it
        port.check_invariant()
        s.close()
    peer.close()


def test_gso_frames_reach_the_host_ring_segmented_with_checksums(veth: VethPair) -> None:
    """A UDP GSO send (one 4500-byte super-frame at IF's egress) reaches the host RX ring
    as MTU-sized frames, each with a valid UDP checksum."""
    static_neighbours(veth)
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}*", netns=veth.ns_a) as port:
        with netns(veth.ns_a):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 1000)
        s.bind((veth.ip_a, 6001))
        data = os.urandom(4500)
        s.sendto(data, (veth.ip_b, 7778))
        frames = host_frames(port, 7778, 5)
        assert [len(f) - 42 for f in frames] == [1000, 1000, 1000, 1000, 500]
        for i, f in enumerate(frames):
            ident, frag = struct.unpack_from("!HH", f, 18)
            assert f == udp_frame(
                mac_b,
                mac_a,
                veth.ip_a,
                veth.ip_b,
                6001,
                7778,
                data[1000 * i : 1000 * (i + 1)],
                ident=ident,
                frag=frag,
                ttl=f[22],
                tos=f[15],
            )
        c = port.stats()["host"]
        assert c["gso_segmented"] >= 1 and c["oversize_dropped"] == 0
        s.close()


def test_stack_frames_go_to_the_host_ring_only_while_nic_tx_rings_are_open(veth: VethPair) -> None:
    """netmap's rule: with only the host rings open the stack's frames still go to the
    wire; while NIC TX rings of IF are in netmap mode they go to the host RX ring."""
    static_neighbours(veth)
    peer = udp_socket(veth.ns_b, veth.ip_b, 7779)
    with netns(veth.ns_a):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with open_port(f"netmap:{veth.a}^", netns=veth.ns_a) as host:
        s.sendto(b"one", (veth.ip_b, 7779))
        assert recv_all(peer, 1.0) == [b"one"]
        assert host_frames(host, 7779, 1, timeout=0.3) == []
        with open_port(f"netmap:{veth.a}/T", netns=veth.ns_a):
            s.sendto(b"two", (veth.ip_b, 7779))
            assert [f[42:] for f in host_frames(host, 7779, 1)] == [b"two"]
            assert recv_all(peer) == []
        s.sendto(b"three", (veth.ip_b, 7779))
        assert recv_all(peer, 1.0) == [b"three"]
        assert host_frames(host, 7779, 1, timeout=0.3) == []
    s.close()
    peer.close()


# --- transparent mode ---------------------------------------------------------------------


def test_ns_forward_is_transparent_both_ways(veth: VethPair) -> None:
    """With NR_FORWARD on every RX ring and NS_FORWARD on every released slot, the port is
    invisible: ping and UDP both ways work, through the rings."""
    wire_like_peer(veth)
    peer = udp_socket(veth.ns_b, veth.ip_b, 7780)
    local = udp_socket(veth.ns_a, veth.ip_a, 7781)
    with open_port(f"netmap:{veth.a}*", netns=veth.ns_a) as port:
        for r in port.rx_rings:
            r.flags |= NR_FORWARD
        ping = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                veth.ns_b,
                "ping",
                "-c",
                "5",
                "-i",
                "0.1",
                "-W",
                "1",
                veth.ip_a,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sent = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            port.poll(rx=True, timeout=0.02)
            for r in port.rx_rings:
                n = r.space()
                idx = r.slots_from_head(n)
                r.slot["flags"][idx] |= NS_FORWARD
                r.head = r.cur = r.next(r.head, n)
            port.rxsync()  # releases, which forwards
            if ping.poll() is not None and not sent:
                with netns(veth.ns_a):
                    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                out.sendto(b"to the peer", (veth.ip_b, 7780))
                out.close()
                with netns(veth.ns_b):
                    back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                back.sendto(b"to the stack", (veth.ip_a, 7781))
                back.close()
                sent = True
                deadline = time.monotonic() + 1.0
        assert ping.wait() == 0, ping.stdout.read() if ping.stdout else ""
        assert recv_all(peer) == [b"to the peer"]
        assert recv_all(local) == [b"to the stack"]
        h = port.stats()["host"]
        assert h["forwarded_to_host"] >= 6 and h["forwarded_to_nic"] >= 6
        assert h["forward_dropped"] == 0
        port.check_invariant()
    peer.close()
    local.close()


# --- owners, crashes, stale helpers ---------------------------------------------------------


def test_kill_9_restores_networking_and_leaves_nothing(veth: VethPair, tc_mode: str) -> None:
    holder = start_port_holder(f"netmap:{veth.a}*", veth.ns_a)
    try:
        with pytest.raises(BusyError, match=f"pid {holder.pid}"):
            open_port(f"netmap:{veth.a}^", netns=veth.ns_a)
        # nobody forwards: the peer cannot reach the stack
        assert veth.sh_b(f"ping -c 1 -W 0.5 {veth.ip_a}", check=False).returncode != 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    t0 = time.monotonic()
    while veth.sh_b(f"ping -c 1 -W 0.2 {veth.ip_a}", check=False).returncode != 0:
        assert time.monotonic() - t0 < 1.0, "no ping answer within 1 s of kill -9"
    # the helper pair dies with the holder's private namespace
    while helpers_in(veth.ns_a):
        assert time.monotonic() - t0 < 3.0, "helper pair still there 3 s after kill -9"
    if tc_mode == "clsact":
        # a cls_bpf filter outlives its process (harmless: it passes frames once the
        # host socket is gone); the next open, or cleanup_stale, removes it
        assert "vtnm_host_eg" in tc_filters(veth.ns_a, veth.a)
        assert any("filter" in w for w in cleanup_stale(veth.a, veth.ns_a))
        assert "vtnm_host_eg" not in tc_filters(veth.ns_a, veth.a)
    with open_port(f"netmap:{veth.a}*", netns=veth.ns_a):
        pass
    assert helpers_in(veth.ns_a) == []
    assert "bpf" not in tc_filters(veth.ns_a, veth.a)


def test_a_stale_helper_of_a_dead_owner_is_removed(veth: VethPair) -> None:
    """A near end whose recorded owner is dead (what a kill -9 leaves for the moment the
    kernel needs to destroy the private namespace) is removed by the next open and by
    cleanup_stale; one that is not vtnetmap's is refused."""
    ifindex = int(run("ip", "-n", veth.ns_a, "-o", "link", "show", veth.a).stdout.split(":")[0])
    near, _ = helper_names(ifindex)
    dead = subprocess.Popen(["true"])
    dead.wait()

    def fake(alias: str) -> None:
        run("ip", "-n", veth.ns_a, "link", "add", near, "type", "veth", "peer", "name", "vttx0")
        run("ip", "-n", veth.ns_a, "link", "set", near, "alias", alias)

    fake(f"vtnetmap host rings of {veth.a}: pid {dead.pid} start 1")
    with open_port(f"netmap:{veth.a}^", netns=veth.ns_a) as port:
        assert port.stats()["host"]["tc"]
    assert helpers_in(veth.ns_a) == []
    fake(f"vtnetmap host rings of {veth.a}: pid {dead.pid} start 1")
    assert cleanup_stale(veth.a, veth.ns_a) == [f"helper {near} of dead pid {dead.pid}"]
    assert helpers_in(veth.ns_a) == []
    fake("somebody else's")
    with pytest.raises(BusyError, match="not vtnetmap's"):
        open_port(f"netmap:{veth.a}^", netns=veth.ns_a)
    run("ip", "-n", veth.ns_a, "link", "del", near)


@pytest.mark.parametrize("step", ["_load_programs", "set_divert"])
def test_a_failed_open_leaves_nothing_behind(
    veth: VethPair, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """A failure late in opening (programs loaded, or just before the egress program is
    attached) undoes the helper pair, the XDP programs and every attachment."""
    from vtnet_py.netmap import hostrings

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"injected failure in {step}")

    monkeypatch.setattr(hostrings.HostRings, step, boom)
    with pytest.raises(RuntimeError, match="injected"):
        open_port(f"netmap:{veth.a}*", netns=veth.ns_a)
    assert helpers_in(veth.ns_a) == []
    assert not veth.xdp_attached("a")
    assert "bpf" not in tc_filters(veth.ns_a, veth.a)
    assert hostrings._hosts == {} and hostrings._nic_tx == {}
    monkeypatch.undo()
    with open_port(f"netmap:{veth.a}*", netns=veth.ns_a) as port:
        assert port.stats()["host"]["tc"]
