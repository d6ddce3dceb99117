"""pkt-gen's address options: ``-s``/``-d`` ranges (IPv4, and IPv6 with ``-6``) and MACs.

A range is ``ip[:port][-ip[:port]]`` (IPv6: ``[group@][addr]:port`` with brackets
when a port follows, as pkt-gen reads it).  An IPv6 range walks one 16-bit group of
the address (``group``, 0..7, default 7: the last one), as pkt-gen's update_ip6()
does; the other groups come from the start address.  Parsing only: nothing here
builds a frame.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import ClassVar

DEFAULT_SRC = "10.0.0.1"
DEFAULT_DST = "10.1.0.1"
DEFAULT_SRC6 = "2001:db8::1"
DEFAULT_DST6 = "2001:db8:1::1"
DEFAULT_PORT = 1234
IPV6_GROUPS = 8


class FrameSpecError(ValueError):
    """A pkt-gen frame option that cannot be honoured (the message names it)."""


_RANGE_PART = re.compile(r"^(?P<ip>[0-9.]+)(?::(?P<port>[0-9]+|0x[0-9a-fA-F]+))?$")
# IPv6: [group@][addr]:port, [group@][addr] or [group@]addr (no port without brackets)
_RANGE_PART6 = re.compile(
    r"^(?:(?P<group>[0-9]+)@)?(?:\[(?P<bip>[0-9a-fA-F:.]+)\](?::(?P<port>[0-9]+|0x[0-9a-fA-F]+))?"
    r"|(?P<ip>[0-9a-fA-F:.]+))$"
)


def _parse_port(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    port = int(text, 0)
    if not 0 <= port <= 0xFFFF:
        raise FrameSpecError(f"{what}: port {port} is outside 0..65535")
    return port


def _parse_part(text: str, what: str) -> tuple[int, int | None]:
    m = _RANGE_PART.match(text)
    if m is None:
        raise FrameSpecError(f"{what}: {text!r} is not ip[:port]")
    try:
        addr = int(ipaddress.IPv4Address(m.group("ip")))
    except ipaddress.AddressValueError as exc:
        raise FrameSpecError(f"{what}: {m.group('ip')!r} is not an IPv4 address") from exc
    return addr, _parse_port(m.group("port"), what)


def _parse_part6(text: str, what: str) -> tuple[int, int | None, int | None]:
    m = _RANGE_PART6.match(text)
    if m is None:
        raise FrameSpecError(f"{what}: {text!r} is not [group@][ipv6]:port or [group@]ipv6")
    ip = m.group("bip") or m.group("ip")
    try:
        addr = int(ipaddress.IPv6Address(ip))
    except ipaddress.AddressValueError as exc:
        raise FrameSpecError(f"{what}: {ip!r} is not an IPv6 address") from exc
    group = None if m.group("group") is None else int(m.group("group"))
    if group is not None and group >= IPV6_GROUPS:
        raise FrameSpecError(f"{what}: group {group} is outside 0..7")
    return addr, _parse_port(m.group("port"), what), group


@dataclass(frozen=True)
class IPRange:
    """An IPv4 address range and a UDP port range, as ``-s``/``-d`` give them.

    ``start..end`` and ``port0..port1`` are inclusive; host byte order.
    """

    # bits of the part of the address the walk moves (-z draws from this many)
    addr_bits: ClassVar[int] = 32

    start: int
    end: int
    port0: int = DEFAULT_PORT
    port1: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        if not (0 <= self.start <= self.end <= 0xFFFFFFFF):
            raise FrameSpecError(f"bad address range {self.start:#x}..{self.end:#x}")
        if not (0 <= self.port0 <= self.port1 <= 0xFFFF):
            raise FrameSpecError(f"bad port range {self.port0}..{self.port1}")

    @classmethod
    def parse(cls, text: str, what: str = "address") -> IPRange:
        """Parse pkt-gen's ``ip[:port][-ip[:port]]``.

        As in pkt-gen the port defaults to 1234, the end port defaults to the
        start port, and reversed ends are swapped.
        """
        first, sep, second = text.partition("-")
        a0, p0 = _parse_part(first, what)
        port0 = DEFAULT_PORT if p0 is None else p0
        a1, port1 = a0, port0
        if sep:
            a1, p1 = _parse_part(second, what)
            if p1 is not None:
                port1 = p1
        return cls(min(a0, a1), max(a0, a1), min(port0, port1), max(port0, port1))

    @property
    def n_addrs(self) -> int:
        return self.end - self.start + 1

    @property
    def n_ports(self) -> int:
        return self.port1 - self.port0 + 1

    @property
    def is_single(self) -> bool:
        return self.n_addrs == 1 and self.n_ports == 1

    def __str__(self) -> str:
        a = f"{ipaddress.IPv4Address(self.start)}:{self.port0}"
        if self.is_single:
            return a
        return f"{a}-{ipaddress.IPv4Address(self.end)}:{self.port1}"


@dataclass(frozen=True)
class IPRange6:
    """An IPv6 range as pkt-gen walks it: group ``group`` of the address (a 16-bit
    word, 0 = the first) goes from ``start`` to ``end``; ``base`` is the start address
    with that group zeroed.  Ports as in IPRange."""

    addr_bits: ClassVar[int] = 16

    base: int
    group: int
    start: int
    end: int
    port0: int = DEFAULT_PORT
    port1: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        if not 0 <= self.group < IPV6_GROUPS:
            raise FrameSpecError(f"bad IPv6 group {self.group}")
        if not (0 <= self.start <= self.end <= 0xFFFF) or self.base & self._mask():
            raise FrameSpecError(f"bad IPv6 group range {self.start:#x}..{self.end:#x}")
        if not (0 <= self.port0 <= self.port1 <= 0xFFFF):
            raise FrameSpecError(f"bad port range {self.port0}..{self.port1}")

    def _shift(self) -> int:
        return 16 * (IPV6_GROUPS - 1 - self.group)

    def _mask(self) -> int:
        return 0xFFFF << self._shift()

    @classmethod
    def parse(cls, text: str, what: str = "address") -> IPRange6:
        """Parse pkt-gen's IPv6 ``[group@][addr]:port[-[group@][addr]:port]``.

        As pkt-gen: the group defaults to 7, the end's group to the start's, the
        port to 1234; only the chosen group may differ between start and end.
        """
        first, sep, second = text.partition("-")
        a0, p0, g0 = _parse_part6(first, what)
        group = 7 if g0 is None else g0
        port0 = DEFAULT_PORT if p0 is None else p0
        a1, port1 = a0, port0
        if sep:
            a1, p1, g1 = _parse_part6(second, what)
            if g1 is not None and g1 != group:
                raise FrameSpecError(f"{what}: both ends of a range walk the same group")
            if p1 is not None:
                port1 = p1
        shift = 16 * (IPV6_GROUPS - 1 - group)
        mask = 0xFFFF << shift
        if a0 & ~mask != a1 & ~mask:
            raise FrameSpecError(
                f"{what}: {text!r}: the ends may differ only in group {group} of the address"
            )
        w0, w1 = (a0 >> shift) & 0xFFFF, (a1 >> shift) & 0xFFFF
        return cls(
            a0 & ~mask, group, min(w0, w1), max(w0, w1), min(port0, port1), max(port0, port1)
        )

    def address(self, word: int) -> int:
        """The 128-bit address whose walked group is ``word``."""
        return self.base | (word << self._shift())

    @property
    def n_addrs(self) -> int:
        return self.end - self.start + 1

    @property
    def n_ports(self) -> int:
        return self.port1 - self.port0 + 1

    @property
    def is_single(self) -> bool:
        return self.n_addrs == 1 and self.n_ports == 1

    def __str__(self) -> str:
        a = f"[{ipaddress.IPv6Address(self.address(self.start))}]:{self.port0}"
        if self.is_single:
            return a
        return f"{a}-[{ipaddress.IPv6Address(self.address(self.end))}]:{self.port1}"


AnyRange = IPRange | IPRange6


def parse_range(text: str, what: str, ipv6: bool = False) -> AnyRange:
    """``-s``/``-d``: an IPv4 range, or an IPv6 one with ``-6``."""
    return IPRange6.parse(text, what) if ipv6 else IPRange.parse(text, what)


def parse_mac(text: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff`` (one or two hex digits a group) into 6 bytes."""
    parts = text.split(":")
    if len(parts) != 6 or not all(re.fullmatch(r"[0-9a-fA-F]{1,2}", p) for p in parts):
        raise FrameSpecError(f"invalid MAC address {text!r}")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)
