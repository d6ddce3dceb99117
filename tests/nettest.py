"""Test helpers that are not the test networks themselves (those come from
tests/netlab_plugin.py, built on vtnet_py.apps.netlab): the kernel-feature probe, raw
frames on a veth end, the port-holder child, pkt-gen's output patterns, device-layer
probes (XDP attach, ethtool).

Both ends of every veth live in namespaces the test creates; addresses come from
198.51.100.0/24 and 203.0.113.0/24. Interface names carry no '-' (netmap's grammar reads
it as a ring).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

from vtnet_py._sys.netns import netns
from vtnet_py.apps import netlab

ETH_P_ALL = 0x0003
TEST_ETHERTYPE = b"\x88\xb5"  # IEEE local experimental: nobody else sends it
PACKET_OUTGOING = 4  # sockaddr_ll.sll_pkttype of a packet socket's own sends
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20

# The library's own setns helper: the tests enter namespaces the way ports do.
in_netns = netns


def frame(dst: bytes, src: bytes, seq: int, size: int = 64) -> bytes:
    """A test frame of ``size`` bytes: TEST_ETHERTYPE, then ``seq`` and a pattern from it."""
    body = seq.to_bytes(4, "big") + bytes((seq + i) & 0xFF for i in range(size - 18))
    return dst + src + TEST_ETHERTYPE + body


def put_tx(port, ring, frames: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    """Write ``frames`` into ``ring``'s slots from head and hand them over (head = cur)."""
    idx = ring.slots_from_head(len(frames))
    for i, f in zip(idx, frames, strict=True):
        port.buf(int(ring.slot["buf_idx"][i]))[: len(f)] = f
        ring.slot["len"][i] = len(f)
    ring.head = ring.cur = ring.next(ring.head, len(frames))


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

# The ``kernel`` marker under the name test modules have long imported; tests/conftest.py
# skips marked tests, saying why, where ``have_kernel_features`` finds something missing.
kernel = pytest.mark.kernel


class VethPair(netlab.VethPair):
    """A test's veth pair (see netlab.VethPair) with raw-frame helpers on its ends."""

    def raw_socket(self, side: str = "b") -> socket.socket:
        """An AF_PACKET socket bound to one end (made inside its namespace)."""
        ns, dev = self.end(side)
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


def run_checked(*argv: str) -> str:
    """Run a command, return stdout; raise with its stderr when it fails."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


@dataclass
class VethNs:
    """A namespace holding veth pair ``a`` <-> ``b`` (both up); ``ip``/``exec`` run
    iproute2 and other tools in it (the device tests compare against their output)."""

    ns: str
    a: str
    b: str

    def ip(self, *args: str) -> str:
        return run_checked("ip", "-n", self.ns, *args)

    def exec(self, *argv: str) -> str:
        return run_checked(*netlab.in_namespace(self.ns, list(argv)))


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


# -- device-layer probes ------------------------------------------------------------------

XDP_FLAGS = {"generic": 1 << 1, "native": 1 << 2}


def set_xdp(ifname: str, fd: int, mode: str) -> None:
    """Attach program ``fd`` to ``ifname`` in ``mode`` ('native'/'generic'), or detach
    with ``fd=-1``; in the calling thread's current network namespace."""
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=ifname)
        attrs = [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", XDP_FLAGS[mode])]
        ipr.link("set", index=index, xdp={"attrs": attrs})


def ethtool_channels(env: VethNs, ifname: str) -> dict[str, int]:
    """Current channel counts from ``ethtool -l`` (n/a -> 0)."""
    out = env.exec("ethtool", "-l", ifname)
    current = out.split("Current hardware settings:", 1)[1]
    res: dict[str, int] = {}
    for line in current.splitlines():
        if ":" not in line:
            continue
        key, val = (s.strip() for s in line.split(":", 1))
        res[key.lower()] = int(val) if val.isdigit() else 0
    return res


def ethtool_features(env: VethNs, ifname: str) -> dict[str, str]:
    """``ethtool -k`` as {feature: 'on'|'off' [+ ' [fixed]' / ' [requested on]']}."""
    out = env.exec("ethtool", "-k", ifname)
    res: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        if ":" in line:
            key, val = line.split(":", 1)
            res[key.strip()] = val.strip()
    return res


# --- vtnetmap attach tests: the CLI and what ip/ethtool see --------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vtnetmap_cli", *args], capture_output=True, text=True, timeout=120
    )


def errors(r: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr lines without bpfbuild's notice about compiling against other headers."""
    return [
        line
        for line in r.stderr.strip().splitlines()
        if not line.startswith("vtnetmap: no headers for running kernel")
    ]


def sh(ns: str, cmd: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "sh", "-c", cmd], check=True, capture_output=True, text=True
    ).stdout


def ethtool_k(ns: str, dev: str) -> dict[str, str]:
    out = sh(ns, f"ethtool -k {dev}")
    return {
        k.strip(): v.strip()
        for k, v in (line.split(":", 1) for line in out.splitlines()[1:] if ":" in line)
    }


def xdp_prog(ns: str, dev: str) -> int:
    link = json.loads(
        subprocess.run(
            ["ip", "-j", "-n", ns, "link", "show", "dev", dev],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )[0]
    return int(link.get("xdp", {}).get("prog", {}).get("id", 0))


def ns_inode(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino
