"""Compile the project's BPF C sources with bcc, cache the result, and load instances.

bcc compiles against kernel headers. This machine's kernel (and many cloud kernels) ships
none, so when ``/lib/modules/$(uname -r)/build`` is absent we use the newest headers the
distribution installed (Debian's ``linux-headers-amd64``): XDP and TC programs use only
stable UAPI, so any recent headers serve. Debian splits them into an arch directory
(generated files) and a ``-common`` directory; bcc wants one tree, so we build a tree of
symlinks that merges both, once, in the cache directory.

bcc creates the maps while it compiles and bakes their fds into the instructions. We keep
the instructions and each map's shape (the "image", cached on disk keyed by the source
hash), and every instance creates fresh maps and patches the fds in, as a loader does
with relocations. So a process compiles at most once per source, most processes never
(bcc inside a TCG guest takes 20-35 s per compile), and the program can be loaded with
flags bcc does not expose (BPF_F_XDP_HAS_FRAGS) and under a name we choose.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import platform
import re
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from vtnet_py._sys import abi as K
from vtnet_py._sys import bpf as bpf
from vtnet_py.errors import PrivilegeError, UnsupportedError, VtnetError

log = logging.getLogger("vtnet_py")

CACHE_DIR_ENV = "VTNETMAP_CACHE_DIR"
DEFAULT_CACHE_DIR = "/var/cache/vtnetmap"
IMAGE_FORMAT = 1


def cache_dir() -> Path:
    """The root-only cache directory (mode 0700), created on first use."""
    d = Path(os.environ.get(CACHE_DIR_ENV, DEFAULT_CACHE_DIR))
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
    except PermissionError as exc:
        # the cache is root's; whoever cannot use it cannot load the program either
        raise PrivilegeError(
            f"the BPF program cache {d} belongs to root: loading vtnetmap's "
            f"XDP program needs CAP_BPF and CAP_NET_ADMIN (run as root)"
        ) from exc
    return d


def bpf_source_dir() -> Path:
    """Where the BPF C sources are: inside the installed package, or the source tree."""
    here = Path(__file__).resolve().parents[1]  # the vtnet_py package
    for cand in (here / "bpf", here.parent / "bpf"):
        if (cand / "steer.c").is_file():
            return cand
    raise VtnetError(
        f"vtnetmap's BPF sources (steer.c) are missing: looked in {here / 'bpf'} "
        f"and {here.parent / 'bpf'}; reinstall the package"
    )


# --- kernel headers ---------------------------------------------------------------------

_headers_lock = threading.Lock()
_headers_said = False


def _arch_dir_suffix() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _merge_tree(dst: Path, sources: list[Path]) -> None:
    """Make ``dst`` a union of ``sources`` out of symlinks: a directory present in more
    than one source becomes a real directory whose entries are merged the same way;
    everything else is a symlink to the first source that has it."""
    dst.mkdir(mode=0o700, parents=True, exist_ok=True)  # inside the root-only cache
    names: dict[str, list[Path]] = {}
    for src in sources:
        for entry in sorted(os.listdir(src)):
            names.setdefault(entry, []).append(src / entry)
    for name, paths in names.items():
        dirs = [p for p in paths if p.is_dir()]
        target = dst / name
        if len(dirs) > 1:
            _merge_tree(target, dirs)
        elif not target.exists() and not target.is_symlink():
            # another process making the same tree (two ports opened at once on a cold
            # cache, pkt-gen -p N) may have made this link a moment ago: same target
            with contextlib.suppress(FileExistsError):
                target.symlink_to(paths[0].resolve())


def find_kernel_headers() -> Path | None:
    """The header tree bcc should use, or None when the running kernel's own are present
    (bcc then finds them itself). Raises UnsupportedError when there are none at all."""
    global _headers_said
    release = platform.release()
    own = Path("/lib/modules") / release / "build"
    if (own / "include").is_dir():
        return None
    with _headers_lock:
        arch = _arch_dir_suffix()
        candidates = []
        for d in Path("/usr/src").glob(f"linux-headers-*-{arch}"):
            common = d.with_name(d.name[: -len(arch)] + "common")
            if (d / "include" / "generated").is_dir():
                candidates.append((d, common if common.is_dir() else None))
        if not candidates:
            raise UnsupportedError(
                f"no kernel headers for the running kernel {release} and none installed by the "
                "distribution: install them (Debian: apt-get install linux-headers-amd64); "
                "bcc needs headers to compile vtnetmap's XDP program"
            )

        def version_key(item: tuple[Path, Path | None]) -> list[int]:
            ver = item[0].name[len("linux-headers-") :].split("-")[0]
            return [int(x) for x in ver.split(".") if x.isdigit()]

        arch_dir, common_dir = max(candidates, key=version_key)
        merged = cache_dir() / f"kheaders-{arch_dir.name}"
        stamp = merged / ".vtnetmap-merged"
        first_time = not stamp.exists()
        if first_time:
            sources = [arch_dir] + ([common_dir] if common_dir else [])
            _merge_tree(merged, sources)
            fd = os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(" ".join(str(s) for s in sources) + "\n")
        if not _headers_said:
            # said once: a warning when the merged tree is first made on this machine (or
            # cache directory), an info line in later processes
            _headers_said = True
            log.log(
                logging.WARNING if first_time else logging.INFO,
                "vtnetmap: no headers for running kernel %s; compiling BPF against %s "
                "(XDP/TC programs use only stable UAPI)",
                release,
                arch_dir.name,
            )
        return merged


# --- images -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MapSpec:
    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass(frozen=True)
class ProgramImage:
    """Compiled instructions with map fds to patch, and the maps' shapes."""

    source: str
    insns: dict[str, bytes]
    maps: dict[int, MapSpec]  # the placeholder fd baked into insns -> its shape
    extra_maps: tuple[MapSpec, ...] = field(default=())  # declared but not referenced


