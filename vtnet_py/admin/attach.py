# Over 500 lines: attach and detach share the record, pin and undo steps; detach repairs
# what a failed attach left, so the two read together.
"""`vtnetmap attach / detach`: a prepared device with a pinned steering program.

``attach`` checks an interface, prepares it (channels, then offloads off, recording what
they were in the state file, device/record.py) and attaches the steering program with a
BPF link whose link and maps are pinned in bpffs (admin/pins.py), so the program outlives
the attaching process and ports opened later by any process join it.

``detach`` unpins, BPF_LINK_DETACHes (forcibly: ports of other processes still holding
the link lose their steering and fail on their next poll) and restores the device.

Everything works in the calling thread's network namespace, or in ``netns=`` (setns).
"""

from __future__ import annotations

import dataclasses
import os
import time
from contextlib import suppress
from dataclasses import dataclass, field

from vtnet_py._sys import bpf
from vtnet_py._sys.abi import ETH_OVERHEAD, XDP_PACKET_HEADROOM
from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py._sys.proc import live_netns_inodes, netns_cookie, netns_inode, pid_alive
from vtnet_py.admin import identity, pins
from vtnet_py.admin.pins import (
    BPFFS,
    PinView,
    bpf_error,
    describe_pids,
    ensure_bpffs,
    inspect_prog,
    pin_dir,
    read_pin,
    remove_pins,
)
from vtnet_py.device import record
from vtnet_py.device.netlink import NetlinkDeviceLayer
from vtnet_py.device.policy import (
    DeviceLayer,
    Mode,
    SavedState,
    offloads_to_disable,
    plan_channels,
    prepare,
    refuse_default_route,
    restore,
    support_mode,
)
from vtnet_py.device.record import (
    AttachRecord,
    check_ifname,
    locked,
    mkdirs_0700,
    remove_record,
    remove_state_file,
    state_files,
    state_path,
    write_record,
)
from vtnet_py.device.types import DeviceInfo
from vtnet_py.ebpf.steer import attach_pinned, xdp_link_fd
from vtnet_py.errors import (
    BusyError,
    DeviceError,
    StateFileError,
    UnsupportedError,
    VtnetError,
)
from vtnet_py.netmap.hostrings import cleanup_stale
from vtnet_py.netmap.port import open_port
from vtnet_py.netmap.xsk import CHUNK_SIZE

NR_BUF_SIZE = CHUNK_SIZE - XDP_PACKET_HEADROOM


def _pending_state(info: DeviceInfo, ch_plan: dict[str, int], mode: Mode) -> SavedState:
    """Before anything changes: the requested state of every offload attach may turn off
    and the channels it will change (a superset of what prepare() will record)."""
    feats = {
        n: info.features[n].wanted for n in offloads_to_disable(info) if not info.features[n].fixed
    }
    chans = {k: getattr(info.channels, k) for k in ch_plan} or None
    return SavedState(
        ifname=info.ifname,
        ifindex=info.ifindex,
        driver=info.driver,
        mode=mode,
        channels=chans,
        features=feats,
    )


def _describe_changes(saved: SavedState, info_after: DeviceInfo) -> str:
    off = sorted(
        n
        for n, v in saved.features.items()
        if v and n in info_after.features and not info_after.features[n].wanted
    )
    parts = [f"offloads turned off: {', '.join(off)}" if off else "no offload to turn off"]
    if saved.channels:
        now = info_after.channels
        parts.append(
            "channels "
            + ", ".join(f"{k} {v} -> {getattr(now, k)}" for k, v in sorted(saved.channels.items()))
        )
    return "; ".join(parts)


@dataclass
class AttachResult:
    """What ``attach`` did: the record written, lines for the user, warnings."""

    record: AttachRecord
    messages: list[str]
    warnings: list[str]


