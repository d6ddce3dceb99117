"""The seed's Test 3 on a real virtio_net NIC (main profile): `vtnetmap attach eth0`
(offloads off), then `vtnetmap bridge -i netmap:eth0` between eth0's NIC rings and its
host rings, so every frame between the wire and the guest's stack crosses the bridge.
The host pings the guest and holds TCP conversations (nc on the host) in both
directions; the bridge's own counters prove the traffic went through it. Stopping the
bridge gives normal networking back."""

from __future__ import annotations

import errno
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import guestlib
import pytest
from click.testing import CliRunner, Result
from vtnetmap_cli.main import main as vtnetmap_main

from vtnet_py.admin.status import status

VTNETMAP = str(Path(sys.executable).with_name("vtnetmap"))
PINGS = 5
LINES = 8000  # ~60-90 KB each way: many segments, several TCP windows


def cli(*args: str) -> Result:
    """`vtnetmap ARGS` in this process (the click command the entry point runs)."""
    return CliRunner().invoke(vtnetmap_main, list(args), catch_exceptions=False)


def seq_text(n: int) -> bytes:
    """What `seq 1 N` prints."""
    return "".join(f"{i}\n" for i in range(1, n + 1)).encode()


def guest_text(n: int, tag: str) -> bytes:
    return "".join(f"{tag}-guest-{i:06d}\n" for i in range(n)).encode()


def recv_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def tcp_host_to_guest(link: guestlib.HostLink, port: int, lines: int, tag: str) -> None:
    """The host connects (nc) and sends `seq 1 LINES`; the guest answers with its own
    text once the host has finished sending. Both sides must get the other's bytes."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((guestlib.GUEST_IP, port))
    srv.listen(1)
    srv.settimeout(60)
    got: list[bytes] = []
    reply = guest_text(lines, tag)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(60)
            got.append(recv_all(conn))
            conn.sendall(reply)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        r = link.run(
            ["sh", "-c", f"seq 1 {lines} | nc -N -w 30 {guestlib.GUEST_IP} {port}"], timeout=90
        )
        t.join(30)
    finally:
        srv.close()
    assert r.returncode == 0, r.stderr
    assert got and got[0] == seq_text(lines), "the guest did not get the host's bytes"
    assert r.stdout.encode() == reply, "the host did not get the guest's bytes"


def tcp_guest_to_host(link: guestlib.HostLink, port: int, lines: int, tag: str) -> None:
    """nc listens on the host and sends `seq 1 LINES`; the guest connects and sends its
    own text. Both sides must get the other's bytes."""
    h = link.spawn(["sh", "-c", f"seq 1 {lines} | nc -N -l {guestlib.HOST_IP} {port}"])
    payload = guest_text(lines, tag)
    end = time.monotonic() + 30
    while True:  # until nc listens (before, the host's stack answers with a reset)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(30)
        try:
            s.connect((guestlib.HOST_IP, port))
            break
        except OSError as exc:
            s.close()
            if exc.errno != errno.ECONNREFUSED or time.monotonic() > end:
                link.signal(h, signal.SIGKILL)
                link.wait(h, timeout=10)
                raise
            time.sleep(0.1)
    with s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = recv_all(s)
    r = link.wait(h, timeout=60)
    assert r.returncode == 0, r.stderr
    assert got == seq_text(lines), "the guest did not get the host's bytes"
    assert r.stdout.encode() == payload, "the host did not get the guest's bytes"


def host_ping(link: guestlib.HostLink, count: int) -> subprocess.CompletedProcess[str]:
    return link.run(
        ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "3", guestlib.GUEST_IP], timeout=30
    )


