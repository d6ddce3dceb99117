"""`vtnetmap attach / detach / status`: a prepared device with a pinned steering program.

``attach`` checks an interface, prepares it (channels, then offloads off, recording what
they were) and attaches the steering program with a BPF link whose link and maps are
pinned in bpffs, so the program outlives the attaching process and ports opened later by
any process join it (steer.py finds it through the interface's XDP program id)::

    /sys/fs/bpf/vtnetmap/<netns inode>/<ifname>/{xsks,owners,link}     dirs 0700, files 0600
    /run/vtnetmap/<netns inode>-<ifname>.json                          dir 0700, file 0600

The state file holds the device's previous state (:class:`~vtnet_py.device.SavedState`),
the program and link ids, the mode and who attached when. It is written before anything
changes (phase "preparing", with the state of every offload attach may touch), again
after the device is prepared ("prepared") and once the program is pinned ("attached"),
so an attach killed at any point is repaired by ``detach`` (or the next ``attach``).
Attach and detach serialise on an flock of the state directory.

``detach`` unpins, BPF_LINK_DETACHes (forcibly: ports of other processes still holding
the link lose their steering and fail on their next poll) and restores the device.
``status`` reports per interface and queue what can be seen from outside a port.

Everything works in the calling thread's network namespace, or in ``netns=`` (setns).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute
from pyroute2.ethtool.ioctl import IoctlEthtool, NoSuchDevice, NotSupportedError

from . import _bpfsys as bpf
from . import _kernel as K
from .device_netlink import NetlinkDeviceLayer
from .device_policy import (
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
from .device_types import Channels, DeviceInfo
from .errors import (
    BusyError,
    DeviceError,
    InterfaceChangedError,
    PrivilegeError,
    UnsupportedError,
    VtnetError,
)
from .netns import NETNS_RUN_DIR
from .netns import netns as enter_netns
from .steer import (
    MAX_QUEUES,
    PROG_NAME,
    PROG_NAME_FRAGS,
    Steering,
    attach_pinned,
    xdp_link_fd,
)
from .xsk import CHUNK_SIZE

if TYPE_CHECKING:
    from .port import Port

STATE_DIR = os.environ.get("VTNETMAP_STATE_DIR", "/run/vtnetmap")
BPFFS = "/sys/fs/bpf"
PIN_ROOT = os.path.join(BPFFS, "vtnetmap")
BPF_FS_TYPE = "bpf"
ETH_OVERHEAD = 14 + 4 + 4  # as in port.py: header, one VLAN tag, FCS room
NR_BUF_SIZE = CHUNK_SIZE - K.XDP_PACKET_HEADROOM
LOCK_TIMEOUT_S = 60.0
CHECK_INTERVAL_S = 0.1
PHASES = ("preparing", "prepared", "attached")


# --- small helpers ------------------------------------------------------------------------

def netns_inode() -> int:
    """Inode of the calling thread's network namespace (names it in paths)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def state_path(nsino: int, ifname: str) -> str:
    return os.path.join(STATE_DIR, f"{nsino}-{ifname}.json")


def pin_dir(nsino: int, ifname: str) -> str:
    return os.path.join(PIN_ROOT, str(nsino), ifname)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            # "pid (comm) S ...": the state follows the last ')' (comm may hold one)
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _mkdirs_0700(path: str, stop: str = "/") -> None:
    """Create ``path`` and missing parents below ``stop``, each 0700 (umask ignored)."""
    missing: list[str] = []
    p = path
    while p != stop and not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        with suppress(FileExistsError):
            os.mkdir(d, 0o700)
    for d in reversed(missing):
        os.chmod(d, 0o700)


def check_ifname(ifname: str) -> None:
    """Refuse a name Linux could never give an interface (dev_valid_name, and printable)
    before it is looked up or put into a path: "/" or ".." would reach outside the state
    and pin directories, and a control character would be echoed into messages."""
    raw = ifname.encode("utf-8", "replace")
    if (not ifname or ifname in (".", "..") or len(raw) > 15
            or any(c in "/:" or c.isspace() or not c.isprintable() for c in ifname)):
        raise DeviceError(f"{ifname!r} is not a valid interface name (Linux: 1 to 15 bytes, "
                          f"printable, no '/', ':' or whitespace)")


def _bpf_error(ifname: str, what: str, exc: OSError) -> VtnetError:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return PrivilegeError(f"{ifname}: {what} needs root (CAP_BPF, CAP_SYS_ADMIN)")
    return DeviceError(f"{ifname}: {what} failed: {exc.strerror or exc}")