def attach(
    ifname: str,
    *,
    rings: int | None = None,
    mode: str | None = None,
    zerocopy: str = "auto",
    force: bool = False,
    netns: str | None = None,
    layer: DeviceLayer | None = None,
) -> AttachResult:
    """Prepare ``ifname`` and leave vtnetmap's steering program attached and pinned.

    ``rings`` sets the channel count first, ``mode`` forces native/generic XDP,
    ``zerocopy`` is the default later ports use when they ask "auto" ("on" is checked
    now by binding every queue in zero-copy mode), ``force`` allows the interface that
    carries the default route. A stale attach (dead attacher, stale pins) is repaired
    first. On any failure the device is put back as found, pins and state file removed;
    should putting back fail, the state file stays for ``detach`` and the error says so.
    """
    check_ifname(ifname)
    if zerocopy not in ("auto", "on", "off"):
        raise ValueError(f"{ifname}: zerocopy must be auto, on or off, not {zerocopy!r}")
    layer = layer or NetlinkDeviceLayer()
    with enter_netns(netns), locked():
        nsino = netns_inode()
        messages: list[str] = []
        info = layer.read(ifname)
        _refuse_if_attached(ifname, info, nsino)
        if os.path.lexists(state_path(nsino, ifname)) or os.path.exists(pin_dir(nsino, ifname)):
            messages += _cleanup(ifname, nsino, info, layer, force=False).messages
            info = layer.read(ifname)
        messages += sweep_deleted_namespaces(nsino)
        if info.xdp_prog_id:
            _refuse_foreign_or_busy(ifname, info)

        refuse_default_route(info, force)  # before anything is written or mounted
        chosen, _ = support_mode(info, mode)
        ch_plan = plan_channels(info, rings)
        frags = info.mtu + ETH_OVERHEAD > NR_BUF_SIZE
        rec = AttachRecord(
            ifname=ifname,
            ifindex=info.ifindex,
            netns_inode=nsino,
            phase="preparing",
            saved=_pending_state(info, ch_plan, chosen),
            mode=chosen,
            frags=frags,
            zerocopy=zerocopy,
            rings=rings,
            pid=os.getpid(),
            time=time.time(),
            netns=netns,
            netns_cookie=netns_cookie(),
        )
        write_record(rec)
        pdir = pin_dir(nsino, ifname)
        try:
            saved = prepare(layer, ifname, rings=rings, force=force, mode=mode, frags=frags)
            rec.saved, rec.phase, rec.mode = saved, "prepared", saved.mode
            write_record(rec)
            ensure_bpffs(ifname)
            mkdirs_0700(pdir, stop=BPFFS)
            try:
                rec.prog_id, rec.link_id = attach_pinned(
                    ifname, info.ifindex, saved.mode, frags, pdir
                )
            except UnsupportedError as exc:
                if info.driver == "veth" and ch_plan.get("rx"):
                    exc.add_note(
                        f"{ifname}: veth takes XDP only with at least as many rx "
                        "queues as its peer has tx queues; lower the peer's first "
                        "(`ethtool -L PEER tx N`)"
                    )
                raise
            rec.pin_dir, rec.phase = pdir, "attached"
            write_record(rec)
            if zerocopy == "on":
                _probe_zerocopy(ifname, force)
        except BaseException as exc:
            # rec.saved is prepare()'s record, or before it the pending superset: restore
            # is a no-op where nothing changed, and retries where prepare's undo failed
            _undo_attach(ifname, nsino, layer, rec.saved, exc)
            raise
        after = layer.read(ifname)
        messages.append(
            f"{ifname}: attached vtnetmap's steering program (id {rec.prog_id}, "
            f"{rec.mode} XDP{', multi-buffer' if frags else ''}), pinned in {pdir}; "
            f"ports default to zerocopy={zerocopy}"
        )
        messages.append(f"{ifname}: {_describe_changes(rec.saved, after)}")
        return AttachResult(rec, messages, list(rec.saved.warnings))


def _refuse_if_attached(ifname: str, info: DeviceInfo, nsino: int) -> None:
    """BusyError when ``ifname`` is attached by vtnetmap and the attach is live (also
    under the name or in the namespace it had then); StateFileError when its record is
    unreadable."""
    loc = identity.locate(ifname, nsino, info)
    if loc.bad is not None:
        raise StateFileError(
            loc.bad.path,
            f"{loc.bad}; `vtnetmap detach {ifname} --force` removes what is vtnetmap's "
            f"on {ifname} and this file",
        )
    if (
        loc.rec is not None
        and loc.how != "elsewhere"
        and loc.rec.phase == "attached"
        and identity.pin_on(loc.pin, info)
    ):
        assert loc.pin is not None
        raise BusyError(
            f"{ifname} is already attached by vtnetmap (program {loc.pin.prog_id}, "
            f"pinned in {loc.pdir}); `vtnetmap detach {ifname}` first to attach it again"
        )


