"""The seed's Tests 1 and 2 with `vtnetmap pkt-gen` on a real virtio_net NIC (main
profile), run as a user would: no `vtnetmap attach` first.

Test 1: pkt-gen TX in the guest; the host counts the frames on the TAP exactly (AF_PACKET,
filtered on the guest's MAC and the flows) and one captured frame must be byte for byte
the UDP/IPv4 frame asked for, built here independently (headers, checksums, payload).
Test 2: the project's pkt-gen TX on the host's TAP (AF_XDP, TX-only, on two TAP queues),
received by pkt-gen RX in the guest's RX rings; sent and received counts are equal.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import guestlib
import pytest

from vtnet_py.admin.status import status
from vtnet_py.apps.pktgen.frames import PAYLOAD_TEXT

N_TX = 1000
N_RX = 1000
FRAME_LEN = 60
SPORT = 4000
DPORTS = (9000, 9003)  # -d range: four flows
SINK_MAC = "02:76:74:00:00:09"  # nobody's: the host stack drops these, no replies
GUEST_MAC = os.environ.get("VTVM_GUEST_MAC", "52:54:00:76:74:02")
VTNETMAP = str(Path(sys.executable).with_name("vtnetmap"))

# Host side: count frames on the TAP (AF_PACKET, incoming only) from one source MAC with
# one ethertype and IP protocol/ports; per-key counts and the first frame, as JSON. Stops
# IDLE s after the last match once WANT were seen (extra frames are counted too), 5 s after
# the last match while fewer came (they are lost), or at the deadline.
HOST_CAPTURE = r"""
import json, os, socket, sys, time
ifname, ready, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
idle, deadline = float(sys.argv[4]), time.monotonic() + float(sys.argv[5])
src, sport = bytes.fromhex(sys.argv[6]), int(sys.argv[7])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
s.bind((ifname, 0))
open(ready, "w").close()
n, keys, first, last = 0, {}, None, None
while True:
    now = time.monotonic()
    if now > deadline or (last is not None and now - last > (idle if n >= want else 5)):
        break
    s.settimeout(0.1)
    try:
        data, addr = s.recvfrom(65536)
    except TimeoutError:
        continue
    if (addr[2] == socket.PACKET_OUTGOING or data[6:12] != src or data[12:14] != b"\x08\x00"
            or data[23] != 17 or int.from_bytes(data[34:36], "big") != sport):
        continue
    n += 1
    last = time.monotonic()
    k = str(int.from_bytes(data[36:38], "big"))
    keys[k] = keys.get(k, 0) + 1
    if first is None:
        first = data.hex()
