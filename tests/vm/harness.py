"""Boot a Debian guest with a real multiqueue virtio_net NIC and run a command in it.

The guest is Debian's own kernel (the image matching the installed linux-headers-amd64,
installed by ``tests/vm/setup_vm.sh``) booted by virtme-ng under QEMU's TCG emulation
(KVM cannot boot a stock kernel on these machines) over the host's root filesystem (9p,
read-only with tmpfs overlays). It therefore sees this checkout and its ``.venv``.

Per boot the harness:

* makes a network namespace ``vtvm-<suffix>`` holding a ``multi_queue`` TAP, ``vtvmtap0``
  (198.51.100.1/24, with a permanent neighbour entry for the guest so the host can reach
  the guest even while XDP in the guest swallows its ARP), plus one single-queue TAP per
  extra NIC (no address);
* runs QEMU inside that namespace: ``virtio-net-pci`` with ``mq=on`` on the TAP, extra
  device properties as asked (``ctrl_guest_offloads=off``, ``host_mtu=9000``, ...);
* gives the guest a host link: a virtio-serial port named ``vtvm.host`` through which guest
  tests ask the host to run commands inside the namespace (ping, nc, tcpdump, pkt-gen on
  the TAP) and read the TAP's counters, without touching the NIC under test;
* renames the guest NIC (found by MAC) to ``eth0`` (extra NICs ``eth1``...), gives it
  198.51.100.2/24, exports ``VTVM_*`` variables and runs the command as root with cwd at
  the repository, with a writable results directory shared at the same path;
* returns rc, stdout, the command's stderr and the kernel console separately.

Whatever happens (timeout, guest panic, exception) the whole QEMU process tree is killed
and reaped and the namespace deleted; the results directory is left for inspection.

CLI for manual use (as root)::

    .venv/bin/python tests/vm/harness.py [--cpus 2] [--queues 4]
        [--dev-opt ctrl_guest_offloads=off] [--extra-nic host_mtu=9000] 'ethtool -l eth0'
    .venv/bin/python tests/vm/harness.py --profile main      # the guest scenarios of one profile
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vtnet_py.apps.netlab import NetLab, in_namespace

VM_DIR = Path(__file__).resolve().parent
REPO = VM_DIR.parents[1]
VNG = VM_DIR / ".vng-venv" / "bin" / "vng"
# Guest kernels unpacked (not installed) by setup_vm.sh: kernels/<abi>/boot/vmlinuz-<abi>.
KERNELS_DIR = VM_DIR / "kernels"
# Kernels to boot instead of the defaults: paths separated by os.pathsep; the word
# "defaults" stands for Debian's 6.1 and 6.12 (see selected_kernels).
KERNEL_ENV = "VTNETMAP_VM_KERNEL"
GUEST_PYTHON = REPO / ".venv" / "bin" / "python"
OUT_DIR = VM_DIR / "out"

NS_PREFIX = "vtvm-"
TAP = "vtvmtap0"
HOST_IP = "198.51.100.1"
GUEST_IP = "198.51.100.2"
PREFIX_LEN = 24
# Locally administered MACs; extra NICs count up in the last octet.
GUEST_MAC = "52:54:00:76:74:02"
HOST_LINK_PORT = "vtvm.host"

# Modules udev would load under q35/TCG that only cost boot time (measured ~4 s).
_BLACKLIST = (
    "kvm,kvm_amd,kvm_intel,ahci,libahci,sr_mod,cdrom,i2c_i801,iTCO_wdt,lpc_ich,pcspkr,"
    "aesni_intel,ghash_clmulni_intel,powernow_k8,psmouse,i6300esb,sg,ccp,serio_raw,evdev,"
    "button,joydev"
)
_PR_SET_CHILD_SUBREAPER = 36
_GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class HarnessError(RuntimeError):
    """The VM could not be started (missing package, kernel, namespace failure)."""


@dataclass(frozen=True)
class Nic:
    """An extra virtio-net-pci NIC (single queue, own TAP), e.g. to hit a refusal.

    ``dev_opts`` are QEMU virtio-net-pci properties, e.g. ``{"ctrl_guest_offloads": "off"}``.
    """

    dev_opts: Mapping[str, str | int] = field(default_factory=dict)


@dataclass(frozen=True)
class VmConfig:
    """How to boot the guest.

    ``queues`` is the number of queue pairs of the main NIC (eth0); ``dev_opts`` extra
    virtio-net-pci properties for it (``{"ctrl_guest_offloads": "off"}``,
    ``{"host_mtu": 9000}``); ``extra_nics`` become eth1, eth2, ...; ``env`` is exported in
    the guest; ``timeout`` bounds the whole boot + command + power-off, in seconds.
    ``cached_root``: serve /usr and the repository from a second, read-only 9p export
    mounted with cache=loose (vng's root has no cache: Python imports and bcc's header
    reads cost ~50-100 ms a file under TCG; measured: a boot running pytest and a bcc
    compile took 80 s instead of 138 s). The host must not change those files meanwhile.
    ``kernel``: the guest kernel (default: Debian's 6.1, ``find_kernel()``).
    """

    cpus: int = 2
    queues: int = 4
    memory: str = "2G"
    dev_opts: Mapping[str, str | int] = field(default_factory=dict)
    extra_nics: Sequence[Nic] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 300.0
    host_link: bool = True
    cached_root: bool = True
    kernel: Kernel | None = None


@dataclass
class GuestResult:
    """Outcome of one boot. ``rc`` is the guest command's exit status; 124 on timeout;
    vng reports 255 when the guest died before the command returned (panic)."""

    rc: int
    stdout: str
    stderr: str
    console: str
    seconds: float
    timed_out: bool
    results_dir: Path
    boot_seconds: float | None = None  # guest uptime when the command started

    def describe(self, tail: int = 12000) -> str:
        """Human-readable summary with the tails of stdout, stderr and the console."""

        def cut(s: str) -> str:
            return s if len(s) <= tail else "...[cut]...\n" + s[-tail:]

        head = (
            f"rc={self.rc} timed_out={self.timed_out} wall={self.seconds:.1f}s "
            f"boot={self.boot_seconds}s results={self.results_dir}"
        )
        return (
            f"{head}\n--- guest stdout ---\n{cut(self.stdout)}\n--- guest stderr ---\n"
            f"{cut(self.stderr)}\n--- guest console ---\n{cut(self.console)}"
        )


@dataclass(frozen=True)
class Kernel:
    """A guest kernel image and where its modules are on the host.

    ``release`` is ``uname -r`` in the guest (from the image's file name, as virtme-ng
    reads it); ``moddir`` is ``lib/modules/<release>`` found walking up from the image
    (``/lib/modules/<release>`` for ``/boot/vmlinuz-<release>``), None when there is none.
    """

    image: Path
    release: str
    moddir: Path | None

    @classmethod
    def from_image(cls, image: Path) -> Kernel:
        image = Path(image).resolve()
        if not image.is_file():
            raise HarnessError(f"guest kernel {image}: no such file")
        release = image.name.removeprefix("vmlinuz-").removeprefix("bzImage-")
        if release in ("vmlinuz", "bzImage"):
            raise HarnessError(f"guest kernel {image}: name it vmlinuz-<release> (uname -r)")
        moddir = None
        for d in image.parents:
            if (d / "lib" / "modules" / release).is_dir():
                moddir = d / "lib" / "modules" / release
                break
        return cls(image, release, moddir)

    @property
    def label(self) -> str:
        """The release, as test ids and result directories name this kernel."""
        return self.release


def find_kernel_612() -> Path:
    """The newest Debian 6.12 image setup_vm.sh unpacked into tests/vm/kernels."""
    found = sorted(
        KERNELS_DIR.glob("6.12.*/boot/vmlinuz-6.12.*"),
        key=lambda p: [
            int(x) if x.isdigit() else -1 for x in re.split(r"[.+-]", p.parent.parent.name)
        ],
    )
    if not found:
        raise HarnessError(
            f"no Debian 6.12 kernel in {KERNELS_DIR}: run tests/vm/setup_vm.sh as root"
        )
    return found[-1]


def selected_kernels(given: Sequence[str] = ()) -> list[Kernel]:
    """The guest kernels a run boots, in order, without repeats: ``given`` (the
    ``--vm-kernel`` options) if any, else ``$VTNETMAP_VM_KERNEL`` (split on
    os.pathsep), else Debian's 6.1 (the headers' ABI) and 6.12. Each entry is the path
    of a vmlinuz-<release> or the word "defaults" (both Debian kernels)."""
    entries = [e for e in given if e] or [
        e for e in os.environ.get(KERNEL_ENV, "").split(os.pathsep) if e
    ]
    images: list[Path] = []
    for e in entries or ["defaults"]:
        images += [find_kernel(), find_kernel_612()] if e == "defaults" else [Path(e)]
    kernels: list[Kernel] = []
    for img in images:
        k = Kernel.from_image(img)
        if k not in kernels:
            kernels.append(k)
    return kernels


def find_kernel() -> Path:
    """The vmlinuz of the ABI that linux-headers-amd64 points at (what setup_vm.sh
    installs and bcc compiles against); else the newest one with headers in
    /lib/modules/<abi>/build."""
    p = subprocess.run(
        ["dpkg-query", "-W", "-f=${Depends}", "linux-headers-amd64"], capture_output=True, text=True
    )
    m = re.search(r"linux-headers-(\d[^ ,()]*-amd64)", p.stdout) if p.returncode == 0 else None
    if m and (Path("/boot") / f"vmlinuz-{m.group(1)}").is_file():
        return Path("/boot") / f"vmlinuz-{m.group(1)}"
    mods = Path("/lib/modules")
    abis = [
        d.name
        for d in (mods.iterdir() if mods.is_dir() else ())
        if (d / "build").is_dir() and (Path("/boot") / f"vmlinuz-{d.name}").is_file()
    ]
    if not abis:
        raise HarnessError(
            "no /boot/vmlinuz-<abi> with headers in /lib/modules/<abi>/build: "
            "run tests/vm/setup_vm.sh as root"
        )
    newest = max(abis, key=lambda a: [int(x) if x.isdigit() else -1 for x in re.split(r"[.-]", a)])
    return Path("/boot") / f"vmlinuz-{newest}"


def check_prerequisites(default_kernel: bool = True) -> list[str]:
    """What is missing for a boot, as messages (empty when ready); ``default_kernel``:
    the boot needs Debian's 6.1 image (no other kernel was given)."""
    problems = []
    if not VNG.is_file():
        problems.append(f"{VNG} missing (run tests/vm/setup_vm.sh)")
    if shutil.which("qemu-system-x86_64") is None:
        problems.append("qemu-system-x86_64 missing (run tests/vm/setup_vm.sh)")
    if not GUEST_PYTHON.is_file():
        problems.append(f"{GUEST_PYTHON} missing (run scripts/setup.sh)")
    try:
        if default_kernel:
            find_kernel()
    except HarnessError as e:
        problems.append(str(e))
    return problems


