"""The plan of an open and the undo of its steps, without root or a kernel.

``plan_attach``/``plan_port`` are pure: they are computed here from make_info values with
every syscall that could sneak in made to fail.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import pytest

from vtnet_py.device.fake import make_info
from vtnet_py.device.netlink import real_queues, sysfs_shows
from vtnet_py.device.types import Channels, DeviceInfo
from vtnet_py.errors import DeviceError, RefusedError, UnsupportedError
from vtnet_py.netmap.plan import (
    DEFAULT_RX_SLOTS,
    DEFAULT_TX_SLOTS,
    NR_BUF_SIZE,
    OpenOptions,
    PortPlan,
    QueuePlan,
    plan_attach,
    plan_port,
)
from vtnet_py.netmap.port import Port
from vtnet_py.netmap.portname import parse_port_name

SLOTS = DEFAULT_RX_SLOTS + DEFAULT_TX_SLOTS


def veth(queues: int = 2, **kw: object) -> DeviceInfo:
    return make_info("vt0", driver="veth", channels=Channels(rx=queues, tx=queues), **kw)  # type: ignore[arg-type]


@contextmanager
def no_syscalls() -> Iterator[None]:
    """Inside: opening a file or a socket, or stat()-ing a path, fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the plan made a syscall: {args}")

    with ExitStack() as stack:
        for target in ("builtins.open", "os.open", "os.stat", "socket.socket"):
            stack.enter_context(mock.patch(target, refuse))
        yield


def plan(
    name: str,
    info: DeviceInfo | None = None,
    queues: tuple[int, int] | None = None,
    tx_limit: int | None = None,
    **opts: object,
) -> PortPlan:
    info = info if info is not None else veth()
    q = queues if queues is not None else (info.rx_queues, info.tx_queues)
    return plan_port(
        parse_port_name(name),
        info,
        OpenOptions(**opts),
        queues=q,
        tx_limit=tx_limit,  # type: ignore[arg-type]
    )


def test_all_ring_pairs() -> None:
    p = plan("netmap:vt0")
    assert p.queues == (QueuePlan(0, True, True), QueuePlan(1, True, True))
    assert (p.rx_slots, p.tx_slots) == (DEFAULT_RX_SLOTS, DEFAULT_TX_SLOTS)
    assert p.buffers == 2 * SLOTS
    assert p.attach.steer and p.attach.xdp_mode == "native" and p.attach.warning is None
    assert not p.frags and not p.host and p.nic_tx
    assert p.attach.zerocopy == "auto"
    assert (p.name, p.ifname, p.ifindex) == ("netmap:vt0", "vt0", 7)


def test_suffixes_and_slots() -> None:
    p = plan("netmap:vt0-1/R@conf:rx-slots=256")
    assert p.queues == (QueuePlan(1, True, False),)
    assert p.buffers == 256 and not p.nic_tx and p.attach.steer
    t = plan("netmap:vt0/T@conf:slots=64")
    assert t.queues == (QueuePlan(0, False, True), QueuePlan(1, False, True))
    assert t.buffers == 128 and not t.attach.steer  # TX only: no steering program


def test_host_rings() -> None:
    h = plan("netmap:vt0^")
    assert h.queues == () and h.host_rx and h.host_tx and h.buffers == SLOTS
    assert not h.attach.steer
    both = plan("netmap:vt0*")
    assert len(both.queues) == 2 and both.buffers == 3 * SLOTS
    assert both.attach.zerocopy == "off"  # host rings share the memory: copy mode
    with pytest.raises(UnsupportedError, match=r"netmap:vt0\*: host rings .* copy mode only"):
        plan("netmap:vt0*", zerocopy="on")


def test_frags_follow_the_mtu() -> None:
    jumbo = veth(mtu=9000)
    assert plan("netmap:vt0", jumbo).frags
    with pytest.raises(UnsupportedError, match="netmap:vt0: vt0 MTU 9000 does not fit one"):
        plan("netmap:vt0", jumbo, frags=False)
    assert not plan("netmap:vt0/T", jumbo, frags=False).frags  # TX only may stay single
    with pytest.raises(UnsupportedError, match="netmap:vt0: a virtio-net header"):
        plan("netmap:vt0", jumbo, vnet_hdr=12)
    shared = plan("netmap:vt0", veth(mtu=1500), nr_buf_size=1024)  # a smaller shared Memory
    assert shared.frags
    assert plan("netmap:vt0", vnet_hdr=12).vnet_hdr == 12