# --- the state file -----------------------------------------------------------------------

@dataclass
class AttachRecord:
    """The content of a state file: one attached (or being attached) interface."""

    ifname: str
    ifindex: int
    netns_inode: int
    phase: str
    saved: SavedState
    mode: str
    frags: bool
    zerocopy: str
    rings: int | None
    pid: int
    time: float
    netns: str | None = None
    prog_id: int = 0
    link_id: int = 0
    pin_dir: str = ""
    version: int = 1

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["saved"] = json.loads(self.saved.to_json())
        return json.dumps(d, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str, where: str = "state file") -> AttachRecord:
        """Parse; DeviceError naming ``where`` when it is not a record of ours."""
        try:
            d: Any = json.loads(text)
            if not isinstance(d, dict) or d.get("version") != 1:
                raise ValueError("unknown version")
            if d.get("phase") not in PHASES:
                raise ValueError(f"bad phase {d.get('phase')!r}")
            if d.get("zerocopy") not in ("auto", "on", "off"):
                raise ValueError("bad zerocopy")
            saved = SavedState.from_json(json.dumps(d["saved"]))
            return cls(
                ifname=str(d["ifname"]), ifindex=int(d["ifindex"]),
                netns_inode=int(d["netns_inode"]), phase=d["phase"], saved=saved,
                mode=str(d["mode"]), frags=bool(d["frags"]), zerocopy=d["zerocopy"],
                rings=None if d.get("rings") is None else int(d["rings"]),
                pid=int(d["pid"]), time=float(d["time"]), netns=d.get("netns"),
                prog_id=int(d.get("prog_id") or 0), link_id=int(d.get("link_id") or 0),
                pin_dir=str(d.get("pin_dir") or ""))
        except (ValueError, KeyError, TypeError, DeviceError) as exc:
            raise DeviceError(f"{where} is not readable: {exc}") from exc


def read_record(nsino: int, ifname: str) -> AttachRecord | None:
    """The state file of ``ifname`` in netns ``nsino``, or None. DeviceError if garbled."""
    path = state_path(nsino, ifname)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise PrivilegeError(f"{path} is root-only: reading vtnetmap's state needs root"
                             ) from exc
    return AttachRecord.from_json(text, path)


def _write_record(rec: AttachRecord) -> None:
    """Replace the state file atomically (tmp file 0600 + rename)."""
    _mkdirs_0700(STATE_DIR)
    path = state_path(rec.netns_inode, rec.ifname)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, rec.to_json().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def _remove_record(nsino: int, ifname: str) -> bool:
    try:
        os.unlink(state_path(nsino, ifname))
    except FileNotFoundError:
        return False
    return True


