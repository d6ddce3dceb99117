"""What a driver advertises for XDP/AF_XDP (the netdev generic netlink family, read by
hand) and how vtnetmap reports copy versus zero-copy mode: in `vtnetmap status --json`,
per ring of the calling process's ports, with the reason, and in a refused
``zerocopy="on"``.

The pure parts run without the kernel; the rest on veth pairs in namespaces the fixtures
make and remove (veth advertises XDP but not AF_XDP zero copy, and changes what it
advertises when its peer gets an XDP program: the reading is live, not a table).
"""

from __future__ import annotations

import json

import pytest
from nettest import VethPair, kernel

from vtnet_py import UnsupportedError, open_port
from vtnet_py._sys import abi as K
from vtnet_py._sys.netns import netns
from vtnet_py.admin.status import status
from vtnet_py.device import FakeDeviceLayer, make_info
from vtnet_py.device.netlink import nla, parse_nlattrs, read_device, read_xdp_features
from vtnet_py.device.types import XdpFeatures
from vtnet_py.errors import DeviceError
from vtnet_py.netmap.mode import NO_NETDEV_FAMILY, describe_port_mode, zerocopy_reason

VETH_XDP = {"basic", "redirect", "rx-sg"}  # what veth advertises with no program around

# --- without the kernel ------------------------------------------------------------------


def test_attributes_round_trip_and_features_decode() -> None:
    raw = (
        nla(K.NETDEV_A_DEV_IFINDEX, (7).to_bytes(4, "little"))
        + nla(K.NETDEV_A_DEV_XDP_FEATURES, (0b1001011).to_bytes(8, "little"))
        + nla(K.NETDEV_A_DEV_XDP_ZC_MAX_SEGS, (1).to_bytes(4, "little"))
        + nla(K.NETDEV_A_DEV_XSK_FEATURES, (0b11).to_bytes(8, "little"))
    )
    attrs = parse_nlattrs(raw)
    assert int.from_bytes(attrs[K.NETDEV_A_DEV_IFINDEX], "little") == 7
    f = XdpFeatures.from_netlink(attrs)
    assert f == XdpFeatures(xdp=0b1001011, xsk=0b11, zc_max_segs=1)
    assert f.zerocopy
    assert f.xdp_names == ["basic", "redirect", "xsk-zerocopy", "ndo-xmit-sg"]
    assert f.to_dict() == {
        "xdp_features": ["basic", "redirect", "xsk-zerocopy", "ndo-xmit-sg"],
        "xsk_features": ["tx-timestamp", "tx-checksum"],
        "xdp_zc_max_segs": 1,
        "xsk_zerocopy": True,
    }
    # a bit this version does not know is shown, not dropped
    assert XdpFeatures(xdp=1 << 40).xdp_names == ["bit-40"]
    # an old kernel sends no XSK features attribute: zero, not an error
    assert XdpFeatures.from_netlink({K.NETDEV_A_DEV_XDP_FEATURES: b"\x03" + b"\0" * 7}).xsk == 0


def test_truncated_attribute_stream_keeps_whole_attributes() -> None:
    raw = nla(1, b"abcd") + nla(2, b"efgh")
    assert parse_nlattrs(raw[:-2]) == {1: b"abcd"}
    assert parse_nlattrs(b"") == {}


@pytest.mark.parametrize(
    ("args", "kw", "words"),
    [
        ((True, "native", XdpFeatures(xdp=0b1011)), {}, "took the XDP_ZEROCOPY bind"),
        ((False, "native", XdpFeatures(xdp=0b11)), {}, "does not advertise xsk-zerocopy"),
        ((False, "generic", XdpFeatures(xdp=0b1011)), {}, "generic (skb) XDP copies"),
        ((False, "native", XdpFeatures(xdp=0b1011)), {"host_rings": True}, "host rings"),
        ((False, "native", XdpFeatures(xdp=0b1011)), {"recorded": "off"}, "--zerocopy off"),
        ((False, "native", XdpFeatures(xdp=0b1011)), {}, "copy mode was asked"),
        ((False, "native", None), {}, NO_NETDEV_FAMILY),
    ],
)
def test_zerocopy_reason(args: tuple, kw: dict, words: str) -> None:
    assert words in zerocopy_reason(*args, **kw)


def test_fake_layer_reports_configured_features() -> None:
    layer = FakeDeviceLayer([make_info("vtf0")])
    assert layer.read_xdp_features("vtf0", 1) is None
    layer.xdp_features["vtf0"] = XdpFeatures(xdp=3)
    assert layer.read_xdp_features("vtf0", 1) == XdpFeatures(xdp=3)
    with pytest.raises(DeviceError, match="vtf1"):
        layer.read_xdp_features("vtf1", 2)


# --- on veth -----------------------------------------------------------------------------


def _features(ns: str, ifname: str) -> XdpFeatures | None:
    with netns(ns):
        return read_xdp_features(ifname, read_device(ifname).ifindex)


@kernel
def test_veth_features_are_read_live(veth: VethPair) -> None:
    a, b = _features(veth.ns_a, veth.a), _features(veth.ns_b, veth.b)
    assert a is not None and b is not None, "this kernel (6.3+) has the netdev family"
    assert set(a.xdp_names) == set(b.xdp_names) == VETH_XDP
    assert not a.zerocopy and a.xsk == 0
    # veth can transmit XDP frames (ndo_xdp_xmit) into a peer that runs an XDP program
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a):
        after = _features(veth.ns_b, veth.b)
        assert after is not None
        assert set(after.xdp_names) == VETH_XDP | {"ndo-xmit", "ndo-xmit-sg"}
    assert _features(veth.ns_b, veth.b) == b


@kernel
def test_gone_interface_is_named(veth: VethPair) -> None:
    with netns(veth.ns_a), pytest.raises(DeviceError, match="'vtgone0'"):
        read_xdp_features("vtgone0", 1 << 30)


@kernel
def test_status_json_shows_features_and_ring_modes(veth: VethPair) -> None:
    with open_port(f"netmap:{veth.a}", netns=veth.ns_a) as port:
        st = status(veth.a, netns=veth.ns_a, ports=[port])["interfaces"][0]
        assert json.loads(json.dumps(st)) == st  # what --json prints
        assert st["driver_features"]["xdp_features"] == ["basic", "redirect", "rx-sg"]
        assert st["driver_features"]["xsk_zerocopy"] is False
        rings = [r for q in st["queues"] for r in q["rings"]]
        assert len(rings) == len(port.rx_rings) + len(port.tx_rings) == 4
        assert {r["mode"] for r in rings} == {"copy"}
        assert all("does not advertise xsk-zerocopy" in r["mode_reason"] for r in rings)
        line = describe_port_mode(port, veth.ns_a)
        assert line.startswith(f"netmap:{veth.a}: AF_XDP copy mode (the driver does not ")
    # another process's view (no port here): the features, no rings
    st = status(veth.a, netns=veth.ns_a)["interfaces"][0]
    assert st["driver_features"]["xsk_zerocopy"] is False
    assert all(not q["rings"] for q in st["queues"])


@kernel
def test_zerocopy_on_refusal_names_errno_and_feature(veth: VethPair) -> None:
    with pytest.raises(UnsupportedError) as exc:
        open_port(f"netmap:{veth.a}", zerocopy="on", netns=veth.ns_a)
    msg = str(exc.value)
    assert msg.startswith(f"netmap:{veth.a}: {veth.a} queue 0: zero-copy AF_XDP"), msg
    assert "EOPNOTSUPP" in msg and "XDP_FEATURE_XSK_ZEROCOPY" in msg, msg
    assert not veth.xdp_attached("a")
