"""Copy or zero-copy mode of a port's AF_XDP sockets, and why, in one line.

Used by `vtnetmap status` and by the start-up banners of pkt-gen and the bridge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py.device.netlink import read_xdp_features
from vtnet_py.device.record import attached_zerocopy
from vtnet_py.device.types import XdpFeatures
from vtnet_py.errors import DeviceError

if TYPE_CHECKING:
    from vtnet_py.netmap.port import Port


NO_NETDEV_FAMILY = (
    "the kernel has no netdev netlink family (Linux < 6.3): the driver's XDP features "
    "cannot be read; zero copy shows only in a port's bind"
)


def zerocopy_reason(
    zerocopy: bool,
    xdp_mode: str | None,
    features: XdpFeatures | None,
    *,
    host_rings: bool = False,
    recorded: str = "auto",
) -> str:
    """Why a port's AF_XDP sockets run in zero-copy or in copy mode, in one line.

    ``zerocopy``: what the bind got (XDP_OPTIONS); ``xdp_mode``: the steering program's
    mode; ``features``: what the driver advertises (None: unknown, before Linux 6.3);
    ``host_rings``: the port has host rings (their memory is bound in copy mode);
    ``recorded``: `vtnetmap attach --zerocopy`'s choice for the interface.
    """
    if zerocopy:
        return "the driver took the XDP_ZEROCOPY bind (it advertises xsk-zerocopy)"
    if features is not None and not features.zerocopy:
        have = ", ".join(features.xdp_names) or "none"
        return (
            "the driver does not advertise xsk-zerocopy (XDP_FEATURE_XSK_ZEROCOPY; "
            f"xdp-features: {have}): XDP_ZEROCOPY binds fail with EOPNOTSUPP"
        )
    if xdp_mode == "generic":
        return "generic (skb) XDP copies every frame; zero copy needs native XDP"
    if host_rings:
        return "host rings share the port's memory and work in copy mode only"
    if recorded == "off":
        return "`vtnetmap attach --zerocopy off` chose copy mode for this interface"
    if features is None:
        return "the zero-copy bind was refused or not asked (" + NO_NETDEV_FAMILY + ")"
    return (
        "the driver advertises xsk-zerocopy, but copy mode was asked (zerocopy='off') "
        "or the shared memory was bound in copy mode first"
    )


def port_mode(port: Port, features: XdpFeatures | None) -> tuple[str, str]:
    """("zerocopy" or "copy", why) for the AF_XDP sockets of ``port``: the sockets of one
    memory all have the mode of the socket that registered it."""
    why = zerocopy_reason(
        port.zerocopy,
        port.xdp_mode,
        features,
        host_rings=any(r.is_host for r in port.rx_rings + port.tx_rings),
        recorded=attached_zerocopy(port.ifname, "auto"),
    )
    return ("zerocopy" if port.zerocopy else "copy"), why


def describe_port_mode(port: Port, netns: str | None = None) -> str:
    """One line for start-up banners: ``<port>: AF_XDP <mode> (<why>)``."""
    try:
        with enter_netns(netns):
            features = read_xdp_features(port.ifname, port.ifindex)
    except DeviceError:
        features = None
    mode, why = port_mode(port, features)
    return f"{port.name}: AF_XDP {'zero-copy' if mode == 'zerocopy' else 'copy'} mode ({why})"
