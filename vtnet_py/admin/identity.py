"""Which device a state file and a pin are about, checked before anything is applied.

State files and pins are found by ``<netns inode>/<ifname>``, but both parts of that key
can name another device later: the kernel hands a deleted namespace's inode to the next
namespace made, and an interface can be renamed or moved to another namespace while its
program stays attached. A record is applied to a device only when its identity matches:

- the namespace cookie (SO_NETNS_COOKIE, never reused) and the ifindex, and
- while the pinned link still holds a device: that it holds this ifindex, with the
  program this device runs, and is the link the record names.

A device renamed or moved since the attach is found by that identity (a record of this
namespace with its ifindex; or, after a move, the record whose program is the one the
device runs). A record that matches no device is stale: reported, never applied.
"""

from __future__ import annotations

import os
import socket
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute

from vtnet_py._sys.netns import NETNS_RUN_DIR
from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py._sys.proc import live_netns_paths, netns_cookie, netns_inode
from vtnet_py.admin.pins import PinView, pin_dir, read_pin
from vtnet_py.device.record import (
    AttachRecord,
    read_record,
    read_record_file,
    state_files,
    state_path,
)
from vtnet_py.device.types import DeviceInfo
from vtnet_py.errors import StateFileError, VtnetError


def pin_on(pin: PinView | None, info: DeviceInfo | None) -> bool:
    """Whether ``pin``'s link holds ``info``'s device now (same ifindex, and the program
    on the device is the link's: an ifindex alone may be another device's)."""
    return bool(
        pin is not None
        and info is not None
        and pin.ifindex
        and pin.ifindex == info.ifindex
        and pin.prog_id == info.xdp_prog_id
    )


def mismatch(
    rec: AttachRecord, cookie: int, info: DeviceInfo | None, pin: PinView | None
) -> str | None:
    """Why ``rec`` is not about ``info`` (None: it is). ``pin``: the record's pinned link."""
    if rec.netns_cookie != cookie:
        return (
            f"it was written in another network namespace (cookie {rec.netns_cookie}, "
            f"here {cookie}) that has since been deleted and its inode reused"
        )
    if info is None:
        return f"no interface has ifindex {rec.ifindex} here"
    if rec.ifindex != info.ifindex:
        return f"it is about ifindex {rec.ifindex}, this {info.ifname} is ifindex {info.ifindex}"
    if pin is not None and pin.ifindex:
        if rec.link_id and pin.link_id != rec.link_id:
            return f"its pinned link is {pin.link_id}, not the recorded {rec.link_id}"
        if not pin_on(pin, info):
            return (
                f"its pinned link holds program {pin.prog_id} on ifindex {pin.ifindex}, "
                f"while {info.ifname} runs {info.xdp_prog_id or 'no program'}"
            )
    return None


@dataclass
class Located:
    """vtnetmap's state for one device: the record, the file it is in, its pins.

    ``how``: "here" (found under the name asked), "renamed" (a record of this namespace
    under an older name), "moved" (a record of another namespace whose program this
    device runs). ``stale``: messages about records under this name that are about no
    device here (the caller removes them). ``bad``: the unreadable record file under this
    name, if any."""

    rec: AttachRecord | None
    path: str
    pdir: str
    pin: PinView | None
    how: str = "here"
    stale: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    bad: StateFileError | None = None


def locate(ifname: str, nsino: int, info: DeviceInfo | None) -> Located:
    """Find the state of device ``ifname`` (``info``: as read now, None if no such
    interface) in the calling thread's namespace. Reads only."""
    cookie = netns_cookie()
    path, pdir = state_path(nsino, ifname), pin_dir(nsino, ifname)
    pin = read_pin(pdir, ifname)
    found = Located(None, path, pdir, pin)
    try:
        rec = read_record(nsino, ifname)
    except StateFileError as exc:
        found.bad, rec = exc, None
    if rec is not None:
        why = mismatch(rec, cookie, info, pin)
        if why is None:
            found.rec = rec
            return found
        if rec.netns_cookie == cookie and (info is None or info.ifindex != rec.ifindex):
            # the device it is about may live on under another name: keep it for that
            found.rec, found.how = rec, "elsewhere"
            return found
        found.stale.append((path, why))
    if info is None:
        return found
    for other_ino, other_name, other_path in state_files():
        if other_path == path:
            continue
        try:
            other = read_record_file(other_path)
        except VtnetError:
            continue
        if other is None:
            continue
        other_pdir = pin_dir(other_ino, other_name)
        try:
            other_pin = read_pin(other_pdir, other_name)
        except VtnetError:
            continue
        renamed = other.netns_cookie == cookie and mismatch(other, cookie, info, other_pin) is None
        moved = (
            other.netns_cookie != cookie
            and bool(info.xdp_prog_id)
            and other.prog_id == info.xdp_prog_id
            and pin_on(other_pin, info)
            and other_pin is not None
            and other.link_id in (0, other_pin.link_id)
        )
        if renamed or moved:
            return Located(
                other,
                other_path,
                other_pdir,
                other_pin,
                "renamed" if renamed else "moved",
                found.stale,
                found.bad,
            )
    if not pin_on(pin, info):
        found.pin = pin if pin is None or not pin.ifindex else None
        if pin is not None and pin.ifindex:
            found.stale.append(
                (
                    pdir,
                    f"the link pinned in {pdir} holds program {pin.prog_id} on ifindex "
                    f"{pin.ifindex}, another device than {ifname} (ifindex {info.ifindex})",
                )
            )
    return found


def name_by_index(ifindex: int) -> str | None:
    """The interface with ``ifindex`` in the calling thread's namespace, or None."""
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return None


def _xdp_prog_names(prog_id: int) -> list[str]:
    """Interfaces of the calling thread's namespace running program ``prog_id``."""
    out = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            xdp: Any = link.get_attr("IFLA_XDP")
            if xdp is not None and (xdp.get_attr("IFLA_XDP_PROG_ID") or 0) == prog_id:
                out.append(str(link.get_attr("IFLA_IFNAME")))
    return out


def where_is_prog(prog_id: int) -> tuple[str, str] | None:
    """(named namespace, interface) running XDP program ``prog_id``, looked for in the
    namespaces ``ip netns`` names; None when it is in none of them."""
    try:
        names = sorted(os.listdir(NETNS_RUN_DIR))
    except OSError:
        return None
    for ns in names:
        try:
            with enter_netns(ns):
                found = _xdp_prog_names(prog_id)
        except (OSError, VtnetError):
            continue
        if found:
            return ns, found[0]
    return None


def live_cookies() -> dict[int, int | None]:
    """Cookie of every namespace this host can see, by inode; None for one that exists
    but whose cookie cannot be read here (entering it needs CAP_SYS_ADMIN), so that a
    caller never takes a live namespace for a deleted one. The calling thread's own
    namespace needs no setns."""
    out: dict[int, int | None] = {}
    with suppress(OSError, VtnetError):
        out[netns_inode()] = netns_cookie()
    for ino, path in live_netns_paths().items():
        if ino in out:
            continue
        try:
            with enter_netns(path):
                out[ino] = netns_cookie()
        except (OSError, VtnetError):
            out[ino] = None
    return out
