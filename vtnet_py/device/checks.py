"""Decisions over a DeviceInfo: what a device must look like for netmap use.

The checks are pure functions of a :class:`DeviceInfo` (plus kernel version, CPU count and
page size, which default to this machine's), so unit tests drive them with the fake layer.
Applying them (``prepare``/``restore``) is :mod:`vtnet_py.device.policy`.

virtio_net's XDP preconditions follow ``virtnet_xdp_set`` of Linux 6.1 (the guest kernel
of the VM harness) and say what it says; where 6.2/6.3 changed a check, both are modelled
and ``kernel=`` selects one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from vtnet_py._sys.abi import ETH_HLEN
from vtnet_py.device.types import (
    VIRTIO_F_ANY_LAYOUT,
    VIRTIO_F_VERSION_1,
    VIRTIO_FEATURE_NAMES,
    VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_GUEST_USO4,
    VIRTIO_NET_F_GUEST_USO6,
    VIRTIO_NET_F_MRG_RXBUF,
    Channels,
    DeviceInfo,
    XdpFeatures,
)
from vtnet_py.errors import RefusedError

Mode = Literal["native", "generic"]
NATIVE_DRIVERS = frozenset({"virtio_net", "veth"})


class DeviceLayer(Protocol):
    """What prepare/restore need from the kernel side (real: NetlinkDeviceLayer)."""

    def read(self, ifname: str) -> DeviceInfo: ...

    def read_xdp_features(self, ifname: str, ifindex: int) -> XdpFeatures | None: ...

    def read_channels(self, ifname: str) -> Channels: ...

    def set_features(self, ifname: str, features: Mapping[str, bool]) -> None: ...

    def set_channels(
        self,
        ifname: str,
        combined: int | None = None,
        rx: int | None = None,
        tx: int | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class DeviceWarning:
    """A condition that does not stop an attach but costs something; ``str()`` is the
    message for the user (it names the interface)."""

    ifname: str
    code: str
    message: str

    def __str__(self) -> str:
        return self.message


# -- environment defaults ---------------------------------------------------------------


def running_kernel() -> tuple[int, int]:
    """(major, minor) of the running kernel, from uname."""
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def possible_cpus() -> int:
    """The kernel's nr_cpu_ids: highest possible CPU + 1 (what virtio_net asks queues for)."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
        return max(int(part.split("-")[-1]) for part in text.split(",")) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


# -- virtio_net's XDP preconditions -----------------------------------------------------

# sizeof(struct padded_vnet_hdr) in 5.17..6.x: virtio_net_hdr_v1_hash (20) + 12 padding.
PADDED_VNET_HDR = 32
# 6.3+: room = SKB_DATA_ALIGN(VIRTIO_XDP_HEADROOM + sizeof(struct skb_shared_info));
# headroom 256, skb_shared_info 320 bytes on 64-bit with MAX_SKB_FRAGS 17, 64-byte lines.
VIRTIO_XDP_HEADROOM = 256
SKB_SHARED_INFO = 320
SMP_CACHE_BYTES = 64


