"""pkt-gen between network namespaces: counts, checksums checked by the kernel's UDP
stack, sequence loss found by rxseq when an XDP program drops frames on purpose,
ping/pong, rate limiting, signals, and the output shapes.

Namespaces are ``vtpg-<hex>-a`` / ``-b`` (and ``-m`` for the middle hop), addresses
203.0.113.0/24; every namespace (and with it every veth and XDP attachment) is
deleted after each test, pass or fail.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from nettest import PKTGEN, PKTGEN_FINAL2, PKTGEN_PERIODIC

from vtnet_py._sys.netns import netns
from vtnet_py.apps.netlab import NetLab, link_state

pytestmark = pytest.mark.kernel

FINAL1 = re.compile(
    r"^(Sent|Received) (\d+) packets (\d+) bytes (\d+) events (\d+) bytes each "
    r"in (\d+\.\d{2}) seconds\.$"
)


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


@dataclass
class Pair:
    ns_a: str
    ns_b: str
    a: str
    b: str
    ip_a: str = "203.0.113.1"
    ip_b: str = "203.0.113.2"

    def mac(self, side: str) -> str:
        ns, dev = (self.ns_a, self.a) if side == "a" else (self.ns_b, self.b)
        return link_state(ns, dev).lladdr

    def has_xdp(self, side: str) -> bool:
        ns, dev = (self.ns_a, self.a) if side == "a" else (self.ns_b, self.b)
        return link_state(ns, dev).xdp


def _pair(lab: NetLab) -> Pair:
    ns_a, ns_b = lab.namespace("-a"), lab.namespace("-b")
    p = Pair(ns_a, ns_b, f"vtpg{lab.tag}a", f"vtpg{lab.tag}b")
    lab.veth(ns_a, p.a, ns_b, p.b, queues=2, ip_a=p.ip_a, ip_b=p.ip_b)
    return p


@pytest.fixture
def pair() -> Iterator[Pair]:
    with NetLab("vtpg-") as lab:
        yield _pair(lab)


@pytest.fixture
def chain() -> Iterator[tuple[Pair, str, str, str]]:
    """A --(a, m1)-- M --(m2, b)-- B: returns the A/B pair and M's namespace and ends."""
    with NetLab("vtpg-") as lab:
        ns_a, ns_b, ns_m = lab.namespace("-a"), lab.namespace("-b"), lab.namespace("-m")
        p = Pair(ns_a, ns_b, f"vtpg{lab.tag}a", f"vtpg{lab.tag}b")
        m1, m2 = f"vtpg{lab.tag}m1", f"vtpg{lab.tag}m2"
        lab.veth(ns_a, p.a, ns_m, m1, queues=2, ip_a=p.ip_a)
        # one queue into B: a redirect from M lands on B's queue (cpu % queues), and
        # rxseq tracks sequences per ring, as pkt-gen does, so all must arrive on one
        lab.veth(ns_m, m2, ns_b, p.b, queues=1, ip_b=p.ip_b)
        yield p, ns_m, m1, m2


