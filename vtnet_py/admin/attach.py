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

import os
import time
from contextlib import suppress
from dataclasses import dataclass, field

from vtnet_py._sys import bpf
from vtnet_py._sys.abi import ETH_OVERHEAD, XDP_PACKET_HEADROOM
from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py._sys.proc import live_netns_inodes, netns_inode, pid_alive
from vtnet_py.admin import pins
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
    read_record,
    remove_record,
    state_path,
    write_record,
)
from vtnet_py.device.types import DeviceInfo
from vtnet_py.ebpf.steer import attach_pinned, xdp_link_fd
from vtnet_py.errors import BusyError, DeviceError, UnsupportedError, VtnetError
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
        if read_record(nsino, ifname) is not None or os.path.exists(pin_dir(nsino, ifname)):
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
    """BusyError when ``ifname`` is attached by vtnetmap and the attach is live."""
    pin = read_pin(pin_dir(nsino, ifname), ifname)
    rec = read_record(nsino, ifname)
    if (
        pin is not None
        and pin.ifindex == info.ifindex
        and pin.prog_id == info.xdp_prog_id
        and rec is not None
        and rec.phase == "attached"
    ):
        raise BusyError(
            f"{ifname} is already attached by vtnetmap (program {pin.prog_id}, "
            f"pinned in {pin_dir(nsino, ifname)}); `vtnetmap detach {ifname}` "
            "first to attach it again"
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
    remove_record(nsino, ifname)


@dataclass
class DetachResult:
    """What ``detach`` did; ``acted`` False means there was nothing to do."""

    ifname: str
    messages: list[str] = field(default_factory=list)
    acted: bool = False


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
    """detach's work, under the lock, in the interface's netns."""
    res = DetachResult(ifname)
    rec = read_record(nsino, ifname)
    pdir = pin_dir(nsino, ifname)
    pin = read_pin(pdir, ifname)
    if rec is not None and rec.phase != "attached":
        res.messages.append(
            f"{ifname}: repairing an attach that did not finish (pid {rec.pid}, "
            f"{'still running' if pid_alive(rec.pid) else 'dead'}; phase {rec.phase})"
        )
    if pin is not None:
        _detach_pinned(ifname, pdir, pin, info, res)
    elif os.path.isdir(pdir):
        res.messages.append(f"{ifname}: removed stale pins in {pdir}")
    if remove_pins(pdir):
        res.acted = True
    if info is not None and info.xdp_prog_id and (pin is None or not pin.ifindex):
        _detach_unpinned(ifname, info, rec, force, res)
    if rec is not None:
        res.acted = True
        _restore_recorded(ifname, nsino, rec, info, layer, res)
    if not res.acted:
        res.messages.append(
            f"{ifname}: not attached by vtnetmap; nothing to do"
            if info
            else f"{ifname}: no such interface here and no vtnetmap state for it; nothing to do"
        )
    return res


def _detach_pinned(
    ifname: str, pdir: str, pin: PinView, info: DeviceInfo | None, res: DetachResult
) -> None:
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
    nsino: int,
    rec: AttachRecord,
    info: DeviceInfo | None,
    layer: DeviceLayer,
    res: DetachResult,
) -> None:
    path = state_path(nsino, ifname)
    if info is None:
        remove_record(nsino, ifname)
        res.messages.append(
            f"{ifname} no longer exists: its recorded offloads and channels "
            f"cannot be restored; removed {path}"
        )
        return
    saved = rec.saved
    if info.ifindex != saved.ifindex:  # the device it describes is gone for good
        remove_record(nsino, ifname)
        res.messages.append(
            f"{ifname} was replaced since the attach (ifindex {saved.ifindex} "
            f"-> {info.ifindex}): its recorded offloads and channels were not "
            f"applied to the new one; removed {path}"
        )
        return
    feats = {
        n: v
        for n, v in saved.features.items()
        if n in info.features and info.features[n].wanted != v
    }
    chans = {k: v for k, v in (saved.channels or {}).items() if getattr(info.channels, k) != v}
    try:
        restore(layer, saved)
    except VtnetError as exc:
        exc.add_note(f"{ifname}: the recorded state stays in {path}; run detach again")
        raise
    remove_record(nsino, ifname)
    what = []
    if feats:
        what.append(
            "offloads " + ", ".join(f"{n} {'on' if v else 'off'}" for n, v in sorted(feats.items()))
        )
    if chans:
        what.append("channels " + ", ".join(f"{k} {v}" for k, v in sorted(chans.items())))
    res.messages.append(
        f"{ifname}: restored {'; '.join(what)}"
        if what
        else f"{ifname}: offloads and channels were already as recorded"
    )


def sweep_deleted_namespaces(current: int) -> list[str]:
    """Remove pins (and state files) left for interfaces of network namespaces that were
    deleted while attached. Only where the pinned link no longer holds an interface and
    no process shows the namespace, so a namespace kept alive by an fd alone (its pins
    still attached) is never touched. Returns a message per interface cleaned."""
    msgs: list[str] = []
    try:
        dirs = [d for d in os.listdir(pins.PIN_ROOT) if d.isdigit() and int(d) != current]
    except FileNotFoundError:
        dirs = []
    live: set[int] | None = None
    for d in dirs:
        nsino = int(d)
        for ifname in sorted(os.listdir(os.path.join(pins.PIN_ROOT, d))):
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
            remove_record(nsino, ifname)
            msgs.append(
                f"{ifname}: removed the stale pins and state of an interface in a "
                f"deleted network namespace (inode {nsino})"
            )
    with suppress(FileNotFoundError):  # records of attaches that died before pinning
        for fn in sorted(os.listdir(record.STATE_DIR)):
            head, sep, rest = fn.partition("-")
            if not (sep and head.isdigit() and fn.endswith(".json")) or int(head) == current:
                continue
            nsino, ifname = int(head), rest[: -len(".json")]
            if os.path.exists(pin_dir(nsino, ifname)):
                continue
            live = live_netns_inodes() if live is None else live
            if nsino not in live and remove_record(nsino, ifname):
                msgs.append(
                    f"{ifname}: removed the state of an interface in a deleted "
                    f"network namespace (inode {nsino})"
                )
    return msgs
