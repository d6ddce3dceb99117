"""The device layer of vtnetmap: what an interface is and can do, and getting it ready.

One import point for the ports, the admin commands and the CLI::

    from vtnet_py.device import read_device, prepare, restore, NetlinkDeviceLayer

- value types: :class:`DeviceInfo`, :class:`Channels`, :class:`Feature`
- layers: :class:`DeviceLayer` (protocol), :class:`NetlinkDeviceLayer` (pyroute2, works in
  the calling thread's current network namespace), :class:`FakeDeviceLayer` (tests)
- decisions: :func:`check_xdp_preconditions`, :func:`refuse_default_route`,
  :func:`plan_offloads`, :func:`support_mode`, :func:`plan_channels`
- changes: :func:`prepare` -> :class:`SavedState` (JSON) -> :func:`restore`
"""

from __future__ import annotations

from vtnet_py.device.fake import FakeDeviceLayer, make_info
from vtnet_py.device.netlink import (
    NetlinkDeviceLayer,
    read_channels,
    read_device,
    read_xdp_features,
)
from vtnet_py.device.policy import (
    DeviceLayer,
    DeviceWarning,
    Mode,
    SavedState,
    check_xdp_preconditions,
    fixed_offloads_left_on,
    offloads_to_disable,
    plan_channels,
    plan_offloads,
    possible_cpus,
    prepare,
    refuse_default_route,
    restore,
    running_kernel,
    support_mode,
    virtio_xdp_mtu_limit,
)
from vtnet_py.device.types import (
    Channels,
    DeviceInfo,
    Feature,
    XdpFeatures,
    XdpMode,
    features_from_netlink,
    parse_virtio_features,
    vnet_hdr_len_for,
)

__all__ = [
    "Channels",
    "DeviceInfo",
    "DeviceLayer",
    "DeviceWarning",
    "FakeDeviceLayer",
    "Feature",
    "Mode",
    "NetlinkDeviceLayer",
    "SavedState",
    "XdpFeatures",
    "XdpMode",
    "check_xdp_preconditions",
    "features_from_netlink",
    "fixed_offloads_left_on",
    "make_info",
    "offloads_to_disable",
    "parse_virtio_features",
    "plan_channels",
    "plan_offloads",
    "possible_cpus",
    "prepare",
    "read_channels",
    "read_device",
    "read_xdp_features",
    "refuse_default_route",
    "restore",
    "running_kernel",
    "support_mode",
    "virtio_xdp_mtu_limit",
    "vnet_hdr_len_for",
]
