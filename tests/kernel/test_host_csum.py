"""Host rings with a veth peer that has default offloads (issue 12, "Host rings on veth").

A veth whose peer checksums by offload (tx checksumming on: every container's default)
hands TCP and UDP frames over with the checksum unfinished; AF_XDP would copy the bytes as
they are. The steering program completes them on the way into a NIC RX ring (bpf/steer.c),
so the rings hold what a wire carries; frames an application puts on the host TX ring
with the pseudo-header sum only get it completed on the way up (bpf/host.c,
vtnm_host_in). Both use bpf/csum.h. Nothing here turns the peer's offloads off.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from nettest import VethPair
from test_bridge import BridgeProc, bridge_proc, tcp_transfer  # noqa: F401 (fixture)
from test_hostrings import recv_all, udp_socket

from vtnet_py import NR_FORWARD, NS_FORWARD, open_port
from vtnet_py._sys import abi as K
from vtnet_py._sys import bpf
from vtnet_py._sys.netns import netns
from vtnet_py.ebpf.build import compile_image, instantiate
from vtnet_py.ebpf.egress import EG_PROG, IN_PROG, image_flags
from vtnet_py.ebpf.steer import MAX_QUEUES
from vtnet_py.ebpf.steer import PROG_NAME as STEER_PROG

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


def udp_checksum_ok(frame: bytes) -> bool:
    """Whether an Ethernet/IPv4/UDP frame's UDP checksum is complete and right."""
    ihl = (frame[14] & 0xF) * 4
    ip, l4 = frame[14 : 14 + ihl], frame[14 + ihl :]
    ulen = struct.unpack_from("!H", l4, 4)[0]
    pseudo = ip[12:20] + struct.pack("!xBH", 17, ulen)
    return ones_sum(pseudo + l4[:ulen]) == 0xFFFF


def test_udp_from_a_default_peer_forwarded_up_gets_its_checksum(veth: VethPair) -> None:
    """Datagrams a default peer sent (checksum left to offload) sit in the NIC RX ring
    with their checksums complete, as a wire would carry them; forwarded up the stack
    (NS_FORWARD) the socket on IF's stack receives them, with nothing left for the host
    TX program to complete."""
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
            seen = 0
            while len(got) < len(payloads) and time.monotonic() < deadline:
                port.poll(rx=True, timeout=0.05)
                for r in port.rx_rings:
                    n = r.space()
                    idx = r.slots_from_head(n)
                    for i in idx:
                        data = bytes(port.buf(int(r.slot["buf_idx"][i]))[: int(r.slot["len"][i])])
                        if data[12:14] == b"\x08\x00" and data[23] == 17:
                            assert udp_checksum_ok(data), data.hex()
                            seen += 1
                    r.slot["flags"][idx] |= NS_FORWARD
                    r.head = r.cur = r.next(r.head, n)
                port.rxsync()
                got += recv_all(local, 0.01)
            assert got == payloads
            assert seen >= len(payloads)
            assert port.stats()["host"]["host_tx_csum_completed"] == 0
            port.check_invariant()
    finally:
        peer.close()
        local.close()


