"""Helpers for the guest-side scenarios (run as root inside a VM with a virtio_net NIC).

Used under the local QEMU harness (tests/vm/harness.py) and under Vagrant
(vagrant/provision.sh). Everything here acts on the interface the run names
(``$VTVM_IFACE``, eth0 under the harness) and never on another one.
"""

from __future__ import annotations

import glob
import json
import os
import re
import select
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]

IFACE = os.environ.get("VTVM_IFACE", "eth0")
HOST_IP = os.environ.get("VTVM_HOST_IP", "198.51.100.1")
GUEST_IP = os.environ.get("VTVM_GUEST_IP", "198.51.100.2")

# ip -d -j link show: "xdp": {"mode": N}; the kernel's XDP_ATTACHED_* values.
XDP_ATTACHED_DRV = 1
XDP_ATTACHED_SKB = 2


def run(
    argv: Sequence[str], timeout: float = 60, check: bool = False, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; stderr and stdout kept apart."""
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> rc={p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def driver_of(iface: str) -> str:
    """Kernel driver bound to the interface's device (sysfs), '' when none."""
    link = Path(f"/sys/class/net/{iface}/device/driver")
    return os.path.basename(os.readlink(link)) if link.is_symlink() else ""


@dataclass(frozen=True)
class Channels:
    max_combined: int
    combined: int


def channels(iface: str) -> Channels:
    """`ethtool -l` combined channels (maximum and current)."""
    out = run(["ethtool", "-l", iface], check=True).stdout
    pre, _, cur = out.partition("Current hardware settings")
    m1 = re.search(r"^Combined:\s*(\d+)", pre, re.M)
    m2 = re.search(r"^Combined:\s*(\d+)", cur, re.M)
    assert m1 and m2, f"cannot parse ethtool -l {iface}:\n{out}"
    return Channels(int(m1.group(1)), int(m2.group(1)))


def set_channels(iface: str, combined: int) -> subprocess.CompletedProcess[str]:
    return run(["ethtool", "-L", iface, "combined", str(combined)])


def features(iface: str) -> dict[str, str]:
    """`ethtool -k` as {feature: 'on'|'off'|'on [fixed]'|...}."""
    out = run(["ethtool", "-k", iface], check=True).stdout
    feats = {}
    for ln in out.splitlines()[1:]:
        k, sep, v = ln.strip().partition(":")
        if sep:
            feats[k] = v.strip()
    return feats


def link_info(iface: str) -> dict[str, Any]:
    info = json.loads(run(["ip", "-d", "-j", "link", "show", "dev", iface], check=True).stdout)
    return info[0]


def xdp_mode(iface: str) -> int:
    """0 when no XDP program is attached, else the XDP_ATTACHED_* mode."""
    xdp = link_info(iface).get("xdp")
    return int(xdp.get("mode", 0)) if isinstance(xdp, dict) else 0


# Sections of xdp_pass.c: a single-buffer program and the same one multi-buffer aware.
SEC_XDP = "xdp"
SEC_XDP_FRAGS = "xdp.frags"


def xdp_attach(
    iface: str, obj: Path, mode: str = "xdpdrv", sec: str = SEC_XDP
) -> subprocess.CompletedProcess[str]:
    """Attach section ``sec`` of ``obj`` with iproute2; the kernel's refusal words (extack)
    come back on stderr as "Error: virtio_net: ..."."""
    return run(["ip", "link", "set", "dev", iface, mode, "obj", str(obj), "sec", sec])


def extack(r: subprocess.CompletedProcess[str]) -> list[str]:
    """virtio_net's refusal words in an iproute2 result ("virtio_net: ...", no final
    period), as the kernel's extack gave them."""
    return [
        ln.removeprefix("Error: ").rstrip(".")
        for ln in r.stderr.splitlines()
        if ln.startswith("Error: virtio_net: ")
    ]


def frags_xdp_attaches(iface: str, obj: Path, mtu: int = 9000) -> bool:
    """Feature probe: does the driver take a multi-buffer aware program natively at
    ``mtu``, too large for one buffer? (virtio_net: yes from Linux 6.3, which added XDP
    multi-buffer; 6.1 refuses any program there.) Leaves MTU and XDP as found."""
    before = mtu_of(iface)
    assert xdp_mode(iface) == 0, f"{iface}: an XDP program is attached already"
    if set_mtu(iface, mtu).returncode != 0:
        return False
    try:
        ok = xdp_attach(iface, obj, sec=SEC_XDP_FRAGS).returncode == 0
        if ok:
            assert xdp_detach(iface).returncode == 0
        return ok
    finally:
        set_mtu(iface, before)


def xdp_detach(iface: str, mode: str = "xdpdrv") -> subprocess.CompletedProcess[str]:
    return run(["ip", "link", "set", "dev", iface, mode, "off"])


def set_mtu(iface: str, mtu: int) -> subprocess.CompletedProcess[str]:
    return run(["ip", "link", "set", "dev", iface, "mtu", str(mtu)])


def mtu_of(iface: str) -> int:
    return int(Path(f"/sys/class/net/{iface}/mtu").read_text())


def ethtool_stats(iface: str) -> dict[str, int]:
    """`ethtool -S` as {name: value}."""
    out = run(["ethtool", "-S", iface], check=True).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s*(\S+):\s*(\d+)$", out, re.M)}


def rx_xdp_redirects(stats: dict[str, int], q: int) -> int:
    """virtio_net's per-queue XDP_REDIRECT counter, by whichever name the kernel uses:
    ``rx_queue_N_xdp_redirects`` (6.1) or ``rxN_xdp_redirects`` (6.10+)."""
    for name in (f"rx_queue_{q}_xdp_redirects", f"rx{q}_xdp_redirects"):
        if name in stats:
            return stats[name]
    raise AssertionError(f"no XDP redirect counter for RX queue {q} in ethtool -S: {sorted(stats)}")


# The netdev generic netlink family's queue statistics (Linux 6.10+, qstats-get; see
# Documentation/netlink/specs/netdev.yaml): where virtio_net's per-queue packet counts went
# when they left `ethtool -S`.
NETDEV_CMD_QSTATS_GET = 12
NETDEV_A_QSTATS_IFINDEX = 1
NETDEV_A_QSTATS_QUEUE_TYPE = 2
NETDEV_A_QSTATS_QUEUE_ID = 3
NETDEV_A_QSTATS_SCOPE = 4
NETDEV_A_QSTATS_TX_PACKETS = 10
NETDEV_QUEUE_TYPE_TX = 1
NETDEV_QSTATS_SCOPE_QUEUE = 1


def tx_queue_packets(iface: str) -> dict[int, int]:
    """Packets sent per TX queue: ``tx_queue_N_packets`` of `ethtool -S` (6.1), else the
    kernel's per-queue statistics over netlink (qstats-get, scope queue; 6.10+)."""
    import socket as _socket

    from vtnet_py._sys import abi as K
    from vtnet_py.device.netlink import genl_family_id, genl_request, nla, parse_nlattrs

    stats = ethtool_stats(iface)
    found = {
        int(m.group(1)): v
        for k, v in stats.items()
        if (m := re.fullmatch(r"tx_queue_(\d+)_packets", k))
    }
    if found:
        return found
    ifindex = int(Path(f"/sys/class/net/{iface}/ifindex").read_text())
    with _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, K.NETLINK_GENERIC) as sock:
        sock.settimeout(5)
        family = genl_family_id(sock, K.NETDEV_FAMILY_NAME)
        assert family is not None, "no per-queue TX counters: no ethtool ones, no netdev family"
        attrs = nla(NETDEV_A_QSTATS_IFINDEX, ifindex.to_bytes(4, "little")) + nla(
            NETDEV_A_QSTATS_SCOPE, NETDEV_QSTATS_SCOPE_QUEUE.to_bytes(4, "little")
        )
        parts = genl_request(sock, family, NETDEV_CMD_QSTATS_GET, attrs, seq=7, dump=True)
    for part in parts:
        a = parse_nlattrs(part)
        if int.from_bytes(a.get(NETDEV_A_QSTATS_IFINDEX, b"\0"), "little") != ifindex:
            continue
        if (
            int.from_bytes(a.get(NETDEV_A_QSTATS_QUEUE_TYPE, b"\xff"), "little")
            != NETDEV_QUEUE_TYPE_TX
        ):
            continue
        q = int.from_bytes(a[NETDEV_A_QSTATS_QUEUE_ID], "little")
        found[q] = int.from_bytes(a.get(NETDEV_A_QSTATS_TX_PACKETS, b"\0"), "little")
    assert found, f"qstats-get gave no TX queue of {iface}: {parts!r}"
    return found


