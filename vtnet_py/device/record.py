"""The attach state file and its lock: what `vtnetmap attach` changed on a device.

One JSON file per attached interface, ``/run/vtnetmap/<netns inode>-<ifname>.json`` (dir
0700, file 0600), holding the device's previous state (:class:`SavedState`), the program
and link ids, the mode and who attached when. It is written before anything changes
(phase "preparing"), again after the device is prepared ("prepared") and once the program
is pinned ("attached"), so an attach killed at any point can be repaired. Attach and
detach serialise on an flock of the state directory.

The file name only locates a record: the inode of a deleted namespace is handed to the
next one made, and an interface can be renamed or moved. What the record is about is the
device's identity written inside it (the namespace's cookie, which is never reused, the
ifindex, and the program and link ids attached), checked before anything is applied
(admin/identity.py). Files are read and written so that a planted symlink, a garbled or
out-of-range value, a full or read-only filesystem gives a one-line StateFileError naming
the file and leaves no partial file behind.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from vtnet_py._sys.proc import netns_inode
from vtnet_py.device.policy import SavedState
from vtnet_py.errors import BusyError, DeviceError, PrivilegeError, StateFileError, VtnetError

STATE_DIR = os.environ.get("VTNETMAP_STATE_DIR", "/run/vtnetmap")
LOCK_TIMEOUT_S = 60.0
PHASES = ("preparing", "prepared", "attached")
RECORD_VERSION = 2
MAX_RECORD_BYTES = 1 << 16  # a record is ~2 KiB; more is not ours
# Ranges the kernel can produce: pid_t, ifindex and BPF ids are positive C ints, a
# namespace inode is 32-bit, its cookie 64-bit; a time past 2**33 s (year 2242) is no
# attach of this machine and would overflow time.localtime.
INT_MAX = 2**31 - 1
MAX_TIME = float(2**33)


def state_path(nsino: int, ifname: str) -> str:
    return os.path.join(STATE_DIR, f"{nsino}-{ifname}.json")


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_dir(path: str) -> None:
    """StateFileError unless ``path`` is a real directory (not a symlink) owned by root
    or by us: state or pins kept anywhere else could be read or redirected by others."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise StateFileError(path, f"{path}: cannot use vtnetmap's directory: {_why(exc)}") from exc
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise StateFileError(
            path, f"{path} is {kind}; vtnetmap keeps its root-only state there: remove it"
        )
    if st.st_uid not in (0, os.geteuid()):
        raise StateFileError(
            path,
            f"{path} is owned by uid {st.st_uid}, not root; vtnetmap keeps its root-only "
            "state there: remove it",
        )


def mkdirs_0700(path: str, stop: str = "/") -> None:
    """Create ``path`` and missing parents below ``stop``, each 0700 (umask ignored), then
    check (:func:`check_dir`) ``path`` and, when ``stop`` is not "/", every directory
    between them: the ones vtnetmap owns."""
    missing: list[str] = []
    p = path
    while p != stop and not os.path.lexists(p):
        missing.append(p)
        p = os.path.dirname(p)
    try:
        for d in reversed(missing):
            with suppress(FileExistsError):
                os.mkdir(d, 0o700)
        for d in reversed(missing):
            os.chmod(d, 0o700, follow_symlinks=False)
    except PermissionError:
        raise
    except OSError as exc:
        raise StateFileError(
            path, f"{path}: cannot create vtnetmap's directory: {_why(exc)}"
        ) from exc
    p = path
    while True:
        check_dir(p)
        p = os.path.dirname(p)
        if stop == "/" or p == stop or p == "/":
            break


def check_ifname(ifname: str) -> None:
    """Refuse a name Linux could never give an interface (dev_valid_name, and printable)
    before it is looked up or put into a path: "/" or ".." would reach outside the state
    and pin directories, and a control character would be echoed into messages."""
    raw = ifname.encode("utf-8", "replace")
    if (
        not ifname
        or ifname in (".", "..")
        or len(raw) > 15
        or any(c in "/:" or c.isspace() or not c.isprintable() for c in ifname)
    ):
        raise DeviceError(
            f"{ifname!r} is not a valid interface name (Linux: 1 to 15 bytes, "
            f"printable, no '/', ':' or whitespace)"
        )