def pktgen(p: Pair, side: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    ns = p.ns_a if side == "a" else p.ns_b
    return subprocess.run(
        PKTGEN + ["--netns", ns, "-w", "0", *args], capture_output=True, text=True, timeout=timeout
    )


def start_pktgen(p: Pair, side: str, *args: str) -> subprocess.Popen[str]:
    ns = p.ns_a if side == "a" else p.ns_b
    return subprocess.Popen(
        PKTGEN + ["--netns", ns, "-w", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_xdp(p: Pair, side: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Wait until the receiver's port is open (its steering program is attached)."""
    end = time.monotonic() + timeout
    while not p.has_xdp(side):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"receiver exited early:\n{out}\n{err}")
        assert time.monotonic() < end, "the receiver did not open its port"
        time.sleep(0.05)
    time.sleep(0.2)


def stop(proc: subprocess.Popen[str], timeout: float = 15) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def final(out: str) -> tuple[int, int]:
    """(packets, bytes) of pkt-gen's final text lines; checks both line shapes."""
    lines = [x for x in out.splitlines() if x.startswith(("Sent", "Received", "Speed"))]
    assert len(lines) == 2, out
    m = FINAL1.match(lines[0])
    assert m is not None, lines[0]
    assert PKTGEN_FINAL2.match(lines[1]) is not None, lines[1]
    return int(m.group(2)), int(m.group(3))


class UdpCounter:
    """Kernel UDP sockets in B on a range of ports: only datagrams whose IPv4 and UDP
    checksums and lengths are right reach them."""

    def __init__(self, ns: str, ip: str, ports: range):
        self.socks: dict[int, socket.socket] = {}
        with netns(ns):
            for port in ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                s.bind((ip, port))
                s.setblocking(False)
                self.socks[port] = s

    def drain(self, settle: float = 0.5) -> dict[int, list[bytes]]:
        got: dict[int, list[bytes]] = {p: [] for p in self.socks}
        end = time.monotonic() + settle
        while time.monotonic() < end:
            for port, s in self.socks.items():
                while True:
                    try:
                        got[port].append(s.recv(65536))
                    except BlockingIOError:
                        break
            time.sleep(0.02)
        return got

    def close(self) -> None:
        for s in self.socks.values():
            s.close()


def csum_errors(ns: str) -> int:
    out = run("ip", "netns", "exec", ns, "cat", "/proc/net/snmp").stdout.splitlines()
    udp = [x.split() for x in out if x.startswith("Udp:")]
    return int(udp[1][udp[0].index("InCsumErrors")])


# -- tests -------------------------------------------------------------------------------


def test_tx_frames_pass_the_kernel_udp_checks_and_walk_the_ranges(pair: Pair) -> None:
    udp = UdpCounter(pair.ns_b, pair.ip_b, range(9000, 9004))
    try:
        r = pktgen(
            pair,
            "a",
            "-i",
            f"netmap:{pair.a}/T",
            "-f",
            "tx",
            "-n",
            "2000",
            "-s",
            f"{pair.ip_a}:5000-{pair.ip_a}:5004",
            "-d",
            f"{pair.ip_b}:9000-{pair.ip_b}:9003",
            "-D",
            pair.mac("b"),
            "-l",
            "200",
            "-l",
            "60",
            "-R",
            "50000",
            "-T",
            "100",
        )
        got = udp.drain()
    finally:
        udp.close()
    assert r.returncode == 0, r.stderr
    pkts, nbytes = final(r.stdout)
    assert pkts == 2000
    # pkt-gen's walk: source port fastest (5 values), then destination port: 500 each
    assert {p: len(v) for p, v in got.items()} == {9000: 500, 9001: 500, 9002: 500, 9003: 500}
    sizes = [len(d) for v in got.values() for d in v]
    # random frame lengths in [60, 200): UDP payload = frame - 42
    assert min(sizes) >= 60 - 42 and max(sizes) < 200 - 42 and len(set(sizes)) > 50
    assert nbytes == sum(sizes) + 42 * len(sizes)
    assert csum_errors(pair.ns_b) == 0
    assert r.stdout.splitlines()[1].startswith(f"{pair.ip_a}:5000-{pair.ip_a}:5004 -> ")
    periodic = [x for x in r.stderr.splitlines() if "main_thread" in x]
    assert periodic and all(PKTGEN_PERIODIC.match(x) for x in periodic), r.stderr


def test_tx_two_processes_share_the_count(pair: Pair) -> None:
    udp = UdpCounter(pair.ns_b, pair.ip_b, range(9000, 9001))
    try:
        r = pktgen(
            pair,
            "a",
            "-i",
            f"netmap:{pair.a}/T",
            "-f",
            "tx",
            "-p",
            "2",
            "-n",
            "3001",
            "-s",
            pair.ip_a,
            "-d",
            f"{pair.ip_b}:9000",
            "-D",
            pair.mac("b"),
            "-R",
            "40000",
            "--json",
        )
        got = udp.drain()
    finally:
        udp.close()
    assert r.returncode == 0, r.stderr
    objs = [json.loads(x) for x in r.stdout.splitlines()]
    fin = [o for o in objs if o["type"] == "final"]
    assert len(fin) == 1 and fin[0]["pkts"] == 3001 and fin[0]["msg"] == "Sent"
    assert len(got[9000]) == 3001


def test_tx_to_rx_counts_exactly(pair: Pair) -> None:
    rx = start_pktgen(pair, "b", "-i", f"netmap:{pair.b}/R", "-f", "rx", "-n", "5000", "-T", "200")
    try:
        wait_xdp(pair, "b", rx)
        t = pktgen(pair, "a", "-i", f"netmap:{pair.a}/T", "-f", "tx", "-n", "5000", "-R", "50000")
        assert t.returncode == 0, t.stderr
        out, err = rx.communicate(timeout=20)
    finally:
        stop(rx)
    assert rx.returncode == 0, err
    assert final(t.stdout) == (5000, 300000)
    assert final(out) == (5000, 300000)
    assert (
        out.splitlines()[0] == f"Receiving from netmap:{pair.b}/R: 2 queues, 1 threads and "
        f"{os.cpu_count()} cpus."
    )
    assert not pair.has_xdp("b")  # the receiver gave the queues back


def test_rx_counts_kernel_udp_datagrams(pair: Pair) -> None:
    # B's port takes every frame (ARP too), so A gets a static neighbour entry
    run(
        "ip", "-n", pair.ns_a, "neigh", "replace", pair.ip_b, "lladdr", pair.mac("b"), "dev", pair.a
    )
    rx = start_pktgen(pair, "b", "-i", f"netmap:{pair.b}", "-f", "rx", "-W", "--json")
    try:
        wait_xdp(pair, "b", rx)
        with netns(pair.ns_a):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i in range(300):
                s.sendto(b"x" * (i % 100), (pair.ip_b, 7777))
        finally:
            s.close()
        out, err = rx.communicate(timeout=20)  # -W: ends 1 s after the last frame
    finally:
        stop(rx)
    fin = [json.loads(x) for x in out.splitlines() if '"final"' in x]
    assert fin and fin[0]["pkts"] == 300, (out, err)
    # veth does not pad short frames to 60 bytes: each is 42 bytes of headers + payload
    assert fin[0]["bytes"] == sum(42 + i % 100 for i in range(300))


XDP_FLAGS_DRV_MODE = 1 << 2
BPF_DROP_SEQ = r"""
#include <uapi/linux/bpf.h>
/* Forward A's frames to B; drop the UDP ones whose pkt-gen sequence number is 3 mod 7. */
int fwd(struct xdp_md *ctx)
{
    unsigned char *p = (unsigned char *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    if ((void *)(p + 46) <= end && p[12] == 0x08 && p[13] == 0x00 && p[23] == 17) {
        unsigned int seq = (p[42] << 24) | (p[43] << 16) | (p[44] << 8) | p[45];
        if (seq % 7 == 3)
            return XDP_DROP;
    }
    return bpf_redirect(OUT_IFINDEX, 0);
}
"""


def test_rxseq_reports_frames_dropped_on_the_way(
    chain: tuple[Pair, str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bcc import BPF  # Debian's python3-bpfcc, as the library uses

    from vtnet_py.ebpf.build import find_kernel_headers

    headers = find_kernel_headers()  # the library's answer to "no headers for this kernel"
    if headers is not None:
        monkeypatch.setenv("BCC_KERNEL_SOURCE", str(headers))
    p, ns_m, m1, m2 = chain
    with netns(ns_m):
        out_ifindex = socket.if_nametoindex(m2)
    bpf = BPF(text=BPF_DROP_SEQ.encode(), cflags=[f"-DOUT_IFINDEX={out_ifindex}"])
    fn = bpf.load_func(b"fwd", BPF.XDP)
    rx = start_pktgen(p, "b", "-i", f"netmap:{p.b}", "-f", "rxseq", "-W")
    try:
        wait_xdp(p, "b", rx)  # veth redirects into m2 only once b has an XDP program
        with netns(ns_m):
            bpf.attach_xdp(m1.encode(), fn, XDP_FLAGS_DRV_MODE)
        t = pktgen(
            p,
            "a",
            "-i",
            f"netmap:{p.a}-0/T",
            "-f",
            "txseq",
            "-n",
            "7000",
            "-R",
            "50000",
            "-d",
            f"{p.ip_b}:9",
            "-D",
            p.mac("b"),
        )
        assert t.returncode == 0, t.stderr
        out, err = rx.communicate(timeout=20)
    finally:
        stop(rx)
        with netns(ns_m):
            bpf.remove_xdp(m1.encode(), XDP_FLAGS_DRV_MODE)
        bpf.cleanup()
    assert final(t.stdout)[0] == 7000
    assert final(out)[0] == 6000
    seq = [x for x in out.splitlines() if x.startswith("Sequence:")]
    assert seq == [
        "Sequence: 6000 numbered packets, 1000 lost, 1000 gaps (1000 packets), 0 out of order."
    ], out
    # pkt-gen's rate-limited gap lines name what was expected and what came
    gaps = [x for x in err.splitlines() if "Sequence GAP" in x]
    assert gaps and re.search(r"rxseq_body \[0\] Sequence GAP: exp (\d+) found (\d+)$", gaps[0])
    m = re.search(r"exp (\d+) found (\d+)", gaps[0])
    assert m is not None and int(m.group(1)) % 7 == 3 and int(m.group(2)) == int(m.group(1)) + 1


def test_txseq_rxseq_clean_run_reports_no_loss(pair: Pair) -> None:
    rx = start_pktgen(pair, "b", "-i", f"netmap:{pair.b}/R", "-f", "rxseq", "-n", "4000", "--json")
    try:
        wait_xdp(pair, "b", rx)
        t = pktgen(
            pair, "a", "-i", f"netmap:{pair.a}-1/T", "-f", "txseq", "-n", "4000", "-R", "40000"
        )
        out, err = rx.communicate(timeout=20)
    finally:
        stop(rx)
    assert t.returncode == 0, t.stderr
    fin = [json.loads(x) for x in out.splitlines() if '"final"' in x][0]
    assert (fin["pkts"], fin["seq_received"], fin["lost"], fin["gaps"], fin["out_of_order"]) == (
        4000,
        4000,
        0,
        0,
        0,
    ), (out, err)


def test_ping_pong_round_trips(pair: Pair) -> None:
    pong = start_pktgen(pair, "b", "-i", f"netmap:{pair.b}", "-f", "pong")
    try:
        wait_xdp(pair, "b", pong)
        r = pktgen(
            pair,
            "a",
            "-i",
            f"netmap:{pair.a}",
            "-f",
            "ping",
            "-n",
            "200",
            "-s",
            pair.ip_a,
            "-d",
            pair.ip_b,
            "-D",
            pair.mac("b"),
        )
        jr = pktgen(pair, "a", "-i", f"netmap:{pair.a}", "-f", "ping", "-n", "50", "--json")
    finally:
        pong_out, pong_err = stop(pong)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"Working on netmap:{pair.a}: 2 queues, 1 threads and {os.cpu_count()} cpus."
    m = re.search(r"^RTT over 200 packets: min (\d+) av (\d+) ns$", r.stdout, re.M)
    assert m is not None, r.stdout
    m2 = re.search(
        r"^RTT percentiles: min (\d+) median (\d+) p99 (\d+) max (\d+) ns "
        r"\(200 sent, 200 replies\)$",
        r.stdout,
        re.M,
    )
    assert m2 is not None, r.stdout
    mn, med, p99, mx = (int(x) for x in m2.groups())
    assert 0 < mn <= med <= p99 <= mx < 3_000_000_000
    fin = [json.loads(x) for x in jr.stdout.splitlines() if '"final"' in x][0]
    assert fin["sent"] == 50 and fin["received"] == 50 and fin["min"] <= fin["p99"]
    assert "Replied to 250 packets" in pong_out, (pong_out, pong_err)


def test_rate_limit_holds_without_burning_a_core(pair: Pair) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = pktgen(
        pair, "a", "-i", f"netmap:{pair.a}-0/T", "-f", "tx", "-n", "9000", "-R", "3000", "--json"
    )
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert r.returncode == 0, r.stderr
    fin = [json.loads(x) for x in r.stdout.splitlines() if '"final"' in x][0]
    assert fin["pkts"] == 9000
    assert abs(fin["pps"] - 3000) / 3000 < 0.03, fin
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # 3 s of sending at 3 kpps; the budget includes interpreter start-up (~0.5 s)
    assert cpu < 0.35 * wall, (cpu, wall)


def test_sigint_prints_the_final_lines(pair: Pair) -> None:
    tx = start_pktgen(
        pair, "a", "-i", f"netmap:{pair.a}/T", "-f", "tx", "-R", "100000", "-T", "200"
    )
    time.sleep(2.0)
    out, err = stop(tx)
    assert tx.returncode == 0, err
    pkts, nbytes = final(out)
    assert pkts > 10000 and nbytes == 60 * pkts
    assert "sigint_h [0] received SIGINT" in err
    periodic = [x for x in err.splitlines() if "main_thread" in x]
    assert len(periodic) >= 3 and all(PKTGEN_PERIODIC.match(x) for x in periodic), err


def test_vnet_header_mode_on_both_sides(pair: Pair) -> None:
    """-H 10 on TX: the port strips the header, the kernel sees valid frames; -H 12 on
    RX: every slot starts with a 12-byte header and rxseq still finds the numbers."""
    udp = UdpCounter(pair.ns_b, pair.ip_b, range(9000, 9001))
    try:
        r = pktgen(
            pair,
            "a",
            "-i",
            f"netmap:{pair.a}/T",
            "-f",
            "tx",
            "-n",
            "100",
            "-H",
            "10",
            "-d",
            f"{pair.ip_b}:9000",
            "-D",
            pair.mac("b"),
            "-R",
            "10000",
        )
        got = udp.drain()
    finally:
        udp.close()
    assert r.returncode == 0, r.stderr
    assert final(r.stdout) == (100, 100 * 70)  # pkt-gen counts the header bytes too
    assert len(got[9000]) == 100 and {len(d) for d in got[9000]} == {60 - 42}
    rx = start_pktgen(
        pair, "b", "-i", f"netmap:{pair.b}/R", "-f", "rxseq", "-n", "500", "-H", "12", "--json"
    )
    try:
        wait_xdp(pair, "b", rx)
        t = pktgen(
            pair,
            "a",
            "-i",
            f"netmap:{pair.a}/T",
            "-f",
            "txseq",
            "-n",
            "500",
            "-H",
            "10",
            "-R",
            "20000",
        )
        assert t.returncode == 0, t.stderr
        out, err = rx.communicate(timeout=20)
    finally:
        stop(rx)
    fin = [json.loads(x) for x in out.splitlines() if '"final"' in x][0]
    assert (fin["pkts"], fin["bytes"], fin["seq_received"], fin["lost"]) == (
        500,
        500 * 72,
        500,
        0,
    ), (out, err)