def _become_subreaper() -> None:
    # This machine's PID 1 does not reap orphans: after a timeout kill, vng's children
    # (virtme-run, qemu) are re-parented to us instead, and we reap them.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise HarnessError(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")


def _kill_group(pgid: int) -> int | None:
    """SIGKILL process group ``pgid`` (a child of ours started with start_new_session,
    not yet reaped, so the id cannot have been reused) and reap every member that is or
    becomes our child (as subreaper we inherit the orphans). Returns the leader's exit
    code when this call reaped it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    leader = None
    while True:
        try:
            pid, status = os.waitpid(-pgid, 0)
        except ChildProcessError:
            break
        if pid == pgid:
            leader = os.waitstatus_to_exitcode(status)
    return leader


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait until child ``pid`` exits, leaving it unreaped; False at the deadline."""
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.1)
    return False


class _Drain(threading.Thread):
    """Reads a pipe to its end in the background (QEMU's console can be large)."""

    def __init__(self, pipe: IO[bytes] | None) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.chunks: list[bytes] = []
        self.start()

    def run(self) -> None:
        if self.pipe is None:
            return
        with self.pipe:
            fd = self.pipe.fileno()
            while chunk := os.read(fd, 65536):
                self.chunks.append(chunk)

    def join(self, timeout: float | None = 30) -> bytes:  # type: ignore[override]
        super().join(timeout)
        return b"".join(self.chunks)


