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
from vtnet_py.admin import identity, pins
from vtnet_py.admin.pins import describe_pids, inspect_prog
from vtnet_py.device import record
from vtnet_py.device.checks import possible_cpus
from vtnet_py.device.netlink import NetlinkDeviceLayer
from vtnet_py.device.policy import DeviceLayer, offloads_to_disable
from vtnet_py.device.record import check_ifname
from vtnet_py.device.types import DeviceInfo, XdpFeatures
from vtnet_py.ebpf.egress import egress_status
from vtnet_py.errors import DeviceError
from vtnet_py.netmap.mode import NO_NETDEV_FAMILY, port_mode

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


def _valid_name(name: str) -> bool:
    try:
        check_ifname(name)
    except DeviceError:
        return False
    return True


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
    try:
        now: DeviceInfo | None = layer.read(ifname)
    except DeviceError:
        now = None
    loc = identity.locate(ifname, nsino, now)
    rec, pdir, pin = loc.rec, loc.pdir, loc.pin
    state_notes = _identity_notes(ifname, loc)
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
            "state_file": loc.path,
        }
    if now is None:
        if rec is None and pin is None and not state_notes:
            layer.read(ifname)  # raises: no such interface, and nothing of ours
        return {
            "ifname": ifname,
            "exists": False,
            "attach": attach_d,
            "pinned": pin is not None,
            "pin_dir": pdir if pin else None,
            "notes": state_notes
            or [f"{ifname} no longer exists: stale state; `vtnetmap detach {ifname}` removes it"],
        }
    info = now
    features = layer.read_xdp_features(ifname, info.ifindex)
    view = inspect_prog(info.xdp_prog_id, ifname) if info.xdp_prog_id else None
    pinned = bool(pin and pin.ifindex and view and pin.prog_id == view.prog_id)
    notes: list[str] = list(state_notes)
    if loc.how == "elsewhere":
        attach_d, rec = None, None
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
    notes += _unheld_queue_notes(nq, owners)
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
        # the stack's egress while NIC TX rings are open (any process): None if no port is
        "stack_egress": _stack_egress(ifname, info.ifindex),
        "afxdp_statistics": afxdp,
        "notes": notes,
    }


def _stack_egress(ifname: str, ifindex: int) -> dict[str, object] | None:
    """IF's egress program (bpf/host.c) as status shows it; None without one, or where
    bpf() is refused (no CAP_BPF: status still shows the rest)."""
    try:
        return egress_status(ifname, ifindex, possible_cpus())
    except OSError:
        return None


def _unheld_queue_notes(nq: int, owners: dict[int, int]) -> list[str]:
    """A live process holds queues 0..k but not the ones above, up to the channels: a
    port on all queues (``netmap:IF``) opened before the channels grew looks so (or ports
    on single queues: from outside the two cannot be told apart, so the note says both)."""
    notes = []
    for pid in sorted(set(owners.values())):
        held = sorted(q for q, p in owners.items() if p == pid)
        if not pid_alive(pid) or held != list(range(len(held))) or len(held) >= nq:
            continue
        free = [q for q in range(len(held), nq) if not owners.get(q)]
        if not free:
            continue

        def span(qs: list[int]) -> str:
            return f"queue {qs[0]}" if len(qs) == 1 else f"queues {qs[0]}-{qs[-1]}"

        notes.append(
            f"{span(free)} {'is' if len(free) == 1 else 'are'} not held by pid {pid}, which "
            f"holds {span(held)}: {'its' if len(free) == 1 else 'their'} frames go to the "
            f"kernel's stack (if that port was opened on every queue, the channels grew "
            f"since: port.reconfigure() or a new open takes {'it' if len(free) == 1 else 'them'})"
        )
    return notes


def _identity_notes(ifname: str, loc: identity.Located) -> list[str]:
    """What the state kept for ``ifname`` says beyond the ordinary: an unreadable or
    stale record, a device renamed or moved since the attach."""
    notes = [
        f"{loc.bad}; `vtnetmap detach {ifname} --force` removes what is vtnetmap's on "
        f"{ifname} and this file"
    ] * (loc.bad is not None)
    notes += [
        f"stale vtnetmap state {path}, applied to nothing: {why}; `vtnetmap detach {ifname}` "
        "removes it"
        for path, why in loc.stale
    ]
    rec = loc.rec
    if rec is None:
        return notes
    if loc.how in ("renamed", "moved"):
        where = " in another network namespace" if loc.how == "moved" else ""
        notes.append(
            f"attached by vtnetmap as {rec.ifname}{where} (ifindex {rec.ifindex}); its state "
            f"is {loc.path}, found by the device's identity; `vtnetmap detach {ifname}` "
            "restores it"
        )
    elif loc.how == "elsewhere":
        new = identity.name_by_index(rec.ifindex)
        if new is not None and new != ifname and identity.pin_on(loc.pin, _read_quiet(new)):
            notes.append(
                f"{ifname} was renamed to {new} since the attach (ifindex {rec.ifindex}): "
                f"`vtnetmap status {new}`, `vtnetmap detach {new}`"
            )
        elif loc.pin is not None and loc.pin.ifindex:
            at = identity.where_is_prog(loc.pin.prog_id)
            notes.append(
                f"{ifname} (ifindex {rec.ifindex}) was moved to "
                + (f"network namespace {at[0]} as {at[1]}" if at else "another network namespace")
                + f" with vtnetmap's program {loc.pin.prog_id} attached: "
                + (f"`vtnetmap detach {at[1]} --netns {at[0]}` restores it; " if at else "")
                + f"`vtnetmap detach {ifname} --force` here drops it"
            )
        else:
            notes.append(
                f"the device vtnetmap attached as {ifname} (ifindex {rec.ifindex}) is gone: "
                f"stale state; `vtnetmap detach {ifname}` removes it"
            )
    return notes


def _read_quiet(ifname: str) -> DeviceInfo | None:
    try:
        return NetlinkDeviceLayer().read(ifname)
    except DeviceError:
        return None


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
            names = [n for n in names if _valid_name(n)]  # a planted file name is no device
        return {
            "netns": netns,
            "netns_inode": nsino,
            "interfaces": [interface_status(n, nsino, ports, layer) for n in names],
        }
