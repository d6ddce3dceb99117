"""pkt-gen --live (frames generated in the kernel with BPF_PROG_TEST_RUN live frames)
between two network namespaces.

The receiver is the peer's own kernel: frames to a UDP port nobody listens on are
counted in Udp NoPorts only after the IPv4 header checksum (ip_rcv) and the UDP
checksum (__udp4_lib_rcv) passed, so "NoPorts grew by exactly N and no checksum error
counter moved" means N valid frames arrived; UDP sockets, where the payload and the
source matter.  The peer has GRO on: a veth hands redirected XDP frames only to a
peer that runs NAPI (an XDP program or GRO).

Namespaces ``vtpg-<hex>-a`` / ``-b``, addresses 203.0.113.0/24; both (and with them
the veth) are deleted after each test, pass or fail.  Refusals need no kernel.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from click.testing import CliRunner
from nettest import PKTGEN, PKTGEN_FINAL2, PKTGEN_PERIODIC
from vtnetmap_cli.pktgen_cmd import pkt_gen

from vtnet_py._sys.netns import netns
from vtnet_py.apps.netlab import NetLab, link_state
from vtnet_py.apps.pktgen.addresses import IPRange
from vtnet_py.apps.pktgen.frames import FrameGen, FrameSpec

SO_RCVBUFFORCE = 33  # asm-generic/socket.h: SO_RCVBUF beyond rmem_max, for root
FINAL1 = re.compile(
    r"^Sent (\d+) packets (\d+) bytes (\d+) events (\d+) bytes each "
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

    def mac_b(self) -> str:
        return link_state(self.ns_b, self.b).lladdr

    def peer_gro(self, on: bool) -> None:
        run("ip", "netns", "exec", self.ns_b, "ethtool", "-K", self.b, "gro", "on" if on else "off")

    def counters(self) -> dict[str, int]:
        """B's UDP and IP counters that say what its stack accepted or refused."""
        out: dict[str, int] = {}
        for path, prefixes in (
            ("/proc/net/snmp", ("Udp:", "Ip:")),
            ("/proc/net/netstat", ("IpExt:",)),
        ):
            lines = run("ip", "netns", "exec", self.ns_b, "cat", path).stdout.splitlines()
            for pre in prefixes:
                rows = [x.split() for x in lines if x.startswith(pre)]
                for k, v in zip(rows[0][1:], rows[1][1:], strict=True):
                    out[f"{pre[:-1]}.{k}"] = int(v)
        return out


@pytest.fixture
def pair() -> Iterator[Pair]:
    with NetLab("vtpg-") as lab:
        ns_a, ns_b = lab.namespace("-a"), lab.namespace("-b")
        p = Pair(ns_a, ns_b, f"vtpg{lab.tag}a", f"vtpg{lab.tag}b")
        lab.veth(ns_a, p.a, ns_b, p.b, queues=2, ip_a=p.ip_a, ip_b=p.ip_b)
        p.peer_gro(True)
        yield p


