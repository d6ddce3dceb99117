"""Faults: process death, interface events and ring pressure on real veths.

Every case ends in a stated, checked state and nothing is left behind:

* SIGKILL of a port's owner (while it opens, transmits at full speed, or receives a
  flood), and of `vtnetmap bridge` (while it opens its NIC and host rings, and while it
  forwards a flood): within 1 s the peer's ping to the interface works again, no XDP
  program or host-ring helper is left, and the next ``open_port`` or bridge succeeds
  without any cleanup. SIGTERM and SIGINT stop pkt-gen cleanly, with its final lines.
* Link down: the port stays open; a txsync/poll with frames to push raises
  InterfaceChangedError ("interface down") and keeps them queued with the kernel; after
  link up they go out, once. The peer down (no carrier): the device drops what is sent,
  the ring counts it in ``tx_dropped`` and the buffers come back.
* MTU: lowering or raising the port's own MTU is harmless; the kernel refuses a peer MTU
  whose frames would not fit one buffer while the steering program is attached.
* Interface deleted (peer removed, the peer's namespace deleted): the next poll/sync fails
  within 2 s with InterfaceChangedError; close leaves no fd and no mapping (the UMEM is
  unmapped even while the application still holds the Port and its Ring objects).
  Our own namespace deleted: the port's sockets keep it alive and the port works; closing
  the port lets the kernel destroy it.
* Ring pressure: frames that find the FILL ring empty are counted by the kernel and
  ``sent = received + rx_dropped`` exactly; a TX ring kept full while the link is down,
  and completions the application has not reaped, are visible in ``Port.stats()``
  (``with_kernel``, ``waiting``) and recovered by the next txsync.

``check_invariant`` runs after every fault. Kill tests use child processes; every
namespace is removed by the fixtures.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import numpy as np
import pytest
from nettest import TEST_ETHERTYPE, VethPair, frame, peer_frames, put_tx, run

from vtnet_py import InterfaceChangedError, RingError, open_port
from vtnet_py._sys.netns import netns as enter_netns

pytestmark = pytest.mark.kernel

ETHERTYPE = TEST_ETHERTYPE

PACKET_OUTGOING = 4
PING_LIMIT_S = 1.0


# --- helpers -------------------------------------------------------------------------------


def receive(port, want: int, timeout: float = 3.0) -> list[bytes]:
    """Our test frames from every RX ring, released as they are read."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        port.poll(rx=True, timeout=0.1)
        for r in port.rx_rings:
            n = r.space()
            for i in r.slots_from_head(n):
                data = bytes(port.buf(int(r.slot["buf_idx"][i]))[: int(r.slot["len"][i])])
                if data[12:14] == ETHERTYPE:
                    got.append(data)
            r.head = r.cur = r.next(r.head, n)
    port.rxsync()
    return got


