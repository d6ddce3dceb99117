"""Soak: full-speed netmap traffic next to kernel traffic, for a bounded time.

On a 2-queue veth pair, queue 0 belongs to netmap on both ends and queue 1 to the kernel
(XPS sends all of the stacks' traffic through queue 1):

* a sender process transmits numbered frames on ``netmap:A-0/T`` as fast as it can;
* a receiver process takes them from ``netmap:B-0/R``, checks that the numbers only
  increase (no duplicate, no reordering) and counts the gaps;
* meanwhile a TCP transfer (A -> B, SHA-256 checked) and a ping run through the kernel's
  queue 1, which must see none of the netmap load (0 % ping loss, the digest matches).

At the end every frame is accounted for: sent = received + the drops the kernel and the
library counted (sender: tx_dropped; receiver: AF_XDP rx_dropped + rx_ring_full), the
gaps in the numbers equal those drops, both processes' fd counts are constant and their
RSS flat after warm-up, and the invariant holds in both.

The bridge soak runs vtnetmap's bridge between A's NIC rings and its host rings (every
frame between the wire and A's stack passes through it) while the peer floods A at full
speed from a netmap port and runs a TCP transfer and a ping to A's stack. Every frame is
followed through: peer TX = A's XDP = NIC RX + counted RX drops = bridged to the host TX
ring = injected into the stack (TC counter) + counted drops, and back: the stack's
egress (TC counter) = host RX + drops = bridged = NIC TX = what the peer received.

The short versions (15 s each) are in the default run; the long ones are marked ``slow``
(see conftest.py for how to run them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from nettest import VethPair, run

pytestmark = pytest.mark.kernel

RSS_SLACK_KB = 4096
WARMUP_S = 3.0
SHORT_S = 15.0

COMMON = """
    import json, os, signal, sys, time
    import numpy as np
    from vtnet_py import open_port
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    def usage():
        with open("/proc/self/status") as f:
            rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
        return [time.monotonic(), len(os.listdir("/proc/self/fd")), rss]
"""

SENDER = (
    COMMON
    + """
    port = open_port(sys.argv[1], netns=sys.argv[2] or None)
    tx = port.tx_rings[0]
    frame = np.frombuffer(bytes.fromhex(sys.argv[3]), np.uint8)
    port.bufs[tx.slot["buf_idx"], : frame.size] = frame
    tx.slot["len"][:] = frame.size
    seq, samples, next_sample, t0 = 0, [], 0.0, time.monotonic()
    print("READY", flush=True)
    while not stop:
        n = tx.space()
        if n:
            idx = tx.slots_from_head(n)
            seqs = np.arange(seq, seq + n, dtype="<u8")
            port.bufs[tx.slot["buf_idx"][idx], 14:22] = seqs.view(np.uint8).reshape(n, 8)
            tx.head = tx.cur = tx.next(tx.head, n)
            seq += n
        port.poll(rx=False, tx=True, timeout=0.5)
        if time.monotonic() >= next_sample:
            samples.append(usage())
            next_sample = time.monotonic() + 1.0
    while tx.tx_pending():
        port.poll(rx=False, tx=True, timeout=1.0)
    elapsed = time.monotonic() - t0
    inv = port.check_invariant()
    st = port.stats()["rings"][0]
    print(json.dumps({"sent": seq, "frames": st["frames"], "tx_dropped": st["tx_dropped"],
                      "kernel": st["kernel"], "seconds": elapsed, "samples": samples,
                      "invariant": inv}), flush=True)
    port.close()