def queue_warnings() -> list[tuple[str, str]]:
    """virtio_net's "XDP request N queues but max is M. ..." lines of this boot, as
    (interface, message). The driver prints it with netdev_warn_once: once per boot, for
    the first device that needed it, whichever that was."""
    out = []
    for ln in Kmsg.all_lines():
        m = re.search(r" (\S+): (XDP request \d+ queues but max is \d+\..*)$", ln)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def shape(message: str) -> str:
    """A regular expression for ``message`` with its numbers left open: the kernel's
    words for another device's counts."""
    return re.sub(r"\\d\+|\d+", r"\\d+", re.escape(message))


class Kmsg:
    """Kernel log lines written after construction (dmesg, read as text)."""

    def __init__(self) -> None:
        self.start = len(self.all_lines())

    @staticmethod
    def all_lines() -> list[str]:
        return run(["dmesg"], check=True).stdout.splitlines()

    def new_lines(self) -> list[str]:
        return self.all_lines()[self.start :]


def build_xdp_pass(dest_dir: Path) -> Path:
    """Compile xdp_pass.c for the BPF target; reuse ``$VTVM_XDP_PASS_OBJ`` when the host
    harness built it already (clang start-up over 9p costs ~7 s under TCG)."""
    pre = os.environ.get("VTVM_XDP_PASS_OBJ")
    src = HERE / "xdp_pass.c"
    if pre and Path(pre).is_file() and Path(pre).stat().st_mtime >= src.stat().st_mtime:
        return Path(pre)
    obj = dest_dir / "xdp_pass.o"
    run(
        ["clang", "-O2", "-g", "-target", "bpf", "-c", str(src), "-o", str(obj)],
        timeout=120,
        check=True,
    )
    return obj