def live(p: Pair, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        PKTGEN
        + [
            "--netns",
            p.ns_a,
            "-w",
            "0",
            "-i",
            f"netmap:{p.a}",
            "-f",
            "tx",
            "--live",
            "-s",
            p.ip_a,
            "-D",
            p.mac_b(),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def final(out: str) -> tuple[int, int, int]:
    """(packets, bytes, events) of the final text lines; checks both line shapes."""
    lines = [x for x in out.splitlines() if x.startswith(("Sent", "Speed"))]
    assert len(lines) == 2, out
    m = FINAL1.match(lines[0])
    assert m is not None, lines[0]
    assert PKTGEN_FINAL2.match(lines[1]) is not None, lines[1]
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def settle(p: Pair, key: str, want: int, before: dict[str, int], timeout: float = 5) -> None:
    """Wait until B's counter ``key`` grew by ``want`` (B's NAPI may still be at work)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and p.counters()[key] - before[key] < want:
        time.sleep(0.05)


@dataclass
class Receiver:
    """UDP sockets in B, drained by a thread while the sender runs (XDP frames become
    page-sized skbs: a default-sized socket buffer holds only a few dozen)."""

    ns: str
    ip: str
    ports: range
    got: dict[int, list[tuple[str, int, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.socks: list[socket.socket] = []
        with netns(self.ns):
            for port in self.ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
                s.bind((self.ip, port))
                s.setblocking(False)
                self.socks.append(s)
                self.got[port] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        idle_since: float | None = None
        while True:
            ready, _, _ = select.select(self.socks, [], [], 0.05)
            for s in ready:
                port = s.getsockname()[1]
                while True:
                    try:
                        data, (src, sport) = s.recvfrom(65536)
                    except BlockingIOError:
                        break
                    self.got[port].append((src, sport, len(data)))
            if ready:
                idle_since = None
            elif self._stop.is_set():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 0.3:
                    return

    def close(self) -> dict[int, list[tuple[str, int, int]]]:
        self._stop.set()
        self._thread.join(timeout=10)
        for s in self.socks:
            s.close()
        return self.got


# -- refusals (no kernel needed) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-f", "rx"], "-f rx: --live only transmits"),
        (["-f", "txseq"], "-f txseq: --live only transmits"),
        (["-f", "ping"], "-f ping: --live only transmits"),
        (["-f", "tx", "-H", "10"], "-H 10: --live frames leave through the driver's XDP"),
        (["-f", "tx", "-l", "100", "-l", "60"], "-l: --live sends frames of one length"),
        (["-f", "tx", "-p", str((os.cpu_count() or 1) + 1)], "--live runs one process per CPU"),
        (["-f", "tx", "-z", "--seed", "3"], "--seed: with --live, -z/-Z draw from the kernel"),
        (["-f", "tx", "-i", "netmap:nonexistent0-1"], "--live uses no netmap ring"),
        (["-f", "tx", "-i", "netmap:nonexistent0^"], "--live uses no netmap ring"),
        (["-f", "tx", "-i", "netmap:nonexistent0/R"], "--live transmits; a port opened with /R"),
    ],
)
def test_live_refusals_are_one_line(args: list[str], needle: str) -> None:
    r = CliRunner().invoke(pkt_gen, ["-i", "netmap:nonexistent0", "--live"] + args)
    assert r.exit_code != 0
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1, r.output
    assert needle in lines[0], r.output


# -- in the kernel --------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize(("count", "burst"), [(20000, None), (200001, 100)])
def test_live_count_is_exact_and_checksums_valid(pair: Pair, count: int, burst: int | None) -> None:
    before = pair.counters()
    b_opt = ["-b", str(burst)] if burst else []
    r = live(pair, "-n", str(count), *b_opt, "-d", f"{pair.ip_b}:9", "-T", "100")
    assert r.returncode == 0, r.stderr
    settle(pair, "Udp.NoPorts", count, before)
    d = delta(before, pair.counters())
    # every frame reached B's UDP layer with valid checksums; nothing else was refused
    assert d.get("Udp.NoPorts") == count, d
    for bad in (
        "Udp.InCsumErrors",
        "Udp.InErrors",
        "IpExt.InCsumErrors",
        "Ip.InHdrErrors",
        "Ip.InAddrErrors",
    ):
        assert d.get(bad, 0) == 0, d
    pkts, nbytes, events = final(r.stdout)
    batch = burst or 64  # -b is the kernel batch, by default the kernel's own 64
    assert (pkts, nbytes) == (count, 60 * count)
    assert -(-count // batch) <= events <= -(-count // batch) + 64  # + a partial batch a call
    lines = r.stdout.splitlines()
    assert lines[0] == f"Sending on netmap:{pair.a}: 2 queues, 1 threads and {os.cpu_count()} cpus."
    assert lines[1].startswith(f"{pair.ip_a}:1234 -> {pair.ip_b}:9 (")
    assert (
        f"--live: BPF_PROG_TEST_RUN live frames out of {pair.a}, kernel batches of {batch}"
        in r.stderr
    )
    periodic = [x for x in r.stderr.splitlines() if "main_thread" in x]
    assert periodic and all(PKTGEN_PERIODIC.match(x) for x in periodic), r.stderr
    assert "dropped" not in r.stderr, r.stderr


@pytest.mark.kernel
def test_live_walks_the_ranges_as_the_afxdp_path_does(pair: Pair) -> None:
    n = 2000
    rx = Receiver(pair.ns_b, pair.ip_b, range(9000, 9004))
    try:
        r = live(
            pair,
            "-n",
            str(n),
            "-R",
            "2000",
            "-s",
            f"{pair.ip_a}:5000-{pair.ip_a}:5004",
            "-d",
            f"{pair.ip_b}:9000-{pair.ip_b}:9003",
            "-l",
            "101",
        )
    finally:
        got = rx.close()
    assert r.returncode == 0, r.stderr
    assert final(r.stdout)[:2] == (n, 101 * n)
    # the frames FrameGen (the AF_XDP path) would send, in the same order
    spec = FrameSpec(
        src=IPRange.parse(f"{pair.ip_a}:5000-{pair.ip_a}:5004"),
        dst=IPRange.parse(f"{pair.ip_b}:9000-{pair.ip_b}:9003"),
        length=101,
    )
    b = FrameGen(spec).next_batch(n)
    for port in range(9000, 9004):
        want = [int(s) for s in b.sport[b.dport == port]]
        assert [sport for _, sport, _ in got[port]] == want, port
        assert {(src, size) for src, _, size in got[port]} == {(pair.ip_a, 101 - 42)}


@pytest.mark.kernel
def test_live_random_sources_carry_valid_checksums(pair: Pair) -> None:
    rx = Receiver(pair.ns_b, pair.ip_b, range(9000, 9001))
    before = pair.counters()
    try:
        r = live(pair, "-n", "1000", "-R", "2000", "-z", "-d", f"{pair.ip_b}:9000")
    finally:
        got = rx.close()[9000]
    assert r.returncode == 0, r.stderr
    d = delta(before, pair.counters())
    # random sources: the stack drops martians (0/8, 127/8, multicast, class E), about
    # one in six; everything that reaches the socket passed both checksums
    assert 700 <= len(got) <= 1000, (len(got), d)
    assert d.get("Udp.InCsumErrors", 0) == 0 and d.get("IpExt.InCsumErrors", 0) == 0, d
    assert got[0][:2] == (pair.ip_a, 1234)  # frame 0 carries the range start
    assert len({(src, sport) for src, sport, _ in got}) >= len(got) - 2


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _valid(frame: bytes) -> bool:
    """IPv4 header and UDP checksums of an Ethernet/IPv4/UDP frame, recomputed here."""
    ip, udp = frame[14:34], frame[34:]
    pseudo = ip[12:20] + b"\0\x11" + udp[4:6]
    return _csum(ip) == 0xFFFF and _csum(pseudo + udp) == 0xFFFF


@pytest.mark.kernel
def test_live_random_destinations_change_on_each_carry(pair: Pair) -> None:
    """-Z: a new random destination whenever the source walk (here 2 ports) wraps."""
    with netns(pair.ns_b):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        raw.bind((pair.b, 0))
    # a call's frames arrive back to back as page-sized skbs: past rmem_max (root may)
    raw.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    raw.settimeout(0.5)
    frames: list[bytes] = []
    done = threading.Event()

    def capture() -> None:
        while not (done.is_set() and len(frames) >= 200):
            try:
                f = raw.recv(2048)
            except TimeoutError:
                if done.is_set():
                    return
                continue
            if len(f) >= 42 and f[23] == 17:
                frames.append(f)

    th = threading.Thread(target=capture, daemon=True)
    th.start()
    try:
        r = live(
            pair,
            "-n",
            "200",
            "-R",
            "2000",
            "-Z",
            "-s",
            f"{pair.ip_a}:5000-{pair.ip_a}:5001",
            "-d",
            f"{pair.ip_b}:9000",
        )
    finally:
        done.set()
        th.join(timeout=10)
        raw.close()
    assert r.returncode == 0, r.stderr
    assert len(frames) == 200
    assert all(_valid(f) for f in frames)
    dsts = [(f[30:34], f[36:38]) for f in frames]
    assert dsts[0] == dsts[1] == (socket.inet_aton(pair.ip_b), (9000).to_bytes(2, "big"))
    assert all(dsts[2 * i] == dsts[2 * i + 1] for i in range(100))  # one per carry
    assert len(set(dsts[::2])) >= 98  # and a new one at each
    assert [int.from_bytes(f[34:36], "big") for f in frames[:4]] == [5000, 5001, 5000, 5001]


@pytest.mark.kernel
def test_live_rate_holds_without_burning_a_core(pair: Pair) -> None:
    before = pair.counters()
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = live(pair, "-n", "6000", "-R", "3000", "-d", f"{pair.ip_b}:9", "--json")
    wall = time.monotonic() - t0
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert r.returncode == 0, r.stderr
    fin = [json.loads(x) for x in r.stdout.splitlines() if '"final"' in x][0]
    assert fin["pkts"] == 6000
    # coarse pacing: one call per 100 ms carrying 100 ms worth of frames
    assert abs(fin["pps"] - 3000) / 3000 < 0.05, fin
    settle(pair, "Udp.NoPorts", 6000, before)
    assert delta(before, pair.counters()).get("Udp.NoPorts") == 6000
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    assert cpu < 0.35 * wall, (cpu, wall)


@pytest.mark.kernel
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_live_signal_stops_with_an_exact_count(pair: Pair, sig: signal.Signals) -> None:
    before = pair.counters()
    tx = subprocess.Popen(
        PKTGEN
        + [
            "--netns",
            pair.ns_a,
            "-w",
            "0",
            "-i",
            f"netmap:{pair.a}",
            "-f",
            "tx",
            "--live",
            "-d",
            f"{pair.ip_b}:9",
            "-D",
            pair.mac_b(),
            "-T",
            "200",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.5)
        tx.send_signal(sig)
        out, err = tx.communicate(timeout=15)
    finally:
        if tx.poll() is None:
            tx.kill()
            tx.communicate()
    assert tx.returncode == 0, err
    pkts, nbytes, _ = final(out)
    assert pkts > 50000 and nbytes == 60 * pkts
    assert f"sigint_h [0] received {sig.name}" in err
    # the count is the program's own: exactly what B's stack took in
    settle(pair, "Udp.NoPorts", pkts, before)
    assert delta(before, pair.counters()).get("Udp.NoPorts") == pkts
    periodic = [x for x in err.splitlines() if "main_thread" in x]
    assert len(periodic) >= 5 and all(PKTGEN_PERIODIC.match(x) for x in periodic), err


@pytest.mark.kernel
def test_live_one_process_per_cpu_shares_the_count(pair: Pair) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs")
    before = pair.counters()
    r = live(pair, "-p", "2", "-n", "30001", "-d", f"{pair.ip_b}:9", "--json")
    assert r.returncode == 0, r.stderr
    fin = [json.loads(x) for x in r.stdout.splitlines() if '"final"' in x]
    assert len(fin) == 1 and fin[0]["pkts"] == 30001 and fin[0]["msg"] == "Sent"
    settle(pair, "Udp.NoPorts", 30001, before)
    assert delta(before, pair.counters()).get("Udp.NoPorts") == 30001


@pytest.mark.kernel
def test_live_into_a_peer_without_napi_is_an_error(pair: Pair) -> None:
    pair.peer_gro(False)  # no XDP program and no GRO: veth drops XDP frames silently
    r = live(pair, "-n", "5000", "-d", f"{pair.ip_b}:9")
    assert r.returncode == 1
    assert "the peer needs an XDP program or GRO on" in r.stderr, r.stderr