"""
)

RECEIVER = (
    COMMON
    + """
    port = open_port(sys.argv[1], netns=sys.argv[2] or None)
    rx = port.rx_rings[0]
    got = gaps = disorder = other = 0
    last = -1
    samples, next_sample, quiet_since = [], 0.0, None
    print("READY", flush=True)
    while True:
        if port.poll(rx=True, timeout=0.1):
            quiet_since = None
            n = rx.space()
            idx = rx.slots_from_head(n)
            bufs = rx.slot["buf_idx"][idx]
            mine = (port.bufs[bufs, 12] == 0x88) & (port.bufs[bufs, 13] == 0xB5)
            seqs = port.bufs[bufs[mine], 14:22].copy().view("<u8").ravel().astype(np.int64)
            other += int(n - seqs.size)
            if seqs.size:
                d = np.diff(np.concatenate(([last], seqs)))
                disorder += int((d <= 0).sum())
                gaps += int((d[d > 1] - 1).sum())
                last = int(seqs[-1])
                got += int(seqs.size)
            rx.head = rx.cur = rx.next(rx.head, n)
        elif stop:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 0.5:  # the sender is gone, nothing left
                break
        if time.monotonic() >= next_sample:
            samples.append(usage())
            next_sample = time.monotonic() + 1.0
            port.check_invariant()
    port.rxsync()
    inv = port.check_invariant()
    st = port.stats()["rings"][0]
    print(json.dumps({"received": got, "last": last, "gaps": gaps, "disorder": disorder,
                      "other": other, "kernel": st["kernel"], "samples": samples,
                      "invariant": inv}), flush=True)
    port.close()
"""
)

TCP_SERVER = """
    import hashlib, socket, sys
    s = socket.create_server((sys.argv[1], 5201))
    print("READY", flush=True)
    c, _ = s.accept()
    h, n = hashlib.sha256(), 0
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        h.update(b)
        n += len(b)
    print(n, h.hexdigest(), flush=True)
"""

TCP_CLIENT = """
    import hashlib, os, socket, sys, time
    c = socket.create_connection((sys.argv[1], 5201), timeout=30)
    h, n, end = hashlib.sha256(), 0, time.monotonic() + float(sys.argv[2])
    block = os.urandom(1 << 16)
    while time.monotonic() < end:
        block = hashlib.sha256(block).digest() + block[32:]  # never twice the same bytes
        c.sendall(block)
        h.update(block)
        n += len(block)
    c.close()
    print(n, h.hexdigest(), flush=True)
"""


def py(ns: str, script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(script), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ready(p: subprocess.Popen[str]) -> None:
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line.startswith("READY"):
        p.kill()
        raise AssertionError(f"child did not start: {line} {p.stderr.read()}")


def final(p: subprocess.Popen[str], timeout: float = 60.0) -> dict:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def kernel_on_queue_1(veth: VethPair) -> None:
    """XPS: every CPU transmits the stacks' traffic on queue 1, on both ends."""
    for ns, dev in ((veth.ns_a, veth.a), (veth.ns_b, veth.b)):
        q = f"/sys/class/net/{dev}/queues"
        run(
            "ip",
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            f"echo 0 > {q}/tx-0/xps_cpus && echo {(1 << os.cpu_count()) - 1:x} > "  # type: ignore[operator]
            f"{q}/tx-1/xps_cpus",
        )


def flat(samples: list[list[float]], who: str) -> tuple[int, int, int]:
    """(fd count, RSS after warm-up, RSS growth since) of a child's 1 s samples."""
    t0 = samples[0][0]
    warm = [s for s in samples if s[0] - t0 >= WARMUP_S] or samples[-1:]
    fds = {int(s[1]) for s in warm}
    assert len(fds) == 1, f"{who}: fd count changed under load: {sorted(fds)}"
    growth = int(max(s[2] for s in warm) - warm[0][2])
    assert growth <= RSS_SLACK_KB, f"{who}: RSS grew {growth} kB under load"
    return fds.pop(), int(warm[0][2]), growth


