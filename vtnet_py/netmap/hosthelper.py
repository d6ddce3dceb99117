"""The helper veth pair behind an interface's host rings, and what dead owners left of it.

The near end ``vtnmh<ifindex>`` lives in IF's namespace, named after IF's ifindex, with an
alias naming its owner (pid and start time, so a recycled pid is not mistaken for the
owner); the far end ``vtnmH<ifindex>`` lives in a private namespace only the owning port
holds (see :mod:`vtnet_py.netmap.hostrings` for why). Both ends have IPv6 and every
segmentation, checksum and coalescing offload off.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from contextlib import suppress
from typing import Any

from pyroute2 import IPRoute
from pyroute2.ethtool.ioctl import IoctlEthtool
from pyroute2.netlink.exceptions import NetlinkError

from vtnet_py._sys import abi as K
from vtnet_py._sys.netns import fd_netns
from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py._sys.proc import proc_start_time
from vtnet_py.ebpf.egress import EG_PROG, IN_PROG, remove_unused
from vtnet_py.ebpf.tc import del_filter, filters_named
from vtnet_py.errors import BusyError, DeviceError

log = logging.getLogger("vtnet_py")

NEAR_PREFIX = "vtnmh"  # near end of the helper pair, in IF's namespace
FAR_PREFIX = "vtnmH"  # far end, in the port's private namespace
_OWNER_RE = re.compile(r"^vtnetmap host rings of (\S+): pid (\d+) start (\d+)$")
# ethtool feature names a helper end must have off
_OFFLOAD_PATTERNS = (
    re.compile(r"^tx-checksum"),
    re.compile(r"^tx-.*segmentation$"),
    re.compile(r"^tx-gso-"),
    re.compile(r"^tx-scatter-gather"),
    re.compile(r"^rx-gro"),
    re.compile(r"^rx-lro$"),
)


def helper_names(ifindex: int) -> tuple[str, str]:
    """(near end, far end) names of the helper pair of interface ``ifindex``."""
    return f"{NEAR_PREFIX}{ifindex}", f"{FAR_PREFIX}{ifindex}"


def owner_tag(ifname: str) -> str:
    """The near end's alias: this process as the owner of ``ifname``'s host rings."""
    pid = os.getpid()
    return f"vtnetmap host rings of {ifname}: pid {pid} start {proc_start_time(pid)}"


def owner_of(alias: str | None) -> tuple[int, bool] | None:
    """(pid, alive) of the owner recorded in a near end's alias; None if not ours."""
    m = _OWNER_RE.match(alias or "")
    if m is None:
        return None
    pid, start = int(m.group(2)), int(m.group(3))
    return pid, proc_start_time(pid) == start


def _set_sysctl(path: str, value: str) -> None:
    """Write a /proc/sys/net entry of the calling thread's namespace; absent entries (no
    IPv6 in this kernel) are skipped."""
    try:
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError:
        pass


def _offloads_off(ifname: str) -> None:
    """Turn off segmentation, checksum and coalescing offloads on a helper end."""
    eth = IoctlEthtool(ifname)
    try:
        feats = eth.get_features()
        names = [
            n
            for n in feats.keys()
            if any(p.match(n) for p in _OFFLOAD_PATTERNS) and feats.is_available(n)
        ]
        for n in names:
            feats.set_value(n, False)
        with suppress(Exception):  # partial success is reported as an error; check below
            eth.set_features(feats)
        after = eth.get_features()
        left = [
            n
            for n in after.keys()
            if after.is_active(n)
            and (n.startswith("tx-checksum") or n.endswith("segmentation"))
            and n not in ("tx-checksum-fcoe-crc", "tx-fcoe-segmentation")
        ]
        if left:
            raise DeviceError(
                f"{ifname}: could not turn off {', '.join(left)} on the host ring helper"
            )
    finally:
        eth.close()


def _quiet(ipr: IPRoute, index: int, ifname: str) -> None:
    """IPv6 and offloads off, then up: the stack sends nothing through it by itself."""
    _set_sysctl(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "1")
    _offloads_off(ifname)
    ipr.link("set", index=index, state="up")