def _shown(v: object) -> str:
    """A value from a file for a message: short, and never the 4300-digit repr limit."""
    try:
        text = repr(v)
    except ValueError:
        text = "a huge number"
    return text if len(text) <= 40 else text[:37] + "..."


def _int(d: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = d.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"{key} {_shown(v)} is not an integer in [{lo}, {hi}]")
    return v


def _choice(d: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    v = d.get(key)
    if v not in allowed:
        raise ValueError(f"bad {key} {_shown(v)}")
    return str(v)


@dataclass
class AttachRecord:
    """The content of a state file: one attached (or being attached) interface.

    ``netns_cookie`` and ``ifindex`` say which device it is about (with ``prog_id`` and
    ``link_id`` once attached); ``ifname`` and ``netns_inode`` only name the file."""

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
    netns_cookie: int = 0
    version: int = RECORD_VERSION

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["saved"] = json.loads(self.saved.to_json())
        return json.dumps(d, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str, where: str = "state file") -> AttachRecord:
        """Parse and range-check; StateFileError naming ``where`` when it is not a
        record of ours (garbled, truncated, of another version, out of range)."""
        try:
            d: Any = json.loads(text)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            if d.get("version") != RECORD_VERSION:
                raise ValueError(
                    f"version {_shown(d.get('version'))}, not {RECORD_VERSION} "
                    "(written by another vtnetmap version)"
                )
            phase = _choice(d, "phase", PHASES)
            zerocopy = _choice(d, "zerocopy", ("auto", "on", "off"))
            mode = _choice(d, "mode", ("native", "generic"))
            ifname = d.get("ifname")
            if not isinstance(ifname, str):
                raise ValueError(f"bad ifname {_shown(ifname)}")
            check_ifname(ifname)
            ifindex = _int(d, "ifindex", 1, INT_MAX)
            t: Any = d.get("time")
            if type(t) not in (int, float) or not (math.isfinite(t) and 0 <= t <= MAX_TIME):
                raise ValueError(f"time {_shown(t)} is not a time in [0, {MAX_TIME:.0f}]")
            if type(d.get("frags")) is not bool:
                raise ValueError(f"bad frags {_shown(d.get('frags'))}")
            netns = d.get("netns")
            if netns is not None and not (isinstance(netns, str) and "\0" not in netns):
                raise ValueError(f"bad netns {_shown(netns)}")
            if not isinstance(d.get("pin_dir", ""), str):
                raise ValueError(f"bad pin_dir {_shown(d.get('pin_dir'))}")
            saved = SavedState.from_json(json.dumps(d.get("saved")))
            if (saved.ifname, saved.ifindex) != (ifname, ifindex):
                raise ValueError("the saved state is about another interface")
            return cls(
                ifname=ifname,
                ifindex=ifindex,
                netns_inode=_int(d, "netns_inode", 1, 2**32 - 1),
                phase=phase,
                saved=saved,
                mode=mode,
                frags=d["frags"],
                zerocopy=zerocopy,
                rings=None if d.get("rings") is None else _int(d, "rings", 1, 1 << 16),
                pid=_int(d, "pid", 1, INT_MAX),
                time=float(t),
                netns=netns,
                prog_id=_int(d, "prog_id", 0, INT_MAX),
                link_id=_int(d, "link_id", 0, INT_MAX),
                pin_dir=d.get("pin_dir", ""),
                netns_cookie=_int(d, "netns_cookie", 1, 2**64 - 1),
            )
        except (ValueError, KeyError, TypeError, RecursionError, DeviceError) as exc:
            why = str(exc).removeprefix("saved device state is not readable: ")
            raise StateFileError(where, f"{where} is not readable: {why}") from exc


def read_record_file(path: str) -> AttachRecord | None:
    """The record in ``path``, or None when there is none. StateFileError naming the
    file when it is not a regular file of root's (a symlink is never followed), is too
    large, or does not parse."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise PrivilegeError(f"{path} is root-only: reading vtnetmap's state needs root") from exc
    except OSError as exc:  # ELOOP: a symlink planted in the file's place
        raise StateFileError(path, f"{path} is not readable: {_why(exc)}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateFileError(path, f"{path} is not readable: not a regular file")
        if st.st_uid not in (0, os.geteuid()):
            raise StateFileError(path, f"{path} is not readable: owned by uid {st.st_uid}")
        if st.st_size > MAX_RECORD_BYTES:
            raise StateFileError(path, f"{path} is not readable: {st.st_size} bytes is too large")
        raw = os.read(fd, MAX_RECORD_BYTES + 1)
    except OSError as exc:
        raise StateFileError(path, f"{path} is not readable: {_why(exc)}") from exc
    finally:
        os.close(fd)
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise StateFileError(path, f"{path} is not readable: not UTF-8 text") from exc
    return AttachRecord.from_json(text, path)


def read_record(nsino: int, ifname: str) -> AttachRecord | None:
    """The state file of ``ifname`` in netns ``nsino``, or None. StateFileError if
    garbled, or if it names another interface than its file name does."""
    path = state_path(nsino, ifname)
    rec = read_record_file(path)
    if rec is not None and (rec.netns_inode, rec.ifname) != (nsino, ifname):
        raise StateFileError(
            path, f"{path} is not readable: it holds the record of {rec.netns_inode}-{rec.ifname}"
        )
    return rec


def state_files() -> list[tuple[int, str, str]]:
    """(netns inode, ifname, path) of every state file, by name only (nothing read)."""
    out = []
    with suppress(FileNotFoundError, NotADirectoryError):
        for fn in sorted(os.listdir(STATE_DIR)):
            head, sep, rest = fn.partition("-")
            if sep and head.isdigit() and fn.endswith(".json"):
                out.append((int(head), rest[: -len(".json")], os.path.join(STATE_DIR, fn)))
    return out


def write_record(rec: AttachRecord) -> None:
    """Replace the state file atomically: a new temporary file (O_EXCL|O_NOFOLLOW, 0600:
    nothing planted at its name is followed or reused), written in full and fsynced,
    then renamed over the old one (rename replaces a symlink, never its target).

    StateFileError naming the path on any failure (full or read-only filesystem, a
    directory that is not root's); the temporary file is removed and the old record,
    if any, stays as it was."""
    mkdirs_0700(STATE_DIR)
    path = state_path(rec.netns_inode, rec.ifname)
    data = rec.to_json().encode()
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except PermissionError:
        raise
    except OSError as exc:
        raise StateFileError(path, f"{path}: cannot write vtnetmap's state: {_why(exc)}") from exc
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:  # a full filesystem may take part of a write before ENOSPC
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise StateFileError(
                path, f"{path}: cannot write vtnetmap's state: {_why(exc)}"
            ) from exc
        raise


def remove_state_file(path: str) -> bool:
    """Unlink a state file; False when it was not there. StateFileError naming it when
    the filesystem refuses (read-only)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StateFileError(path, f"{path}: cannot remove vtnetmap's state: {_why(exc)}") from exc
    return True


def remove_record(nsino: int, ifname: str) -> bool:
    return remove_state_file(state_path(nsino, ifname))


@contextmanager
def locked() -> Iterator[None]:
    """Serialise attach/detach of this host (flock on the state directory; released
    when the fd closes, so a killed attacher never leaves it held)."""
    try:
        mkdirs_0700(STATE_DIR)
        fd = os.open(STATE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except PermissionError as exc:
        raise PrivilegeError(
            f"{STATE_DIR} is root-only: `vtnetmap attach/detach` need root (CAP_NET_ADMIN, CAP_BPF)"
        ) from exc
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BusyError(
                        f"another `vtnetmap attach/detach` has held {STATE_DIR} "
                        f"for {LOCK_TIMEOUT_S:.0f} s; try again"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


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