def soak(veth: VethPair, seconds: float) -> dict:
    kernel_on_queue_1(veth)
    frame = (veth.mac("b") + veth.mac("a") + b"\x88\xb5" + bytes(46)).hex()
    rx = py(veth.ns_b, RECEIVER, f"netmap:{veth.b}-0/R", "")
    server = py(veth.ns_b, TCP_SERVER, veth.ip_b)
    procs = [rx, server]
    try:
        for p in procs:
            ready(p)
        # only now: a frame sent before the receiver's program is attached would go to
        # the peer's stack instead
        tx = py(veth.ns_a, SENDER, f"netmap:{veth.a}-0/T", "", frame)
        procs.append(tx)
        ready(tx)
        client = py(veth.ns_a, TCP_CLIENT, veth.ip_b, str(seconds - 2))
        procs.append(client)
        ping = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                veth.ns_a,
                "ping",
                "-q",
                "-i",
                "0.2",
                "-w",
                str(int(seconds - 1)),
                veth.ip_b,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(ping)  # type: ignore[arg-type]
        time.sleep(seconds)
        tx.send_signal(signal.SIGTERM)
        sent = final(tx)
        rx.send_signal(signal.SIGTERM)
        recv = final(rx)
        c_out, _ = client.communicate(timeout=60)
        s_out, _ = server.communicate(timeout=60)
        p_out, _ = ping.communicate(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=10)
    return {
        "sent": sent,
        "recv": recv,
        "client": c_out.split(),
        "server": s_out.split(),
        "ping": p_out,
    }


def check(report: dict, seconds: float) -> str:
    sent, recv = report["sent"], report["recv"]
    k = recv["kernel"]
    # every frame accounted for, on both sides
    assert sent["frames"] == sent["sent"]
    delivered = sent["sent"] - sent["tx_dropped"]
    rx_drops = k["rx_dropped"] + k["rx_ring_full"]
    assert delivered == recv["received"] + rx_drops, (sent, recv)
    assert recv["disorder"] == 0, "a frame arrived twice or out of order"
    lost = sent["sent"] - recv["received"]
    assert recv["gaps"] + (sent["sent"] - 1 - recv["last"]) == lost
    assert recv["other"] == 0, "kernel traffic reached the netmap queue"
    assert sent["invariant"] and recv["invariant"]
    # the kernel's queue carried its traffic untouched
    assert report["client"] == report["server"], "TCP data differ (length or SHA-256)"
    tcp_bytes = int(report["client"][0])
    assert tcp_bytes > 0
    m = re.search(r"(\d+) packets transmitted, (\d+) received", report["ping"])
    assert m and int(m.group(2)) == int(m.group(1)) > 0, report["ping"]
    fd_tx, rss_tx, grow_tx = flat(sent["samples"], "sender")
    fd_rx, rss_rx, grow_rx = flat(recv["samples"], "receiver")
    secs = sent["seconds"]
    line = (
        f"soak {seconds:.0f} s: sent {sent['sent']} frames ({sent['sent'] / secs / 1e3:.0f} "
        f"kpps), received {recv['received']}, dropped {sent['tx_dropped']} at TX + "
        f"{rx_drops} at RX (= {lost} gaps): all accounted; TCP {tcp_bytes / 1e6:.0f} MB "
        f"({tcp_bytes * 8 / secs / 1e6:.0f} Mbit/s) SHA-256 ok; ping {m.group(2)}/"
        f"{m.group(1)}; fds sender {fd_tx} / receiver {fd_rx} constant; RSS sender "
        f"{rss_tx} kB {grow_tx:+d}, receiver {rss_rx} kB {grow_rx:+d}"
    )
    print("\n" + line)
    return line


def test_soak_short(veth: VethPair) -> None:
    check(soak(veth, SHORT_S), SHORT_S)


@pytest.mark.slow
def test_soak_long(veth: VethPair) -> None:
    seconds = float(os.environ.get("VTNETMAP_SOAK_SECONDS", "300"))
    check(soak(veth, seconds), seconds)


# --- through the bridge (NIC rings <-> host rings) ------------------------------------------

