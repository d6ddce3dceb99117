"""The attach state file and its lock: what `vtnetmap attach` changed on a device.

One JSON file per attached interface, ``/run/vtnetmap/<netns inode>-<ifname>.json`` (dir
0700, file 0600), holding the device's previous state (:class:`SavedState`), the program
and link ids, the mode and who attached when. It is written before anything changes
(phase "preparing"), again after the device is prepared ("prepared") and once the program
is pinned ("attached"), so an attach killed at any point can be repaired. Attach and
detach serialise on an flock of the state directory.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from vtnet_py._sys.proc import netns_inode
from vtnet_py.device.policy import SavedState
from vtnet_py.errors import BusyError, DeviceError, PrivilegeError, VtnetError

STATE_DIR = os.environ.get("VTNETMAP_STATE_DIR", "/run/vtnetmap")
LOCK_TIMEOUT_S = 60.0
PHASES = ("preparing", "prepared", "attached")


def state_path(nsino: int, ifname: str) -> str:
    return os.path.join(STATE_DIR, f"{nsino}-{ifname}.json")


def mkdirs_0700(path: str, stop: str = "/") -> None:
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
                ifname=str(d["ifname"]),
                ifindex=int(d["ifindex"]),
                netns_inode=int(d["netns_inode"]),
                phase=d["phase"],
                saved=saved,
                mode=str(d["mode"]),
                frags=bool(d["frags"]),
                zerocopy=d["zerocopy"],
                rings=None if d.get("rings") is None else int(d["rings"]),
                pid=int(d["pid"]),
                time=float(d["time"]),
                netns=d.get("netns"),
                prog_id=int(d.get("prog_id") or 0),
                link_id=int(d.get("link_id") or 0),
                pin_dir=str(d.get("pin_dir") or ""),
            )
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
        raise PrivilegeError(f"{path} is root-only: reading vtnetmap's state needs root") from exc
    return AttachRecord.from_json(text, path)


def write_record(rec: AttachRecord) -> None:
    """Replace the state file atomically (tmp file 0600 + rename)."""
    mkdirs_0700(STATE_DIR)
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


def remove_record(nsino: int, ifname: str) -> bool:
    try:
        os.unlink(state_path(nsino, ifname))
    except FileNotFoundError:
        return False
    return True


@contextmanager
def locked() -> Iterator[None]:
    """Serialise attach/detach of this host (flock on the state directory; released
    when the fd closes, so a killed attacher never leaves it held)."""
    try:
        mkdirs_0700(STATE_DIR)
        fd = os.open(STATE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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
