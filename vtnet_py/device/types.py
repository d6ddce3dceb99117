"""Plain value types of the device layer: what vtnetmap knows about one interface.

Everything here is a frozen dataclass built from what the kernel reports (rtnetlink link
attributes, ethtool channels/features/driver info, virtio feature bits from sysfs). Nothing
here talks to the kernel: the converters take already-fetched records, so unit tests build
these values directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from vtnet_py._sys import abi as K
from vtnet_py._sys.abi import IFF_RUNNING, IFF_UP, XDP_ATTACHED_MODES

XdpMode = Literal["native", "generic", "offload"]
_UP_RUNNING = IFF_UP | IFF_RUNNING

# Bit numbers of the virtio-net feature word (virtio spec 5.1.3 / linux uapi virtio_net.h).
# Only the ones our decisions read are named.
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_GUEST_UFO = 10
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_MQ = 22
VIRTIO_F_ANY_LAYOUT = 27
VIRTIO_F_VERSION_1 = 32
VIRTIO_NET_F_GUEST_USO4 = 54
VIRTIO_NET_F_GUEST_USO6 = 55
VIRTIO_NET_F_HASH_REPORT = 57

VIRTIO_FEATURE_NAMES: dict[int, str] = {
    VIRTIO_NET_F_CSUM: "CSUM",
    VIRTIO_NET_F_GUEST_CSUM: "GUEST_CSUM",
    VIRTIO_NET_F_CTRL_GUEST_OFFLOADS: "CTRL_GUEST_OFFLOADS",
    VIRTIO_NET_F_MTU: "MTU",
    VIRTIO_NET_F_GUEST_TSO4: "GUEST_TSO4",
    VIRTIO_NET_F_GUEST_TSO6: "GUEST_TSO6",
    VIRTIO_NET_F_GUEST_ECN: "GUEST_ECN",
    VIRTIO_NET_F_GUEST_UFO: "GUEST_UFO",
    VIRTIO_NET_F_MRG_RXBUF: "MRG_RXBUF",
    VIRTIO_NET_F_CTRL_VQ: "CTRL_VQ",
    VIRTIO_NET_F_MQ: "MQ",
    VIRTIO_F_ANY_LAYOUT: "ANY_LAYOUT",
    VIRTIO_F_VERSION_1: "VERSION_1",
    VIRTIO_NET_F_GUEST_USO4: "GUEST_USO4",
    VIRTIO_NET_F_GUEST_USO6: "GUEST_USO6",
    VIRTIO_NET_F_HASH_REPORT: "HASH_REPORT",
}


def parse_virtio_features(text: str) -> frozenset[int]:
    """Bit numbers set in a sysfs ``device/features`` string ('0'/'1' per bit, bit 0 first).

    Raises ValueError on any other character, so a garbled file is not read as "no features".
    """
    text = text.strip()
    bad = set(text) - {"0", "1"}
    if bad:
        raise ValueError(f"virtio features string has unexpected characters {sorted(bad)}")
    return frozenset(i for i, c in enumerate(text) if c == "1")


def vnet_hdr_len_for(virtio_features: Iterable[int]) -> int:
    """The virtio-net header length the Linux driver uses for these negotiated features.

    virtio_net's probe: 20 bytes (virtio_net_hdr_v1_hash) with HASH_REPORT, 12 bytes
    (virtio_net_hdr_mrg_rxbuf) with MRG_RXBUF or VERSION_1, else 10 (virtio_net_hdr).
    """
    bits = set(virtio_features)
    if VIRTIO_NET_F_HASH_REPORT in bits:
        return 20
    if VIRTIO_NET_F_MRG_RXBUF in bits or VIRTIO_F_VERSION_1 in bits:
        return 12
    return 10


@dataclass(frozen=True)
class Channels:
    """ethtool channel counts (``ethtool -l``): current and maximum per kind."""

    rx: int = 0
    tx: int = 0
    other: int = 0
    combined: int = 0
    max_rx: int = 0
    max_tx: int = 0
    max_other: int = 0
    max_combined: int = 0

    @classmethod
    def from_netlink(cls, rec: Mapping[str, int] | Any) -> Channels:
        """From an ethtool channels record: a mapping or an object with ``rx_count``, ...,
        ``max_combined`` (pyroute2's ioctl struct, its namedtuple, or the netlink names)."""

        def get(name: str) -> int:
            if isinstance(rec, Mapping):
                value = rec.get(name, 0)
            else:
                value = getattr(rec, name, 0)
            return int(value or 0)

        return cls(
            rx=get("rx_count"),
            tx=get("tx_count"),
            other=get("other_count"),
            combined=get("combined_count"),
            max_rx=get("max_rx"),
            max_tx=get("max_tx"),
            max_other=get("max_other"),
            max_combined=get("max_combined"),
        )

    @property
    def reports_combined(self) -> bool:
        """True when the driver counts queue pairs as combined channels (virtio_net),
        False when it reports separate rx/tx channels (veth)."""
        return self.max_combined > 0

    def to_dict(self) -> dict[str, int]:
        return {
            "rx": self.rx,
            "tx": self.tx,
            "other": self.other,
            "combined": self.combined,
            "max_rx": self.max_rx,
            "max_tx": self.max_tx,
            "max_other": self.max_other,
            "max_combined": self.max_combined,
        }


@dataclass(frozen=True)
class Feature:
    """One ethtool feature (kernel name, e.g. ``rx-gro-hw``).

    ``active``: in effect now. ``fixed``: the driver does not let it change (``[fixed]`` in
    ``ethtool -k``). ``requested``: what was asked for (the kernel's "wanted" bit); it can
    differ from ``active`` when a dependency keeps a feature off. Defaults to ``active``.
    """

    name: str
    active: bool
    fixed: bool = False
    requested: bool | None = None

    @property
    def wanted(self) -> bool:
        return self.active if self.requested is None else self.requested


def features_from_netlink(records: Iterable[tuple[str, bool, bool, bool]]) -> dict[str, Feature]:
    """Feature mapping from ``(name, active, available, requested)`` records.

    ``available`` is the kernel's changeable mask (hw_features); a feature that is not
    available is fixed. Unnamed feature bits (empty strings) are skipped.
    """
    out: dict[str, Feature] = {}
    for name, active, available, requested in records:
        if not name:
            continue
        out[name] = Feature(
            name=name, active=bool(active), fixed=not available, requested=bool(requested)
        )
    return out


@dataclass(frozen=True)
class DeviceInfo:
    """What vtnetmap knows about one interface in one network namespace, at one moment.

    ``features`` maps kernel feature names to :class:`Feature`. ``xdp_mode`` is the mode of
    the attached program (``None`` when none is attached). ``vnet_hdr_len`` and
    ``virtio_features`` are known only for virtio_net and only where sysfs shows the device
    (the netns that mounted /sys); elsewhere they are ``None``.
    """

    ifname: str
    ifindex: int
    driver: str
    bus_info: str = ""
    channels: Channels = field(default_factory=Channels)
    features: Mapping[str, Feature] = field(default_factory=dict)
    mtu: int = 1500
    max_mtu: int | None = None
    xdp_prog_id: int | None = None
    xdp_mode: XdpMode | None = None
    vnet_hdr_len: int | None = None
    virtio_features: frozenset[int] | None = None
    carries_default_route: bool = False
    oper_up: bool = False
    address: str | None = None  # the MAC address, as rtnetlink reports it (aa:bb:...)

    @property
    def rx_queues(self) -> int:
        """Receive queues an AF_XDP socket can bind to: combined + rx channels.

        A driver that reports no channels at all (ethtool -l unsupported) has one queue.
        """
        n = self.channels.combined + self.channels.rx
        return n if n > 0 else 1

    @property
    def tx_queues(self) -> int:
        """Transmit queues an AF_XDP socket can bind to: combined + tx channels (min 1)."""
        n = self.channels.combined + self.channels.tx
        return n if n > 0 else 1

    @property
    def is_virtio(self) -> bool:
        return self.driver == "virtio_net"

    def has_virtio(self, bit: int) -> bool:
        """True when virtio feature ``bit`` was negotiated (False when unknown)."""
        return self.virtio_features is not None and bit in self.virtio_features

    def feature(self, name: str) -> Feature | None:
        return self.features.get(name)

    @classmethod
    def from_netlink(
        cls,
        link: Mapping[str, Any],
        *,
        driver: str,
        bus_info: str = "",
        channels: Channels | None = None,
        features: Mapping[str, Feature] | None = None,
        virtio_features: frozenset[int] | None = None,
        carries_default_route: bool = False,
    ) -> DeviceInfo:
        """Build from a decoded rtnetlink link record plus the ethtool-side facts.

        ``link`` holds ``ifname``, ``ifindex``, ``mtu``, ``max_mtu``, ``operstate``,
        ``flags``, ``address`` and ``xdp`` (a mapping with ``attached``, ``prog_id``,
        ``drv_prog_id``, ``skb_prog_id``, ``hw_prog_id``), as :func:`link_record` produces
        from pyroute2.
        """
        xdp = link.get("xdp") or {}
        prog_id, mode = _xdp_state(xdp)
        operstate = str(link.get("operstate") or "").upper()
        flags = int(link.get("flags") or 0)
        # IFF_UP | IFF_RUNNING: drivers without operstate reporting (tun,
        # some virtual ones) stay UNKNOWN even when they pass traffic.
        up = operstate == "UP" or (operstate == "UNKNOWN" and flags & _UP_RUNNING == _UP_RUNNING)
        return cls(
            ifname=str(link["ifname"]),
            ifindex=int(link["ifindex"]),
            driver=driver,
            bus_info=bus_info,
            channels=channels if channels is not None else Channels(),
            features=dict(features or {}),
            mtu=int(link.get("mtu") or 0),
            max_mtu=int(link["max_mtu"]) if link.get("max_mtu") is not None else None,
            xdp_prog_id=prog_id,
            xdp_mode=mode,
            vnet_hdr_len=(
                vnet_hdr_len_for(virtio_features)
                if driver == "virtio_net" and virtio_features is not None
                else None
            ),
            virtio_features=virtio_features if driver == "virtio_net" else None,
            carries_default_route=carries_default_route,
            oper_up=up,
            address=str(link["address"]) if link.get("address") else None,
        )


def _xdp_state(xdp: Mapping[str, Any]) -> tuple[int | None, XdpMode | None]:
    attached = XDP_ATTACHED_MODES.get(xdp.get("attached"))
    drv, skb, hw = xdp.get("drv_prog_id"), xdp.get("skb_prog_id"), xdp.get("hw_prog_id")
    if attached == "native":
        return _id(xdp.get("prog_id") or drv), "native"
    if attached == "generic":
        return _id(xdp.get("prog_id") or skb), "generic"
    if attached == "offload":
        return _id(xdp.get("prog_id") or hw), "offload"
    if attached == "multi":
        # Several modes at once: report the one that sees frames first on receive
        # (offload runs before native, native before generic).
        for pid, mode in ((hw, "offload"), (drv, "native"), (skb, "generic")):
            if pid:
                return int(pid), mode  # type: ignore[return-value]
    return None, None


def _id(value: object) -> int | None:
    return int(value) if value else None  # type: ignore[call-overload]


def _bit_names(bits: int, names: Mapping[int, str]) -> list[str]:
    """Names of the set bits, lowest first; a bit this version does not know is "bit-N"."""
    return [names.get(1 << i, f"bit-{i}") for i in range(64) if bits >> i & 1]


@dataclass(frozen=True)
class XdpFeatures:
    """What a driver advertises for XDP and AF_XDP, as the kernel's "netdev" generic
    netlink family reports it (`ynl --family netdev --do dev-get`; Linux 6.3+).

    ``xdp``: enum netdev_xdp_act bits (``xsk-zerocopy`` is what an XDP_ZEROCOPY bind
    needs); ``xsk``: enum netdev_xsk_flags bits (0 before 6.8); ``zc_max_segs``: how many
    buffers one zero-copy TX frame may span (1: no multi-buffer in zero-copy mode).
    """

    xdp: int
    xsk: int = 0
    zc_max_segs: int = 0

    @classmethod
    def from_netlink(cls, attrs: Mapping[int, bytes]) -> XdpFeatures:
        """From the attributes of a NETDEV_CMD_DEV_GET reply (type -> raw payload)."""

        def num(attr: int) -> int:
            raw = attrs.get(attr, b"")
            return int.from_bytes(raw[:8], "little") if raw else 0

        return cls(
            xdp=num(K.NETDEV_A_DEV_XDP_FEATURES),
            xsk=num(K.NETDEV_A_DEV_XSK_FEATURES),
            zc_max_segs=num(K.NETDEV_A_DEV_XDP_ZC_MAX_SEGS),
        )

    @property
    def zerocopy(self) -> bool:
        """The driver supports AF_XDP zero copy (XDP_FEATURE_XSK_ZEROCOPY)."""
        return bool(self.xdp & K.NETDEV_XDP_ACT_XSK_ZEROCOPY)

    @property
    def xdp_names(self) -> list[str]:
        return _bit_names(self.xdp, K.NETDEV_XDP_ACT_NAMES)

    @property
    def xsk_names(self) -> list[str]:
        return _bit_names(self.xsk, K.NETDEV_XSK_FLAGS_NAMES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "xdp_features": self.xdp_names,
            "xsk_features": self.xsk_names,
            "xdp_zc_max_segs": self.zc_max_segs,
            "xsk_zerocopy": self.zerocopy,
        }
