"""`vtnetmap status`: per interface and queue, what can be seen from outside a port."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute

from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py._sys.proc import netns_inode, pid_alive
from vtnet_py.admin import pins
from vtnet_py.admin.pins import describe_pids, inspect_prog, pin_dir, read_pin
from vtnet_py.device import record
from vtnet_py.device.netlink import NetlinkDeviceLayer, read_xdp_features
from vtnet_py.device.policy import DeviceLayer, offloads_to_disable
from vtnet_py.device.record import attached_zerocopy, check_ifname, read_record, state_path
from vtnet_py.device.types import XdpFeatures
from vtnet_py.errors import DeviceError

if TYPE_CHECKING:
    from vtnet_py.netmap.port import Port


def _ours_on_links() -> list[str]:
    """Names of the interfaces (this netns) with a vtnetmap program attached."""
    names = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            xdp = link.get_attr("IFLA_XDP")
            prog_id = (xdp.get_attr("IFLA_XDP_PROG_ID") or 0) if xdp else 0
            if prog_id:
                view = inspect_prog(int(prog_id), str(link.get_attr("IFLA_IFNAME")))
                if view is not None and view.ours:
                    names.append(str(link.get_attr("IFLA_IFNAME")))
    return names


def _recorded_names(nsino: int) -> list[str]:
    names = set()
    prefix = f"{nsino}-"
    with suppress(FileNotFoundError):
        for fn in os.listdir(record.STATE_DIR):
            if fn.startswith(prefix) and fn.endswith(".json"):
                names.add(fn[len(prefix) : -len(".json")])
    with suppress(FileNotFoundError, NotADirectoryError):
        names.update(os.listdir(os.path.join(pins.PIN_ROOT, str(nsino))))
    return sorted(names)


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


def _ring_view(port: Port, features: XdpFeatures | None) -> dict[int, list[dict[str, Any]]]:
    """Per queue: the rings of ``port`` with occupancy, AF_XDP mode and the kernel's
    statistics."""
    out: dict[int, list[dict[str, Any]]] = {}
    mode, why = port_mode(port, features)
    rings = port.rx_rings + port.tx_rings
    for r, d in zip(rings, port.stats()["rings"], strict=True):
        user = (r.tail - r.head) % r.num_slots  # slots in [head, tail): the user's
        out.setdefault(r.queue, []).append(
            {
                "port": port.name,
                "ring": r.ring_id,
                "kind": d["kind"],
                "num_slots": r.num_slots,
                "head": r.head,
                "cur": r.cur,
                "tail": r.tail,
                "user_slots": user,
                "kernel_slots": r.num_slots - 1 - user,
                "zerocopy": port.zerocopy,
                "mode": mode,
                "mode_reason": why,
                "afxdp": d["kernel"],
            }
        )
    return out


def interface_status(
    ifname: str, nsino: int, ports: Sequence[Port] = (), layer: DeviceLayer | None = None
) -> dict[str, Any]:
    """Status of one interface (current netns) as a JSON-able dict.

    ``ports``: ports open in this process; their rings' occupancy and AF_XDP statistics
    are included (other processes' sockets cannot be seen from here).
    """
    layer = layer or NetlinkDeviceLayer()
    rec = read_record(nsino, ifname)
    pdir = pin_dir(nsino, ifname)
    pin = read_pin(pdir, ifname)
    attach_d: dict[str, Any] | None = None
    if rec is not None:
        attach_d = {
            "phase": rec.phase,
            "pid": rec.pid,
            "pid_alive": pid_alive(rec.pid),
            "time": rec.time,
            "time_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(rec.time)),
            "mode": rec.mode,
            "frags": rec.frags,
            "zerocopy": rec.zerocopy,
            "rings": rec.rings,
            "prog_id": rec.prog_id,
            "saved": json.loads(rec.saved.to_json()),
            "state_file": state_path(nsino, ifname),
        }
    try:
        info = layer.read(ifname)
    except DeviceError:
        if rec is None and pin is None:
            raise
        return {
            "ifname": ifname,
            "exists": False,
            "attach": attach_d,
            "pinned": pin is not None,
            "pin_dir": pdir if pin else None,
            "notes": [
                f"{ifname} no longer exists: stale state; `vtnetmap detach {ifname}` removes it"
            ],
        }
    features = layer.read_xdp_features(ifname, info.ifindex)
    view = inspect_prog(info.xdp_prog_id, ifname) if info.xdp_prog_id else None
    pinned = bool(pin and pin.ifindex and view and pin.prog_id == view.prog_id)
    notes: list[str] = []
    if rec is not None and not (pinned and rec.phase == "attached"):
        notes.append(
            f"stale attach record (phase {rec.phase}, pid {rec.pid}): "
            f"`vtnetmap detach {ifname}` repairs it"
        )
    if view is not None and view.ours and not pinned:
        notes.append(
            "the steering program was attached implicitly by an open port; it goes "
            "away with the last port"
        )
    nq = max(info.rx_queues, info.tx_queues)
    owners = view.owners if view and view.ours else {}
    mine = [p for p in ports if p.ifname == ifname and p.ifindex == info.ifindex]
    rings: dict[int, list[dict[str, Any]]] = {}
    for p in mine:
        for q, lst in _ring_view(p, features).items():
            rings.setdefault(q, []).extend(lst)
    queues = []
    for q in sorted(set(range(nq)) | set(owners) | set(rings)):
        pid = owners.get(q, 0)
        queues.append(
            {
                "queue": q,
                "owner_pid": pid,
                "owner_alive": pid_alive(pid) if pid else None,
                "beyond_channels": q >= nq,
                "rings": rings.get(q, []),
            }
        )
    if mine:
        afxdp = "shown per ring for the ports of this process"
    else:
        afxdp = "per socket: visible only inside the process that owns the socket" + (
            f" (pid {describe_pids(owners.values())})" if owners else ""
        )
    if features is None:
        notes.append(NO_NETDEV_FAMILY)
    offloads = {
        n: {"active": info.features[n].active, "fixed": info.features[n].fixed}
        for n in offloads_to_disable(info)
    }
    return {
        "ifname": ifname,
        "exists": True,
        "ifindex": info.ifindex,
        "driver": info.driver,
        "netns_inode": nsino,
        "mtu": info.mtu,
        "oper_up": info.oper_up,
        "vnet_hdr_len": info.vnet_hdr_len,
        "channels": info.channels.to_dict(),
        "rx_queues": info.rx_queues,
        "tx_queues": info.tx_queues,
        "xdp": {
            "prog_id": info.xdp_prog_id,
            "mode": info.xdp_mode,
            "prog_name": view.name if view else None,
            "vtnetmap": bool(view and view.ours),
            "frags": bool(view and view.frags),
        },
        # what the driver advertises (netdev netlink family); None before Linux 6.3
        "driver_features": features.to_dict() if features is not None else None,
        "pinned": pinned,
        "pin_dir": pdir if pin else None,
        "attach": attach_d,
        "offloads": offloads,
        "offloads_on": sorted(n for n, f in offloads.items() if f["active"]),
        "queues": queues,
        "afxdp_statistics": afxdp,
        "notes": notes,
    }


def status(
    ifname: str | None = None,
    *,
    netns: str | None = None,
    ports: Sequence[Port] = (),
    layer: DeviceLayer | None = None,
) -> dict[str, Any]:
    """Status of ``ifname``, or of every interface of the netns that vtnetmap uses (has
    its program attached, a state file or pins). Changes nothing."""
    if ifname is not None:
        check_ifname(ifname)
    with enter_netns(netns):
        nsino = netns_inode()
        if ifname is not None:
            names = [ifname]
        else:
            names = sorted(set(_ours_on_links()) | set(_recorded_names(nsino)))
        return {
            "netns": netns,
            "netns_inode": nsino,
            "interfaces": [interface_status(n, nsino, ports, layer) for n in names],
        }
