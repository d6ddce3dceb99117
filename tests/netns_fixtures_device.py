"""Namespaces and veth pairs for the device-layer kernel tests (prefix ``vtdev-``).

Everything is made with iproute2 inside a namespace created here, both veth ends inside it,
addresses from 203.0.113.0/24; the namespace (and with it the veth pair, routes and any XDP
program attached to them) is deleted when the fixture ends, even if the test failed.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with the calling thread inside /run/netns/NAME; always come back."""
    target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)
        os.close(target)


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


class _ProgLoadAttr(ctypes.Structure):
    # The leading fields of union bpf_attr for BPF_PROG_LOAD (uapi linux/bpf.h); the
    # padding keeps the rest zero, as the kernel requires.
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("_rest", ctypes.c_char * 64),
    ]


SYS_BPF = 321  # x86_64
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_XDP = 6
XDP_FLAGS = {"generic": 1 << 1, "native": 1 << 2}


@pytest.fixture
def xdp_pass_fd() -> Iterator[int]:
    """An fd of a loaded two-instruction XDP program (``r0 = XDP_PASS; exit``), made with
    the bpf() syscall so no compiler is needed. Closed (and so freed) afterwards."""
    require_root()
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 2) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(
        prog_type=BPF_PROG_TYPE_XDP,
        insn_cnt=len(insns) // 8,
        insns=ctypes.addressof(code),
        license=ctypes.addressof(lic),
        prog_name=b"vtdev_pass",
    )
    fd = _libc.syscall(SYS_BPF, BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_LOAD: {os.strerror(err)}")
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
