"""Test helpers: namespaces with veth pairs, made fresh per test and always removed.

Both ends of every veth live in namespaces the test creates; addresses come from
198.51.100.0/24. Interface names carry no '-' (netmap's grammar reads it as a ring).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import pytest

from vtnet_py._sys.netns import netns

ETH_P_ALL = 0x0003
TEST_ETHERTYPE = b"\x88\xb5"  # IEEE local experimental: nobody else sends it
PACKET_OUTGOING = 4  # sockaddr_ll.sll_pkttype of a packet socket's own sends
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def have_kernel_features() -> str | None:
    """Why kernel tests cannot run here, or None (probe the features, not the version)."""
    if os.geteuid() != 0:
        return "needs root (BPF, AF_XDP, network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2"
    try:
        s = socket.socket(44, socket.SOCK_RAW, 0)  # AF_XDP
        s.close()
    except OSError as exc:
        return f"AF_XDP sockets unavailable: {exc}"
    return None


_why = have_kernel_features()
kernel = pytest.mark.skipif(_why is not None, reason=_why or "")


@dataclass
class VethPair:
    """``a`` in namespace ``ns_a`` (198.51.100.1), ``b`` in ``ns_b`` (198.51.100.2)."""

    ns_a: str
    ns_b: str
    a: str
    b: str
    ip_a: str = "198.51.100.1"
    ip_b: str = "198.51.100.2"

    def sh_a(self, cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns_a, "sh", "-c", cmd],
            check=check,
            capture_output=True,
            text=True,
        )

    def sh_b(self, cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns_b, "sh", "-c", cmd],
            check=check,
            capture_output=True,
            text=True,
        )

    def mac(self, side: str) -> bytes:
        ns, dev = (self.ns_a, self.a) if side == "a" else (self.ns_b, self.b)
        out = run("ip", "-n", ns, "-o", "link", "show", dev).stdout
        text = out.split("link/ether ")[1].split()[0]
        return bytes.fromhex(text.replace(":", ""))

    def xdp_attached(self, side: str = "a") -> bool:
        ns, dev = (self.ns_a, self.a) if side == "a" else (self.ns_b, self.b)
        return " xdp" in run("ip", "-n", ns, "-o", "link", "show", dev).stdout

    def raw_socket(self, side: str = "b") -> socket.socket:
        """An AF_PACKET socket bound to one end (made inside its namespace)."""
        ns, dev = (self.ns_a, self.a) if side == "a" else (self.ns_b, self.b)
        with netns(ns):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((dev, 0))
        return s

    def send_on_queue(self, frames: list[bytes], queue: int, side: str = "b") -> None:
        """Send raw frames from one end so that they land on the other end's receive
        queue ``queue``. veth hands a frame to the peer queue matching its TX queue, and
        an AF_PACKET socket with PACKET_QDISC_BYPASS picks TX queue (cpu % queues): so
        send from a thread pinned to CPU ``queue``."""
        if queue >= os.cpu_count():  # type: ignore[operator]
            raise ValueError(f"queue {queue} needs a CPU {queue}")
        s = self.raw_socket(side)
        old = os.sched_getaffinity(0)
        try:
            s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            os.sched_setaffinity(0, {queue})
            for f in frames:
                s.send(f)
        finally:
            os.sched_setaffinity(0, old)
            s.close()


def make_veth_pair(queues: int = 2, mtu: int | None = None) -> VethPair:
    tag = secrets.token_hex(3)
    pair = VethPair(ns_a=f"vtt{tag}a", ns_b=f"vtt{tag}b", a=f"vt{tag}a", b=f"vt{tag}b")
    try:
        run("ip", "netns", "add", pair.ns_a)
        run("ip", "netns", "add", pair.ns_b)
        run(
            "ip",
            "link",
            "add",
            pair.a,
            "numtxqueues",
            str(queues),
            "numrxqueues",
            str(queues),
            "netns",
            pair.ns_a,
            "type",
            "veth",
            "peer",
            "name",
            pair.b,
            "numtxqueues",
            str(queues),
            "numrxqueues",
            str(queues),
            "netns",
            pair.ns_b,
        )
        for ns, dev, ip in ((pair.ns_a, pair.a, pair.ip_a), (pair.ns_b, pair.b, pair.ip_b)):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            if mtu:
                run("ip", "-n", ns, "link", "set", dev, "mtu", str(mtu))
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            # no IPv6 chatter (router solicitations, DAD) in tests that count frames
            run("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
    except BaseException:
        remove_veth_pair(pair)
        raise
    return pair


def remove_veth_pair(pair: VethPair) -> None:
    for ns in (pair.ns_a, pair.ns_b):
        run("ip", "netns", "del", ns, check=False)


def peer_frames(
    s: socket.socket, want: int, timeout: float, src: bytes | None = None
) -> list[bytes]:
    """Test frames (TEST_ETHERTYPE, from ``src`` if given) arriving at packet socket ``s``
    (its own sends excluded), until ``want`` of them or ``timeout`` seconds."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data, addr = s.recvfrom(65536)
        except TimeoutError:
            break
        if (
            addr[2] != PACKET_OUTGOING
            and data[12:14] == TEST_ETHERTYPE
            and (src is None or data[6:12] == src)
        ):
            out.append(data)
    return out


# A child process that holds a port: prints OPEN once the port is open (or BUSY and exits 3
# when the queue is owned), then sleeps until killed.
PORT_HOLDER = textwrap.dedent("""
    import sys, time
    from vtnet_py import open_port, BusyError
    try:
        p = open_port(sys.argv[1], netns=sys.argv[2])
    except BusyError as exc:
        print("BUSY", exc, flush=True)
        sys.exit(3)
    print("OPEN", flush=True)
    time.sleep(120)
""")


def start_port_holder(name: str, ns: str) -> subprocess.Popen[str]:
    """Start a PORT_HOLDER for port ``name`` in namespace ``ns``; returns once it is open."""
    p = subprocess.Popen(
        [sys.executable, "-c", PORT_HOLDER, name, ns],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line.startswith("OPEN"):
        p.kill()
        raise AssertionError(f"holder failed: {line} {p.stderr.read() if p.stderr else ''}")
    return p


# pkt-gen as the tests run it, and the shapes of its report lines (netmap's pkt-gen.c)
PKTGEN = [sys.executable, "-W", "ignore", "-m", "vtnetmap_cli.pktgen_cmd"]
# the kernel's RX drop counters, which end both lines when any is non-zero
PKTGEN_DROPS = r"( drops (\d+) ring_full (\d+) fill_empty (\d+))?$"
PKTGEN_PERIODIC = re.compile(
    r"^\d{3}\.\d{6} main_thread \[\d+\] \d+\.\d{3} [KMGT ]?pps \(\d+\.\d{3} [KMGT ]?pkts "
    r"\d+\.\d{3} [KMGT ]?bps in \d+ usec\) \d+\.\d{2} avg_batch \d+ min_space" + PKTGEN_DROPS
)
PKTGEN_FINAL2 = re.compile(
    r"^Speed: \d+\.\d{3} [KMGT ]?pps Bandwidth: \d+\.\d{3} [KMGT ]?bps "
    r"\(raw \d+\.\d{3} [KMGT ]?bps\)\. Average batch: \d+\.\d{2} pkts" + PKTGEN_DROPS
)