class TestNetwork:
    """Namespace ``vtvm-<suffix>`` with the guest's TAPs; a context manager.

    Built with vtnet_py.apps.netlab: the namespace is created exclusively (if the name is
    taken, another one is drawn: ``self.ns`` is the one made), and on exit (also after
    errors) it is removed, which removes its TAPs; nothing else is touched.
    """

    __test__ = False  # not a pytest class

    def __init__(self, suffix: str, extra_taps: int = 0, queues: int = 4) -> None:
        self.lab = NetLab(NS_PREFIX, tag=suffix)
        self.ns = NS_PREFIX + suffix
        self.tap = TAP
        self.extra_taps = [f"vtvmtap{i + 1}" for i in range(extra_taps)]
        self.queues = queues

    def __enter__(self) -> TestNetwork:
        try:
            self.ns = self.lab.namespace()
            self.lab.tap(self.ns, self.tap, queues=self.queues, ip=HOST_IP, prefixlen=PREFIX_LEN)
            self.lab.neighbour(self.ns, self.tap, GUEST_IP, GUEST_MAC)
            for t in self.extra_taps:
                self.lab.tap(self.ns, t)
        except BaseException:
            self.lab.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.lab.close()

    def exec_prefix(self) -> list[str]:
        return in_namespace(self.ns, [])