print(json.dumps({"count": n, "keys": keys, "first": first}))
"""


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(
    dst_mac: str, src_mac: str, src_ip: str, dst_ip: str, sport: int, dport: int, length: int
) -> bytes:
    """pkt-gen's frame (netmap's pkt-gen header fields: TOS low delay, id 0, DF, TTL 64),
    built from the RFCs: IPv4 header checksum, UDP checksum over the pseudo header (a
    computed 0 sent as 0xffff), payload = the payload text repeated."""
    ip_len = length - 14
    udp_len = ip_len - 20
    payload = (PAYLOAD_TEXT * (udp_len // len(PAYLOAD_TEXT) + 1))[: udp_len - 8]
    src, dst = bytes(map(int, src_ip.split("."))), bytes(map(int, dst_ip.split(".")))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0x10, ip_len, 0, 0x4000, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    c = _csum(src + dst + struct.pack("!BBH", 0, 17, udp_len) + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    mac = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    return mac + b"\x08\x00" + ip + udp


def rx_queues(iface: str) -> int:
    return len([q for q in os.listdir(f"/sys/class/net/{iface}/queues") if q.startswith("rx-")])


@pytest.fixture
def quiet_host(host_link: guestlib.HostLink) -> Iterator[str]:
    """The host end sends nothing of its own toward the guest meanwhile (no IPv6 on the
    TAP: no router solicitations or MLD reports), so what the guest counts is only the
    test's traffic. Put back afterwards (the namespace is the run's own)."""
    tap = host_link.info()["tap"]
    key = f"net.ipv6.conf.{tap}.disable_ipv6"
    old = host_link.run(["sysctl", "-n", key]).stdout.strip() or "0"
    host_link.run(["sysctl", "-qw", f"{key}=1"])
    try:
        yield tap
    finally:
        host_link.run(["sysctl", "-qw", f"{key}={old}"])


@pytest.mark.usefixtures("restore_iface")
def test_seed1_guest_tx_counted_on_host_tap(iface: str, host_link: guestlib.HostLink) -> None:
    res = Path(os.environ.get("VTVM_RESULTS", "/tmp"))
    ready = res / f"capture-{secrets.token_hex(4)}.ready"
    cap = host_link.spawn(
        [
            sys.executable,
            "-c",
            HOST_CAPTURE,
            host_link.info()["tap"],
            str(ready),
            str(N_TX),
            "1.5",
            "120",
            GUEST_MAC.replace(":", ""),
            str(SPORT),
        ]
    )
    end = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < end, host_link.wait(cap, timeout=5).stderr
        time.sleep(0.05)
    ready.unlink()
    before = host_link.tap_stats()
    src = f"{guestlib.GUEST_IP}:{SPORT}"
    dst = f"{guestlib.HOST_IP}:{DPORTS[0]}-{guestlib.HOST_IP}:{DPORTS[1]}"
    r = guestlib.run(
        [
            VTNETMAP,
            "pkt-gen",
            "-i",
            f"netmap:{iface}",
            "-f",
            "tx",
            "-n",
            str(N_TX),
            "-l",
            str(FRAME_LEN),
            "-s",
            src,
            "-d",
            dst,
            "-D",
            SINK_MAC,
            "-R",
            "4000",
            "-w",
            "0",
        ],
        timeout=180,
    )
    if r.returncode != 0:
        host_link.signal(cap, signal.SIGKILL)  # it would wait for frames until its deadline
        host_link.wait(cap, timeout=10)
        pytest.fail(f"pkt-gen tx failed: rc={r.returncode}\n{r.stdout}{r.stderr}")
    got = host_link.wait(cap, timeout=150)
    assert re.search(rf"^Sent {N_TX} packets {N_TX * FRAME_LEN} bytes", r.stdout, re.M), r.stdout
    assert got.returncode == 0, got.stderr
    cap_res = json.loads(got.stdout)
    # Every frame pkt-gen counted reached the host, and nothing else with its addresses.
    assert cap_res["count"] == N_TX, cap_res
    flows = [str(p) for p in range(DPORTS[0], DPORTS[1] + 1)]
    assert cap_res["keys"] == {p: N_TX // len(flows) for p in flows}, cap_res["keys"]
    want = udp_frame(
        SINK_MAC, GUEST_MAC, guestlib.GUEST_IP, guestlib.HOST_IP, SPORT, DPORTS[0], FRAME_LEN
    )
    assert bytes.fromhex(cap_res["first"]) == want, (cap_res["first"], want.hex())
    after = host_link.tap_stats()
    assert after["rx_packets"] - before["rx_packets"] >= N_TX
    # pkt-gen exited: its port, and the program it attached for its lifetime, are gone.
    assert guestlib.xdp_mode(iface) == 0


@pytest.mark.usefixtures("restore_iface")
def test_seed2_host_tx_received_in_guest_rx_rings(
    iface: str, quiet_host: str, host_link: guestlib.HostLink
) -> None:
    rx = subprocess.Popen(
        [VTNETMAP, "pkt-gen", "-i", f"netmap:{iface}", "-f", "rx", "-W", "-w", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Ready when pkt-gen owns every RX queue (the steering program records its pid).
        end = time.monotonic() + 120
        while True:
            assert rx.poll() is None, f"pkt-gen rx exited early: {rx.communicate()}"
            queues = status(iface)["interfaces"][0]["queues"]
            owners = {q["owner_pid"] for q in queues[: rx_queues(iface)]}
            if owners == {rx.pid} and guestlib.xdp_mode(iface):
                break
            assert time.monotonic() < end, f"pkt-gen rx never owned the queues: {queues}"
            time.sleep(0.2)
        before = host_link.tap_stats()
        # Two TAP queues: QEMU feeds each into its own virtio queue pair.
        h = host_link.run(
            [
                VTNETMAP,
                "pkt-gen",
                "-i",
                f"netmap:{quiet_host}/T",
                "-f",
                "tx",
                "-n",
                str(N_RX),
                "-l",
                str(FRAME_LEN),
                "-s",
                f"{guestlib.HOST_IP}:5000",
                "-d",
                f"{guestlib.GUEST_IP}:6000-{guestlib.GUEST_IP}:6031",
                "-D",
                GUEST_MAC,
                "-R",
                "2000",
                "-w",
                "0",
                "-p",
                "2",
            ],
            timeout=120,
        )
        assert h.returncode == 0, h.stdout + h.stderr
        m = re.search(r"^Sent (\d+) packets", h.stdout, re.M)
        assert m and int(m.group(1)) == N_RX, h.stdout
        # -W: pkt-gen stops 1 s after the last frame (but waits for a first one forever)
        out, err = rx.communicate(timeout=30)
    finally:
        if rx.poll() is None:
            rx.send_signal(signal.SIGINT)
            try:
                rx.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                rx.kill()
                rx.communicate()
    assert rx.returncode == 0, out + err
    sent_on_tap = host_link.tap_stats()["tx_packets"] - before["tx_packets"]
    m = re.search(r"^Received (\d+) packets (\d+) bytes", out, re.M)
    assert m, out + err
    assert int(m.group(1)) == N_RX, (out, err)
    assert int(m.group(2)) == N_RX * FRAME_LEN, out
    assert sent_on_tap == N_RX, sent_on_tap