BRIDGE = (
    COMMON
    + """
    from vtnet_py.apps.bridge import Bridge, open_pair
    host, nic, mem = open_pair(sys.argv[1], None, out=sys.stderr)
    br = Bridge(host, nic, out=sys.stderr)
    samples, next_sample = [], 0.0
    print("READY", flush=True)
    while not stop:
        br.step(timeout_ms=100)
        if time.monotonic() >= next_sample:
            samples.append(usage())
            next_sample = time.monotonic() + 1.0
            nic.check_invariant()
    for _ in range(20):  # forward what is still in the rings
        br.step(timeout_ms=10)
    left = sum(r.space() for r in nic.rx_rings + host.rx_rings)
    out = {"host_to_nic": br.a2b.packets, "nic_to_host": br.b2a.packets, "left": left,
           "host": host.stats(), "nic": nic.stats(), "invariant": nic.check_invariant(),
           "samples": samples}
    print(json.dumps(out), flush=True)
    host.close()
    nic.close()
"""
)

TCP_SERVER_A = TCP_SERVER.replace("5201", "5202")
TCP_CLIENT_B = TCP_CLIENT.replace("5201", "5202")


def ethtool_stats(ns: str, dev: str) -> dict[str, int]:
    out = run("ip", "netns", "exec", ns, "ethtool", "-S", dev).stdout
    return {k.strip(): int(v) for k, v in (ln.split(":") for ln in out.splitlines()[1:])}


def veth_counters(veth: VethPair) -> dict[str, int]:
    b = json.loads(run("ip", "-n", veth.ns_b, "-s", "-j", "link", "show", veth.b).stdout)[0]
    xdp = sum(v for k, v in ethtool_stats(veth.ns_a, veth.a).items() if k.endswith("_xdp_packets"))
    return {
        "b_tx": b["stats64"]["tx"]["packets"],
        "b_tx_dropped": b["stats64"]["tx"]["dropped"],
        "b_rx": b["stats64"]["rx"]["packets"],
        "a_xdp": xdp,
    }


def bridge_soak(veth: VethPair, seconds: float) -> dict:
    veth.sh_b(f"ethtool -K {veth.b} tx off")  # the peer sends complete checksums, as a wire
    for q, cpus in ((0, 0), (1, (1 << os.cpu_count()) - 1)):  # type: ignore[operator]
        veth.sh_b(f"echo {cpus:x} > /sys/class/net/{veth.b}/queues/tx-{q}/xps_cpus")
    before = veth_counters(veth)
    br = py(veth.ns_a, BRIDGE, f"netmap:{veth.a}")
    procs = [br]
    try:
        ready(br)
        server = py(veth.ns_a, TCP_SERVER_A, veth.ip_a)
        procs.append(server)
        ready(server)
        frame = (veth.mac("a") + veth.mac("b") + b"\x88\xb5" + bytes(46)).hex()
        tx = py(veth.ns_b, SENDER, f"netmap:{veth.b}-0/T", "", frame)
        procs.append(tx)
        ready(tx)
        client = py(veth.ns_b, TCP_CLIENT_B, veth.ip_a, str(seconds - 2))
        procs.append(client)
        ping = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                veth.ns_b,
                "ping",
                "-q",
                "-i",
                "0.2",
                "-w",
                str(int(seconds - 1)),
                veth.ip_a,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(ping)  # type: ignore[arg-type]
        time.sleep(seconds)
        tx.send_signal(signal.SIGTERM)
        sent = final(tx)
        c_out, _ = client.communicate(timeout=60)
        s_out, _ = server.communicate(timeout=60)
        p_out, _ = ping.communicate(timeout=60)
        time.sleep(0.5)
        br.send_signal(signal.SIGTERM)
        bridged = final(br)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=10)
    after = veth_counters(veth)
    return {
        "sent": sent,
        "bridge": bridged,
        "client": c_out.split(),
        "server": s_out.split(),
        "ping": p_out,
        "veth": {k: after[k] - before[k] for k in after},
    }