@contextmanager
def _locked() -> Iterator[None]:
    """Serialise attach/detach of this host (flock on the state directory; released
    when the fd closes, so a killed attacher never leaves it held)."""
    try:
        _mkdirs_0700(STATE_DIR)
        fd = os.open(STATE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError as exc:
        raise PrivilegeError(f"{STATE_DIR} is root-only: `vtnetmap attach/detach` need root "
                             f"(CAP_NET_ADMIN, CAP_BPF)") from exc
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BusyError(f"another `vtnetmap attach/detach` has held {STATE_DIR} "
                                    f"for {LOCK_TIMEOUT_S:.0f} s; try again") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


# --- bpffs ---------------------------------------------------------------------------------

def _mount_type(path: str) -> str | None:
    """Filesystem type of the mount on top at ``path`` (None: not a mount point)."""
    fstype = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and fields[4].replace("\\040", " ") == path:
                fstype = right.split()[0]  # later lines are mounted on top
    return fstype


def _private_mount_ns() -> bool | None:
    """True when this process has its own mount namespace (``ip netns exec`` makes
    one), None when that cannot be told (pid 1's namespace is not readable)."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt")
    except OSError:
        return None


def ensure_bpffs(ifname: str) -> None:
    """Mount bpffs on /sys/fs/bpf (mode 0700) unless it is there.

    Refused in a private mount namespace: a bpffs mounted there, and with it the pins,
    would vanish when the namespace does, detaching the program behind the user's back.
    """
    if _mount_type(BPFFS) == BPF_FS_TYPE:
        return
    if _private_mount_ns():
        raise DeviceError(
            f"{ifname}: {BPFFS} has no bpffs in this process's private mount namespace "
            "(`ip netns exec`?), and pins made here would vanish with it; run "
            f"`vtnetmap attach --netns NS {ifname}` from the host's mount namespace")
    if not os.path.isdir(BPFFS):
        raise DeviceError(f"{ifname}: {BPFFS} does not exist, so bpffs cannot be mounted")
    ret = K.libc.mount(b"bpf", BPFFS.encode(), b"bpf", ctypes.c_ulong(0), b"mode=0700")
    if ret != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise PrivilegeError(f"{ifname}: mounting bpffs on {BPFFS} needs CAP_SYS_ADMIN")
        raise DeviceError(f"{ifname}: mounting bpffs on {BPFFS} failed: {os.strerror(err)}")


def _remove_pins(pdir: str) -> bool:
    """Unlink every pin in ``pdir`` and the directory, and its netns directory when that
    is left empty. True when something was there."""
    try:
        names = os.listdir(pdir)
    except FileNotFoundError:
        return False
    for name in names:
        with suppress(FileNotFoundError):
            os.unlink(os.path.join(pdir, name))
    with suppress(FileNotFoundError):
        os.rmdir(pdir)
    with suppress(OSError):  # other interfaces of that netns may still be pinned
        os.rmdir(os.path.dirname(pdir))
    return True


# --- the program on an interface -----------------------------------------------------------

@dataclass
class ProgView:
    """What can be read of an XDP program from outside: name, ours, queue owners."""

    prog_id: int
    name: str
    ours: bool
    owners: dict[int, int] = field(default_factory=dict)  # queue -> pid, nonzero only

    @property
    def frags(self) -> bool:
        return self.name == PROG_NAME_FRAGS


def read_owners(owners_fd: int) -> dict[int, int]:
    """Nonzero entries of an ``owners`` map: queue -> pid."""
    out: dict[int, int] = {}
    v = ctypes.c_uint32(0)
    for q in range(MAX_QUEUES):  # control path: 256 lookups, once per status/detach
        v.value = 0
        if bpf.map_lookup(owners_fd, ctypes.c_uint32(q), v) and v.value:
            out[q] = int(v.value)
    return out


def inspect_prog(prog_id: int, ifname: str) -> ProgView | None:
    """Look at program ``prog_id``; None if it no longer exists."""
    try:
        fd = bpf.prog_fd_by_id(prog_id)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise _bpf_error(ifname, f"reading XDP program {prog_id}", exc) from exc
    try:
        info, map_ids = bpf.prog_info(fd)
        name = info.name.decode(errors="replace")
        view = ProgView(prog_id, name, name in (PROG_NAME, PROG_NAME_FRAGS))
        if view.ours:
            for mid in map_ids:
                mfd = bpf.map_fd_by_id(mid)
                try:
                    if bpf.map_info(mfd).name.decode() == "owners":
                        view.owners = read_owners(mfd)
                finally:
                    os.close(mfd)
        return view
    except OSError as exc:
        raise _bpf_error(ifname, f"reading XDP program {prog_id}", exc) from exc
    finally:
        os.close(fd)


@dataclass
class PinView:
    """The pinned link of an interface: its program and whether it is still attached."""

    prog_id: int
    link_id: int
    ifindex: int  # 0 once detached (interface gone, or BPF_LINK_DETACH)


def read_pin(pdir: str, ifname: str) -> PinView | None:
    path = os.path.join(pdir, "link")
    if not os.path.exists(path):  # no bpf() call (which unprivileged users cannot make)
        return None
    try:
        fd = bpf.obj_get(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise _bpf_error(ifname, f"opening the pin {path}", exc) from exc
    try:
        li = bpf.link_info(fd)
        return PinView(int(li.prog_id), int(li.id), int(li.ifindex))
    finally:
        os.close(fd)


def _describe_pids(pids: Iterable[int]) -> str:
    return ", ".join(str(p) for p in sorted(set(pids)))


# --- attach ---------------------------------------------------------------------------------

@dataclass
class AttachResult:
    """What ``attach`` did: the record written, lines for the user, warnings."""

    record: AttachRecord
    messages: list[str]
    warnings: list[str]


def _pending_state(info: DeviceInfo, ch_plan: dict[str, int], mode: Mode) -> SavedState:
    """Before anything changes: the requested state of every offload attach may turn off
    and the channels it will change (a superset of what prepare() will record)."""
    feats = {n: info.features[n].wanted for n in offloads_to_disable(info)
             if not info.features[n].fixed}
    chans = {k: getattr(info.channels, k) for k in ch_plan} or None
    return SavedState(ifname=info.ifname, ifindex=info.ifindex, driver=info.driver,
                      mode=mode, channels=chans, features=feats)


def _describe_changes(saved: SavedState, info_after: DeviceInfo) -> str:
    off = sorted(n for n, v in saved.features.items()
                 if v and n in info_after.features and not info_after.features[n].wanted)
    parts = [f"offloads turned off: {', '.join(off)}" if off else "no offload to turn off"]
    if saved.channels:
        now = info_after.channels
        parts.append("channels " + ", ".join(
            f"{k} {v} -> {getattr(now, k)}" for k, v in sorted(saved.channels.items())))
    return "; ".join(parts)


def attach(ifname: str, *, rings: int | None = None, mode: str | None = None,
           zerocopy: str = "auto", force: bool = False, netns: str | None = None,
           layer: DeviceLayer | None = None) -> AttachResult:
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
    with enter_netns(netns), _locked():
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
        rec = AttachRecord(ifname=ifname, ifindex=info.ifindex, netns_inode=nsino,
                           phase="preparing", saved=_pending_state(info, ch_plan, chosen),
                           mode=chosen, frags=frags, zerocopy=zerocopy, rings=rings,
                           pid=os.getpid(), time=time.time(), netns=netns)
        _write_record(rec)
        pdir = pin_dir(nsino, ifname)
        try:
            saved = prepare(layer, ifname, rings=rings, force=force, mode=mode, frags=frags)
            rec.saved, rec.phase, rec.mode = saved, "prepared", saved.mode
            _write_record(rec)
            ensure_bpffs(ifname)
            _mkdirs_0700(pdir, stop=BPFFS)
            try:
                rec.prog_id, rec.link_id = attach_pinned(ifname, info.ifindex, saved.mode,
                                                         frags, pdir)
            except UnsupportedError as exc:
                if info.driver == "veth" and ch_plan.get("rx"):
                    exc.add_note(f"{ifname}: veth takes XDP only with at least as many rx "
                                 "queues as its peer has tx queues; lower the peer's first "
                                 "(`ethtool -L PEER tx N`)")
                raise
            rec.pin_dir, rec.phase = pdir, "attached"
            _write_record(rec)
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
            f"ports default to zerocopy={zerocopy}")
        messages.append(f"{ifname}: {_describe_changes(rec.saved, after)}")
        return AttachResult(rec, messages, list(rec.saved.warnings))


def _refuse_if_attached(ifname: str, info: DeviceInfo, nsino: int) -> None:
    """BusyError when ``ifname`` is attached by vtnetmap and the attach is live."""
    pin = read_pin(pin_dir(nsino, ifname), ifname)
    rec = read_record(nsino, ifname)
    if (pin is not None and pin.ifindex == info.ifindex and pin.prog_id == info.xdp_prog_id
            and rec is not None and rec.phase == "attached"):
        raise BusyError(f"{ifname} is already attached by vtnetmap (program {pin.prog_id}, "
                        f"pinned in {pin_dir(nsino, ifname)}); `vtnetmap detach {ifname}` "
                        "first to attach it again")


def _refuse_foreign_or_busy(ifname: str, info: DeviceInfo) -> None:
    assert info.xdp_prog_id
    view = inspect_prog(info.xdp_prog_id, ifname)
    if view is None:
        return  # went away just now
    if not view.ours:
        raise BusyError(f"{ifname} already has an XDP program (id {view.prog_id}, name "
                        f"{view.name!r}) that is not vtnetmap's; detach it first")
    live = sorted({p for p in view.owners.values() if pid_alive(p)})
    who = f"open ports of pid {_describe_pids(live)}" if live else "a process"
    raise BusyError(f"{ifname}: vtnetmap's steering program (id {view.prog_id}) is attached "
                    f"implicitly by {who} (for its lifetime); close those ports first, or "
                    f"`vtnetmap detach --force {ifname}`")


def _probe_zerocopy(ifname: str, force: bool) -> None:
    """Bind every queue in zero-copy mode once (joining the pinned program) and close."""
    from .port import open_port  # port.py imports this module

    try:
        open_port(f"netmap:{ifname}", zerocopy="on", force=force).close()
    except VtnetError as exc:
        raise UnsupportedError(f"{ifname}: --zerocopy on: {exc}") from exc


def _undo_attach(ifname: str, nsino: int, layer: DeviceLayer, saved: SavedState,
                 exc: BaseException) -> None:
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
        _remove_pins(pdir)
    except (OSError, VtnetError) as undo:
        exc.add_note(f"{ifname}: could not remove the steering program pinned in {pdir}: "
                     f"{undo}")
    try:
        restore(layer, saved)
    except Exception as undo:  # noqa: BLE001 - reported on the original error
        exc.add_note(f"{ifname}: could not restore the device ({undo}); its previous state "
                     f"stays in {state_path(nsino, ifname)}: run `vtnetmap detach {ifname}`")
        return
    _remove_record(nsino, ifname)


# --- detach ---------------------------------------------------------------------------------

@dataclass
class DetachResult:
    """What ``detach`` did; ``acted`` False means there was nothing to do."""

    ifname: str
    messages: list[str] = field(default_factory=list)
    acted: bool = False


def detach(ifname: str, *, netns: str | None = None, force: bool = False,
           layer: DeviceLayer | None = None) -> DetachResult:
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
    with enter_netns(netns), _locked():
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
            from .hostrings import cleanup_stale  # hostrings imports the port, which imports us

            try:
                res.messages += cleanup_stale(ifname)
            except BusyError as exc:  # host rings open in a live process stay
                res.messages.append(str(exc))
            except DeviceError:
                pass  # the device layer knows the interface, netlink does not (a test double)
        return res


def _cleanup(ifname: str, nsino: int, info: DeviceInfo | None, layer: DeviceLayer, *,
             force: bool) -> DetachResult:
    """detach's work, under the lock, in the interface's netns."""
    res = DetachResult(ifname)
    rec = read_record(nsino, ifname)
    pdir = pin_dir(nsino, ifname)
    pin = read_pin(pdir, ifname)
    if rec is not None and rec.phase != "attached":
        res.messages.append(
            f"{ifname}: repairing an attach that did not finish (pid {rec.pid}, "
            f"{'still running' if pid_alive(rec.pid) else 'dead'}; phase {rec.phase})")
    if pin is not None:
        _detach_pinned(ifname, pdir, pin, info, res)
    elif os.path.isdir(pdir):
        res.messages.append(f"{ifname}: removed stale pins in {pdir}")
    if _remove_pins(pdir):
        res.acted = True
    if info is not None and info.xdp_prog_id and (pin is None or not pin.ifindex):
        _detach_unpinned(ifname, info, rec, force, res)
    if rec is not None:
        res.acted = True
        _restore_recorded(ifname, nsino, rec, info, layer, res)
    if not res.acted:
        res.messages.append(f"{ifname}: not attached by vtnetmap; nothing to do" if info else
                            f"{ifname}: no such interface here and no vtnetmap state for it; "
                            "nothing to do")
    return res


def _detach_pinned(ifname: str, pdir: str, pin: PinView, info: DeviceInfo | None,
                   res: DetachResult) -> None:
    res.acted = True
    if not pin.ifindex:
        res.messages.append(f"{ifname}: the pinned program {pin.prog_id} was no longer "
                            "attached (interface gone or detached elsewhere); removed its pins")
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
        raise _bpf_error(ifname, f"detaching the link pinned at {path}", exc) from exc
    res.messages.append(f"{ifname}: detached vtnetmap's steering program (id {pin.prog_id}) "
                        f"and removed its pins in {pdir}")
    if live:
        queues = sorted(q for q, p in view.owners.items() if p in live) if view else []
        res.messages.append(
            f"{ifname}: forcibly detached although pid {_describe_pids(live)} still had "
            f"queue {', '.join(map(str, queues))} open: those ports receive nothing more "
            "and fail on their next poll")


def _detach_unpinned(ifname: str, info: DeviceInfo, rec: AttachRecord | None, force: bool,
                     res: DetachResult) -> None:
    """The interface has a program that no pin of ours holds."""
    assert info.xdp_prog_id
    view = inspect_prog(info.xdp_prog_id, ifname)
    if view is None:
        return
    if not view.ours:
        res.messages.append(f"{ifname}: XDP program {view.prog_id} ({view.name!r}) is not "
                            "vtnetmap's; left alone")
        return
    live = sorted({p for p in view.owners.values() if pid_alive(p)})
    ours_by_record = rec is not None and rec.prog_id == view.prog_id
    if live and not (force or ours_by_record):
        raise BusyError(f"{ifname}: vtnetmap's steering program (id {view.prog_id}) is in use "
                        f"by open ports of pid {_describe_pids(live)} (queue "
                        f"{', '.join(str(q) for q, p in sorted(view.owners.items()) if p in live)}"
                        f"); close them, or `vtnetmap detach --force {ifname}`")
    lfd = xdp_link_fd(view.prog_id)
    if lfd < 0:
        raise DeviceError(f"{ifname}: vtnetmap's program {view.prog_id} is attached without a "
                          f"BPF link (not by this version); remove it with `ip link set dev "
                          f"{ifname} xdp off`")
    try:
        bpf.link_detach(lfd)
    except OSError as exc:
        raise _bpf_error(ifname, f"detaching program {view.prog_id}", exc) from exc
    finally:
        os.close(lfd)
    res.acted = True
    dead = sorted(set(view.owners.values()) - set(live))
    if live:
        res.messages.append(f"{ifname}: forcibly detached vtnetmap's steering program (id "
                            f"{view.prog_id}) used by pid {_describe_pids(live)}: those ports "
                            "receive nothing more and fail on their next poll")
    else:
        left = f"dead pid {_describe_pids(dead)}" if dead else "no live owner"
        res.messages.append(f"{ifname}: detached vtnetmap's steering program (id "
                            f"{view.prog_id}) left behind by {left}")


def _restore_recorded(ifname: str, nsino: int, rec: AttachRecord, info: DeviceInfo | None,
                      layer: DeviceLayer, res: DetachResult) -> None:
    path = state_path(nsino, ifname)
    if info is None:
        _remove_record(nsino, ifname)
        res.messages.append(f"{ifname} no longer exists: its recorded offloads and channels "
                            f"cannot be restored; removed {path}")
        return
    saved = rec.saved
    if info.ifindex != saved.ifindex:  # the device it describes is gone for good
        _remove_record(nsino, ifname)
        res.messages.append(f"{ifname} was replaced since the attach (ifindex {saved.ifindex} "
                            f"-> {info.ifindex}): its recorded offloads and channels were not "
                            f"applied to the new one; removed {path}")
        return
    feats = {n: v for n, v in saved.features.items()
             if n in info.features and info.features[n].wanted != v}
    chans = {k: v for k, v in (saved.channels or {}).items()
             if getattr(info.channels, k) != v}
    try:
        restore(layer, saved)
    except VtnetError as exc:
        exc.add_note(f"{ifname}: the recorded state stays in {path}; run detach again")
        raise
    _remove_record(nsino, ifname)
    what = []
    if feats:
        what.append("offloads " + ", ".join(f"{n} {'on' if v else 'off'}"
                                            for n, v in sorted(feats.items())))
    if chans:
        what.append("channels " + ", ".join(f"{k} {v}" for k, v in sorted(chans.items())))
    res.messages.append(f"{ifname}: restored {'; '.join(what)}" if what else
                        f"{ifname}: offloads and channels were already as recorded")


def _live_netns_inodes() -> set[int]:
    """Network namespaces this host can see: named ones and those of every thread."""
    inos: set[int] = set()
    with suppress(OSError):
        for name in os.listdir(NETNS_RUN_DIR):
            with suppress(OSError):
                inos.add(os.stat(os.path.join(NETNS_RUN_DIR, name)).st_ino)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):  # setns() is per thread
                with suppress(OSError, ValueError):
                    inos.add(int(os.readlink(f"/proc/{pid}/task/{tid}/ns/net")[5:-1]))
    return inos


def sweep_deleted_namespaces(current: int) -> list[str]:
    """Remove pins (and state files) left for interfaces of network namespaces that were
    deleted while attached. Only where the pinned link no longer holds an interface and
    no process shows the namespace, so a namespace kept alive by an fd alone (its pins
    still attached) is never touched. Returns a message per interface cleaned."""
    msgs: list[str] = []
    try:
        dirs = [d for d in os.listdir(PIN_ROOT) if d.isdigit() and int(d) != current]
    except FileNotFoundError:
        dirs = []
    live: set[int] | None = None
    for d in dirs:
        nsino = int(d)
        for ifname in sorted(os.listdir(os.path.join(PIN_ROOT, d))):
            pdir = pin_dir(nsino, ifname)
            try:
                pin = read_pin(pdir, ifname)
            except VtnetError:
                continue
            if pin is not None and pin.ifindex:
                continue
            live = _live_netns_inodes() if live is None else live
            if nsino in live:
                continue
            _remove_pins(pdir)
            _remove_record(nsino, ifname)
            msgs.append(f"{ifname}: removed the stale pins and state of an interface in a "
                        f"deleted network namespace (inode {nsino})")
    with suppress(FileNotFoundError):  # records of attaches that died before pinning
        for fn in sorted(os.listdir(STATE_DIR)):
            head, sep, rest = fn.partition("-")
            if not (sep and head.isdigit() and fn.endswith(".json")) or int(head) == current:
                continue
            nsino, ifname = int(head), rest[: -len(".json")]
            if os.path.exists(pin_dir(nsino, ifname)):
                continue
            live = _live_netns_inodes() if live is None else live
            if nsino not in live and _remove_record(nsino, ifname):
                msgs.append(f"{ifname}: removed the state of an interface in a deleted "
                            f"network namespace (inode {nsino})")
    return msgs


# --- status ---------------------------------------------------------------------------------

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
        for fn in os.listdir(STATE_DIR):
            if fn.startswith(prefix) and fn.endswith(".json"):
                names.add(fn[len(prefix):-len(".json")])
    with suppress(FileNotFoundError, NotADirectoryError):
        names.update(os.listdir(os.path.join(PIN_ROOT, str(nsino))))
    return sorted(names)


def _ring_view(port: Port) -> dict[int, list[dict[str, Any]]]:
    """Per queue: the rings of ``port`` with occupancy and the kernel's statistics."""
    out: dict[int, list[dict[str, Any]]] = {}
    rings = port.rx_rings + port.tx_rings
    for r, d in zip(rings, port.stats()["rings"], strict=True):
        user = (r.tail - r.head) % r.num_slots  # slots in [head, tail): the user's
        out.setdefault(r.queue, []).append({
            "port": port.name, "ring": r.ring_id, "kind": d["kind"],
            "num_slots": r.num_slots, "head": r.head, "cur": r.cur, "tail": r.tail,
            "user_slots": user, "kernel_slots": r.num_slots - 1 - user,
            "zerocopy": port.zerocopy, "afxdp": d["kernel"]})
    return out


def interface_status(ifname: str, nsino: int, ports: Sequence[Port] = (),
                     layer: DeviceLayer | None = None) -> dict[str, Any]:
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
            "phase": rec.phase, "pid": rec.pid, "pid_alive": pid_alive(rec.pid),
            "time": rec.time,
            "time_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(rec.time)),
            "mode": rec.mode, "frags": rec.frags, "zerocopy": rec.zerocopy,
            "rings": rec.rings, "prog_id": rec.prog_id,
            "saved": json.loads(rec.saved.to_json()), "state_file": state_path(nsino, ifname)}
    try:
        info = layer.read(ifname)
    except DeviceError:
        if rec is None and pin is None:
            raise
        return {"ifname": ifname, "exists": False, "attach": attach_d,
                "pinned": pin is not None, "pin_dir": pdir if pin else None,
                "notes": [f"{ifname} no longer exists: stale state; `vtnetmap detach "
                          f"{ifname}` removes it"]}
    view = inspect_prog(info.xdp_prog_id, ifname) if info.xdp_prog_id else None
    pinned = bool(pin and pin.ifindex and view and pin.prog_id == view.prog_id)
    notes: list[str] = []
    if rec is not None and not (pinned and rec.phase == "attached"):
        notes.append(f"stale attach record (phase {rec.phase}, pid {rec.pid}): "
                     f"`vtnetmap detach {ifname}` repairs it")
    if view is not None and view.ours and not pinned:
        notes.append("the steering program was attached implicitly by an open port; it goes "
                     "away with the last port")
    nq = max(info.rx_queues, info.tx_queues)
    owners = view.owners if view and view.ours else {}
    mine = [p for p in ports if p.ifname == ifname and p.ifindex == info.ifindex]
    rings: dict[int, list[dict[str, Any]]] = {}
    for p in mine:
        for q, lst in _ring_view(p).items():
            rings.setdefault(q, []).extend(lst)
    queues = []
    for q in sorted(set(range(nq)) | set(owners) | set(rings)):
        pid = owners.get(q, 0)
        queues.append({"queue": q, "owner_pid": pid,
                       "owner_alive": pid_alive(pid) if pid else None,
                       "beyond_channels": q >= nq, "rings": rings.get(q, [])})
    if mine:
        afxdp = "shown per ring for the ports of this process"
    else:
        afxdp = ("per socket: visible only inside the process that owns the socket"
                 + (f" (pid {_describe_pids(owners.values())})" if owners else ""))
    offloads = {n: {"active": info.features[n].active, "fixed": info.features[n].fixed}
                for n in offloads_to_disable(info)}
    return {
        "ifname": ifname, "exists": True, "ifindex": info.ifindex, "driver": info.driver,
        "netns_inode": nsino, "mtu": info.mtu, "oper_up": info.oper_up,
        "vnet_hdr_len": info.vnet_hdr_len,
        "channels": info.channels.to_dict(), "rx_queues": info.rx_queues,
        "tx_queues": info.tx_queues,
        "xdp": {"prog_id": info.xdp_prog_id, "mode": info.xdp_mode,
                "prog_name": view.name if view else None,
                "vtnetmap": bool(view and view.ours),
                "frags": bool(view and view.frags)},
        "pinned": pinned, "pin_dir": pdir if pin else None, "attach": attach_d,
        "offloads": offloads,
        "offloads_on": sorted(n for n, f in offloads.items() if f["active"]),
        "queues": queues, "afxdp_statistics": afxdp, "notes": notes,
    }