def _map_fd_slots(insns: bytes) -> list[tuple[int, int]]:
    """(byte offset of imm, fd) of every ld_imm64 that loads a map by fd."""
    out = []
    for off in range(0, len(insns) - 15, 8):
        code, regs, _, imm = struct.unpack_from("<BBhi", insns, off)
        if code == K.BPF_LD_IMM64_OPCODE and (regs >> 4) == K.BPF_PSEUDO_MAP_FD:
            out.append((off + 4, imm))
    return out


_compile_lock = threading.Lock()
_memory_cache: dict[str, ProgramImage] = {}


def _image_key(
    source_text: str, funcs: tuple[str, ...], cflags: tuple[str, ...], headers: Path | None
) -> str:
    h = hashlib.sha256()
    for part in (source_text, ",".join(funcs), ",".join(cflags), str(headers), str(IMAGE_FORMAT)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_.-]+\.h)"[ \t]*$', re.MULTILINE)


def source_text(source: str) -> str:
    """``bpf/<source>`` with its ``#include "x.h"`` lines replaced by ``bpf/x.h`` (one
    level): bcc compiles text, and the image cache key must cover the headers too."""
    here = bpf_source_dir()

    def header(m: re.Match[str]) -> str:
        return f"/* {m.group(1)} */\n" + (here / m.group(1)).read_text()

    return _LOCAL_INCLUDE.sub(header, (here / source).read_text())


def compile_image(
    source: str, funcs: tuple[str, ...], cflags: tuple[str, ...] = ()
) -> ProgramImage:
    """Compile ``bpf/<source>`` with bcc (or take it from the cache) into an image."""
    text = source_text(source)
    headers = find_kernel_headers()
    key = _image_key(text, funcs, cflags, headers)
    with _compile_lock:
        if key in _memory_cache:
            return _memory_cache[key]
        path = cache_dir() / f"image-{Path(source).stem}-{key}.json"
        image = _load_image(path)
        if image is None:
            image = _compile_in_child(source, funcs, cflags, headers)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # processes compiling at once
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(_image_to_json(image), f)
            os.replace(tmp, path)
        _memory_cache[key] = image
        return image