def _refuse_foreign_or_busy(ifname: str, info: DeviceInfo) -> None:
    assert info.xdp_prog_id
    view = inspect_prog(info.xdp_prog_id, ifname)
    if view is None:
        return  # went away just now
    if not view.ours:
        raise BusyError(
            f"{ifname} already has an XDP program (id {view.prog_id}, name "
            f"{view.name!r}) that is not vtnetmap's; detach it first"
        )
    live = sorted({p for p in view.owners.values() if pid_alive(p)})
    who = f"open ports of pid {describe_pids(live)}" if live else "a process"
    raise BusyError(
        f"{ifname}: vtnetmap's steering program (id {view.prog_id}) is attached "
        f"implicitly by {who} (for its lifetime); close those ports first, or "
        f"`vtnetmap detach --force {ifname}`"
    )


def _probe_zerocopy(ifname: str, force: bool) -> None:
    """Bind every queue in zero-copy mode once (joining the pinned program) and close."""
    try:
        open_port(f"netmap:{ifname}", zerocopy="on", force=force).close()
    except VtnetError as exc:
        raise UnsupportedError(f"{ifname}: --zerocopy on: {exc}") from exc


def _undo_attach(
    ifname: str, nsino: int, layer: DeviceLayer, saved: SavedState, exc: BaseException
) -> None:
    """Take back a failed attach; notes on ``exc`` say what could not be."""
    pdir = pin_dir(nsino, ifname)
    try:
        pin = read_pin(pdir, ifname)
        if pin is not None and pin.ifindex:
            fd = bpf.obj_get(os.path.join(pdir, "link"))
            try:
                bpf.link_detach(fd)
            finally:
                os.close(fd)
        remove_pins(pdir)
    except (OSError, VtnetError) as undo:
        exc.add_note(f"{ifname}: could not remove the steering program pinned in {pdir}: {undo}")
    try:
        restore(layer, saved)
    except Exception as undo:  # noqa: BLE001 - reported on the original error
        exc.add_note(
            f"{ifname}: could not restore the device ({undo}); its previous state "
            f"stays in {state_path(nsino, ifname)}: run `vtnetmap detach {ifname}`"
        )
        return
    try:
        remove_record(nsino, ifname)
    except StateFileError as undo:  # the device is back as found; only the file stays
        exc.add_note(f"{undo}; `vtnetmap detach {ifname}` removes it")


@dataclass
class DetachResult:
    """What ``detach`` did; ``acted`` False means there was nothing to do. ``problems``:
    what could not be restored and why (the record then stays for another detach)."""

    ifname: str
    messages: list[str] = field(default_factory=list)
    acted: bool = False
    problems: list[str] = field(default_factory=list)  # what could not be put back, and why


def detach(
    ifname: str, *, netns: str | None = None, force: bool = False, layer: DeviceLayer | None = None
) -> DetachResult:
    """Unpin and detach vtnetmap's steering program from ``ifname`` and restore the
    offloads and channels recorded at attach. Idempotent.

    Detaching is forcible for a program ``vtnetmap attach`` made: ports still holding it
    stop receiving and fail on their next poll. A program a port attached implicitly is
    detached only when all its owner pids are dead, or with ``force``. Also repairs a
    half-done attach (dead attacher) and stale pins. A foreign XDP program is left alone.
    If restoring fails, the state file is kept so that ``detach`` can be run again.
    """
    check_ifname(ifname)
    layer = layer or NetlinkDeviceLayer()
    with enter_netns(netns), locked():
        nsino = netns_inode()
        try:
            info: DeviceInfo | None = layer.read(ifname)
        except DeviceError as exc:
            if "does not exist" not in str(exc):
                raise
            info = None
        res = _cleanup(ifname, nsino, info, layer, force=force)
        res.messages += sweep_deleted_namespaces(nsino)
        if info is not None:
            try:
                res.messages += cleanup_stale(ifname)
            except BusyError as exc:  # host rings open in a live process stay
                res.messages.append(str(exc))
            except DeviceError:
                pass  # the device layer knows the interface, netlink does not (a test double)
        return res


