"""The ethtool ioctl calls pyroute2 does not offer (ETHTOOL_GDRVINFO).

pyroute2's ``IoctlEthtool`` covers channels and features; driver name and bus info come
from ETHTOOL_GDRVINFO, which it lacks, so it is done here with the same SIOCETHTOOL ioctl.
The socket is opened per call, so it belongs to the network namespace of the calling thread.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import socket

from vtnet_py._sys.abi import ETHTOOL_GDRVINFO, IFNAMSIZ, SIOCETHTOOL


class _DrvInfo(ctypes.Structure):
    # struct ethtool_drvinfo (uapi linux/ethtool.h)
    _fields_ = [
        ("cmd", ctypes.c_uint32),
        ("driver", ctypes.c_char * 32),
        ("version", ctypes.c_char * 32),
        ("fw_version", ctypes.c_char * 32),
        ("bus_info", ctypes.c_char * 32),
        ("erom_version", ctypes.c_char * 32),
        ("reserved2", ctypes.c_char * 12),
        ("n_priv_flags", ctypes.c_uint32),
        ("n_stats", ctypes.c_uint32),
        ("testinfo_len", ctypes.c_uint32),
        ("eedump_len", ctypes.c_uint32),
        ("regdump_len", ctypes.c_uint32),
    ]


class _IfReq(ctypes.Structure):
    # struct ifreq is 40 bytes on 64-bit: the name, then a union whose largest member is
    # 24 bytes; only ifr_data (a pointer) is used here. The kernel copies all 40 bytes.
    _fields_ = [
        ("ifr_name", ctypes.c_char * IFNAMSIZ),
        ("ifr_data", ctypes.c_void_p),
        ("_pad", ctypes.c_char * 16),
    ]


def get_drvinfo(ifname: str) -> tuple[str, str]:
    """``(driver, bus_info)`` of ``ifname`` in the calling thread's network namespace.

    Raises OSError as the kernel reports it (ENODEV for an unknown name; EOPNOTSUPP for a
    device without ethtool ops, which the caller maps). Leaves nothing behind.
    """
    raw = ifname.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise OSError(errno.ENODEV, f"invalid interface name {ifname!r}")
    info = _DrvInfo(cmd=ETHTOOL_GDRVINFO)
    req = _IfReq(ifr_name=raw, ifr_data=ctypes.addressof(info))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, req)
    return (
        info.driver.decode(errors="replace"),
        info.bus_info.decode(errors="replace"),
    )