class Bridge:
    """`vtnetmap bridge` as a user runs it; its stderr is collected as it comes."""

    def __init__(self, iface: str) -> None:
        self.proc = subprocess.Popen(
            [VTNETMAP, "bridge", "-w", "0", "-i", f"netmap:{iface}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for ln in self.proc.stderr:
            self.lines.append(ln.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not any("Ready to go" in ln for ln in self.lines):
            assert self.proc.poll() is None, (
                f"bridge exited rc={self.proc.returncode}:\n{self.text()}"
            )
            assert time.monotonic() < end, f"bridge not ready after {timeout}s:\n{self.text()}"
            time.sleep(0.1)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._t.join(10)
        return self.proc.returncode

    def counts(self) -> dict[str, int]:
        """Packets per direction from the bridge's closing summary."""
        out = {}
        for ln in self.lines:
            m = re.search(r"\S+:(host|nic) --> \S+:(host|nic): (\d+) packets", ln)
            if m:
                out[f"{m.group(1)}->{m.group(2)}"] = int(m.group(3))
        return out


@pytest.fixture
def attached(iface: str, restore_iface: str) -> Iterator[dict[str, str]]:
    """`vtnetmap attach IF` (offloads off), `vtnetmap detach IF` afterwards; yields the
    offloads as they were before."""
    before = guestlib.features(iface)
    r = cli("attach", iface)
    assert r.exit_code == 0, r.stdout + r.stderr
    try:
        yield before
    finally:
        d = cli("detach", iface)
    assert d.exit_code == 0, d.stdout + d.stderr
    assert guestlib.features(iface) == before


def test_seed3_bridge_nic_and_host_rings(
    iface: str, attached: dict[str, str], host_link: guestlib.HostLink
) -> None:
    feats = guestlib.features(iface)
    assert feats["tcp-segmentation-offload"] == "off" and feats["rx-gro-hw"] == "off"
    t0 = time.monotonic()
    br = Bridge(iface)
    try:
        br.wait_ready(timeout=150)  # a first run compiles the host rings' TC programs
        print(f"bridge ready after {time.monotonic() - t0:.1f}s")
        # The bridge owns every RX queue: the stack sees only what the bridge hands it.
        nq = len(
            [
                q
                for q in Path(f"/sys/class/net/{iface}/queues").iterdir()
                if q.name.startswith("rx-")
            ]
        )
        owners = {q["owner_pid"] for q in status(iface)["interfaces"][0]["queues"][:nq]}
        assert owners == {br.proc.pid}, (owners, br.proc.pid)

        p = host_ping(host_link, PINGS)
        assert p.returncode == 0 and f"{PINGS} received" in p.stdout, p.stdout + p.stderr
        tcp_host_to_guest(host_link, 5001, LINES, "bridged")
        tcp_guest_to_host(host_link, 5002, LINES, "bridged")
        print(f"ping and TCP both ways through the bridge done at {time.monotonic() - t0:.1f}s")
        assert br.proc.poll() is None, br.text()
    finally:
        rc = br.stop()
    assert rc == 0, br.text()
    print(f"bridge stopped at {time.monotonic() - t0:.1f}s")
    counts = br.counts()
    # Everything the host sent crossed NIC RX -> host TX, and the guest's answers host RX
    # -> NIC TX: pings plus two TCP conversations of ~LINES/10 segments each way at least.
    assert counts.get("nic->host", 0) >= PINGS + 20, (counts, br.text())
    assert counts.get("host->nic", 0) >= PINGS + 20, (counts, br.text())

    # Bridge gone: the stack has its queues back at once (the program stays pinned).
    p = host_ping(host_link, 3)
    assert p.returncode == 0 and "3 received" in p.stdout, p.stdout + p.stderr
    tcp_host_to_guest(host_link, 5003, 200, "after")
    tcp_guest_to_host(host_link, 5004, 200, "after")
    assert not [
        ln
        for ln in guestlib.run(["ip", "-br", "link"]).stdout.splitlines()
        if ln.startswith("vtnmh")
    ], "the host rings' helper interface is left"


def test_after_detach_offloads_are_back(iface: str, host_link: guestlib.HostLink) -> None:
    """Runs after the bridge scenario: detach put back what attach turned off, and the
    guest's networking works on the plain device."""
    feats = guestlib.features(iface)
    assert feats["tcp-segmentation-offload"] == "on" and feats["rx-gro-hw"] == "on", feats
    assert guestlib.xdp_mode(iface) == 0
    p = host_ping(host_link, 2)
    assert p.returncode == 0, p.stdout + p.stderr
    tcp_host_to_guest(host_link, 5005, 200, "plain")
