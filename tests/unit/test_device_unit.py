"""Unit tests of the device layer: value types, decisions and prepare/restore, over the
FakeDeviceLayer (no kernel)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vtnet_py.device import (
    Channels,
    DeviceInfo,
    FakeDeviceLayer,
    Feature,
    SavedState,
    check_xdp_preconditions,
    features_from_netlink,
    make_info,
    parse_virtio_features,
    plan_channels,
    plan_offloads,
    prepare,
    refuse_default_route,
    restore,
    support_mode,
    virtio_xdp_mtu_limit,
    vnet_hdr_len_for,
)
from vtnet_py.device.netlink import default_route_oifs
from vtnet_py.errors import BusyError, DeviceError, InterfaceChangedError, RefusedError

# A real virtio-net feature string (a QEMU NIC without ctrl_guest_offloads): bits 0 1 5 7
# 8 10 11 12 14 15 29 32 -> GUEST_CSUM, GUEST_TSO4/6, GUEST_UFO, MRG_RXBUF, VERSION_1.
NO_CTRL_OFFLOADS = "11000101101110110000000000000100100000000000000000000000000000000"


def bits(*nums: int) -> frozenset[int]:
    return frozenset(nums)


# QEMU's defaults: CSUM, GUEST_CSUM, CTRL_GUEST_OFFLOADS, GUEST_TSO4/6, MRG_RXBUF, CTRL_VQ,
# MQ, VERSION_1.
QEMU_DEFAULT = bits(0, 1, 2, 7, 8, 15, 17, 22, 32)

VETH_FEATURES: dict[str, bool | tuple[bool, bool]] = {
    "rx-checksum": True,
    "tx-checksum-ipv4": (False, True),
    "tx-checksum-ip-generic": True,
    "tx-checksum-sctp": True,
    "tx-scatter-gather": True,
    "tx-tcp-segmentation": True,
    "tx-tcp6-segmentation": True,
    "tx-generic-segmentation": True,
    "tx-udp-segmentation": True,
    "tx-gre-segmentation": True,
    "rx-gro": False,
    "rx-lro": (False, True),
    "rx-gro-hw": (False, True),
    "rx-gro-list": False,
    "rx-vlan-hw-parse": True,
    "highdma": True,
}


def veth(name: str = "vt0", **kw: object) -> DeviceInfo:
    kw.setdefault("channels", Channels(rx=4, tx=4, max_rx=4, max_tx=4))
    kw.setdefault("features", VETH_FEATURES)
    return make_info(name, driver="veth", **kw)  # type: ignore[arg-type]


def virtio(name: str = "enp0s3", **kw: object) -> DeviceInfo:
    kw.setdefault("channels", Channels(combined=2, max_combined=4))
    kw.setdefault(
        "features",
        {
            "rx-checksum": True,
            "tx-checksum-ip-generic": True,
            "tx-tcp-segmentation": True,
            "tx-tcp6-segmentation": True,
            "tx-generic-segmentation": True,
            "rx-gro": True,
            "rx-gro-hw": True,
            "rx-lro": (False, True),
        },
    )
    kw.setdefault("virtio_features", QEMU_DEFAULT)
    kw.setdefault("vnet_hdr_len", 12)
    return make_info(name, driver="virtio_net", **kw)  # type: ignore[arg-type]


K61 = (6, 1)
K66 = (6, 6)


# -- value types ----------------------------------------------------------------------------


def test_parse_virtio_features_and_header_length() -> None:
    feats = parse_virtio_features(NO_CTRL_OFFLOADS + "\n")
    assert feats == bits(0, 1, 5, 7, 8, 10, 11, 12, 14, 15, 29, 32)
    assert vnet_hdr_len_for(feats) == 12
    assert vnet_hdr_len_for(bits(0, 1, 15)) == 12  # MRG_RXBUF, legacy
    assert vnet_hdr_len_for(bits(0, 1, 32)) == 12  # VERSION_1 without MRG_RXBUF
    assert vnet_hdr_len_for(bits(0, 1, 7)) == 10
    assert vnet_hdr_len_for(bits(15, 32, 57)) == 20  # HASH_REPORT
    with pytest.raises(ValueError, match="unexpected characters"):
        parse_virtio_features("10x1")


def test_channels_from_netlink_mapping_and_object() -> None:
    rec = {
        "max_rx": 0,
        "max_tx": 0,
        "max_other": 1,
        "max_combined": 4,
        "rx_count": 0,
        "tx_count": 0,
        "other_count": 1,
        "combined_count": 2,
    }
    ch = Channels.from_netlink(rec)
    assert ch == Channels(other=1, combined=2, max_other=1, max_combined=4)
    assert ch.reports_combined

    class Obj:
        rx_count, tx_count, max_rx, max_tx = 3, 2, 4, 4

    ch2 = Channels.from_netlink(Obj())
    assert (ch2.rx, ch2.tx, ch2.combined, ch2.max_rx) == (3, 2, 0, 4)
    assert not ch2.reports_combined


def test_features_from_netlink_fixed_and_unnamed() -> None:
    feats = features_from_netlink(
        [
            ("rx-gro-hw", True, False, True),
            ("", False, False, False),
            ("tx-tcp-segmentation", False, True, True),
        ]
    )
    assert set(feats) == {"rx-gro-hw", "tx-tcp-segmentation"}
    assert feats["rx-gro-hw"] == Feature("rx-gro-hw", active=True, fixed=True, requested=True)
    tso = feats["tx-tcp-segmentation"]
    assert not tso.fixed and not tso.active and tso.wanted


def _link(**over: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "ifname": "enp0s3",
        "ifindex": 2,
        "mtu": 1500,
        "max_mtu": 65535,
        "operstate": "UP",
        "flags": 0x11043,
        "xdp": {"attached": None},
    }
    rec.update(over)
    return rec


def test_deviceinfo_from_netlink_virtio() -> None:
    info = DeviceInfo.from_netlink(
        _link(xdp={"attached": "xdp", "prog_id": 31}),
        driver="virtio_net",
        bus_info="0000:00:03.0",
        channels=Channels(combined=2, max_combined=4),
        virtio_features=QEMU_DEFAULT,
        carries_default_route=True,
    )
    assert (info.xdp_prog_id, info.xdp_mode) == (31, "native")
    assert info.vnet_hdr_len == 12 and info.virtio_features == QEMU_DEFAULT
    assert info.rx_queues == info.tx_queues == 2
    assert info.oper_up and info.carries_default_route and info.max_mtu == 65535


def test_deviceinfo_from_netlink_veth_and_xdp_modes() -> None:
    info = DeviceInfo.from_netlink(
        _link(ifname="vt0", operstate="LOWERLAYERDOWN", xdp={"attached": 2, "skb_prog_id": 9}),
        driver="veth",
        channels=Channels(rx=3, tx=2, max_rx=4, max_tx=4),
        virtio_features=QEMU_DEFAULT,  # ignored: not virtio_net
    )
    assert (info.xdp_prog_id, info.xdp_mode) == (9, "generic")
    assert (info.rx_queues, info.tx_queues) == (3, 2)
    assert info.vnet_hdr_len is None and info.virtio_features is None
    assert not info.oper_up
    multi = DeviceInfo.from_netlink(
        _link(xdp={"attached": "xdpmulti", "drv_prog_id": 5, "skb_prog_id": 6}), driver="x"
    )
    assert (multi.xdp_prog_id, multi.xdp_mode) == (5, "native")
    none = DeviceInfo.from_netlink(_link(operstate="UNKNOWN", flags=0x41), driver="tun")
    assert none.xdp_prog_id is None and none.xdp_mode is None and none.oper_up
    assert none.rx_queues == none.tx_queues == 1  # no channels reported


def test_default_route_oifs() -> None:
    routes = [
        {"dst_len": 0, "type": 1, "RTA_OIF": 3},
        {"dst_len": 24, "type": 1, "RTA_OIF": 4},
        {"dst_len": 0, "type": 2, "RTA_OIF": 5},  # local, not unicast
        {"dst_len": 0, "type": 1, "RTA_MULTIPATH": [{"oif": 6}, {"oif": 7}]},
    ]
    assert default_route_oifs(routes) == {3, 6, 7}


# -- virtio_net preconditions ------------------------------------------------------------


def test_guest_offloads_without_ctrl_refused_in_virtio_words() -> None:
    info = virtio(virtio_features=parse_virtio_features(NO_CTRL_OFFLOADS))
    with pytest.raises(RefusedError) as ei:
        check_xdp_preconditions(info, kernel=K61, cpus=2, page_size=4096)
    assert str(ei.value) == (
        "enp0s3: virtio_net: Can't set XDP while host is implementing GRO_HW/CSUM, "
        "disable GRO_HW/CSUM first (the host negotiated GUEST_TSO4, GUEST_TSO6, GUEST_UFO, "
        "GUEST_CSUM without CTRL_GUEST_OFFLOADS, so the guest cannot switch them off; give "
        "the device ctrl_guest_offloads=on, or turn those guest offloads off on the host side)"
    )
    # Same device with CTRL_GUEST_OFFLOADS: the driver can switch them off itself.
    assert info.virtio_features is not None
    ok = dataclasses.replace(info, virtio_features=info.virtio_features | {2})
    assert check_xdp_preconditions(ok, kernel=K61, cpus=2, page_size=4096) == []
    # Guest USO joined the check in 6.2.
    uso = virtio(virtio_features=bits(15, 32, 54))
    assert check_xdp_preconditions(uso, kernel=K61, cpus=2, page_size=4096) == []
    with pytest.raises(RefusedError, match="GUEST_USO4 without CTRL_GUEST_OFFLOADS"):
        check_xdp_preconditions(uso, kernel=(6, 2), cpus=2, page_size=4096)


def test_mergeable_without_any_header_sg_refused() -> None:
    info = virtio(virtio_features=bits(15))  # legacy device: MRG_RXBUF only
    with pytest.raises(RefusedError) as ei:
        check_xdp_preconditions(info, kernel=K61, cpus=2, page_size=4096)
    assert str(ei.value) == (
        "enp0s3: virtio_net: XDP expects header/data in single page, any_header_sg required "
        "(MRG_RXBUF was negotiated without ANY_LAYOUT or VERSION_1: a legacy device; use a "
        "virtio 1.0 (modern) device)"
    )
    for extra in (27, 32):  # ANY_LAYOUT or VERSION_1 give any_header_sg
        ok = virtio(virtio_features=bits(15, extra))
        assert check_xdp_preconditions(ok, kernel=K61, cpus=2, page_size=4096) == []


def test_mtu_limit_6_1_matches_what_the_guest_printed() -> None:
    # The 6.1 guest in the VM harness printed "XDP requires MTU less than 4064".
    assert virtio_xdp_mtu_limit(K61, 4096) == 4064
    assert check_xdp_preconditions(virtio(mtu=4064), kernel=K61, cpus=2, page_size=4096) == []
    with pytest.raises(RefusedError) as ei:
        check_xdp_preconditions(virtio(mtu=9000), kernel=K61, cpus=2, page_size=4096)
    assert str(ei.value) == (
        "enp0s3: virtio_net: MTU too large to enable XDP "
        "(XDP requires MTU less than 4064; MTU is 9000)"
    )
    # 6.1 has no multi-buffer XDP in virtio_net: frags do not help.
    with pytest.raises(RefusedError, match="has no multi-buffer XDP"):
        check_xdp_preconditions(virtio(mtu=4065), frags=True, kernel=K61, cpus=2, page_size=4096)


def test_mtu_limit_6_3_and_frags() -> None:
    assert virtio_xdp_mtu_limit(K66, 4096) == 3506
    with pytest.raises(RefusedError) as ei:
        check_xdp_preconditions(virtio(mtu=4000), kernel=K66, cpus=2, page_size=4096)
    assert str(ei.value) == (
        "enp0s3: virtio_net: MTU too large to enable XDP without frags "
        "(single-buffer XDP requires MTU less than 3506; MTU is 4000)"
    )
    assert (
        check_xdp_preconditions(virtio(mtu=9000), frags=True, kernel=K66, cpus=2, page_size=4096)
        == []
    )


def test_too_few_queue_pairs_is_a_warning_with_its_cost() -> None:
    info = virtio(channels=Channels(combined=4, max_combined=4))
    warns = check_xdp_preconditions(info, kernel=K61, cpus=4, page_size=4096)
    assert len(warns) == 1 and warns[0].code == "xdp-locked-tx"
    assert str(warns[0]) == (
        "enp0s3: XDP request 8 queues but max is 4. XDP_TX and XDP_REDIRECT will operate in "
        "a slower locked tx mode. (Cost: without a TX queue per CPU for XDP, frames sent by "
        "XDP_TX or redirected to enp0s3 share the stack's 4 TX queue(s) under a spin lock, "
        "so they contend with each other and with normal traffic; AF_XDP receive is not "
        "affected. To avoid it, give the device at least 8 queue pairs.)"
    )
    # 2 in use + 2 CPUs fits in 4: nothing to say.
    assert check_xdp_preconditions(virtio(), kernel=K61, cpus=2, page_size=4096) == []
    # 3 in use + 2 CPUs does not; fewer rings would fit.
    warns = check_xdp_preconditions(
        virtio(channels=Channels(combined=3, max_combined=4)),
        kernel=K61,
        cpus=2,
        page_size=4096,
    )
    assert warns[0].message.endswith(
        "give the device at least 5 queue pairs, or use at most 2 rings.)"
    )


def test_checks_only_for_native_virtio() -> None:
    bad = virtio(mtu=9000, virtio_features=bits(15))
    assert check_xdp_preconditions(bad, mode="generic", kernel=K61, cpus=2) == []
    assert check_xdp_preconditions(veth(mtu=9000), kernel=K61, cpus=64) == []


def test_unknown_virtio_features_warn_but_mtu_still_checked() -> None:
    info = virtio(virtio_features=None, vnet_hdr_len=None)
    warns = check_xdp_preconditions(info, kernel=K61, cpus=2, page_size=4096)
    assert [w.code for w in warns] == ["virtio-features-unknown"]
    assert warns[0].message.startswith("enp0s3: the negotiated virtio features are not visible")
    with pytest.raises(RefusedError, match="MTU too large"):
        check_xdp_preconditions(
            dataclasses.replace(info, mtu=9000), kernel=K61, cpus=2, page_size=4096
        )


def test_checks_run_in_the_kernel_order() -> None:
    # Both the offload and the MTU condition fail: virtio_net reports the offloads first.
    info = virtio(mtu=9000, virtio_features=bits(1, 15, 32))
    with pytest.raises(RefusedError, match="GRO_HW/CSUM"):
        check_xdp_preconditions(info, kernel=K61, cpus=2, page_size=4096)


# -- default route, support mode ---------------------------------------------------------


def test_default_route_refused_unless_forced() -> None:
    info = virtio(carries_default_route=True)
    with pytest.raises(RefusedError) as ei:
        refuse_default_route(info, force=False)
    assert str(ei.value) == (
        "enp0s3 carries the default route of this network namespace: taking it over would "
        "cut this machine's traffic; use --force to attach anyway"
    )
    refuse_default_route(info, force=True)
    refuse_default_route(virtio(), force=False)


def test_support_mode() -> None:
    assert support_mode(virtio()) == ("native", None)
    assert support_mode(veth()) == ("native", None)
    mode, warn = support_mode(make_info("tap0", driver="tun"))
    assert mode == "generic"
    assert warn == (
        "tap0: driver 'tun' has no native XDP support known to vtnetmap; using generic (SKB) "
        "XDP, which copies every frame through an skb and is several times slower (like "
        "netmap's emulated mode)"
    )
    mode, warn = support_mode(veth(), "generic")
    assert mode == "generic" and warn is not None and "forced on veth" in warn
    mode, warn = support_mode(make_info("tap0", driver="tun"), "native")
    assert mode == "native" and warn is not None and "native XDP forced on driver 'tun'" in warn
    assert support_mode(make_info("tap0", driver="tun"), "generic") == ("generic", None)
    with pytest.raises(ValueError, match="unknown XDP mode 'offload'"):
        support_mode(veth(), "offload")


# -- offload plan -----------------------------------------------------------------------------


def test_plan_offloads_turns_off_what_is_on_and_changeable() -> None:
    plan = plan_offloads(veth())
    assert plan == {
        "rx-checksum": False,
        "tx-checksum-ip-generic": False,
        "tx-checksum-sctp": False,
        "tx-generic-segmentation": False,
        "tx-gre-segmentation": False,
        "tx-tcp-segmentation": False,
        "tx-tcp6-segmentation": False,
        "tx-udp-segmentation": False,
    }
    # off already (rx-gro, fixed-off rx-lro) or unrelated (scatter-gather): untouched
    assert not {"rx-gro", "rx-lro", "rx-gro-hw", "tx-scatter-gather", "highdma"} & set(plan)


def test_plan_offloads_includes_requested_but_held_off() -> None:
    # TSO wanted on but held off by the kernel (no TX checksum): it would come back with
    # the checksum, so it is part of the plan.
    info = dataclasses.replace(
        veth(),
        features={
            "tx-tcp-segmentation": Feature("tx-tcp-segmentation", active=False, requested=True),
            "tx-checksum-ip-generic": Feature("tx-checksum-ip-generic", active=False),
        },
    )
    assert plan_offloads(info) == {"tx-tcp-segmentation": False}


def test_plan_offloads_refuses_fixed_on_blocker() -> None:
    info = virtio(
        features={
            "rx-gro-hw": (True, True),
            "rx-checksum": (True, True),
            "tx-tcp-segmentation": True,
        }
    )
    with pytest.raises(RefusedError) as ei:
        plan_offloads(info)
    assert str(ei.value) == (
        "enp0s3: offload rx-gro-hw is on and fixed by the driver 'virtio_net'; netmap mode "
        "needs it off (frames would reach the rings coalesced or with unfinished checksums)"
    )
    # A fixed-on rx-checksum alone only means checksums are verified: not a blocker.
    ok = virtio(features={"rx-checksum": (True, True), "tx-tcp-segmentation": True})
    assert plan_offloads(ok) == {"tx-tcp-segmentation": False}


def test_plan_channels() -> None:
    assert plan_channels(virtio(), None) == {}
    assert plan_channels(virtio(), 2) == {}
    assert plan_channels(virtio(), 4) == {"combined": 4}
    assert plan_channels(veth(), 2) == {"rx": 2, "tx": 2}
    with pytest.raises(RefusedError) as ei:
        plan_channels(virtio(), 8)
    assert str(ei.value) == (
        "enp0s3: 8 rings requested but the driver offers at most 4 combined channels"
    )
    with pytest.raises(RefusedError, match="at most 4 rx / 4 tx channels"):
        plan_channels(veth(), 5)
    with pytest.raises(RefusedError, match="at least 1"):
        plan_channels(veth(), 0)
    tun = make_info("tap0", driver="tun")
    assert plan_channels(tun, 1) == {}
    with pytest.raises(RefusedError, match="does not report channels"):
        plan_channels(tun, 2)


# -- prepare / restore ------------------------------------------------------------------------


def test_prepare_sets_channels_then_offloads_and_restore_puts_back_exactly() -> None:
    orig = veth()
    layer = FakeDeviceLayer([orig])
    saved = prepare(layer, "vt0", rings=2)
    muts = layer.mutating_calls()
    assert [c[0] for c in muts] == ["set_channels", "set_features"]
    assert muts[0][2] == {"combined": None, "rx": 2, "tx": 2}
    assert muts[1][2] == plan_offloads(orig)
    now = layer.read_quiet("vt0")
    assert (now.channels.rx, now.channels.tx) == (2, 2)
    assert not any(now.features[n].active for n in plan_offloads(orig))
    assert saved.mode == "native" and saved.channels == {"rx": 4, "tx": 4}
    assert saved.features == {n: True for n in plan_offloads(orig)}

    restore(layer, SavedState.from_json(saved.to_json()))
    assert layer.read_quiet("vt0") == orig
    # Restoring again changes nothing.
    n = len(layer.mutating_calls())
    restore(layer, saved)
    assert len(layer.mutating_calls()) == n


def test_prepare_records_side_effect_changes() -> None:
    # The kernel drops features that lose their prerequisite (netdev_fix_features); the
    # fake models one such dependency on a feature outside the plan.
    orig = veth()
    layer = FakeDeviceLayer(
        [orig],
        requires_any={"rx-vlan-hw-parse": ("rx-checksum",)},
    )
    saved = prepare(layer, "vt0")
    assert "rx-vlan-hw-parse" not in plan_offloads(orig)
    assert saved.features["rx-vlan-hw-parse"] is True
    assert not layer.read_quiet("vt0").features["rx-vlan-hw-parse"].active
    restore(layer, saved)
    assert layer.read_quiet("vt0") == orig


def test_prepare_nothing_to_do() -> None:
    quiet = veth(features={"rx-gro": False, "rx-lro": (False, True)})
    layer = FakeDeviceLayer([quiet])
    saved = prepare(layer, "vt0")
    assert saved.channels is None and saved.features == {}
    assert layer.mutating_calls() == []


def test_prepare_refuses_default_route_without_touching_anything() -> None:
    layer = FakeDeviceLayer([virtio(carries_default_route=True)])
    with pytest.raises(RefusedError, match="carries the default route"):
        prepare(layer, "enp0s3", rings=4, cpus=2, kernel=K61, page_size=4096)
    assert layer.mutating_calls() == []
    saved = prepare(layer, "enp0s3", force=True, cpus=2, kernel=K61, page_size=4096)
    assert saved.features


def test_prepare_refuses_virtio_precondition_before_changes() -> None:
    layer = FakeDeviceLayer([virtio(mtu=9000)])
    with pytest.raises(RefusedError, match="MTU too large to enable XDP"):
        prepare(layer, "enp0s3", rings=4, kernel=K61, cpus=2, page_size=4096)
    assert layer.mutating_calls() == []
    # generic mode does not go through virtnet_xdp_set
    saved = prepare(layer, "enp0s3", mode="generic", kernel=K61, cpus=2, page_size=4096)
    assert saved.mode == "generic"


def test_prepare_checks_queue_pairs_on_the_new_channel_count() -> None:
    layer = FakeDeviceLayer([virtio(channels=Channels(combined=1, max_combined=4))])
    saved = prepare(layer, "enp0s3", rings=2, kernel=K61, cpus=2, page_size=4096)
    assert saved.warnings == ()
    restore(layer, saved)
    saved = prepare(layer, "enp0s3", rings=4, kernel=K61, cpus=2, page_size=4096)
    assert len(saved.warnings) == 1
    assert saved.warnings[0].startswith("enp0s3: XDP request 6 queues but max is 4.")
    assert saved.channels == {"combined": 1}


def test_prepare_undoes_channels_when_offloads_fail() -> None:
    orig = virtio()
    layer = FakeDeviceLayer([orig])
    layer.refuse_feature("enp0s3", "rx-gro-hw")  # EBUSY, as virtio_net with XDP attached
    with pytest.raises(BusyError) as ei:
        prepare(layer, "enp0s3", rings=4, kernel=K61, cpus=2, page_size=4096)
    assert str(ei.value).startswith(
        "enp0s3: the driver refused to set features (rx-gro-hw off): device busy (EBUSY)"
    )
    assert layer.read_quiet("enp0s3") == orig
    assert [c[0] for c in layer.mutating_calls()] == [
        "set_channels",
        "set_features",
        "set_channels",
    ]


def test_prepare_undo_failure_is_noted() -> None:
    orig = virtio()
    layer = FakeDeviceLayer([orig])
    layer.refuse_feature("enp0s3", "rx-gro-hw", reason="EINVAL")
    real_set_channels = layer.set_channels
    calls = {"n": 0}

    def flaky(ifname: str, combined: int | None = None, **kw: int | None) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RefusedError(f"{ifname}: the driver refused to set channels (EINVAL)")
        real_set_channels(ifname, combined=combined, **kw)

    layer.set_channels = flaky  # type: ignore[method-assign, assignment]
    with pytest.raises(RefusedError) as ei:
        prepare(layer, "enp0s3", rings=4, kernel=K61, cpus=2, page_size=4096)
    notes = getattr(ei.value, "__notes__", [])
    assert notes == [
        "enp0s3: could not restore channels {'combined': 2} after the failure: "
        "enp0s3: the driver refused to set channels (EINVAL)"
    ]


def test_prepare_refused_channels_leaves_device_as_found() -> None:
    orig = veth()
    layer = FakeDeviceLayer([orig])
    layer.refuse_channels("vt0")
    with pytest.raises(RefusedError) as ei:
        prepare(layer, "vt0", rings=2)
    assert str(ei.value) == "vt0: the driver refused to set channels to rx 2 tx 2 (EINVAL)"
    assert layer.read_quiet("vt0") == orig
    assert [c[0] for c in layer.mutating_calls()] == ["set_channels"]


def test_prepare_refuses_channel_change_on_virtio_with_xdp() -> None:
    layer = FakeDeviceLayer([virtio(xdp_prog_id=12, xdp_mode="native")])
    with pytest.raises(RefusedError) as ei:
        prepare(layer, "enp0s3", rings=4, kernel=K61, cpus=2, page_size=4096)
    assert str(ei.value) == (
        "enp0s3: virtio_net refuses to change channels while an XDP program is attached "
        "(program id 12); detach it first"
    )
    assert layer.mutating_calls() == []


def test_prepare_fixed_blocker_named() -> None:
    layer = FakeDeviceLayer(
        [virtio(features={"rx-gro-hw": (True, True)}, virtio_features=QEMU_DEFAULT)]
    )
    with pytest.raises(RefusedError, match="offload rx-gro-hw is on and fixed"):
        prepare(layer, "enp0s3", kernel=K61, cpus=2, page_size=4096)
    assert layer.mutating_calls() == []


def test_prepare_unknown_interface() -> None:
    with pytest.raises(DeviceError) as ei:
        prepare(FakeDeviceLayer(), "nope0")
    assert str(ei.value) == "interface 'nope0' does not exist (in this network namespace)"


def test_fake_read_channels_is_not_a_mutation() -> None:
    layer = FakeDeviceLayer([veth()])
    assert layer.read_channels("vt0") == Channels(rx=4, tx=4, max_rx=4, max_tx=4)
    assert layer.calls == [("read_channels", "vt0", None)] and layer.mutating_calls() == []


def test_fake_set_features_refuses_fixed_like_the_real_layer() -> None:
    layer = FakeDeviceLayer([veth()])
    with pytest.raises(RefusedError) as ei:
        layer.set_features("vt0", {"rx-lro": True})
    assert str(ei.value) == "vt0: feature 'rx-lro' is fixed off by the driver"
    with pytest.raises(RefusedError, match="has no feature 'rx-nonsense'"):
        layer.set_features("vt0", {"rx-nonsense": False})


def test_restore_on_replaced_interface() -> None:
    layer = FakeDeviceLayer([veth()])
    saved = prepare(layer, "vt0")
    layer.add(veth(ifindex=99))
    with pytest.raises(InterfaceChangedError) as ei:
        restore(layer, saved)
    assert str(ei.value) == (
        "vt0: the interface was replaced (ifindex 7 -> 99); its saved offloads and channels "
        "were not applied to the new one"
    )


def test_restore_tries_channels_even_if_features_fail() -> None:
    orig = veth()
    layer = FakeDeviceLayer([orig])
    saved = prepare(layer, "vt0", rings=1)
    layer.refuse_feature("vt0", "rx-checksum", reason="EINVAL")
    with pytest.raises(RefusedError, match=r"rx-checksum on\) \(EINVAL\)"):
        restore(layer, saved)
    assert layer.read_quiet("vt0").channels == orig.channels


def test_saved_state_json() -> None:
    s = SavedState(
        ifname="vt0",
        ifindex=3,
        driver="veth",
        mode="native",
        channels={"rx": 4, "tx": 4},
        features={"rx-gro": True, "rx-checksum": False},
        warnings=("w",),
    )
    assert SavedState.from_json(s.to_json()) == s
    assert json.loads(s.to_json())["version"] == 1
    for bad in (
        "[]",
        "not json",
        json.dumps({**json.loads(s.to_json()), "version": 2}),
        json.dumps({**json.loads(s.to_json()), "channels": {"rx": "4"}}),
        json.dumps({**json.loads(s.to_json()), "features": {"rx-gro": 1}}),
        json.dumps({**json.loads(s.to_json()), "mode": "offload"}),
    ):
        with pytest.raises(DeviceError, match="saved device state is not readable"):
            SavedState.from_json(bad)