def virtio_xdp_mtu_limit(kernel: tuple[int, int], page_size: int) -> int:
    """The largest MTU virtio_net accepts for single-buffer XDP (the N it prints)."""
    if kernel >= (6, 3):
        room = -(-(VIRTIO_XDP_HEADROOM + SKB_SHARED_INFO) // SMP_CACHE_BYTES) * SMP_CACHE_BYTES
        return page_size - room - ETH_HLEN
    return page_size - PADDED_VNET_HDR


def check_xdp_preconditions(
    info: DeviceInfo,
    *,
    frags: bool = False,
    mode: str = "native",
    kernel: tuple[int, int] | None = None,
    cpus: int | None = None,
    page_size: int | None = None,
) -> list[DeviceWarning]:
    """Refuse (RefusedError) what virtio_net's ``virtnet_xdp_set`` would refuse, in its
    words and its order; return warnings for what it accepts at a cost.

    Only native XDP on virtio_net has these checks (generic XDP does not call the driver).
    ``frags``: the program is multi-buffer (BPF_F_XDP_HAS_FRAGS). Nothing is changed.
    """
    if mode != "native" or not info.is_virtio:
        return []
    kernel = kernel or running_kernel()
    cpus = cpus if cpus is not None else possible_cpus()
    page_size = page_size or os.sysconf("SC_PAGE_SIZE")
    name = info.ifname
    warnings: list[DeviceWarning] = []

    if info.virtio_features is None:
        warnings.append(
            DeviceWarning(
                name,
                "virtio-features-unknown",
                f"{name}: the negotiated virtio features are not visible here (sysfs shows "
                "another network namespace), so virtio_net's offload and buffer-layout checks "
                "were skipped; the kernel still makes them and its refusal will be shown",
            )
        )
    else:
        guest_offloads = [
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN,
            VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_GUEST_CSUM,
        ]
        if kernel >= (6, 2):  # guest USO arrived in 6.2 and joined this check
            guest_offloads += [VIRTIO_NET_F_GUEST_USO4, VIRTIO_NET_F_GUEST_USO6]
        on = [b for b in guest_offloads if info.has_virtio(b)]
        if on and not info.has_virtio(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS):
            names = ", ".join(VIRTIO_FEATURE_NAMES[b] for b in on)
            raise RefusedError(
                f"{name}: virtio_net: Can't set XDP while host is implementing GRO_HW/CSUM, "
                f"disable GRO_HW/CSUM first (the host negotiated {names} without "
                "CTRL_GUEST_OFFLOADS, so the guest cannot switch them off; give the device "
                "ctrl_guest_offloads=on, or turn those guest offloads off on the host side)"
            )
        mergeable = info.has_virtio(VIRTIO_NET_F_MRG_RXBUF)
        any_header_sg = info.has_virtio(VIRTIO_F_ANY_LAYOUT) or info.has_virtio(VIRTIO_F_VERSION_1)
        if mergeable and not any_header_sg:
            raise RefusedError(
                f"{name}: virtio_net: XDP expects header/data in single page, any_header_sg "
                "required (MRG_RXBUF was negotiated without ANY_LAYOUT or VERSION_1: a "
                "legacy device; use a virtio 1.0 (modern) device)"
            )

    limit = virtio_xdp_mtu_limit(kernel, page_size)
    if kernel >= (6, 3):
        if not frags and info.mtu > limit:
            raise RefusedError(
                f"{name}: virtio_net: MTU too large to enable XDP without frags "
                f"(single-buffer XDP requires MTU less than {limit}; MTU is {info.mtu})"
            )
    elif info.mtu > limit:
        extra = "; this kernel's virtio_net has no multi-buffer XDP" if frags else ""
        raise RefusedError(
            f"{name}: virtio_net: MTU too large to enable XDP "
            f"(XDP requires MTU less than {limit}; MTU is {info.mtu}{extra})"
        )

    # virtio_net wants one extra TX queue pair per possible CPU for XDP_TX/REDIRECT, on
    # top of the pairs in use. A program already attached natively has its pairs counted
    # in `combined`, so the request would be recomputed from numbers we cannot see.
    if not (info.xdp_prog_id and info.xdp_mode == "native"):
        curr = info.channels.combined
        maximum = info.channels.max_combined
        if maximum and curr + cpus > maximum:
            hint = f"give the device at least {curr + cpus} queue pairs" + (
                f", or use at most {maximum - cpus} rings" if maximum > cpus else ""
            )
            warnings.append(
                DeviceWarning(
                    name,
                    "xdp-locked-tx",
                    f"{name}: XDP request {curr + cpus} queues but max is {maximum}. "
                    "XDP_TX and XDP_REDIRECT will operate in a slower locked tx mode. "
                    f"(Cost: without a TX queue per CPU for XDP, frames sent by XDP_TX or "
                    f"redirected to {name} share the stack's {curr} TX queue(s) under a "
                    "spin lock, so they contend with each other and with normal traffic; "
                    f"AF_XDP receive is not affected. To avoid it, {hint}.)",
                )
            )
    return warnings


# -- default route, support level -------------------------------------------------------


def refuse_default_route(info: DeviceInfo, force: bool = False) -> None:
    """RefusedError if ``info`` carries this namespace's default route, unless ``force``."""
    if info.carries_default_route and not force:
        raise RefusedError(
            f"{info.ifname} carries the default route of this network namespace: taking it "
            "over would cut this machine's traffic; use --force to attach anyway"
        )


def support_mode(info: DeviceInfo, requested: str | None = None) -> tuple[Mode, str | None]:
    """The XDP mode to use and a warning about its cost (or None).

    virtio_net and veth get native XDP; other drivers generic (SKB) XDP, like netmap's
    emulated mode. A requested mode is honoured as asked.
    """
    name = info.ifname
    if requested not in (None, "native", "generic"):
        raise ValueError(f"{name}: unknown XDP mode {requested!r} (native or generic)")
    native_ok = info.driver in NATIVE_DRIVERS
    if requested == "native":
        if native_ok:
            return "native", None
        return "native", (
            f"{name}: native XDP forced on driver '{info.driver or 'unknown'}', which "
            "vtnetmap does not know to support it; the attach fails if the driver lacks it"
        )
    if requested == "generic":
        if native_ok:
            return "generic", (
                f"{name}: generic (SKB) XDP forced on {info.driver}, which supports native "
                "XDP: every frame is copied through an skb, several times slower"
            )
        return "generic", None
    if native_ok:
        return "native", None
    return "generic", (
        f"{name}: driver '{info.driver or 'unknown'}' has no native XDP support known to "
        "vtnetmap; using generic (SKB) XDP, which copies every frame through an skb and is "
        "several times slower (like netmap's emulated mode)"
    )


# -- offloads -------------------------------------------------------------------------------

# Receive coalescing: frames larger than the MTU, which XDP and netmap slots cannot carry.
_RX_COALESCING = ("rx-lro", "rx-gro-hw")
# Software receive offloads: turned off like netmap does, never fixed in practice.
_RX_SOFT = ("rx-gro", "rx-gro-list", "rx-udp-gro-forwarding", "rx-checksum")
# Transmit offloads leave checksums unfilled or frames unsegmented: the host rings would
# hand such frames to the application. Matched by pattern so new GSO types are covered.
_TX_PATTERNS = (
    re.compile(r"^tx-checksum-"),
    re.compile(r"^tx-.*segmentation$"),
    re.compile(r"^tx-gso-(list|partial)$"),
)


def offloads_to_disable(info: DeviceInfo) -> list[str]:
    """Names (present on this device) that netmap mode wants off, in a stable order."""
    names = [n for n in (*_RX_COALESCING, *_RX_SOFT) if n in info.features]
    names += sorted(
        n for n in info.features if any(p.match(n) for p in _TX_PATTERNS) and n not in names
    )
    return names


def blocks_correctness(name: str) -> bool:
    """Whether a fixed-on ``name`` would put non-wire frames on the rings.

    rx-checksum fixed on only means the driver validated checksums; software GRO
    variants are never fixed. Hardware coalescing and every TX offload do block.
    """
    return name not in _RX_SOFT


def plan_offloads(info: DeviceInfo) -> dict[str, bool]:
    """``{feature: False}`` for each offload that is on and must go off.

    "On" means active or requested: a feature the kernel holds off only because a
    prerequisite is off (TSO without a TX checksum) would come back with it, so it is
    turned off too. Features already off are left out. A fixed-on feature that blocks
    correctness raises RefusedError naming it; other fixed-on ones are left alone (see
    :func:`fixed_offloads_left_on`). A fixed feature that is off is held off by the
    driver (veth: while its peer runs XDP) and cannot be changed: left alone too (see
    :func:`held_off_offloads`).
    """
    plan: dict[str, bool] = {}
    blocking: list[str] = []
    for name in offloads_to_disable(info):
        f = info.features[name]
        if not (f.active or f.wanted):
            continue
        if f.fixed:
            if f.active and blocks_correctness(name):
                blocking.append(name)
            continue
        plan[name] = False
    if blocking:
        what = ", ".join(blocking)
        raise RefusedError(
            f"{info.ifname}: offload {what} is on and fixed by the driver '{info.driver}'; "
            "netmap mode needs it off (frames would reach the rings coalesced or with "
            "unfinished checksums)"
        )
    return plan


def fixed_offloads_left_on(info: DeviceInfo) -> list[str]:
    return [
        n
        for n in offloads_to_disable(info)
        if info.features[n].active and info.features[n].fixed and not blocks_correctness(n)
    ]


def held_off_offloads(info: DeviceInfo) -> list[str]:
    """Offloads requested on that the driver holds off for now (fixed, inactive): they
    come back when the driver lets them (veth: when its peer's XDP program goes)."""
    return [
        n
        for n in offloads_to_disable(info)
        if info.features[n].fixed and info.features[n].wanted and not info.features[n].active
    ]
