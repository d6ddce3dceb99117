"""pkt-gen's -6, -F/-M, -P, -X and -v, the drop counters and the failure exits, on veth
pairs between two namespaces (the `veth` fixtures; both ends in namespaces the fixture
removes).  The kernel is the judge where it can be: plain UDP sockets in the peer
namespace receive only frames whose lengths and checksums are right."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nettest import (
    PKTGEN,
    PKTGEN_FINAL2,
    PKTGEN_PERIODIC,
    VethPair,
    kernel,
    start_port_holder,
)

from vtnet_py._sys.netns import netns
from vtnet_py.apps.pktgen.config import Config
from vtnet_py.apps.pktgen.engine import Run
from vtnet_py.apps.pktgen.frames import PAYLOAD_TEXT
from vtnet_py.apps.pktgen.worker import Worker

pytestmark = kernel

IP6_A, IP6_B = "2001:db8:1::1", "2001:db8:1::2"


def pktgen(ns: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        PKTGEN + ["--netns", ns, "-w", "0", *args], capture_output=True, text=True, timeout=timeout
    )


def start(ns: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        PKTGEN + ["--netns", ns, "-w", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_open(pair: VethPair, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until the receiver on b has its port open (its steering program is on b)."""
    end = time.monotonic() + timeout
    while not pair.xdp_attached("b"):
        if proc.poll() is not None:
            pytest.fail(f"receiver exited early: {proc.communicate()}")
        assert time.monotonic() < end, "the receiver did not open its port"
        time.sleep(0.05)
    time.sleep(0.2)


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def final_json(out: str) -> dict[str, Any]:
    fin = [json.loads(x) for x in out.splitlines() if '"final"' in x]
    assert len(fin) == 1, out
    return fin[0]


def udp_sockets(ns: str, family: int, ip: str, ports: range) -> dict[int, socket.socket]:
    socks = {}
    with netns(ns):
        for port in ports:
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind((ip, port))
            s.setblocking(False)
            socks[port] = s
    return socks


def drain(socks: dict[int, socket.socket], settle: float = 0.5) -> dict[int, list[bytes]]:
    got: dict[int, list[bytes]] = {p: [] for p in socks}
    end = time.monotonic() + settle
    while time.monotonic() < end:
        for port, s in socks.items():
            while True:
                try:
                    got[port].append(s.recv(65536))
                except BlockingIOError:
                    break
        time.sleep(0.02)
    for s in socks.values():
        s.close()
    return got


def snmp(ns: str, path: str, key: str) -> int:
    """A counter of /proc/net/snmp6 (``key value`` lines) in namespace ``ns``."""
    text = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", path], capture_output=True, text=True, check=True
    ).stdout
    return int(dict(line.split() for line in text.splitlines() if line.strip())[key])


def enable_ipv6(pair: VethPair) -> None:
    for ns, dev, ip in ((pair.ns_a, pair.a, IP6_A), (pair.ns_b, pair.b, IP6_B)):
        run = ["ip", "netns", "exec", ns]
        subprocess.run(run + ["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=0"], check=True)
        subprocess.run(
            ["ip", "-n", ns, "-6", "addr", "add", f"{ip}/64", "dev", dev, "nodad"], check=True
        )


