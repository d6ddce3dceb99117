"""Thin wrappers over bpf(2): one function per command used, errno mapped to OSError.

Every function returns plain ints or ctypes structures; file descriptors returned are
owned by the caller (close them with os.close).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator

from vtnet_py._sys import abi as K


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    ret = K.libc.syscall(K.SYS_bpf, ctypes.c_int(cmd), ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(cmd {cmd}): {os.strerror(err)}")
    return int(ret)


def map_create(
    map_type: int, key_size: int, value_size: int, max_entries: int, name: str = "", flags: int = 0
) -> int:
    attr = K.bpf_attr_map_create(
        map_type=map_type,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        map_flags=flags,
        map_name=name.encode()[: K.BPF_OBJ_NAME_LEN - 1],
    )
    return _bpf(K.BPF_MAP_CREATE, attr)


def map_update(
    map_fd: int, key: ctypes._SimpleCData, value: ctypes._SimpleCData, flags: int = K.BPF_ANY
) -> None:
    attr = K.bpf_attr_map_elem(
        map_fd=map_fd, key=ctypes.addressof(key), value=ctypes.addressof(value), flags=flags
    )
    _bpf(K.BPF_MAP_UPDATE_ELEM, attr)


def map_lookup(map_fd: int, key: ctypes._SimpleCData, value: ctypes._SimpleCData) -> bool:
    """Fill ``value``; False when the key has no entry (ENOENT)."""
    attr = K.bpf_attr_map_elem(
        map_fd=map_fd, key=ctypes.addressof(key), value=ctypes.addressof(value)
    )
    try:
        _bpf(K.BPF_MAP_LOOKUP_ELEM, attr)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_delete(map_fd: int, key: ctypes._SimpleCData) -> bool:
    attr = K.bpf_attr_map_elem(map_fd=map_fd, key=ctypes.addressof(key))
    try:
        _bpf(K.BPF_MAP_DELETE_ELEM, attr)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def prog_load(
    prog_type: int,
    insns: bytes,
    name: str,
    *,
    license: str = "Dual BSD/GPL",
    prog_flags: int = 0,
    expected_attach_type: int = 0,
) -> int:
    """Load a program; on a verifier refusal the OSError message carries the log."""
    buf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(1 << 16)

    def attempt(log_level: int) -> int:
        attr = K.bpf_attr_prog_load(
            prog_type=prog_type,
            insn_cnt=len(insns) // 8,
            insns=ctypes.addressof(buf),
            license=ctypes.addressof(lic),
            log_level=log_level,
            log_size=ctypes.sizeof(log) if log_level else 0,
            log_buf=ctypes.addressof(log) if log_level else 0,
            prog_flags=prog_flags,
            prog_name=name.encode()[: K.BPF_OBJ_NAME_LEN - 1],
            expected_attach_type=expected_attach_type,
        )
        return _bpf(K.BPF_PROG_LOAD, attr)

    try:
        return attempt(0)
    except OSError as first:
        if first.errno in (errno.EMFILE, errno.ENFILE, errno.EPERM):
            # no fd or no privilege, not the verifier: a load with the log would only
            # hide it (a large program's log overflows the buffer: ENOSPC)
            raise
        # Load again with the verifier log only to explain the failure.
        try:
            return attempt(1)
        except OSError as exc:
            text = log.value.decode(errors="replace").strip().splitlines()[-8:]
            # the first errno is the refusal's; the second may only say the log overflowed
            raise OSError(
                first.errno,
                f"loading BPF program {name!r}: {first.strerror}; verifier: {' | '.join(text)}",
            ) from exc


def prog_bind_map(prog_fd: int, map_fd: int) -> None:
    _bpf(K.BPF_PROG_BIND_MAP, K.bpf_attr_prog_bind_map(prog_fd=prog_fd, map_fd=map_fd))


def obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(path.encode())
    _bpf(K.BPF_OBJ_PIN, K.bpf_attr_obj(pathname=ctypes.addressof(p), bpf_fd=fd))


def obj_get(path: str) -> int:
    p = ctypes.create_string_buffer(path.encode())
    return _bpf(K.BPF_OBJ_GET, K.bpf_attr_obj(pathname=ctypes.addressof(p)))


def _next_ids(cmd: int) -> Iterator[int]:
    cur = 0
    while True:
        attr = K.bpf_attr_get_id(id=cur)
        try:
            _bpf(cmd, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        cur = attr.next_id
        yield cur


def link_ids() -> Iterator[int]:
    return _next_ids(K.BPF_LINK_GET_NEXT_ID)


def prog_ids() -> Iterator[int]:
    return _next_ids(K.BPF_PROG_GET_NEXT_ID)


def prog_fd_by_id(prog_id: int) -> int:
    return _bpf(K.BPF_PROG_GET_FD_BY_ID, K.bpf_attr_get_id(id=prog_id))


def map_fd_by_id(map_id: int) -> int:
    return _bpf(K.BPF_MAP_GET_FD_BY_ID, K.bpf_attr_get_id(id=map_id))


def link_fd_by_id(link_id: int) -> int:
    return _bpf(K.BPF_LINK_GET_FD_BY_ID, K.bpf_attr_get_id(id=link_id))


def _info(fd: int, info: ctypes.Structure) -> None:
    _bpf(
        K.BPF_OBJ_GET_INFO_BY_FD,
        K.bpf_attr_info(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)),
    )


def prog_info(fd: int) -> tuple[K.bpf_prog_info, list[int]]:
    """The program's info and the ids of the maps it uses (bound maps included)."""
    info = K.bpf_prog_info()
    _info(fd, info)
    n = info.nr_map_ids
    ids = (ctypes.c_uint32 * max(n, 1))()
    info2 = K.bpf_prog_info(nr_map_ids=n, map_ids=ctypes.addressof(ids))
    _info(fd, info2)
    return info2, list(ids[: min(n, info2.nr_map_ids)])


def map_info(fd: int) -> K.bpf_map_info:
    info = K.bpf_map_info()
    _info(fd, info)
    return info


def link_info(fd: int) -> K.bpf_link_info:
    info = K.bpf_link_info()
    _info(fd, info)
    return info


def link_create(prog_fd: int, ifindex: int, attach_type: int, flags: int = 0) -> int:
    return _bpf(
        K.BPF_LINK_CREATE,
        K.bpf_attr_link_create(
            prog_fd=prog_fd, target_ifindex=ifindex, attach_type=attach_type, flags=flags
        ),
    )


def link_detach(link_fd: int) -> None:
    _bpf(K.BPF_LINK_DETACH, K.bpf_attr_link_detach(link_fd=link_fd))


def prog_test_run(attr: K.bpf_attr_test_run) -> int:
    return _bpf(K.BPF_PROG_TEST_RUN, attr)