def fds() -> dict[int, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the fd of the listdir itself
    return out


def socket_maps() -> list[str]:
    """Mappings of socket files: the AF_XDP rings (FILL, COMPLETION, RX, TX)."""
    with open("/proc/self/maps") as f:
        return [line for line in f if "socket:[" in line]


def mapped(addr: int) -> bool:
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return True
    return False


def link_stats(ns: str, dev: str) -> dict[str, int]:
    import json

    j = json.loads(run("ip", "-n", ns, "-s", "-j", "link", "show", dev).stdout)[0]["stats64"]
    return {
        "rx": j["rx"]["packets"],
        "rx_dropped": j["rx"]["dropped"],
        "tx": j["tx"]["packets"],
        "tx_dropped": j["tx"]["dropped"],
    }


def ring_stats(port, kind: str, ring: int = 0) -> dict:
    return [d for d in port.stats()["rings"] if d["kind"] == kind][ring]


def ping_back_within(veth: VethPair, limit: float = PING_LIMIT_S) -> float:
    """Seconds until the peer's ping to a is answered; fails the test past ``limit``."""
    t0 = time.monotonic()
    while veth.sh_b(f"ping -c 1 -W 0.2 {veth.ip_a}", check=False).returncode != 0:
        assert time.monotonic() - t0 < limit, f"no ping answer within {limit} s"
    return time.monotonic() - t0


def assert_clean_reopen(veth: VethPair) -> None:
    """No XDP program is left, and a port opens and passes a frame without any cleanup."""
    assert not veth.xdp_attached("a"), "an XDP program survived its owner"
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        assert_receives(veth, port)
    assert not veth.xdp_attached("a")


def assert_receives(veth: VethPair, port, timeout: float = 5.0) -> None:
    """A marked frame sent to each queue arrives at ``port``. With a flood running some
    frames are dropped (FILL ring empty, counted), so the mark is sent again until it is
    seen; the rings are scanned with numpy (only frames of the mark's length are read)."""
    mark = frame(veth.mac("a"), veth.mac("b"), 7, 99)  # unlike any flood frame
    m = np.frombuffer(mark, np.uint8)
    for q in (0, 1):
        deadline = time.monotonic() + timeout
        seen = False
        while not seen:
            assert time.monotonic() < deadline, f"the port receives nothing on queue {q}"
            veth.send_on_queue([mark], q)
            t_end = time.monotonic() + 0.2
            while not seen and time.monotonic() < t_end:
                port.poll(rx=True, timeout=0.05)
                for r in port.rx_rings:
                    n = r.space()
                    idx = r.slots_from_head(n)
                    cand = r.slot["buf_idx"][idx][r.slot["len"][idx] == m.size]
                    if cand.size and (port.bufs[cand, : m.size] == m).all(axis=1).any():
                        seen = True
                    r.head = r.cur = r.next(r.head, n)
        port.check_invariant()


def child(script: str, *args: str, ns: str | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-c", textwrap.dedent(script), *args]
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    return subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_line(p: subprocess.Popen[str], prefix: str, timeout: float = 30.0) -> str:
    """The child's next stdout line starting with ``prefix`` (the child is killed if it
    does not come in time)."""
    assert p.stdout is not None
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=deadline - time.monotonic()):
                line = p.stdout.readline()
                if not line:
                    break
                if line.startswith(prefix):
                    return line
    finally:
        sel.close()
    p.kill()
    raise AssertionError(f"child said no {prefix!r}: {p.stderr.read() if p.stderr else ''}")


def kill9(p: subprocess.Popen[str]) -> str:
    """SIGKILL and reap; returns what the child printed meanwhile."""
    p.send_signal(signal.SIGKILL)
    out, _ = p.communicate(timeout=10)
    return out


# --- SIGKILL -------------------------------------------------------------------------------

OPENER = """
    import sys, time
    from vtnet_py import open_port
    import vtnet_py.netmap.port, vtnet_py.ebpf.steer, vtnet_py.device.netlink  # before READY
    print("READY", flush=True)
    sys.stdin.readline()
    t0 = time.monotonic()
    p = open_port(sys.argv[1], netns=sys.argv[2])
    print(f"OPEN {time.monotonic() - t0:.4f}", flush=True)
    time.sleep(60)
"""


def test_sigkill_at_random_points_of_open(veth: VethPair) -> None:
    """Kill the owner at random moments of open_port (before the program is attached,
    between attach and bind, after the queues are claimed): the interface always comes
    back within 1 s and the next open needs no cleanup."""
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    name = f"netmap:{veth.a}"
    # calibrate: how long an open takes in a fresh process (the first may compile)
    times = []
    for _ in range(2):
        p = child(OPENER, name, veth.ns_a)
        read_line(p, "READY")
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
        times.append(float(read_line(p, "OPEN").split()[1]))
        kill9(p)
        ping_back_within(veth)
    t_open = times[-1]
    rounds, landed_after_open, slowest = 10, 0, 0.0
    for _ in range(rounds):
        p = child(OPENER, name, veth.ns_a)
        read_line(p, "READY")
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
        time.sleep(rng.uniform(0.0, 1.2 * t_open))
        out = kill9(p)
        landed_after_open += "OPEN" in out
        slowest = max(slowest, ping_back_within(veth))
        assert not veth.xdp_attached("a")
    assert_clean_reopen(veth)
    print(
        f"\nkill -9 during open: {rounds} kills over 0..{1.2 * t_open * 1000:.0f} ms "
        f"({landed_after_open} after the open completed); slowest ping back "
        f"{slowest * 1000:.0f} ms"
    )


TX_LOAD = """
    import sys
    import numpy as np
    from vtnet_py import open_port
    p = open_port(sys.argv[1], netns=sys.argv[2])
    f = np.frombuffer(bytes.fromhex(sys.argv[3]), np.uint8)
    for r in p.tx_rings:  # every buffer of the TX rings carries the frame, once
        p.bufs[r.slot["buf_idx"], : f.size] = f
        r.slot["len"][:] = f.size
    sent, said = 0, False
    while True:
        for r in p.tx_rings:
            n = r.space()
            r.head = r.cur = r.next(r.head, n)
            sent += n
        p.poll(rx=False, tx=True, timeout=0.1)
        if not said and sent > 20000:
            print("TX", sent, flush=True)
            said = True
"""


def test_sigkill_during_heavy_tx(veth: VethPair) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    f = frame(veth.mac("b"), veth.mac("a"), 1, 60).hex()
    for _ in range(3):
        before = link_stats(veth.ns_b, veth.b)["rx"]
        p = child(TX_LOAD, f"netmap:{veth.a}", veth.ns_a, f)
        read_line(p, "TX")
        time.sleep(rng.uniform(0.0, 0.3))
        kill9(p)
        ping_back_within(veth)
        assert link_stats(veth.ns_b, veth.b)["rx"] - before > 20000  # it was transmitting
        assert not veth.xdp_attached("a")
    assert_clean_reopen(veth)


RX_LOAD = """
    import sys
    from vtnet_py import open_port
    p = open_port(sys.argv[1], netns=sys.argv[2])
    got, said = 0, False
    print("OPEN", flush=True)
    while True:
        p.poll(rx=True, timeout=0.1)
        for r in p.rx_rings:
            n = r.space()
            got += n
            r.head = r.cur = r.next(r.head, n)
        if not said and got >= 2000:
            print("RX", got, flush=True)
            said = True
"""

FLOOD = """
    import socket, sys, time
    from vtnet_py._sys.netns import netns
    with netns(sys.argv[1]):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        s.bind((sys.argv[2], 0))
    f = bytes.fromhex(sys.argv[3])
    while True:
        for _ in range(256):
            try:
                s.send(f)
            except OSError:
                pass
        time.sleep(0.0005)
"""


class Flood:
    """Frames from b to a, as fast as a Python sender manages, until stopped."""

    def __init__(self, veth: VethPair):
        f = frame(veth.mac("a"), veth.mac("b"), 3, 60).hex()
        self.p = child(FLOOD, veth.ns_b, veth.b, f)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.communicate(timeout=10)


@pytest.fixture
def flood(veth: VethPair) -> Iterator[Flood]:
    fl = Flood(veth)
    try:
        yield fl
    finally:
        fl.stop()


def test_sigkill_during_rx(veth: VethPair, flood: Flood) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    for _ in range(3):
        p = child(RX_LOAD, f"netmap:{veth.a}", veth.ns_a)
        read_line(p, "RX")
        time.sleep(rng.uniform(0.0, 0.3))
        kill9(p)
        ping_back_within(veth)  # with the flood still running
        assert not veth.xdp_attached("a")
    flood.stop()  # a Python receiver under a flood drops most frames (counted)
    assert_clean_reopen(veth)


def test_sigkill_of_a_port_on_a_pinned_program(veth: VethPair, flood: Flood) -> None:
    """After `vtnetmap attach` the program stays attached on purpose when a port's owner
    dies; its queues still go back to the kernel at once (the socket leaves the XSKMAP
    with the process), the next port joins the program, and detach removes it."""
    from vtnet_py.admin.attach import attach, detach

    attach(veth.a, netns=veth.ns_a)
    try:
        for _ in range(2):
            p = child(RX_LOAD, f"netmap:{veth.a}", veth.ns_a)
            read_line(p, "RX")
            kill9(p)
            ping_back_within(veth)
            assert veth.xdp_attached("a")  # pinned: stays, but steers nothing now
        flood.stop()
        assert_clean_reopen_pinned(veth)
    finally:
        detach(veth.a, netns=veth.ns_a)
    assert not veth.xdp_attached("a")


def assert_clean_reopen_pinned(veth: VethPair) -> None:
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        assert_receives(veth, port)


def helpers_in(veth: VethPair) -> list[str]:
    """Host-ring helper devices (vtnmh*) in a's namespace."""
    with enter_netns(veth.ns_a):
        return [n for _, n in socket.if_nameindex() if n.startswith("vtnmh")]


class Bridge:
    """`vtnetmap bridge -i netmap:A` (NIC rings <-> host rings of A) in A's namespace."""

    def __init__(self, veth: VethPair):
        import threading

        self.p = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                veth.ns_a,
                sys.executable,
                "-m",
                "vtnetmap_cli",
                "bridge",
                "-w",
                "0",
                "-T",
                "0",
                "-i",
                f"netmap:{veth.a}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.t0 = time.monotonic()
        self.lines: list[str] = []
        self.ready_at: float | None = None
        self.opening_at: float | None = None  # "endpoint 0 goes to host": ports open next
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            if "Ready to go" in line and self.ready_at is None:
                self.ready_at = time.monotonic() - self.t0
            if "goes to host" in line and self.opening_at is None:
                self.opening_at = time.monotonic() - self.t0
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 30.0, opening: bool = False) -> float:
        deadline = time.monotonic() + timeout
        while (self.opening_at if opening else self.ready_at) is None:
            assert self.p.poll() is None and time.monotonic() < deadline, self.lines
            time.sleep(0.002)
        return self.opening_at if opening else self.ready_at  # type: ignore[return-value]

    def stop(self, sig: int) -> int:
        self.p.send_signal(sig)
        rc = self.p.wait(timeout=10)
        self._reader.join(2)
        return rc


