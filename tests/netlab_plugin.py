"""The test networks as pytest fixtures (registered by tests/conftest.py), all built with
vtnet_py.apps.netlab: fresh namespaces per test, both veth ends inside them, everything
removed when the test ends, also when it fails.

    veth              a 2-queue pair between two namespaces (198.51.100.1 / .2)
    veth_factory      more pairs, chosen queues and MTU
    vtdev_ns          one namespace holding a 4-queue pair vtd0/vtd1 (203.0.113.1 / .2)
    vtdev_ns_factory  more of those (queues, address index)
    xdp_pass_fd       a loaded XDP_PASS program (no compiler needed)

A test using one of them must carry the ``kernel`` marker (tests/conftest.py skips those
where the kernel features are missing); an unmarked one fails here, so that a run without
root cannot silently skip a test that forgot its marker.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
from nettest import VethNs, VethPair

from vtnet_py._sys import abi as K
from vtnet_py._sys import bpf as bpfsys
from vtnet_py.apps.netlab import NetLab

NS_PREFIX = "vtt"  # veth pairs: vtt<tag>a / vtt<tag>b
DEV_NS_PREFIX = "vtdev-"  # device-layer namespaces: vtdev-<tag>


def make_veth_pair(lab: NetLab, queues: int = 2, mtu: int | None = None) -> VethPair:
    """``a`` in a fresh namespace (198.51.100.1), ``b`` in another (198.51.100.2),
    ``queues`` queues each, no IPv6; removed with ``lab``."""
    ns_a, ns_b = lab.namespace("a"), lab.namespace("b")
    p = lab.veth(
        ns_a,
        f"vt{lab.tag}a",
        ns_b,
        f"vt{lab.tag}b",
        queues=queues,
        mtu=mtu,
        ip_a="198.51.100.1",
        ip_b="198.51.100.2",
    )
    return VethPair(ns_a=p.ns_a, ns_b=p.ns_b, a=p.a, b=p.b, ip_a=p.ip_a, ip_b=p.ip_b)


@contextmanager
def veth_namespace(queues: int = 4, addr_index: int = 1) -> Iterator[VethNs]:
    """A namespace ``vtdev-<tag>`` with veth vtd0/vtd1 (``queues`` rx and tx queues each),
    up, addressed 203.0.113.<2k-1>/24 and .<2k>/24 for k = ``addr_index``. Removed on exit."""
    with NetLab(DEV_NS_PREFIX) as lab:
        ns = lab.namespace()
        lab.veth(
            ns,
            "vtd0",
            ns,
            "vtd1",
            queues=queues,
            ip_a=f"203.0.113.{2 * addr_index - 1}",
            ip_b=f"203.0.113.{2 * addr_index}",
            ipv6=True,
        )
        yield VethNs(ns=ns, a="vtd0", b="vtd1")


def _require_kernel_marker(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("kernel") is None:
        pytest.fail(f"{request.node.nodeid} uses a test network but lacks the kernel marker", False)


@pytest.fixture
def veth(request: pytest.FixtureRequest) -> Iterator[VethPair]:
    """A 2-queue veth pair between two fresh namespaces."""
    _require_kernel_marker(request)
    with NetLab(NS_PREFIX) as lab:
        yield make_veth_pair(lab, queues=2)


@pytest.fixture
def veth_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., VethPair]]:
    """Make veth pairs with chosen queues/MTU; all removed at the end of the test."""
    _require_kernel_marker(request)
    with ExitStack() as stack:

        def make(queues: int = 2, mtu: int | None = None) -> VethPair:
            lab = stack.enter_context(NetLab(NS_PREFIX))
            return make_veth_pair(lab, queues=queues, mtu=mtu)

        yield make


@pytest.fixture
def vtdev_ns(request: pytest.FixtureRequest) -> Iterator[VethNs]:
    _require_kernel_marker(request)
    with veth_namespace() as env:
        yield env


@pytest.fixture
def vtdev_ns_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., VethNs]]:
    """Make more namespaces in one test; all are removed at the end."""
    _require_kernel_marker(request)
    with ExitStack() as stack:

        def make(queues: int = 4, addr_index: int = 1) -> VethNs:
            return stack.enter_context(veth_namespace(queues, addr_index))

        yield make


@pytest.fixture
def xdp_pass_fd(request: pytest.FixtureRequest) -> Iterator[int]:
    """An fd of a loaded two-instruction XDP program (``r0 = XDP_PASS; exit``), made with
    the bpf() syscall so no compiler is needed. Closed (and so freed) afterwards."""
    _require_kernel_marker(request)
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 2) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    fd = bpfsys.prog_load(K.BPF_PROG_TYPE_XDP, insns, "vtdev_pass", license="GPL")
    try:
        yield fd
    finally:
        os.close(fd)