def _image_to_json(image: ProgramImage) -> dict:
    return {
        "format": IMAGE_FORMAT,
        "source": image.source,
        "insns": {k: v.hex() for k, v in image.insns.items()},
        "maps": {str(fd): vars(m) for fd, m in image.maps.items()},
        "extra_maps": [vars(m) for m in image.extra_maps],
    }


def _load_image(path: Path) -> ProgramImage | None:
    try:
        return _image_from_json(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _image_from_json(data: dict) -> ProgramImage | None:
    try:
        if data.get("format") != IMAGE_FORMAT:
            return None
        return ProgramImage(
            source=data["source"],
            insns={k: bytes.fromhex(v) for k, v in data["insns"].items()},
            maps={int(fd): MapSpec(**m) for fd, m in data["maps"].items()},
            extra_maps=tuple(MapSpec(**m) for m in data["extra_maps"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _compile_in_child(
    source: str, funcs: tuple[str, ...], cflags: tuple[str, ...], headers: Path | None
) -> ProgramImage:
    """Run bcc in a child process: bcc (LLVM) crashes when it compiles on a thread other
    than the main one, and a child also keeps LLVM's memory and any crash out of the
    caller. The child prints the image as JSON."""
    env = dict(os.environ)
    if headers is not None:
        env["BCC_KERNEL_SOURCE"] = str(headers)
    args = [sys.executable, "-m", "vtnet_py.ebpf.build", source, ",".join(funcs), *cflags]
    here = str(Path(__file__).resolve().parents[2])  # the directory holding vtnet_py
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    if r.returncode == 3:
        raise PrivilegeError(r.stderr.strip().splitlines()[-1])
    if r.returncode == 4:
        raise UnsupportedError(r.stderr.strip().splitlines()[-1])
    if r.returncode != 0:
        tail = " | ".join(r.stderr.strip().splitlines()[-6:])
        raise VtnetError(f"bcc failed to compile {source} (exit {r.returncode}): {tail}")
    image = _image_from_json(json.loads(r.stdout))
    if image is None:
        raise VtnetError(f"bcc child returned no usable image for {source}")
    return image


def _child_main(argv: list[str]) -> int:
    source, funcs = argv[0], tuple(argv[1].split(","))
    cflags = tuple(argv[2:])
    text = source_text(source)
    try:
        image = _compile_with_bcc(source, text, funcs, cflags, None)
    except PrivilegeError as exc:
        print(exc, file=sys.stderr)
        return 3
    except UnsupportedError as exc:
        print(exc, file=sys.stderr)
        return 4
    json.dump(_image_to_json(image), sys.stdout)
    return 0


CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39


def _has_cap(bit: int) -> bool:
    """Whether this process has capability ``bit`` in its effective set (True if unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return True


def _compile_with_bcc(
    source: str, text: str, funcs: tuple[str, ...], cflags: tuple[str, ...], headers: Path | None
) -> ProgramImage:
    if headers is not None:
        os.environ["BCC_KERNEL_SOURCE"] = str(headers)
    try:
        from bcc import BPF
    except ImportError as exc:
        raise UnsupportedError(
            "bcc is not importable: install Debian's python3-bpfcc and use "
            "a venv made with --system-site-packages"
        ) from exc
    try:
        b = BPF(text=text, cflags=list(cflags))
    except Exception as exc:  # bcc raises bare Exception
        # bcc creates the maps while compiling (an XSKMAP needs CAP_NET_ADMIN): root
        # without these capabilities fails here just like a non-root user
        admin = _has_cap(CAP_SYS_ADMIN)
        if os.geteuid() != 0 or not (
            (_has_cap(CAP_BPF) or admin) and (_has_cap(CAP_NET_ADMIN) or admin)
        ):
            raise PrivilegeError(
                f"compiling {source} with bcc needs CAP_BPF, CAP_PERFMON "
                "and CAP_NET_ADMIN (run as root)"
            ) from exc
        raise VtnetError(f"bcc failed to compile {source}: {exc}") from exc
    try:
        insns = {fn: bytes(b.dump_func(fn.encode())) for fn in funcs}
        maps: dict[int, MapSpec] = {}
        for code in insns.values():
            for _, fd in _map_fd_slots(code):
                if fd not in maps:
                    maps[fd] = _spec_of(fd)
        extra = []
        from bcc.libbcc import lib

        for i in range(lib.bpf_num_tables(b.module)):
            fd = lib.bpf_table_fd_id(b.module, i)
            if fd >= 0 and fd not in maps:
                extra.append(_spec_of(fd))
        return ProgramImage(source=source, insns=insns, maps=maps, extra_maps=tuple(extra))
    finally:
        b.cleanup()


def _spec_of(fd: int) -> MapSpec:
    info = bpf.map_info(fd)
    return MapSpec(
        name=info.name.decode(),
        map_type=info.type,
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
        flags=info.map_flags,
    )


# --- instances --------------------------------------------------------------------------


@dataclass
class LoadedProgram:
    """A loaded program and its own maps; close() releases every fd."""

    prog_fd: int
    maps: dict[str, int]
    name: str

    def close(self) -> None:
        for fd in [self.prog_fd, *self.maps.values()]:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.prog_fd = -1
        self.maps = {}


def instantiate(
    image: ProgramImage,
    func: str,
    prog_type: int,
    *,
    name: str,
    prog_flags: int = 0,
    expected_attach_type: int = 0,
    map_sizes: dict[str, int] | None = None,
) -> LoadedProgram:
    """Create fresh maps for ``image``, patch them in and load ``func``.

    On failure every fd made here is closed again.
    """
    created: dict[str, int] = {}
    try:
        fd_map: dict[int, int] = {}
        specs = list(image.maps.items()) + [(-1, m) for m in image.extra_maps]
        for placeholder, spec in specs:
            entries = (map_sizes or {}).get(spec.name, spec.max_entries)
            fd = bpf.map_create(
                spec.map_type,
                spec.key_size,
                spec.value_size,
                entries,
                name=spec.name,
                flags=spec.flags,
            )
            created[spec.name] = fd
            if placeholder >= 0:
                fd_map[placeholder] = fd
        code = bytearray(image.insns[func])
        for off, old in _map_fd_slots(bytes(code)):
            struct.pack_into("<i", code, off, fd_map[old])
        prog_fd = bpf.prog_load(
            prog_type,
            bytes(code),
            name,
            prog_flags=prog_flags,
            expected_attach_type=expected_attach_type,
        )
        loaded = LoadedProgram(prog_fd=prog_fd, maps=created, name=name)
        try:
            for spec in image.extra_maps:  # make unreferenced maps findable from the prog
                bpf.prog_bind_map(prog_fd, created[spec.name])
        except OSError:
            loaded.close()
            raise
        return loaded
    except OSError as exc:
        for fd in created.values():
            os.close(fd)
        if exc.errno == errno.EPERM:
            raise PrivilegeError(
                f"loading BPF program {name!r} needs CAP_BPF and CAP_NET_ADMIN"
            ) from exc
        raise UnsupportedError(f"loading BPF program {name!r}: {exc.strerror}") from exc
    except BaseException:
        for fd in created.values():
            os.close(fd)
        raise


def u32(value: int) -> ctypes.c_uint32:
    return ctypes.c_uint32(value)


if __name__ == "__main__":  # the bcc child of _compile_in_child
    sys.exit(_child_main(sys.argv[1:]))
