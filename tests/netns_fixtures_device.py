"""Namespaces and veth pairs for the device-layer kernel tests (prefix ``vtdev-``).

Everything is made with iproute2 inside a namespace created here, both veth ends inside it,
addresses from 203.0.113.0/24; the namespace (and with it the veth pair, routes and any XDP
program attached to them) is deleted when the fixture ends, even if the test failed.
"""

from __future__ import annotations

import os
import secrets
import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

from vtnet_py._sys import abi as K
from vtnet_py._sys import bpf as bpfsys
from vtnet_py._sys.netns import netns

# The library's own setns helper: the tests enter namespaces the way ports do.
in_netns = netns


def run(*argv: str) -> str:
    """Run a command, return stdout; raise with its stderr when it fails."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


@dataclass
class VethNs:
    """A namespace holding veth pair ``a`` <-> ``b`` (both up)."""

    ns: str
    a: str
    b: str

    def ip(self, *args: str) -> str:
        return run("ip", "-n", self.ns, *args)

    def exec(self, *argv: str) -> str:
        return run("ip", "netns", "exec", self.ns, *argv)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, veth)")


@contextmanager
def veth_namespace(queues: int = 4, addr_index: int = 1) -> Iterator[VethNs]:
    """Create ``vtdev-XXXXXXXX`` with veth vtd0/vtd1 (``queues`` rx and tx queues each),
    up, addressed 203.0.113.<2k-1>/24 and .<2k>/24 for k = ``addr_index``. Deleted on exit."""
    ns = f"vtdev-{secrets.token_hex(4)}"
    run("ip", "netns", "add", ns)
    try:
        env = VethNs(ns=ns, a="vtd0", b="vtd1")
        q = str(queues)
        env.ip(
            "link", "add", "name", env.a, "numtxqueues", q, "numrxqueues", q,
            "type", "veth", "peer", "name", env.b, "numtxqueues", q, "numrxqueues", q,
        )  # fmt: skip
        env.ip("addr", "add", f"203.0.113.{2 * addr_index - 1}/24", "dev", env.a)
        env.ip("addr", "add", f"203.0.113.{2 * addr_index}/24", "dev", env.b)
        env.ip("link", "set", "dev", "lo", "up")
        env.ip("link", "set", "dev", env.a, "up")
        env.ip("link", "set", "dev", env.b, "up")
        yield env
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def vtdev_ns() -> Iterator[VethNs]:
    require_root()
    with veth_namespace() as env:
        yield env


@pytest.fixture
def vtdev_ns_factory() -> Iterator[Callable[..., VethNs]]:
    """Make more namespaces in one test; all are deleted at the end."""
    require_root()
    with ExitStack() as stack:

        def make(queues: int = 4, addr_index: int = 1) -> VethNs:
            return stack.enter_context(veth_namespace(queues, addr_index))

        yield make


XDP_FLAGS = {"generic": 1 << 1, "native": 1 << 2}


@pytest.fixture
def xdp_pass_fd() -> Iterator[int]:
    """An fd of a loaded two-instruction XDP program (``r0 = XDP_PASS; exit``), made with
    the bpf() syscall so no compiler is needed. Closed (and so freed) afterwards."""
    require_root()
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 2) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    fd = bpfsys.prog_load(K.BPF_PROG_TYPE_XDP, insns, "vtdev_pass", license="GPL")
    try:
        yield fd
    finally:
        os.close(fd)


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