def test_sigkill_of_the_bridge_at_random_points(veth: VethPair, flood: Flood) -> None:
    """`vtnetmap bridge` between A's NIC and host rings, killed while it starts (host-ring
    helper, TC and XDP programs half made) and while frames flow through it: the
    interface answers pings within 1 s, no program and no helper device is left, and the
    bridge starts again without any cleanup."""
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    for _ in range(2):  # the second start-up is the typical one (the first may compile)
        br = Bridge(veth)
        t_ready = br.wait_ready()
        assert br.opening_at is not None
        t_open = t_ready - br.opening_at
        assert veth.sh_b(f"ping -c 2 -i 0.2 -W 1 {veth.ip_a}", check=False).returncode == 0
        assert br.stop(signal.SIGTERM) == 0
    kills = []
    for rnd in range(6):
        br = Bridge(veth)
        if rnd < 3:  # while it opens its ports
            br.wait_ready(opening=True)
            time.sleep(rng.uniform(0.0, 0.9 * t_open))
        else:  # forwarding the flood
            br.wait_ready()
            time.sleep(rng.uniform(0.0, 0.5))
        kills.append(br.ready_at is not None)
        br.stop(signal.SIGKILL)
        ping_back_within(veth)
        assert not veth.xdp_attached("a")
        deadline = time.monotonic() + 3.0  # the helper dies with its private namespace
        while helpers_in(veth):
            assert time.monotonic() < deadline, helpers_in(veth)
            time.sleep(0.02)
    flood.stop()
    br = Bridge(veth)  # again, without cleanup
    br.wait_ready()
    assert veth.sh_b(f"ping -c 2 -i 0.2 -W 1 {veth.ip_a}", check=False).returncode == 0
    assert br.stop(signal.SIGTERM) == 0
    assert any("-->" in ln and "packets" in ln for ln in br.lines), br.lines
    assert not veth.xdp_attached("a") and not helpers_in(veth)
    print(
        f"\nkill -9 of bridge: {len(kills)} kills ({kills.count(False)} during start-up, "
        f"opening its ports takes {t_open * 1000:.0f} ms), interface back within 1 s "
        f"each time"
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_pkt_gen_stops_cleanly_on_a_signal_with_final_statistics(veth: VethPair, sig: int) -> None:
    """A receiving and a sending pkt-gen (the long-running commands besides the bridge,
    whose signals tests/kernel/test_bridge.py covers) stop on the signal, exit 0 and print their
    final lines; the counts agree with each other and nothing stays attached."""
    from vtnetmap_cli.main import main as cli_main

    if "pkt-gen" not in cli_main.commands:
        pytest.skip("`vtnetmap pkt-gen` is not registered")
    cmd = [sys.executable, "-m", "vtnetmap_cli", "pkt-gen", "-w", "0"]
    rx = subprocess.Popen(
        [*cmd, "--netns", veth.ns_b, "-i", f"netmap:{veth.b}", "-f", "rx"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tx = None
    try:
        deadline = time.monotonic() + 30
        while not veth.xdp_attached("b"):
            assert rx.poll() is None and time.monotonic() < deadline, rx.stderr
            time.sleep(0.05)
        tx = subprocess.Popen(
            [
                *cmd,
                "--netns",
                veth.ns_a,
                "-i",
                f"netmap:{veth.a}/T",
                "-f",
                "tx",
                "-R",
                "5000",
                "-D",
                veth.mac("b").hex(":"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2.0)
        tx.send_signal(sig)
        tx_out, tx_err = tx.communicate(timeout=15)
        time.sleep(0.3)
        rx.send_signal(sig)
        rx_out, rx_err = rx.communicate(timeout=15)
    finally:
        for p in (rx, tx):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
    assert tx.returncode == 0 and rx.returncode == 0, (tx_err, rx_err)
    assert "Traceback" not in tx_err + rx_err
    sent = [ln for ln in tx_out.splitlines() if ln.startswith("Sent ")]
    got = [ln for ln in rx_out.splitlines() if ln.startswith("Received ")]
    assert len(sent) == 1 and len(got) == 1, (tx_out, rx_out)
    n_sent, n_got = int(sent[0].split()[1]), int(got[0].split()[1])
    # paced at 5 kpps the receiver keeps up unless the machine is very busy; pkt-gen
    # prints no drop counters, so allow a few drops, never more received than sent
    assert n_sent > 5000 and 0.95 * n_sent <= n_got <= n_sent, (sent, got)
    assert not veth.xdp_attached("a") and not veth.xdp_attached("b")


# --- interface events ------------------------------------------------------------------------


def test_link_down_keeps_frames_queued_and_link_up_sends_them_once(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    s = veth.raw_socket("b")
    with open_port(f"netmap:{veth.a}-0", netns=veth.ns_a) as port:
        tx = port.tx_rings[0]
        run("ip", "-n", veth.ns_a, "link", "set", veth.a, "down")
        t0 = time.monotonic()
        assert port.poll(rx=True, timeout=0.3) == 0  # nothing to push: just no frames
        assert time.monotonic() - t0 < 1.0
        sent = [frame(mac_b, mac_a, 100 + i) for i in range(5)]
        put_tx(port, tx, sent)
        with pytest.raises(InterfaceChangedError, match=f"{veth.a} queue 0: .*down"):
            port.txsync()
        with pytest.raises(InterfaceChangedError, match="down"):
            port.poll(rx=False, tx=True, timeout=1.0)  # fails at once, does not wait
        st = ring_stats(port, "tx")
        assert st["with_kernel"] == 5 and st["waiting"] == 0 and st["tx_dropped"] == 0
        assert port.check_invariant()["kernel_tx"] == 5
        run("ip", "-n", veth.ns_a, "link", "set", veth.a, "up")
        deadline = time.monotonic() + 3
        while tx.tx_pending() and time.monotonic() < deadline:
            try:
                port.txsync()
            except InterfaceChangedError:  # carrier comes back a moment after "up"
                time.sleep(0.05)
        assert peer_frames(s, 6, 1.0) == sent  # all five, once, in order
        assert ring_stats(port, "tx")["with_kernel"] == 0
        # and receiving works again
        veth.send_on_queue([frame(mac_a, mac_b, 200 + i) for i in range(3)], 0)
        assert len(receive(port, 3)) == 3
        port.check_invariant()
    s.close()


def test_peer_down_drops_are_counted_and_buffers_return(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}-0/T@conf:slots=64", netns=veth.ns_a) as port:
        tx = port.tx_rings[0]
        run("ip", "-n", veth.ns_b, "link", "set", veth.b, "down")  # a loses its carrier
        before = link_stats(veth.ns_a, veth.a)
        put_tx(port, tx, [frame(mac_b, mac_a, i) for i in range(20)])
        assert port.txsync() == 20
        port.txsync()
        after = link_stats(veth.ns_a, veth.a)
        st = ring_stats(port, "tx")
        # sent = delivered + dropped, on both counters
        assert st["frames"] == 20 and st["tx_dropped"] == 20
        assert after["tx_dropped"] - before["tx_dropped"] == 20 and after["tx"] == before["tx"]
        assert tx.space() == tx.num_slots - 1 and st["with_kernel"] == 0
        port.check_invariant()
        run("ip", "-n", veth.ns_b, "link", "set", veth.b, "up")
        s = veth.raw_socket("b")
        deadline = time.monotonic() + 3
        sent = [frame(mac_b, mac_a, 50 + i) for i in range(5)]
        while (
            time.monotonic() < deadline
            and "LOWER_UP" not in run("ip", "-n", veth.ns_a, "link", "show", veth.a).stdout
        ):
            time.sleep(0.02)
        put_tx(port, tx, sent)
        port.txsync()
        assert peer_frames(s, 5, 2.0) == sent
        assert ring_stats(port, "tx")["tx_dropped"] == 20
        port.check_invariant()
        s.close()


def test_mtu_changes_while_open(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}-0", netns=veth.ns_a) as port:
        assert not port.frags
        buf = port.rx_rings[0].nr_buf_size
        for mtu in (1280, 1500, 9000):  # the port's own MTU: nothing changes for it
            run("ip", "-n", veth.ns_a, "link", "set", veth.a, "mtu", str(mtu))
            veth.send_on_queue([frame(mac_a, mac_b, mtu, 200)], 0)
            assert len(receive(port, 1)) == 1
        # a peer MTU whose frames would not fit one buffer is refused by the kernel while
        # our (single-buffer) program is attached, so no frame can arrive cut
        r = run("ip", "-n", veth.ns_b, "link", "set", veth.b, "mtu", "9000", check=False)
        assert r.returncode != 0 and "mtu" in r.stderr.lower()
        out = run("ip", "-n", veth.ns_b, "-d", "link", "show", veth.b).stdout
        max_mtu = int(out.split("maxmtu ")[1].split()[0])
        assert max_mtu + 14 <= buf
        run("ip", "-n", veth.ns_b, "link", "set", veth.b, "mtu", str(max_mtu))
        big = frame(mac_a, mac_b, 9, max_mtu + 14)
        veth.send_on_queue([big], 0)
        assert receive(port, 1) == [big]  # the largest possible frame, whole
        port.check_invariant()
        assert ring_stats(port, "rx")["kernel"]["rx_dropped"] == 0


def test_peer_removed_during_tx_and_rx_leaves_no_fd_or_mapping(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    fds0, maps0 = fds(), socket_maps()
    port = open_port(f"netmap:{veth.a}", netns=veth.ns_a)
    umem = port.memory.umem.addr
    assert mapped(umem) and len(socket_maps()) > len(maps0)
    veth.send_on_queue([frame(mac_a, mac_b, i) for i in range(4)], 0)
    deadline = time.monotonic() + 3
    while port.rx_rings[0].space() < 4 and time.monotonic() < deadline:
        port.poll(rx=True, timeout=0.1)  # frames held in RX slots, not released
    put_tx(port, port.tx_rings[1], [frame(mac_b, mac_a, 10 + i) for i in range(8)])
    veth.sh_b(f"ip link del {veth.b}")
    t0 = time.monotonic()
    with pytest.raises(InterfaceChangedError, match=veth.a):
        for _ in range(50):  # the first sync may still succeed; a poll must fail soon
            port.txsync()
            port.poll(rx=True, timeout=0.2)
    assert time.monotonic() - t0 < 2.0
    for op in (port.rxsync, port.txsync, lambda: port.poll(rx=True, timeout=5.0)):
        t0 = time.monotonic()
        with pytest.raises(InterfaceChangedError):
            op()
        assert time.monotonic() - t0 < 0.5  # failed ports fail fast
    port.check_invariant()  # every buffer still accounted for
    rings = port.rx_rings + port.tx_rings  # the application keeps its Ring objects
    port.close()
    gc.collect()
    assert fds() == fds0
    assert socket_maps() == maps0
    assert not mapped(umem), "the UMEM stays mapped after close"
    assert rings  # (kept alive on purpose until here)


def test_own_namespace_deleted_while_open(veth: VethPair) -> None:
    """`ip netns del` only removes the name: the port's sockets keep the namespace (and
    the veth) alive and the port works; after close the kernel tears it down."""
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    s = veth.raw_socket("b")
    port = open_port(f"netmap:{veth.a}", netns=veth.ns_a)
    try:
        run("ip", "netns", "del", veth.ns_a)
        veth.send_on_queue([frame(mac_a, mac_b, 1)], 0)
        assert len(receive(port, 1)) == 1
        put_tx(port, port.tx_rings[0], [frame(mac_b, mac_a, 2)])
        port.txsync()
        assert len(peer_frames(s, 1, 2.0)) == 1
        port.check_invariant()
    finally:
        port.close()
    del port
    gc.collect()
    deadline = time.monotonic() + 5
    while run("ip", "-n", veth.ns_b, "link", "show", veth.b, check=False).returncode == 0:
        assert time.monotonic() < deadline, "the deleted namespace outlived the port"
        time.sleep(0.05)
    s.close()


def test_peer_namespace_deleted_fails_the_next_poll(veth: VethPair) -> None:
    fds0 = fds()
    port = open_port(f"netmap:{veth.a}", netns=veth.ns_a)
    try:
        run("ip", "netns", "del", veth.ns_b)  # destroys b, and with it a
        t0 = time.monotonic()
        with pytest.raises(InterfaceChangedError, match="went away|gone"):
            port.poll(rx=True, timeout=5.0)
        assert time.monotonic() - t0 < 2.0
        port.check_invariant()
    finally:
        port.close()
    assert fds() == fds0
    with enter_netns(veth.ns_a):
        assert socket.if_nameindex() == [(1, "lo")]


# --- ring pressure ---------------------------------------------------------------------------


def test_fill_ring_empty_drops_are_counted_and_everything_is_accounted(veth: VethPair) -> None:
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}-0@conf:slots=64", netns=veth.ns_a) as port:
        rx = port.rx_rings[0]
        sent = 200
        veth.send_on_queue([frame(mac_a, mac_b, i, 100) for i in range(sent)], 0)
        time.sleep(0.2)
        port.rxsync()
        st = ring_stats(port, "rx")
        k = st["kernel"]
        # the application holds every slot it can (num_slots - 1); the kernel filled its
        # last FILL buffer, which waits on the RX ring; the rest found FILL empty
        assert rx.space() == rx.num_slots - 1 and st["waiting"] == 1
        assert k["rx_fill_ring_empty_descs"] == k["rx_dropped"] > 0
        assert rx.space() + st["waiting"] + k["rx_dropped"] == sent
        assert port.check_invariant()["kernel_rx"] == 1
        got = rx.space()
        rx.head = rx.cur = rx.tail
        port.rxsync()  # release: the waiting frame comes in
        got += rx.space()
        rx.head = rx.cur = rx.tail
        port.rxsync()
        assert got + k["rx_dropped"] == sent
        # recovered: the next frames all arrive, nothing more is dropped
        veth.send_on_queue([frame(mac_a, mac_b, 1000 + i, 100) for i in range(40)], 0)
        assert len(receive(port, 40)) == 40
        assert ring_stats(port, "rx")["kernel"]["rx_dropped"] == k["rx_dropped"]
        port.check_invariant()


def test_full_tx_ring_and_unreaped_completions_are_reported_and_recovered(veth: VethPair) -> None:
    """The link down keeps a full TX ring with the kernel; after link up the kernel is
    made to complete everything without a txsync (as a zero-copy driver completes on its
    own), so the completions wait unreaped until the next txsync takes them."""
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    s = veth.raw_socket("b")
    with open_port(f"netmap:{veth.a}-0/T@conf:slots=64", netns=veth.ns_a) as port:
        tx = port.tx_rings[0]
        n = tx.num_slots - 1
        run("ip", "-n", veth.ns_a, "link", "set", veth.a, "down")
        sent = [frame(mac_b, mac_a, i) for i in range(n)]
        put_tx(port, tx, sent)
        with pytest.raises(InterfaceChangedError, match="down"):
            port.txsync()
        assert tx.space() == 0 and tx.tx_pending()
        st = ring_stats(port, "tx")
        assert st["with_kernel"] == n and st["waiting"] == 0
        # a full ring has no slot to give: moving head past tail is refused, nothing moves
        tx.head = tx.cur = tx.next(tx.tail)
        with pytest.raises(RingError, match="outside"):
            port.txsync()
        assert tx.head == tx.cur == tx.hwcur and tx.space() == 0
        assert port.check_invariant()["kernel_tx"] == n
        run("ip", "-n", veth.ns_a, "link", "set", veth.a, "up")
        deadline = time.monotonic() + 3
        while tx._xsk.tx.pending() and time.monotonic() < deadline:
            tx._xsk.kick_tx()  # the kernel sends and completes, nobody reaps
            time.sleep(0.01)
        st = ring_stats(port, "tx")
        assert st["waiting"] == n and st["with_kernel"] == n and tx.space() == 0
        assert port.check_invariant()["kernel_tx"] == n  # completed, still the kernel's
        port.txsync()
        st = ring_stats(port, "tx")
        assert st["waiting"] == 0 and st["with_kernel"] == 0 and tx.space() == n
        assert peer_frames(s, n + 1, 2.0) == sent
        port.check_invariant()
    s.close()


def test_tx_at_full_speed_on_a_small_ring_accounts_every_frame(veth: VethPair) -> None:
    with open_port(f"netmap:{veth.a}-0/T@conf:slots=64", netns=veth.ns_a) as port:
        tx = port.tx_rings[0]
        f = np.frombuffer(frame(veth.mac("b"), veth.mac("a"), 0, 60), np.uint8)
        port.bufs[tx.slot["buf_idx"], : f.size] = f
        tx.slot["len"][:] = f.size
        before_a, before_b = link_stats(veth.ns_a, veth.a), link_stats(veth.ns_b, veth.b)
        sent, waits, t0 = 0, 0, time.monotonic()
        while time.monotonic() - t0 < 1.5:
            n = tx.space()
            if n == 0:  # full: wait for room the netmap way
                waits += 1
                port.poll(rx=False, tx=True, timeout=1.0)
                continue
            tx.head = tx.cur = tx.next(tx.head, n)
            sent += n
            port.txsync()
        while tx.tx_pending():
            port.poll(rx=False, tx=True, timeout=1.0)
        elapsed = time.monotonic() - t0
        st = ring_stats(port, "tx")
        a, b = link_stats(veth.ns_a, veth.a), link_stats(veth.ns_b, veth.b)
        assert st["frames"] == sent
        assert sent == (a["tx"] - before_a["tx"]) + st["tx_dropped"]
        assert a["tx"] - before_a["tx"] == b["rx"] - before_b["rx"]
        port.check_invariant()
        print(
            f"\nTX full speed, 64 slots: {sent} frames in {elapsed:.2f} s "
            f"({sent / elapsed / 1e3:.0f} kpps), {st['tx_dropped']} dropped, "
            f"{waits} waits on a full ring, all accounted"
        )