def find_port(name: str) -> Path | None:
    """/dev node of the virtio-serial port called ``name``, if the VM has one."""
    for p in glob.glob("/sys/class/virtio-ports/*/name"):
        if Path(p).read_text().strip() == name:
            return Path("/dev") / Path(p).parent.name
    return None


class HostLink:
    """Guest end of the harness's host link (see tests/vm/harness.py, class HostLink).

    Commands given here run as root on the host inside the run's network namespace,
    where the TAP behind this guest's eth0 lives (host address ``HOST_IP``). Use it for
    the host side of a scenario: ping/nc toward the guest, a receiver or sender on the
    TAP (kernel socket or the project's pkt-gen), the TAP's counters.
    """

    def __init__(self, dev: Path) -> None:
        self.fd = os.open(dev, os.O_RDWR | os.O_NOCTTY)
        self._buf = b""
        self._next = 0

    def close(self) -> None:
        os.close(self.fd)

    def request(self, op: str, timeout: float = 120, **kw: object) -> dict[str, Any]:
        self._next += 1
        msg = json.dumps({"id": self._next, "op": op, **kw}).encode() + b"\n"
        view = memoryview(msg)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError(f"host link: no reply to {op} within {timeout}s")
            r, _, _ = select.select([self.fd], [], [], 1.0)
            if r:
                chunk = os.read(self.fd, 65536)
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"host link {op}: {reply['error']}")
        if reply.get("id") != self._next:
            raise RuntimeError(f"host link: reply {reply.get('id')} for request {self._next}")
        return reply

    def info(self) -> dict[str, Any]:
        return self.request("info")

    def run(
        self, argv: Sequence[str], timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run on the host (in the namespace) and wait; killed after ``timeout``."""
        r = self.request(
            "run", timeout=timeout + 30, argv=list(argv), timeout_s=timeout, input=input
        )
        return subprocess.CompletedProcess(
            list(argv), int(r["rc"]), str(r["stdout"]), str(r["stderr"])
        )

    def spawn(self, argv: Sequence[str]) -> int:
        """Start on the host in the background; returns a handle for wait/signal."""
        return int(self.request("spawn", argv=list(argv))["handle"])

    def wait(self, handle: int, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        r = self.request("wait", timeout=timeout + 30, handle=handle, timeout_s=timeout)
        return subprocess.CompletedProcess([], int(r["rc"]), str(r["stdout"]), str(r["stderr"]))

    def signal(self, handle: int, sig: int = 15) -> None:
        self.request("signal", handle=handle, sig=sig)

    def tap_stats(self) -> dict[str, int]:
        """The host TAP's /sys/class/net/<tap>/statistics counters."""
        return self.request("stats")["stats"]