def test_queue_counts_come_from_the_device() -> None:
    with pytest.raises(UnsupportedError, match=r"@conf:rx-rings=3 but vt0 has 2"):
        plan("netmap:vt0@conf:rx-rings=3")
    assert len(plan("netmap:vt0@conf:rings=2").queues) == 2
    with pytest.raises(DeviceError, match=r"netmap:vt0-5: vt0 has no queue 5 \(2 rx / 2 tx"):
        plan("netmap:vt0-5")
    # attaching XDP added RX-only queue pairs (virtio_net): TX stays on the old queues
    p = plan("netmap:vt0", veth(4), queues=(4, 4), tx_limit=2)
    assert [(q.queue, q.rx, q.tx) for q in p.queues] == [
        (0, True, True),
        (1, True, True),
        (2, True, False),
        (3, True, False),
    ]
    with pytest.raises(DeviceError, match="netmap:vt0-3/T: no ring to bind on vt0"):
        plan("netmap:vt0-3/T", veth(4), queues=(4, 4), tx_limit=2)


def test_default_route_and_xdp_mode() -> None:
    routed = veth(carries_default_route=True)
    with pytest.raises(RefusedError, match="vt0 carries the default route"):
        plan("netmap:vt0", routed)
    assert plan("netmap:vt0", routed, force=True).queues
    tun = make_info("tap0", driver="tun", channels=Channels(rx=1, tx=1))
    with no_syscalls():
        a = plan_attach(parse_port_name("netmap:tap0"), tun, OpenOptions())
    assert a.xdp_mode == "generic" and a.warning and "tap0" in a.warning
    # a program is already attached: joined as it is, no mode decided here
    joined = plan_attach(parse_port_name("netmap:vt0"), veth(xdp_prog_id=5), OpenOptions())
    assert joined.steer and joined.xdp_mode is None and joined.warning is None


def test_the_plan_is_frozen() -> None:
    p = plan("netmap:vt0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.rx_slots = 1  # type: ignore[misc]
    assert plan("netmap:vt0") == p  # the same inputs give the same plan
    assert NR_BUF_SIZE == OpenOptions().nr_buf_size


# --- the undo of the steps (Port.close) -------------------------------------------------


def test_close_undoes_the_steps_in_reverse_and_survives_a_failing_undo(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = Port(parse_port_name("netmap:vt0"))
    ran: list[str] = []

    def fail() -> None:
        ran.append("b")
        raise OSError("injected")

    port.done("a", lambda: ran.append("a"))
    port.done("b", fail)
    port.done("c", lambda: ran.append("c"))
    port.close()
    assert ran == ["c", "b", "a"]
    assert "netmap:vt0: undoing b: injected" in caplog.text
    port.close()  # idempotent: nothing runs twice
    assert ran == ["c", "b", "a"]


def test_close_in_another_process_releases_nothing() -> None:
    """A forked child's close (or finalizer) must not undo the parent's steps."""
    port = Port(parse_port_name("netmap:vt0"))
    ran: list[str] = []
    port.done("claim", lambda: ran.append("claim"))
    port._pid = os.getpid() + 1  # as seen from a child: opened by another pid
    port.close()
    assert ran == [] and port._undo == []


# --- sysfs identity: one check for virtio features and queue counts ---------------------


def fake_sysfs(root: Path, ifname: str, ifindex: int, address: str, queues: int) -> None:
    d = root / ifname
    (d / "queues").mkdir(parents=True)
    (d / "ifindex").write_text(f"{ifindex}\n")
    (d / "address").write_text(f"{address}\n")
    for i in range(queues):
        (d / "queues" / f"rx-{i}").mkdir()
        (d / "queues" / f"tx-{i}").mkdir()


def test_real_queues_read_sysfs_only_for_the_same_device(tmp_path: Path) -> None:
    fake_sysfs(tmp_path, "vt0", 7, "02:00:00:00:00:01", 3)
    same = veth(2, address="02:00:00:00:00:01")
    assert sysfs_shows("vt0", 7, "02:00:00:00:00:01", root=str(tmp_path))
    assert real_queues(same, root=str(tmp_path)) == (3, 3)
    other_mac = veth(2, address="02:00:00:00:00:02")  # same name in another namespace
    assert real_queues(other_mac, root=str(tmp_path)) == (2, 2)
    other_index = dataclasses.replace(same, ifindex=8)
    assert real_queues(other_index, root=str(tmp_path)) == (2, 2)
    assert real_queues(veth(2), root=str(tmp_path / "none")) == (2, 2)