def _cleanup(
    ifname: str, nsino: int, info: DeviceInfo | None, layer: DeviceLayer, *, force: bool
) -> DetachResult:
    """detach's work, under the lock, in the interface's netns. Nothing recorded is
    applied before the record's identity matched the device (admin/identity.py)."""
    res = DetachResult(ifname)
    loc = identity.locate(ifname, nsino, info)
    if loc.bad is not None:
        if not force:
            raise StateFileError(
                loc.bad.path,
                f"{loc.bad}; `vtnetmap detach {ifname} --force` removes what is vtnetmap's "
                f"on {ifname} and this file",
            )
        remove_state_file(loc.bad.path)
        res.acted = True
        res.messages.append(
            f"{ifname}: removed the unreadable {loc.bad.path}; the offloads and channels "
            "it recorded were not restored"
        )
    for path, why in loc.stale:
        if path.endswith(".json"):
            remove_state_file(path)
            res.acted = True
            res.messages.append(f"{ifname}: {path} was not applied: {why}; removed it")
        else:
            res.messages.append(f"{ifname}: left alone: {why}")
    rec, pin, target = loc.rec, loc.pin, info
    if rec is not None and loc.how == "elsewhere":
        target = _find_elsewhere(ifname, rec, loc, layer, force, res)
        if target is None:
            return res
    elif rec is not None and loc.how != "here" and info is not None:
        was = f"{rec.ifname} in another network namespace" if loc.how == "moved" else rec.ifname
        res.messages.append(
            f"{ifname} was {was} (ifindex {rec.ifindex}) when vtnetmap attached it; "
            f"its state is found by that identity"
        )
    tname = target.ifname if target is not None else ifname
    if rec is not None and rec.phase != "attached":
        res.messages.append(
            f"{tname}: repairing an attach that did not finish (pid {rec.pid}, "
            f"{'still running' if pid_alive(rec.pid) else 'dead'}; phase {rec.phase})"
        )
    if pin is not None and pin.ifindex and not identity.pin_on(pin, target):
        if not force:
            raise DeviceError(
                f"{ifname}: the link pinned in {loc.pdir} holds vtnetmap's program "
                f"{pin.prog_id} on ifindex {pin.ifindex}, which is not {ifname} here (renamed "
                f"or moved without its record); `vtnetmap detach {ifname} --force` detaches it"
            )
        _detach_pinned(tname, loc.pdir, pin, res)
    elif pin is not None:
        _detach_pinned(tname, loc.pdir, pin, res)
    elif os.path.isdir(loc.pdir):
        res.messages.append(f"{tname}: removed stale pins in {loc.pdir}")
    if remove_pins(loc.pdir):
        res.acted = True
    if target is not None and target.xdp_prog_id and not identity.pin_on(pin, target):
        _detach_unpinned(tname, target, rec, force, res)
    if rec is not None:
        res.acted = True
        _restore_recorded(tname, loc.path, rec, target, layer, res)
    if not res.acted:
        res.messages.append(
            f"{ifname}: not attached by vtnetmap; nothing to do"
            if info
            else f"{ifname}: no such interface here and no vtnetmap state for it; nothing to do"
        )
    return res


def _find_elsewhere(
    ifname: str,
    rec: AttachRecord,
    loc: identity.Located,
    layer: DeviceLayer,
    force: bool,
    res: DetachResult,
) -> DeviceInfo | None:
    """The device of ``rec`` (this namespace's, no longer ``ifname``): renamed (returned,
    to be detached), moved away with the program attached (said where; --force detaches
    it and drops the record), or gone (the record is removed, applied to nothing)."""
    res.acted = True
    new = identity.name_by_index(rec.ifindex)
    if new is not None and new != ifname:
        try:
            now: DeviceInfo | None = layer.read(new)
        except DeviceError:
            now = None
        if now is not None and identity.mismatch(rec, netns_cookie(), now, loc.pin) is None:
            res.messages.append(
                f"{ifname} was renamed to {new} since the attach (ifindex {rec.ifindex}); "
                f"detaching {new}"
            )
            return now
    pin = loc.pin
    if pin is not None and pin.ifindex:
        where = identity.where_is_prog(pin.prog_id)
        there = (
            f"network namespace {where[0]} as {where[1]}" if where else "another network namespace"
        )
        if not force:
            hint = (
                f"`vtnetmap detach {where[1]} --netns {where[0]}` restores it there; "
                if where
                else ""
            )
            raise DeviceError(
                f"{ifname} (ifindex {rec.ifindex}) was moved to {there} with vtnetmap's "
                f"program {pin.prog_id} still attached: {hint}`vtnetmap detach {ifname} "
                "--force` here detaches the program and drops the record, leaving its "
                "offloads and channels as they are"
            )
        _detach_pinned(ifname, loc.pdir, pin, res)
        remove_pins(loc.pdir)
        res.messages.append(
            f"{ifname}: it had moved to {there}; its recorded offloads and channels "
            f"were not restored; removed {loc.path}"
        )
    else:
        remove_pins(loc.pdir)
        gone = (
            f"{ifname} was replaced since the attach (ifindex {rec.ifindex} -> {loc_ifindex})"
            if (loc_ifindex := _ifindex_or_none(layer, ifname)) is not None
            else f"{ifname} no longer exists"
        )
        res.messages.append(
            f"{gone}: its recorded offloads and channels were not applied to any other "
            f"device; removed {loc.path}"
        )
    remove_state_file(loc.path)
    return None