def make_pair(
    who: str, ifname: str, ifindex: int, mtu: int, private_netns_fd: int
) -> tuple[int, int]:
    """Create the helper pair of ``ifname`` (near end here, far end in the namespace of
    ``private_netns_fd``); returns (near ifindex, far ifindex). On failure after the
    pair exists, the pair is deleted again. BusyError when the near end's name is taken.
    """
    near, far = helper_names(ifindex)
    with IPRoute() as ipr:
        links = ipr.get_links(ifindex)
        mac = links[0].get("IFLA_ADDRESS") if links else None
        try:
            # The near end gets IF's MAC address: frames from the host TX ring pass
            # its receive path (which classifies them as for this host or not) before
            # act_mirred hands them to IF unchanged.
            ipr.link(
                "add",
                ifname=near,
                kind="veth",
                num_tx_queues=1,
                num_rx_queues=1,
                mtu=mtu,
                **({"address": mac} if mac else {}),
                peer={
                    "ifname": far,
                    "net_ns_fd": private_netns_fd,
                    "num_tx_queues": 1,
                    "num_rx_queues": 1,
                    "mtu": mtu,
                },
            )
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise BusyError(
                    f"{who}: {near} appeared meanwhile: another "
                    f"process opens the host rings of {ifname}"
                ) from exc
            raise DeviceError(f"{who}: creating the host ring helper {near}: {exc}") from exc
        near_index = ipr.link_lookup(ifname=near)[0]
        try:
            ipr.link("set", index=near_index, ifalias=owner_tag(ifname))
            _quiet(ipr, near_index, near)
            with enter_netns(fd_netns(private_netns_fd)), IPRoute() as far_ipr:
                far_index = far_ipr.link_lookup(ifname=far)[0]
                _quiet(far_ipr, far_index, far)
        except BaseException:
            delete_pair(near_index)
            raise
    return near_index, far_index


def delete_pair(near_ifindex: int) -> None:
    """Delete the helper pair by its near end (deleting one end deletes both, whatever
    namespace the other is in); one already gone is not an error."""
    with suppress(NetlinkError, OSError), IPRoute() as ipr:
        ipr.link("del", index=near_ifindex)


def _link_by_name(ipr: IPRoute, name: str) -> Any | None:
    try:
        found = ipr.link_lookup(ifname=name)
    except NetlinkError:
        return None
    if not found:
        return None
    links = ipr.get_links(found[0])
    return links[0] if links else None


def clear_stale(ipr: IPRoute, ifname: str, ifindex: int, who: str) -> list[str]:
    """Remove a helper pair of ``ifname`` left by a dead owner, and an egress cls_bpf
    filter no live process uses.

    Raises BusyError when a live process owns them, or when the near end's name is taken
    by a device that is not vtnetmap's. Returns what was removed.
    """
    near, _ = helper_names(ifindex)
    removed = []
    link = _link_by_name(ipr, near)
    if link is not None:
        owner = owner_of(link.get("IFLA_IFALIAS"))
        if owner is None:
            raise BusyError(
                f"{who}: {near}, the name of {ifname}'s host ring helper, is "
                f"taken by a device that is not vtnetmap's"
            )
        pid, alive = owner
        if alive:
            raise BusyError(
                f"{who}: the host rings of {ifname} are open in pid {pid} (helper {near})"
            )
        with suppress(NetlinkError):  # deleting one end deletes the pair
            ipr.link("del", index=link["index"])
        removed.append(f"helper {near} of dead pid {pid}")
    for parent, prio, handle in filters_named(ipr, ifindex, (IN_PROG,)):
        del_filter(ipr, ifindex, parent, prio, handle)
        removed.append(
            f"{'egress' if parent == K.TC_H_CLSACT_EGRESS else 'ingress'} filter on {ifname}"
        )
    # the egress program is shared with other processes' NIC ports: only if nobody uses it
    removed += remove_unused(ipr, ifname, ifindex)
    for what in removed:
        log.warning("vtnetmap: %s: removed stale %s", who, what)
    return removed


def cleanup_stale(ifname: str, netns: str | None = None) -> list[str]:
    """Remove what dead owners left of host rings on ``ifname`` (for `vtnetmap detach`):
    a helper pair still being torn down and, on kernels without tcx, cls_bpf filters.

    Returns a description of each thing removed. Host rings open in a live process are
    left alone (BusyError names the pid). Leaves nothing half-removed that matters: each
    removal is independent.
    """
    with enter_netns(netns), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise DeviceError(f"interface '{ifname}' does not exist (in this network namespace)")
        return clear_stale(ipr, ifname, found[0], f"netmap:{ifname}^")


__all__ = [
    "EG_PROG",
    "IN_PROG",
    "cleanup_stale",
    "clear_stale",
    "delete_pair",
    "helper_names",
    "make_pair",
    "owner_of",
    "owner_tag",
]