def check_bridge(report: dict, seconds: float) -> str:
    """Follow every frame through the bridge, both ways, with the kernel's and the
    library's counters (the AF_XDP ones are per socket: read them on the RX rings)."""
    sent, br, v = report["sent"], report["bridge"], report["veth"]
    nic, host = br["nic"]["rings"], br["host"]["rings"]
    hc = br["host"]["host"]

    def total(rings: list[dict], kind: str, key: str) -> int:
        return sum(r[key] for r in rings if r["kind"] == kind)

    nic_rx = total(nic, "rx", "frames")
    nic_rx_drops = sum(
        r["kernel"]["rx_dropped"] + r["kernel"]["rx_ring_full"] for r in nic if r["kind"] == "rx"
    )
    # peer -> IF: everything the peer sent reached IF's XDP program, which handed each
    # frame to a NIC RX ring or had it counted as dropped (FILL ring empty, RX ring full)
    assert v["b_tx_dropped"] == 0 and v["b_tx"] == v["a_xdp"], v
    assert v["a_xdp"] == nic_rx + nic_rx_drops, (v, nic_rx, nic_rx_drops)
    # NIC RX -> bridge -> host TX -> IF's stack: nothing lost on the way
    assert br["left"] == 0 and nic_rx == br["nic_to_host"] == total(host, "tx", "frames")
    host_tx_dropped = total(host, "tx", "tx_dropped") + total(host, "tx", "hdr_refused")
    assert hc["from_host_tx"] == br["nic_to_host"] - host_tx_dropped, hc
    # IF's stack -> host RX -> bridge -> NIC TX -> peer
    host_rx_drops = sum(
        r["kernel"]["rx_dropped"] + r["kernel"]["rx_ring_full"] for r in host if r["kind"] == "rx"
    )
    assert hc["to_host_rx"] == total(host, "rx", "frames") + host_rx_drops, hc
    assert total(host, "rx", "frames") == br["host_to_nic"] == total(nic, "tx", "frames")
    assert v["b_rx"] == br["host_to_nic"] - total(nic, "tx", "tx_dropped"), v
    assert hc["forward_dropped"] == 0 and hc["oversize_dropped"] == 0, hc
    assert br["invariant"] and sent["invariant"]
    # the stack's traffic through the host rings: TCP intact, every ping answered
    assert report["client"] == report["server"], "TCP data differ (length or SHA-256)"
    tcp_bytes = int(report["client"][0])
    m = re.search(r"(\d+) packets transmitted, (\d+) received", report["ping"])
    assert m, report["ping"]
    # the flood saturates the bridge, so NIC RX drops frames of every kind, pings too;
    # a lost ping must be among the counted drops, and most get through
    pings, pongs = int(m.group(1)), int(m.group(2))
    assert pings > 0 and pongs >= 0.8 * pings and (pongs == pings or nic_rx_drops), report["ping"]
    fd_br, rss_br, grow_br = flat(br["samples"], "bridge")
    secs = sent["seconds"]
    line = (
        f"bridge soak {seconds:.0f} s: peer sent {v['b_tx']} frames "
        f"({sent['sent'] / secs / 1e3:.0f} kpps flood), {nic_rx} bridged to the host "
        f"stack ({nic_rx / secs / 1e3:.0f} kpps), {nic_rx_drops} dropped at NIC RX, "
        f"{br['host_to_nic']} from the stack to the peer: all accounted; TCP "
        f"{tcp_bytes / 1e6:.0f} MB ({tcp_bytes * 8 / secs / 1e6:.0f} Mbit/s) SHA-256 ok; "
        f"ping {m.group(2)}/{m.group(1)}; bridge fds {fd_br} constant, RSS {rss_br} kB "
        f"{grow_br:+d}"
    )
    print("\n" + line)
    return line


def test_bridge_soak_short(veth: VethPair) -> None:
    check_bridge(bridge_soak(veth, SHORT_S), SHORT_S)


@pytest.mark.slow
def test_bridge_soak_long(veth: VethPair) -> None:
    seconds = float(os.environ.get("VTNETMAP_SOAK_SECONDS", "300"))
    check_bridge(bridge_soak(veth, seconds), seconds)