def payload_pattern(n: int) -> bytes:
    return (PAYLOAD_TEXT * (n // len(PAYLOAD_TEXT) + 1))[:n]


# -- -6 ------------------------------------------------------------------------------------


def test_ipv6_frames_pass_the_kernels_udp_checks(veth: VethPair) -> None:
    enable_ipv6(veth)
    socks = udp_sockets(veth.ns_b, socket.AF_INET6, IP6_B, range(9000, 9002))
    r = pktgen(
        veth.ns_a,
        "-i",
        f"netmap:{veth.a}/T",
        "-f",
        "tx",
        "-6",
        "-n",
        "400",
        "-s",
        f"[{IP6_A}]:5000",
        "-d",
        f"[{IP6_B}]:9000-[{IP6_B}]:9001",
        "-D",
        veth.mac("b").hex(":"),
        "-l",
        "130",
        "-l",
        "70",
        "-R",
        "20000",
    )
    got = drain(socks)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].startswith(f"[{IP6_A}]:5000 -> [{IP6_B}]:9000-")
    assert {p: len(v) for p, v in got.items()} == {9000: 200, 9001: 200}
    sizes = [len(d) for v in got.values() for d in v]
    # random frame lengths in [70, 130): UDP payload = frame - 62
    assert min(sizes) >= 70 - 62 and max(sizes) < 130 - 62 and len(set(sizes)) > 20
    assert all(d == payload_pattern(len(d)) for v in got.values() for d in v)
    assert snmp(veth.ns_b, "/proc/net/snmp6", "Udp6InCsumErrors") == 0


def test_ipv6_sequences_and_round_trips(veth: VethPair) -> None:
    rx = start(veth.ns_b, "-i", f"netmap:{veth.b}/R", "-f", "rxseq", "-n", "1000", "--json")
    try:
        wait_open(veth, rx)
        t = pktgen(
            veth.ns_a,
            "-i",
            f"netmap:{veth.a}-0/T",
            "-f",
            "txseq",
            "-6",
            "-n",
            "1000",
            "-R",
            "20000",
        )
        out, err = finish(rx)
    finally:
        rx.kill()
    assert t.returncode == 0, t.stderr
    fin = final_json(out)
    assert (fin["pkts"], fin["bytes"], fin["seq_received"], fin["lost"], fin["gaps"]) == (
        1000,
        1000 * 66,  # -6 -f txseq: the shortest frame that holds a number is 66 bytes
        1000,
        0,
        0,
    ), err
    pong = start(veth.ns_b, "-i", f"netmap:{veth.b}", "-f", "pong")
    try:
        wait_open(veth, pong)
        p = pktgen(veth.ns_a, "-i", f"netmap:{veth.a}", "-f", "ping", "-6", "-n", "50", "--json")
    finally:
        pong.send_signal(signal.SIGINT)
        pong_out, _ = finish(pong)
    assert p.returncode == 0, p.stderr
    fin = final_json(p.stdout)
    assert (fin["sent"], fin["received"]) == (50, 50), p.stdout
    assert "Replied to 50 packets" in pong_out


# -- -F / -M -------------------------------------------------------------------------------


def test_multislot_frames_on_a_jumbo_link(veth_factory: Callable[..., VethPair]) -> None:
    pair = veth_factory(queues=1, mtu=9000)
    dst = ["-d", f"{pair.ip_b}:9000", "-D", pair.mac("b").hex(":"), "-R", "5000"]
    socks = udp_sockets(pair.ns_b, socket.AF_INET, pair.ip_b, range(9000, 9001))
    # a jumbo frame does not fit a buffer: cut at the buffer size, as pkt-gen does
    r = pktgen(
        pair.ns_a, "-i", f"netmap:{pair.a}/T", "-f", "tx", "-n", "30", "-l", "9014", "-v", *dst
    )
    got = drain(socks)[9000]
    assert r.returncode == 0, r.stderr
    assert "sender_body [0] frags 3 frag_size 3840" in r.stderr
    assert len(got) == 30 and all(d == payload_pattern(9014 - 42) for d in got)
    # -F 4: a 1000-byte frame in four slots (250 bytes each)
    socks = udp_sockets(pair.ns_b, socket.AF_INET, pair.ip_b, range(9000, 9001))
    r = pktgen(
        pair.ns_a,
        "-i",
        f"netmap:{pair.a}/T",
        "-f",
        "tx",
        "-n",
        "40",
        "-l",
        "1000",
        "-F",
        "4",
        "-v",
        *dst,
    )
    got = drain(socks)[9000]
    assert r.returncode == 0, r.stderr
    assert "frags 4 frag_size 250" in r.stderr
    # -v: the port's mode when it opens, every socket's XDP_STATISTICS at the end
    assert f"netmap:{pair.a}/T: 0 RX and 1 TX rings, " in r.stderr
    assert "multi-buffer on" in r.stderr
    assert re.search(rf"netmap:{pair.a}/T tx ring 0: rx_dropped 0 .*tx_invalid_descs 0", r.stderr)
    assert len(got) == 40 and all(d == payload_pattern(1000 - 42) for d in got)
    # rxseq takes the chains as they come and reads the number in each first slot
    rx = start(pair.ns_b, "-i", f"netmap:{pair.b}", "-f", "rxseq", "-n", "300", "--json")
    try:
        wait_open(pair, rx)
        t = pktgen(
            pair.ns_a,
            "-i",
            f"netmap:{pair.a}/T",
            "-f",
            "txseq",
            "-n",
            "300",
            "-l",
            "3000",
            "-F",
            "3",
            "-M",
            "1100",
            *dst,
        )
        out, err = finish(rx)
    finally:
        rx.kill()
    assert t.returncode == 0, t.stderr
    fin = final_json(out)
    assert (fin["pkts"], fin["bytes"], fin["seq_received"], fin["lost"]) == (
        300,
        300 * 3000,
        300,
        0,
    ), err


# -- -P and -X -----------------------------------------------------------------------------


def udp4_frame(pair: VethPair, payload: bytes) -> bytes:
    """An Ethernet/IPv4/UDP frame to b's port 9000, built here with its checksums."""

    def csum(data: bytes) -> int:
        s = sum(struct.unpack(f"!{len(data) // 2}H", data + b"\0" * (len(data) % 2)))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return 0xFFFF - s

    src, dst = socket.inet_aton(pair.ip_a), socket.inet_aton(pair.ip_b)
    udp = struct.pack("!HHHH", 4242, 9000, 8 + len(payload), 0) + payload
    usum = csum(src + dst + struct.pack("!BBH", 0, 17, len(udp)) + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", usum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return pair.mac("b") + pair.mac("a") + b"\x08\x00" + ip + udp


def write_pcap(path: Path, frame: bytes, endian: str) -> None:
    path.write_bytes(
        struct.pack(endian + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
        + struct.pack(endian + "IIII", 1, 2, len(frame), len(frame))
        + frame
    )


def undump(text: str) -> list[tuple[str, bytes]]:
    """Header lines and bytes of pkt-gen's -X dumps in ``text``."""
    out: list[tuple[str, bytes]] = []
    for line in text.splitlines():
        if line.startswith("ring "):
            out.append((line, b""))
        elif out and len(line) > 7 and line[:5].strip().isdigit() and line[5:7] == ": ":
            out[-1] = (out[-1][0], out[-1][1] + bytes.fromhex(line[7:55]))
    return out


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcap_frame_is_sent_as_read_and_dumped(veth: VethPair, tmp_path: Path, endian: str) -> None:
    frame = udp4_frame(veth, b"frame from a pcap file " + endian.encode())
    pcap = tmp_path / "one.pcap"
    write_pcap(pcap, frame, endian)
    socks = udp_sockets(veth.ns_b, socket.AF_INET, veth.ip_b, range(9000, 9001))
    r = pktgen(
        veth.ns_a, "-i", f"netmap:{veth.a}/T", "-f", "tx", "-P", str(pcap), "-n", "20", "-R", "2000"
    )
    got = drain(socks)[9000]
    assert r.returncode == 0, r.stderr
    assert got == [b"frame from a pcap file " + endian.encode()] * 20
    assert f"a {len(frame)}-byte frame from a pcap file" in r.stdout
    # -X on both ends: every slot, in pkt-gen's layout, byte for byte
    rx = start(veth.ns_b, "-i", f"netmap:{veth.b}/R", "-f", "rx", "-n", "3", "-X")
    try:
        wait_open(veth, rx)
        t = pktgen(
            veth.ns_a, "-i", f"netmap:{veth.a}-0/T", "-f", "tx", "-P", str(pcap), "-n", "3", "-X"
        )
        out, err = finish(rx)
    finally:
        rx.kill()
    assert t.returncode == 0 and rx.returncode == 0, (t.stderr, err)
    for text in (t.stdout, out):
        dumps = undump(text)
        assert len(dumps) == 3, text
        for head, data in dumps:
            assert head.endswith(f"flags 0x0000 len {len(frame):5d}]"), head
            assert data == frame


# -- drop counters -------------------------------------------------------------------------


def test_drop_counters_when_the_receiver_stalls(veth: VethPair) -> None:
    rx = start(veth.ns_b, "-i", f"netmap:{veth.b}", "-f", "rx", "-W", "-T", "300")
    try:
        wait_open(veth, rx)
        rx.send_signal(signal.SIGSTOP)  # the fill ring runs dry: the kernel drops and counts
        try:
            t = pktgen(
                veth.ns_a, "-i", f"netmap:{veth.a}-0/T", "-f", "tx", "-n", "6000", "-R", "30000"
            )
        finally:
            rx.send_signal(signal.SIGCONT)
        out, err = finish(rx)
    finally:
        rx.kill()
    assert t.returncode == 0, t.stderr
    assert rx.returncode == 0, err
    lines = out.splitlines()
    received = int(next(x for x in lines if x.startswith("Received")).split()[1])
    m = PKTGEN_FINAL2.match(next(x for x in lines if x.startswith("Speed")))
    assert m is not None and m.group(1) is not None, out
    dropped, ring_full, fill_empty = (int(g) for g in m.groups()[1:])
    assert dropped > 0 and fill_empty > 0
    # every frame the interface took is counted once: received, or dropped by the kernel
    assert received + dropped + ring_full == 6000, out
    periodic = [x for x in err.splitlines() if "main_thread" in x]
    assert periodic and all(PKTGEN_PERIODIC.match(x) for x in periodic), err
    in_lines = [PKTGEN_PERIODIC.match(x).group(2) for x in periodic]  # type: ignore[union-attr]
    assert sum(int(d) for d in in_lines if d is not None) == dropped, err


# -- failures ------------------------------------------------------------------------------


def test_a_queue_already_owned_exits_1(veth: VethPair) -> None:
    holder = start_port_holder(f"netmap:{veth.b}-0", veth.ns_b)
    try:
        r = pktgen(veth.ns_b, "-i", f"netmap:{veth.b}-0", "-f", "rx", "-W")
        # -p 2: one worker's queue is owned, the other sends: still exit 1
        hold_a = start_port_holder(f"netmap:{veth.a}-1", veth.ns_a)
        try:
            t = pktgen(veth.ns_a, "-i", f"netmap:{veth.a}/T", "-f", "tx", "-p", "2", "-n", "100")
        finally:
            hold_a.kill()
            hold_a.wait()
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 1, (r.stdout, r.stderr)
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(err) == 1 and f"{veth.b} queue 0" in err[0] and "busy" in err[0], r.stderr
    assert str(holder.pid) in err[0] or "another AF_XDP socket" in err[0]
    assert r.stdout.splitlines()[-1] == "Received nothing."
    assert t.returncode == 1, (t.stdout, t.stderr)
    assert "Traceback" not in t.stderr and f"{veth.a} queue 1" in t.stderr
    assert t.stdout.startswith("Sending on") and "Sent 50 packets" in t.stdout


class FailingWorker(Worker):
    def _tx(self, port: Any) -> None:
        raise ZeroDivisionError("the body failed")


class FailingRun(Run):
    worker_class = FailingWorker


def test_a_worker_that_raises_exits_1_with_one_line(veth: VethPair) -> None:
    out, err = io.StringIO(), io.StringIO()
    cfg = Config(port=f"netmap:{veth.a}/T", function="tx", count=10, netns=veth.ns_a, wait_link=0)
    assert FailingRun(cfg, out, err).run() == 1
    lines = [x for x in err.getvalue().splitlines() if "worker" in x]
    assert len(lines) == 1 and lines[0].endswith(
        f"netmap:{veth.a}/T: ZeroDivisionError: the body failed"
    ), err.getvalue()
    assert out.getvalue().splitlines()[-1] == "Sent nothing."
    assert not veth.xdp_attached("a")  # the port was closed


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(x) for x in (task / "children").read_text().split()]
    return out


def test_a_worker_process_killed_makes_the_run_fail(veth: VethPair) -> None:
    rx = start(veth.ns_b, "-i", f"netmap:{veth.b}", "-f", "rx", "-p", "2")
    try:
        wait_open(veth, rx)
        deadline = time.monotonic() + 10
        while len(kids := children(rx.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(kids) == 2, kids
        time.sleep(0.5)  # both ports open
        os.kill(kids[1], signal.SIGKILL)
        time.sleep(0.5)
        rx.send_signal(signal.SIGINT)
        out, err = finish(rx)
    finally:
        rx.kill()
    assert rx.returncode == 1, (out, err)
    assert re.search(rf"worker pid {kids[1]} ended with signal SIGKILL$", err, re.M), err
    assert out.splitlines()[-1] == "Received nothing."