def _ifindex_or_none(layer: DeviceLayer, ifname: str) -> int | None:
    try:
        return layer.read(ifname).ifindex
    except DeviceError:
        return None


def _detach_pinned(ifname: str, pdir: str, pin: PinView, res: DetachResult) -> None:
    res.acted = True
    if not pin.ifindex:
        res.messages.append(
            f"{ifname}: the pinned program {pin.prog_id} was no longer "
            "attached (interface gone or detached elsewhere); removed its pins"
        )
        return
    view = inspect_prog(pin.prog_id, ifname)
    live = sorted({p for p in (view.owners.values() if view else ()) if pid_alive(p)})
    path = os.path.join(pdir, "link")
    try:
        fd = bpf.obj_get(path)
        try:
            bpf.link_detach(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise bpf_error(ifname, f"detaching the link pinned at {path}", exc) from exc
    res.messages.append(
        f"{ifname}: detached vtnetmap's steering program (id {pin.prog_id}) "
        f"and removed its pins in {pdir}"
    )
    if live:
        queues = sorted(q for q, p in view.owners.items() if p in live) if view else []
        res.messages.append(
            f"{ifname}: forcibly detached although pid {describe_pids(live)} still had "
            f"queue {', '.join(map(str, queues))} open: those ports receive nothing more "
            "and fail on their next poll"
        )


def _detach_unpinned(
    ifname: str, info: DeviceInfo, rec: AttachRecord | None, force: bool, res: DetachResult
) -> None:
    """The interface has a program that no pin of ours holds."""
    assert info.xdp_prog_id
    view = inspect_prog(info.xdp_prog_id, ifname)
    if view is None:
        return
    if not view.ours:
        res.messages.append(
            f"{ifname}: XDP program {view.prog_id} ({view.name!r}) is not vtnetmap's; left alone"
        )
        return
    live = sorted({p for p in view.owners.values() if pid_alive(p)})
    ours_by_record = rec is not None and rec.prog_id == view.prog_id
    if live and not (force or ours_by_record):
        raise BusyError(
            f"{ifname}: vtnetmap's steering program (id {view.prog_id}) is in use "
            f"by open ports of pid {describe_pids(live)} (queue "
            f"{', '.join(str(q) for q, p in sorted(view.owners.items()) if p in live)}"
            f"); close them, or `vtnetmap detach --force {ifname}`"
        )
    lfd = xdp_link_fd(view.prog_id)
    if lfd < 0:
        raise DeviceError(
            f"{ifname}: vtnetmap's program {view.prog_id} is attached without a "
            f"BPF link (not by this version); remove it with `ip link set dev "
            f"{ifname} xdp off`"
        )
    try:
        bpf.link_detach(lfd)
    except OSError as exc:
        raise bpf_error(ifname, f"detaching program {view.prog_id}", exc) from exc
    finally:
        os.close(lfd)
    res.acted = True
    dead = sorted(set(view.owners.values()) - set(live))
    if live:
        res.messages.append(
            f"{ifname}: forcibly detached vtnetmap's steering program (id "
            f"{view.prog_id}) used by pid {describe_pids(live)}: those ports "
            "receive nothing more and fail on their next poll"
        )
    else:
        left = f"dead pid {describe_pids(dead)}" if dead else "no live owner"
        res.messages.append(
            f"{ifname}: detached vtnetmap's steering program (id "
            f"{view.prog_id}) left behind by {left}"
        )


def _restore_recorded(
    ifname: str,
    path: str,
    rec: AttachRecord,
    info: DeviceInfo | None,
    layer: DeviceLayer,
    res: DetachResult,
) -> None:
    """Put back what ``rec`` saved on ``info``, the device whose identity it matched
    (possibly renamed or moved since: the record's name and ifindex are replaced)."""
    if info is None:
        remove_state_file(path)
        res.messages.append(
            f"{ifname} no longer exists: its recorded offloads and channels "
            f"cannot be restored; removed {path}"
        )
        return
    saved = dataclasses.replace(rec.saved, ifname=info.ifname, ifindex=info.ifindex)
    feats = {
        n: v
        for n, v in saved.features.items()
        if n in info.features and info.features[n].wanted != v
    }
    chans = {k: v for k, v in (saved.channels or {}).items() if getattr(info.channels, k) != v}
    failed: VtnetError | None = None
    try:
        restore(layer, saved)
    except VtnetError as exc:
        failed = exc
        after = layer.read(info.ifname)
        feats = {n: v for n, v in feats.items() if after.features[n].wanted == v}
        chans = {k: v for k, v in chans.items() if getattr(after.channels, k) == v}
    what = []
    if feats:
        what.append(
            "offloads " + ", ".join(f"{n} {'on' if v else 'off'}" for n, v in sorted(feats.items()))
        )
    if chans:
        what.append("channels " + ", ".join(f"{k} {v}" for k, v in sorted(chans.items())))
    if failed is not None:
        done = f"restored {'; '.join(what)}; " if what else ""
        res.problems.append(
            f"{ifname}: {done}not restored: {str(failed).removeprefix(ifname + ': ')}; "
            f"the record stays in {path}: run `vtnetmap detach {ifname}` again then"
        )
        return
    remove_state_file(path)
    res.messages.append(
        f"{ifname}: restored {'; '.join(what)}"
        if what
        else f"{ifname}: offloads and channels were already as recorded"
    )


def sweep_deleted_namespaces(current: int) -> list[str]:
    """Remove pins and state files left for interfaces of network namespaces that were
    deleted while attached. A record's namespace is gone when no namespace this host can
    see has its cookie (an inode may already be another namespace's). Pins are removed
    only where the pinned link no longer holds an interface, so a device that left the
    namespace with its program (moved, or back to the host's) keeps them; without a
    record, pins are removed only where no process shows the namespace. Unreadable
    records are left for `detach --force`. Returns a message per interface cleaned."""
    msgs: list[str] = []
    cookies: dict[int, int | None] | None = None
    recorded: set[tuple[int, str]] = set()
    for nsino, ifname, path in state_files():
        recorded.add((nsino, ifname))
        try:
            rec = record.read_record_file(path)
        except VtnetError:
            continue
        if rec is None:
            continue
        cookies = identity.live_cookies() if cookies is None else cookies
        if rec.netns_inode in cookies and cookies[rec.netns_inode] in (rec.netns_cookie, None):
            continue  # alive (or cannot be told from here): never removed on a guess
        pdir = pin_dir(nsino, ifname)
        try:
            pin = read_pin(pdir, ifname)
        except VtnetError:
            continue
        if pin is not None and pin.ifindex:
            continue
        what = "stale pins and state" if remove_pins(pdir) else "state"
        remove_state_file(path)
        msgs.append(
            f"{ifname}: removed the {what} of an interface in a deleted network namespace "
            f"(inode {nsino})"
        )
    try:
        dirs = [d for d in os.listdir(pins.PIN_ROOT) if d.isdigit() and int(d) != current]
    except FileNotFoundError:
        dirs = []
    live: set[int] | None = None
    for d in dirs:
        nsino = int(d)
        with suppress(FileNotFoundError, NotADirectoryError):
            for ifname in sorted(os.listdir(os.path.join(pins.PIN_ROOT, d))):
                if (nsino, ifname) in recorded:
                    continue
                pdir = pin_dir(nsino, ifname)
                try:
                    pin = read_pin(pdir, ifname)
                except VtnetError:
                    continue
                if pin is not None and pin.ifindex:
                    continue
                live = live_netns_inodes() if live is None else live
                if nsino in live:
                    continue
                remove_pins(pdir)
                msgs.append(
                    f"{ifname}: removed the stale pins of an interface in a deleted "
                    f"network namespace (inode {nsino})"
                )
    return msgs