# --- the completion itself, frame by frame (BPF_PROG_TEST_RUN of vtnm_host_in) -------------


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def l4_frame(v6: bool, proto: int, payload: bytes, how: str) -> tuple[bytes, int]:
    """An Ethernet frame carrying TCP or UDP, and the offset of its L4 checksum. ``how``:
    "partial" (the field holds the pseudo-header sum, as a veth peer hands it over),
    "full" (correct), or "bad" (neither)."""
    hdr = (
        struct.pack("!HHIIBBHHH", 4000, 5000, 1, 0, 0x50, 0x18, 512, 0, 0)
        if proto == 6
        else struct.pack("!HHHH", 4000, 5000, 8 + len(payload), 0)
    )
    l4 = hdr + payload
    if v6:
        src, dst = bytes(range(16)), bytes(range(16, 32))
        ip = struct.pack("!IHBB", 0x60000000, len(l4), proto, 64) + src + dst
        pseudo = src + dst + struct.pack("!IxxxB", len(l4), proto)
        eth = b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd"
    else:
        src, dst = socket.inet_aton("198.51.100.2"), socket.inet_aton("198.51.100.1")
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0) + src + dst
        pseudo = src + dst + struct.pack("!xBH", proto, len(l4))
        eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    off = len(eth) + len(ip) + (16 if proto == 6 else 6)
    field = {
        "partial": ones_sum(pseudo),
        "full": (~ones_sum(pseudo + l4)) & 0xFFFF or 0xFFFF,
        "bad": 0x1234,
    }[how]
    frame = bytearray(eth + ip + l4)
    struct.pack_into("!H", frame, off, field)
    return bytes(frame), off


def run_prog(prog_fd: int, frame: bytes) -> tuple[int, bytes]:
    """BPF_PROG_TEST_RUN of ``frame``: (the program's return value, the frame after)."""
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(len(frame) + 256)
    attr = K.bpf_attr_test_run(
        prog_fd=prog_fd,
        data_in=ctypes.addressof(data_in),
        data_size_in=len(frame),
        data_out=ctypes.addressof(data_out),
        data_size_out=ctypes.sizeof(data_out),
        repeat=1,
    )
    bpf.prog_test_run(attr)
    return attr.retval, data_out.raw[: attr.data_size_out]


def run_host_in(prog_fd: int, frame: bytes) -> bytes:
    return run_prog(prog_fd, frame)[1]


@pytest.fixture(scope="module")
def host_in() -> Iterator[int]:
    image = compile_image("host.c", (EG_PROG, IN_PROG), image_flags())
    prog = instantiate(image, IN_PROG, K.BPF_PROG_TYPE_SCHED_CLS, name=IN_PROG)
    try:
        yield prog.prog_fd
    finally:
        prog.close()


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("proto", [6, 17], ids=["tcp", "udp"])
def test_the_host_tx_program_completes_partial_checksums_only(
    host_in: int, v6: bool, proto: int
) -> None:
    """Lengths around the program's 256-byte chunks and odd tails: a partial checksum
    becomes the full one; a full one and a wrong one stay as they are."""
    for n in (
        0,
        1,
        3,
        200,
        235,
        236,
        237,
        255,
        256,
        257,
        511,
        1000,
        1431,
        1460,
        3000,
    ):  # test_run: one page
        payload = bytes((7 * i + n) & 0xFF for i in range(n))
        full, off = l4_frame(v6, proto, payload, "full")
        partial, _ = l4_frame(v6, proto, payload, "partial")
        bad, _ = l4_frame(v6, proto, payload, "bad")
        assert run_host_in(host_in, partial) == full, (n, full[off : off + 2].hex())
        assert run_host_in(host_in, full) == full, n
        assert run_host_in(host_in, bad) == bad, n


def test_the_steering_program_leaves_the_kernels_queues_alone() -> None:
    """A queue without a socket is the kernel's: its frames pass (XDP_PASS) exactly as
    they came, a partial checksum included (the kernel keeps its offload state); only
    frames bound for a socket are completed (test_udp_from_a_default_peer... above)."""
    image = compile_image("steer.c", (STEER_PROG,), (f"-DVTNM_MAX_QUEUES={MAX_QUEUES}",))
    prog = instantiate(
        image, STEER_PROG, K.BPF_PROG_TYPE_XDP, name=STEER_PROG, expected_attach_type=K.BPF_XDP
    )
    try:
        for v6 in (False, True):
            partial, _ = l4_frame(v6, 6, bytes(range(200)), "partial")
            assert run_prog(prog.prog_fd, partial) == (K.XDP_PASS, partial)
    finally:
        prog.close()