class HostLink:
    """Host end of the guest's ``vtvm.host`` virtio-serial port (a thread).

    Protocol: one JSON object per line each way. Requests (``op``):
    ``info``; ``run`` (argv, timeout_s, input) -> rc/stdout/stderr; ``spawn`` (argv) -> handle;
    ``wait`` (handle, timeout_s) -> rc/stdout/stderr/timed_out (killed on timeout);
    ``signal`` (handle, sig); ``stats`` -> the TAP's /sys statistics. Commands run as root
    inside the test namespace (``ip netns exec``): the guest is this suite's own code.
    On ``close`` every spawned process group is killed and reaped.
    """

    def __init__(self, sock_path: str, net: TestNetwork, deadline: float) -> None:
        self.sock_path = sock_path
        self.net = net
        self.deadline = deadline
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.log: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="vtvm-hostlink", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for p in self.procs.values():
            # Spawns the guest never waited for: their leaders are unreaped (running or
            # zombie), so killing each group by its id is safe; then reap it.
            p.returncode = _kill_group(p.pid)

    def _serve(self) -> None:
        conn: socket.socket | None = None
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            attempt = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                attempt.connect(self.sock_path)  # QEMU listens once it has started
                conn = attempt
                break
            except OSError:
                attempt.close()
                time.sleep(0.1)
        if conn is None:
            return
        conn.settimeout(0.5)
        buf = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    try:
                        req = json.loads(line)
                        reply = self._handle(req)
                    except Exception as e:  # the reply carries it to the guest test
                        reply = {"error": f"{type(e).__name__}: {e}"}
                        req = {}
                    reply["id"] = req.get("id") if isinstance(req, dict) else None
                    self.log.append(f"{line[:300]!r} -> {str(reply)[:300]}")
                    try:
                        conn.sendall(json.dumps(reply).encode() + b"\n")
                    except OSError:
                        return

    def _handle(self, req: dict[str, Any]) -> dict[str, object]:
        op = req.get("op")
        if op == "info":
            return {
                "netns": self.net.ns,
                "tap": self.net.tap,
                "host_ip": HOST_IP,
                "guest_ip": GUEST_IP,
                "guest_mac": GUEST_MAC,
                "python": str(GUEST_PYTHON),
                "repo": str(REPO),
            }
        if op == "stats":
            p = subprocess.run(
                [
                    *self.net.exec_prefix(),
                    "sh",
                    "-c",
                    f"cd /sys/class/net/{self.net.tap}/statistics && grep -r . .",
                ],
                capture_output=True,
                text=True,
                timeout=20,
            )
            stats = {}
            for ln in p.stdout.splitlines():
                k, _, v = ln.partition(":")
                stats[k.removeprefix("./")] = int(v)
            return {"stats": stats}
        if op == "run":
            argv = [str(a) for a in req["argv"]]
            timeout = float(req.get("timeout_s", 60))
            inp = req.get("input")
            proc = subprocess.Popen(
                [*self.net.exec_prefix(), *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            return self._finish(proc, timeout, inp.encode() if isinstance(inp, str) else b"")
        if op == "spawn":
            argv = [str(a) for a in req["argv"]]
            proc = subprocess.Popen(
                [*self.net.exec_prefix(), *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            self.procs[proc.pid] = proc
            return {"handle": proc.pid}
        if op == "wait":
            proc = self.procs.pop(int(req["handle"]))
            return self._finish(proc, float(req.get("timeout_s", 60)), None)
        if op == "signal":
            proc = self.procs[int(req["handle"])]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, int(req.get("sig", signal.SIGTERM)))
            return {"ok": True}
        raise ValueError(f"unknown op {op!r}")

    @staticmethod
    def _finish(
        proc: subprocess.Popen[bytes], timeout: float, inp: bytes | None
    ) -> dict[str, object]:
        timed_out = False
        try:
            out, err = proc.communicate(input=inp, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)  # the leader is still unreaped here
            proc.returncode = -signal.SIGKILL
            out, err = proc.communicate()
        return {
            "rc": proc.returncode,
            "stdout": out.decode(errors="replace"),
            "stderr": err.decode(errors="replace"),
            "timed_out": timed_out,
        }


# Guest side of VmConfig.cached_root: a cache=loose 9p view of the host root (tag
# vtvmroot) under /usr (as an overlay, so /usr stays writable as vng made it) and the
# repository (a bind mount; the results share is moved aside and back on top of it).
# Any failure leaves vng's uncached mounts in place: slower, still correct.
_CACHED_ROOT_SH = """\
vtvm_cached_root() {
    C=/run/vtvm
    mkdir -p $C/ro $C/usr-up $C/usr-work $C/res || return 1
    mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=512000 vtvmroot $C/ro \
        || return 1
    mount -t overlay -o lowerdir=$C/ro/usr,upperdir=$C/usr-up,workdir=$C/usr-work overlay /usr \
        || return 1
    mount --move "$R" $C/res || return 1
    mount --bind "$C/ro$VTVM_REPO" "$VTVM_REPO" || echo "vtvm: repository stays uncached" >&2
    mount --move $C/res "$R" || exit 97
}
vtvm_cached_root || echo "vtvm: cached root unavailable, running from vng's 9p root" >&2
"""


def _modules_sh(kernel: Kernel) -> str:
    """Make the kernel's modules reachable before udev loads virtio_net & co.

    virtme-ng links /lib/modules/<release> to a kernel's own module tree when it is not
    the host's; the cached /usr overlay (/lib is /usr/lib on Debian) hides that link, so
    it is made again in the overlay's writable layer."""
    if kernel.moddir is None:
        return ""
    m = shlex.quote(str(kernel.moddir))
    return f"[ -e /lib/modules/$(uname -r) ] || ln -sfn {m} /lib/modules/$(uname -r)\n"


def _guest_script(
    cfg: VmConfig, kernel: Kernel, results: Path, extra_macs: Sequence[str], command: str
) -> str:
    """The shell script the guest runs: NIC naming, addresses, environment, the command."""
    env = {
        "VTVM_IN_GUEST": "1",
        "VTVM_RESULTS": str(results),
        "VTVM_REPO": str(REPO),
        "VTVM_IFACE": "eth0",
        "VTVM_QUEUES": str(cfg.queues),
        "VTVM_HOST_IP": HOST_IP,
        "VTVM_GUEST_IP": GUEST_IP,
        "VTVM_GUEST_MAC": GUEST_MAC,
        "VTVM_HOST_LINK": HOST_LINK_PORT if cfg.host_link else "",
        "VTVM_REQUIRE_HOST_LINK": "1" if cfg.host_link else "0",
        "VTVM_EXTRA_IFACES": " ".join(f"eth{i + 1}" for i in range(len(extra_macs))),
        "VTVM_KERNEL": kernel.release,
        "PATH": f"{REPO / '.venv' / 'bin'}:{_GUEST_PATH}",
        "PYTHONDONTWRITEBYTECODE": "1",  # the repository is read-only in the guest
        # A per-scenario time limit set on the host applies in the guest too.
        **(
            {"VTVM_TEST_TIMEOUT": os.environ["VTVM_TEST_TIMEOUT"]}
            if "VTVM_TEST_TIMEOUT" in os.environ
            else {}
        ),
        **cfg.env,
    }
    mounts = (_CACHED_ROOT_SH if cfg.cached_root else "") + _modules_sh(kernel)
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())
    renames = [(GUEST_MAC, "eth0")] + [(m, f"eth{i + 1}") for i, m in enumerate(extra_macs)]
    rename_lines = "\n".join(f"vtvm_rename {m} {n}" for m, n in renames)
    return f"""#!/bin/sh
# Generated by tests/vm/harness.py: runs as root inside the guest.
R={shlex.quote(str(results))}
# The command's stderr goes to a file: vng's stderr carries the kernel console.
exec 2>"$R/guest-stderr.txt"
cut -d' ' -f1 /proc/uptime >"$R/boot-seconds"
{exports}
{mounts}command -v udevadm >/dev/null && udevadm settle -t 15
vtvm_rename() {{
    # udev gave the NIC a predictable name (enp0sN, N depends on the device list):
    # find it by MAC and name it as the tests expect.
    for d in /sys/class/net/*; do
        if [ "$(cat "$d/address")" = "$1" ]; then
            ip link set "${{d##*/}}" down
            [ "${{d##*/}}" = "$2" ] || ip link set "${{d##*/}}" name "$2" || exit 97
            ip link set "$2" up || exit 97
            return 0
        fi
    done
    echo "vtvm: no NIC with MAC $1" >&2
    ip -br link >&2
    exit 97
}}
{rename_lines}
ip addr add {GUEST_IP}/{PREFIX_LEN} dev eth0 || exit 97
ip link set lo up
cd {shlex.quote(str(REPO))} || exit 97
( {command} )
rc=$?
echo "$rc" >"$R/exit-code"
exit "$rc"
"""


def _nic_args(
    netdev: str, tap: str, queues: int, mac: str, dev_opts: Mapping[str, str | int]
) -> list[str]:
    nd = f"tap,id={netdev},ifname={tap},script=no,downscript=no,vhost=off"
    dev = f"virtio-net-pci,netdev={netdev},mac={mac}"
    if queues > 1:
        # vectors: one per queue of each pair, one for the control queue, one for config.
        nd += f",queues={queues}"
        dev += f",mq=on,vectors={2 * queues + 2}"
    dev += "".join(f",{k}={v}" for k, v in dev_opts.items())
    return ["-netdev", nd, "-device", dev]


def boot(
    command: str,
    config: VmConfig | None = None,
    suffix: str | None = None,
    results_dir: Path | None = None,
) -> GuestResult:
    """Boot the guest once, run shell ``command`` in it as root (cwd: the repository).

    ``results_dir`` (default ``tests/vm/out/<suffix>``; emptied first) is writable in the
    guest at the same path, exported as ``$VTVM_RESULTS``. Raises HarnessError when the
    VM cannot be started at all; a guest failure or timeout is a GuestResult with rc != 0.
    Leaves behind only ``results_dir``: namespace, TAPs, QEMU and host-link processes
    and the temporary directory are removed on every path.
    """
    cfg = config or VmConfig()
    problems = check_prerequisites(default_kernel=config is None or config.kernel is None)
    if problems:
        raise HarnessError("; ".join(problems))
    if os.geteuid() != 0:
        raise HarnessError("the VM harness must run as root (network namespace, TAP)")
    suffix = suffix or secrets.token_hex(3)
    results = results_dir or OUT_DIR / suffix
    if results.exists():
        shutil.rmtree(results)
    results.mkdir(parents=True)
    kernel = cfg.kernel or Kernel.from_image(find_kernel())
    _become_subreaper()
    extra_macs = [GUEST_MAC[:-2] + f"{0x10 + i:02x}" for i in range(len(cfg.extra_nics))]

    # vng writes virtme_ret* into TMPDIR; the host-link socket lives here too.
    tmp = Path(tempfile.mkdtemp(prefix="vtvm-"))
    try:
        script = results / "guest-run.sh"
        script.write_text(_guest_script(cfg, kernel, results, extra_macs, command))
        with TestNetwork(suffix, extra_taps=len(cfg.extra_nics), queues=cfg.queues) as net:
            qemu = _nic_args("n0", net.tap, cfg.queues, GUEST_MAC, cfg.dev_opts)
            for i, nic in enumerate(cfg.extra_nics):
                qemu += _nic_args(f"n{i + 1}", net.extra_taps[i], 1, extra_macs[i], nic.dev_opts)
            if cfg.cached_root:
                qemu += [
                    "-fsdev",
                    "local,id=vtvmroot,path=/,security_model=none,readonly=on,multidevs=remap",
                    "-device",
                    "virtio-9p-pci,fsdev=vtvmroot,mount_tag=vtvmroot",
                ]
            sock = str(tmp / "host.sock")
            if cfg.host_link:
                qemu += [
                    "-device",
                    "virtio-serial-pci,id=vtvmser",
                    "-chardev",
                    f"socket,id=vtvmhost,path={sock},server=on,wait=off",
                    "-device",
                    f"virtserialport,bus=vtvmser.0,chardev=vtvmhost,name={HOST_LINK_PORT}",
                ]
            argv = [
                *net.exec_prefix(),
                str(VNG),
                "--run",
                str(kernel.image),
                "--disable-kvm",
                "--force-9p",
                "--verbose",
                "--cpus",
                str(cfg.cpus),
                "--memory",
                cfg.memory,
                "--append",
                # tsc=reliable: under TCG the clocksource watchdog sees skew on a busy host, marks
                # the TSC unstable at run time, and 6.12 then oopses patching a static key (int3).
                "modprobe.blacklist=" + _BLACKLIST + " tsc=reliable",
                "--qemu-opts=" + shlex.join(qemu),
                f"--rwdir={results}",
                "--cwd",
                str(REPO),
                "--exec",
                f"sh {shlex.quote(str(script))}",
            ]
            env = dict(
                os.environ,
                TMPDIR=str(tmp),
                PATH=f"{VNG.parent}:{os.environ.get('PATH', _GUEST_PATH)}",
            )
            (results / "vng-argv.txt").write_text(shlex.join(argv) + "\n")
            t0 = time.monotonic()
            link = HostLink(sock, net, t0 + cfg.timeout) if cfg.host_link else None
            # stdout and stderr must be distinct pipes: qemu opens /proc/self/fd/1 and
            # /proc/self/fd/2 separately. A new session makes vng, virtme-run and qemu
            # one process group that a timeout kills at once.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd="/",
                start_new_session=True,
            )
            out_r, err_r = _Drain(proc.stdout), _Drain(proc.stderr)
            timed_out = False
            try:
                if link:
                    link.start()
                timed_out = not _wait_unreaped(proc.pid, t0 + cfg.timeout)
            finally:
                # The leader is a zombie (or still running after a timeout), so its pid,
                # which names the group, cannot be reused while we kill the group.
                proc.returncode = _kill_group(proc.pid)
                if link:
                    link.close()
            out_b, err_b = out_r.join(), err_r.join()
            seconds = time.monotonic() - t0
            if link and link.log:
                (results / "host-link.log").write_text("\n".join(link.log) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    console = err_b.decode(errors="replace")
    stdout = out_b.decode(errors="replace")
    (results / "console.txt").write_text(console)
    (results / "guest-stdout.txt").write_text(stdout)
    stderr_file = results / "guest-stderr.txt"
    stderr = stderr_file.read_text(errors="replace") if stderr_file.exists() else ""
    rc = 124 if timed_out else (255 if proc.returncode is None else proc.returncode)
    boot_s = None
    with contextlib.suppress(OSError, ValueError):
        boot_s = float((results / "boot-seconds").read_text())
    if timed_out:
        stderr += f"\n[vtvm harness] timeout after {cfg.timeout:.0f}s: QEMU killed\n"
    return GuestResult(
        rc=rc,
        stdout=stdout,
        stderr=stderr,
        console=console,
        seconds=seconds,
        timed_out=timed_out,
        results_dir=results,
        boot_seconds=boot_s,
    )


# One boot per profile per pytest session. Guest scenarios pick theirs with
# @pytest.mark.vm_profile(NAME) (unmarked: "main"); add a profile here when a scenario
# needs a VM built differently.
# Timeouts bound a hung boot; they are ~2.5x a boot's wall time on a loaded 2-core
# machine (main: 5 min measured with other test suites running beside it), since every
# scenario also has its own limit in the guest ($VTVM_TEST_TIMEOUT).
PROFILES: dict[str, VmConfig] = {
    # -smp 2 with 4 queue pairs: XDP gets one TX queue per CPU beside the 2 in use.
    "main": VmConfig(cpus=2, queues=4, timeout=720),
    # The refusal cases that need other QEMU options: -smp 4 with 4 queue pairs (too few
    # for XDP's per-CPU TX queues), a NIC without VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, a
    # NIC whose device MTU (VIRTIO_NET_F_MTU) is 9000, and a legacy (virtio 0.9.5) NIC
    # with mergeable buffers but without ANY_LAYOUT (no any_header_sg).
    "refusals": VmConfig(
        cpus=4,
        queues=4,
        timeout=480,
        extra_nics=(
            Nic({"ctrl_guest_offloads": "off"}),
            Nic({"host_mtu": 9000}),
            Nic({"disable-modern": "on", "disable-legacy": "off", "any_layout": "off"}),
        ),
        env={
            "VTVM_NIC_NO_CTRL_OFFLOADS": "eth1",
            "VTVM_NIC_HOST_MTU": "eth2",
            "VTVM_NIC_LEGACY": "eth3",
        },
    ),
}


def guest_suite_command(profile: str, extra_args: Sequence[str] = ()) -> str:
    """Guest shell command running tests/vm/guest in one python process, through the
    Vagrant provisioning step (``vagrant/provision.sh scenarios``) so that both paths run
    the same code; JUnit XML and results.jsonl land in ``$VTVM_RESULTS``."""
    args = " ".join(shlex.quote(a) for a in (f"--vtvm-profile={profile}", *extra_args))
    return f"sh {shlex.quote(str(REPO / 'vagrant' / 'provision.sh'))} scenarios {args}"


def _parse_opts(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for it in items:
        for kv in it.split(","):
            k, _, v = kv.partition("=")
            out[k] = v
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--queues", type=int, default=4)
    ap.add_argument("--memory", default="2G")
    ap.add_argument(
        "--dev-opt", action="append", default=[], help="virtio-net-pci property of eth0, k=v"
    )
    ap.add_argument(
        "--extra-nic",
        action="append",
        default=[],
        help="add a NIC with these k=v[,k=v] properties ('' for none)",
    )
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument(
        "--kernel",
        default=None,
        help="guest vmlinuz-<release> to boot (default: Debian's 6.1); '6.12' for the "
        "Debian 6.12 image setup_vm.sh unpacked",
    )
    ap.add_argument("--suffix", default=None)
    ap.add_argument("--console", action="store_true", help="print the kernel console too")
    ap.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="boot this profile's VM (other VM options ignored); the command "
        "defaults to its guest scenarios",
    )
    ap.add_argument("command", nargs="?")
    a = ap.parse_args(argv)
    kernel = None
    if a.kernel:
        kernel = Kernel.from_image(find_kernel_612() if a.kernel == "6.12" else Path(a.kernel))
    if a.profile:
        cfg = dataclasses.replace(PROFILES[a.profile], kernel=kernel)
        command = a.command or guest_suite_command(a.profile)
    else:
        if not a.command:
            ap.error("a command (or --profile) is required")
        cfg = VmConfig(
            cpus=a.cpus,
            queues=a.queues,
            memory=a.memory,
            dev_opts=_parse_opts(a.dev_opt),
            extra_nics=[Nic(_parse_opts([x]) if x else {}) for x in a.extra_nic],
            timeout=a.timeout,
            kernel=kernel,
        )
        command = a.command
    r = boot(command, cfg, suffix=a.suffix)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    if a.console:
        sys.stderr.write("--- console ---\n" + r.console)
    print(
        f"[vtvm] rc={r.rc} wall={r.seconds:.1f}s boot={r.boot_seconds}s results={r.results_dir}",
        file=sys.stderr,
    )
    return r.rc


if __name__ == "__main__":
    sys.exit(main())
