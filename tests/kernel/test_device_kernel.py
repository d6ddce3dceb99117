"""Kernel tests of the device layer on veth pairs inside throw-away namespaces.

The test process enters each namespace with setns (as the library does) and uses
NetlinkDeviceLayer there; results are compared with what iproute2/ethtool report.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping

import pytest
from nettest import VethNs, ethtool_channels, ethtool_features, in_netns, set_xdp

from vtnet_py.device import (
    NetlinkDeviceLayer,
    SavedState,
    plan_offloads,
    prepare,
    read_channels,
    read_device,
    restore,
)
from vtnet_py.errors import DeviceError, RefusedError

pytestmark = pytest.mark.kernel

# `ethtool -k` prints these kernel features under their old offload names.
ETHTOOL_LEGACY_NAMES = {
    "rx-checksum": "rx-checksumming",
    "tx-generic-segmentation": "generic-segmentation-offload",
    "rx-gro": "generic-receive-offload",
    "rx-lro": "large-receive-offload",
}


def _ip_link(env: VethNs, ifname: str) -> dict:
    return json.loads(env.ip("-j", "-d", "link", "show", "dev", ifname))[0]


def test_read_matches_iproute2_and_ethtool(vtdev_ns: VethNs) -> None:
    env = vtdev_ns
    with in_netns(env.ns):
        info = read_device(env.a)
        peer = read_device(env.b)
    link = _ip_link(env, env.a)
    assert info.ifname == env.a and info.ifindex == link["ifindex"]
    assert info.driver == "veth" and info.mtu == link["mtu"] == 1500
    assert info.max_mtu == link["max_mtu"]
    assert info.oper_up and peer.oper_up
    ch = ethtool_channels(env, env.a)
    assert (info.channels.rx, info.channels.tx, info.channels.combined) == (
        ch["rx"],
        ch["tx"],
        ch["combined"],
    )
    assert info.rx_queues == info.tx_queues == 4
    assert info.xdp_prog_id is None and info.xdp_mode is None
    assert info.vnet_hdr_len is None and info.virtio_features is None
    assert not info.carries_default_route
    k = ethtool_features(env, env.a)
    # ethtool prints kernel feature names for the non-legacy ones; spot-check a few.
    for name in ("rx-gro-hw", "tx-checksum-ip-generic", "tx-tcp-segmentation", "rx-gro-list"):
        assert info.features[name].active == k[name].startswith("on"), name
        assert info.features[name].fixed == ("[fixed]" in k[name]), name


def test_read_uses_the_callers_namespace(vtdev_ns_factory) -> None:
    two = vtdev_ns_factory(queues=2)
    three = vtdev_ns_factory(queues=3)
    with in_netns(two.ns):
        a2 = read_device("vtd0")
    with in_netns(three.ns):
        a3 = read_device("vtd0")
    assert (a2.rx_queues, a3.rx_queues) == (2, 3)
    # A thread started before setns stays in the original namespace meanwhile (threads
    # created while inside would inherit the namespace, as clone() copies it).
    seen: list[BaseException] = []
    go = threading.Event()

    def outside() -> None:
        go.wait(10)
        try:
            read_device("vtd0")
        except BaseException as exc:  # noqa: BLE001
            seen.append(exc)

    t = threading.Thread(target=outside)
    t.start()
    with in_netns(two.ns):
        go.set()
        t.join()
        assert read_device("vtd0").rx_queues == 2
    assert len(seen) == 1 and isinstance(seen[0], DeviceError), seen


def test_read_inside_asyncio_loop_in_namespace(vtdev_ns: VethNs) -> None:
    # pyroute2's sync API cannot run inside a running loop; the layer then uses a helper
    # thread, which must start in the caller's (current) namespace.
    async def main() -> tuple[int, int]:
        info = read_device("vtd0")
        return info.ifindex, read_channels("vtd0").rx

    with in_netns(vtdev_ns.ns):
        ifindex, rx = asyncio.run(main())
    assert ifindex == _ip_link(vtdev_ns, "vtd0")["ifindex"] and rx == 4


def test_unknown_interface(vtdev_ns: VethNs) -> None:
    with in_netns(vtdev_ns.ns), pytest.raises(DeviceError) as ei:
        read_device("vtdnope")
    assert str(ei.value) == "interface 'vtdnope' does not exist (in this network namespace)"


def test_prepare_and_restore_on_veth(vtdev_ns: VethNs) -> None:
    env = vtdev_ns
    feats_before = ethtool_features(env, env.a)
    chans_before = ethtool_channels(env, env.a)
    layer = NetlinkDeviceLayer()
    with in_netns(env.ns):
        info = layer.read(env.a)
        plan = plan_offloads(info)
        saved = prepare(layer, env.a, rings=2)
    assert plan and saved.mode == "native"
    assert saved.channels == {"rx": 4, "tx": 4}
    ch = ethtool_channels(env, env.a)
    assert (ch["rx"], ch["tx"]) == (2, 2)
    k = ethtool_features(env, env.a)
    for name in plan:
        shown = ETHTOOL_LEGACY_NAMES.get(name, name)
        assert k[shown].startswith("off"), (name, k[shown])
    # The legacy summary lines ethtool prints agree.
    for legacy in ("rx-checksumming", "tx-checksumming", "tcp-segmentation-offload",
                   "generic-segmentation-offload", "generic-receive-offload"):  # fmt: skip
        assert k[legacy].startswith("off"), (legacy, k[legacy])

    # Through the state file format, as `vtnetmap detach` will do.
    again = SavedState.from_json(saved.to_json())
    with in_netns(env.ns):
        restore(layer, again)
        restore(layer, again)  # idempotent
    assert ethtool_features(env, env.a) == feats_before
    assert ethtool_channels(env, env.a) == chans_before


class HalfFailingLayer(NetlinkDeviceLayer):
    """Applies half of its first feature request for real, then fails like a driver
    refusing; later requests (the undo) go through."""

    failed = False

    def set_features(self, ifname: str, features: Mapping[str, bool]) -> None:
        if self.failed:
            return super().set_features(ifname, features)
        self.failed = True
        names = sorted(features)
        super().set_features(ifname, {n: features[n] for n in names[: len(names) // 2]})
        raise RefusedError(f"{ifname}: injected failure after {names[: len(names) // 2]}")


def test_prepare_failure_half_way_leaves_device_as_found(vtdev_ns: VethNs) -> None:
    env = vtdev_ns
    feats_before = ethtool_features(env, env.a)
    chans_before = ethtool_channels(env, env.a)
    with in_netns(env.ns), pytest.raises(RefusedError, match="injected failure") as ei:
        prepare(HalfFailingLayer(), env.a, rings=3)
    assert not getattr(ei.value, "__notes__", None)  # the undo itself went through
    assert ethtool_features(env, env.a) == feats_before
    assert ethtool_channels(env, env.a) == chans_before


def test_set_channels_refused_by_veth(vtdev_ns: VethNs) -> None:
    with in_netns(vtdev_ns.ns):
        with pytest.raises(RefusedError) as ei:
            NetlinkDeviceLayer().set_channels("vtd0", combined=2)
        assert str(ei.value) == "vtd0: the driver refused to set channels to combined 2 (EINVAL)"
        with pytest.raises(RefusedError) as ei:
            NetlinkDeviceLayer().set_features("vtd0", {"rx-lro": True})
        assert str(ei.value) == "vtd0: feature 'rx-lro' is fixed off by the driver"
        # Asking a fixed feature for the state it has is not an error.
        NetlinkDeviceLayer().set_features("vtd0", {"rx-lro": False})
        assert read_device("vtd0").rx_queues == 4


def test_default_route_detection_and_refusal(vtdev_ns: VethNs) -> None:
    env = vtdev_ns
    env.ip("route", "add", "default", "via", "203.0.113.2", "dev", env.a)
    # IPv6: a device route only (no address needed); the peer carries it.
    env.ip("-6", "route", "add", "default", "dev", env.b)
    layer = NetlinkDeviceLayer()
    with in_netns(env.ns):
        a, b, lo = read_device(env.a), read_device(env.b), read_device("lo")
        assert a.carries_default_route and b.carries_default_route
        assert not lo.carries_default_route
        with pytest.raises(RefusedError) as ei:
            prepare(layer, env.a)
        assert str(ei.value).startswith("vtd0 carries the default route")
        assert ethtool_features(env, env.a)["rx-checksumming"].startswith("on")
        saved = prepare(layer, env.a, force=True)
        restore(layer, saved)
    env.ip("-6", "route", "del", "default", "dev", env.b)
    with in_netns(env.ns):
        assert not read_device(env.b).carries_default_route


@pytest.mark.parametrize("mode", ["generic", "native"])
def test_xdp_state_read(vtdev_ns: VethNs, xdp_pass_fd: int, mode: str) -> None:
    env = vtdev_ns
    with in_netns(env.ns):
        set_xdp(env.a, xdp_pass_fd, mode)
        try:
            info = read_device(env.a)
            prog_id = _ip_link(env, env.a)["xdp"]["prog"]["id"]
            assert (info.xdp_prog_id, info.xdp_mode) == (prog_id, mode)
        finally:
            set_xdp(env.a, -1, mode)
        assert read_device(env.a).xdp_prog_id is None