def status(ifname: str | None = None, *, netns: str | None = None,
           ports: Sequence[Port] = (), layer: DeviceLayer | None = None) -> dict[str, Any]:
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
        return {"netns": netns, "netns_inode": nsino,
                "interfaces": [interface_status(n, nsino, ports, layer) for n in names]}


# --- used by ports ---------------------------------------------------------------------------

def attached_zerocopy(ifname: str, asked: str) -> str:
    """The zero-copy choice for a port opened now on ``ifname`` (current netns):
    ``asked``, unless it is "auto" and `vtnetmap attach --zerocopy` recorded a choice
    (only readable by root; otherwise "auto" stays)."""
    if asked != "auto":
        return asked
    try:
        rec = read_record(netns_inode(), ifname)
    except (OSError, VtnetError):
        return asked
    if rec is None or rec.phase != "attached":
        return asked
    return rec.zerocopy


def _fmt_channels(ch: Channels) -> str:
    parts = [f"{k} {getattr(ch, k)}" for k in ("combined", "rx", "tx", "other")
             if getattr(ch, k)]
    return ", ".join(parts) or "none reported"


class DeviceWatch:
    """Notices, for an open port, that the interface changed under it: channel counts
    (``ethtool -L``, possible on veth while XDP is attached), the interface gone, or the
    steering program detached. netmap_config's "fail clearly" choice: ``check`` raises
    InterfaceChangedError, and keeps raising while the change lasts.

    Create it in the port's network namespace: it keeps an ethtool socket made there,
    so checks need no setns. A check costs one ioctl (plus one bpf() call for the
    program) and runs at most every ``interval`` seconds. ``close`` frees the socket.
    """

    def __init__(self, port_name: str, ifname: str, channels: Channels,
                 interval: float = CHECK_INTERVAL_S):
        self.port_name = port_name
        self.ifname = ifname
        self.channels = channels
        self.interval = interval
        self._eth: IoctlEthtool | None = IoctlEthtool(ifname)
        self._next = time.monotonic() + interval

    def _current(self) -> Channels:
        assert self._eth is not None
        try:
            return Channels.from_netlink(self._eth.get_channels())
        except NotSupportedError:
            return Channels()
        except (NoSuchDevice, OSError) as exc:
            if isinstance(exc, NoSuchDevice) or getattr(exc, "errno", None) == errno.ENODEV:
                raise InterfaceChangedError(f"{self.port_name}: {self.ifname} is gone; "
                                            "reopen the port") from exc
            raise DeviceError(f"{self.port_name}: reading the channels of {self.ifname} "
                              f"failed: {exc}") from exc

    def check(self, steering: Steering | None = None, *, now: float | None = None) -> None:
        """Raise InterfaceChangedError if the interface changed (rate-limited)."""
        if self._eth is None:
            return
        now = time.monotonic() if now is None else now
        if now < self._next:
            return
        self._next = now + self.interval
        cur = self._current()
        old = self.channels
        if (cur.combined, cur.rx, cur.tx, cur.other) != (old.combined, old.rx, old.tx,
                                                         old.other):
            raise InterfaceChangedError(
                f"{self.port_name}: {self.ifname} channels changed from {_fmt_channels(old)} "
                f"to {_fmt_channels(cur)}; reopen the port")
        if steering is not None and not steering.still_attached():
            raise InterfaceChangedError(
                f"{self.port_name}: the steering program on {self.ifname} was detached "
                "(`vtnetmap detach`?); reopen the port")

    def close(self) -> None:
        eth, self._eth = self._eth, None
        if eth is not None:
            eth.close()


__all__ = [
    "AttachRecord", "AttachResult", "DetachResult", "DeviceWatch", "attach",
    "attached_zerocopy", "detach", "interface_status", "netns_inode", "pin_dir",
    "read_record", "state_path", "status",
]
