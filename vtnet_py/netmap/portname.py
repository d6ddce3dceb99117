# One module over 500 lines: the port-name grammar is documented where its one-pass parser is.
"""netmap port names for vtnetmap: ``netmap:eth0-1/x@conf:slots=1024`` and friends.

netmap names what to bind with one string (libnetmap's "portspec", parsed by
``nmport_parse()``).  vtnetmap takes the same strings so that netmap programs and habits
carry over; this module reads them into a :class:`PortSpec`.  It only parses: whether the
interface exists, has that many queues, or accepts those ring sizes is checked when the
port is opened.  Parsing has no side effects and leaves nothing behind on failure.

Grammar (``[x]`` optional, ``x*`` zero or more, ``x+`` one or more)::

    port-name ::= "netmap:" ifname [mode] ["/" flag+] option*

    ifname    ::= 1..15 bytes (UTF-8) of printable characters other than
                  whitespace, ':', '{', '}' and the separators - ^ * + / @ ;
                  no byte 0xa0 (Linux's isspace); not "." or ".."
                                                     (Linux dev_valid_name + netmap)
    mode      ::= (nothing)     all hardware ring pairs            RegMode.ALL_NIC
                | "-" ring      hardware ring pair N               RegMode.ONE_NIC
                | "^"           all host ring pairs                RegMode.SW
                | "^" ring      host ring pair N                   RegMode.ONE_SW
                | "*" | "+"     hardware and host ring pairs       RegMode.NIC_SW
    ring      ::= digit+        0 .. MAX_RINGS-1, leading zeros allowed
    flag      ::= "x"           exclusive: nobody else may bind these rings
                                (vtnetmap: always so, since AF_XDP binds one socket
                                per queue for both directions; accepted, changes
                                nothing; a second open gets BusyError naming the pid)
                | "R"           bind only the RX rings
                | "T"           bind only the TX rings
                  (any order; repeating a flag is harmless, as in netmap)
    option    ::= "@conf:" conf-kv ("," conf-kv)*
    conf-kv   ::= conf-key "=" digit+
    conf-key  ::= "rings" | "tx-rings" | "rx-rings"       1 .. MAX_RINGS
                | "slots" | "tx-slots" | "rx-slots"       MIN_SLOTS .. MAX_SLOTS
                  ('_' may stand for '-' in a key, as netmap allows; the more
                  specific key wins: tx-slots over slots, rx-rings over rings)

With ``default_prefix=True`` a name without a prefix gets ``netmap:`` in front, as
pkt-gen does (``eth0-1`` means ``netmap:eth0-1``); names that look like VALE ports
(``valeX:Y``) are not prefixed, again as pkt-gen does, and are then refused.

What netmap accepts and vtnetmap refuses (each with a PortNameError that says so):

* ``valeX:Y`` VALE switch ports and ``IF{N`` / ``IF}N`` pipes: vtnetmap binds real
  interfaces through AF_XDP; there is no software switch or pipe behind it.
* flags ``z`` (zero-copy monitor), ``t`` / ``r`` (copy monitors of the tx / rx side):
  there is no monitor port type.
* ``@N`` memory-region ids, options ``@share``, ``@extmem``, ``@offset``, and the conf
  keys ``host-rings``, ``host-tx-rings``, ``host-rx-rings``: a :class:`PortSpec` has no
  place for them and vtnetmap does not implement them.
* ``/RT`` together: netmap takes it and binds no ring at all; that is always a mistake.

Where vtnetmap is stricter than libnetmap's parser (whose checks are left to the kernel
or to ``atoi``): interface names follow Linux's rules here; conf values must be decimal
and in range, 0 (netmap: "let netmap choose") is refused -- leave the key out instead;
an empty value, a stray ',' or a key set twice (even in two ``@conf`` groups) is refused;
ring numbers must be below MAX_RINGS (netmap: below 4095).  ``+`` as a spelling of ``*``
is a vtnetmap addition (netmap has no ``+`` mode; it would be part of the interface name).

Every error is a :class:`~vtnet_py.errors.PortNameError` that quotes the whole name,
names the offending token and gives its 0-based offset in the string as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import NoReturn, TypeGuard

from vtnet_py.errors import PortNameError

__all__ = [
    "MAX_IFNAME_BYTES",
    "MAX_RINGS",
    "MAX_SLOTS",
    "MIN_SLOTS",
    "PREFIX",
    "PortSpec",
    "RegMode",
    "parse_port_name",
]

PREFIX = "netmap:"
# IFNAMSIZ is 16 and includes the terminating NUL.
MAX_IFNAME_BYTES = 15
# virtio_net and veth on the kernels we target stay far below this; a bound keeps a typo
# such as "-1000" from turning into a confusing error much later at open time.
MAX_RINGS = 256
# A netmap ring always keeps one slot empty (head == tail means "empty"), so a ring of
# one slot could never carry a packet.
MIN_SLOTS = 2
MAX_SLOTS = 65536

_ASCII_DIGITS = frozenset("0123456789")
# libnetmap ends the interface name at the first of "-*^/@"; '+' is ours (alias of '*').
_IFNAME_STOP = frozenset("-^*+/@")
# Bytes the kernel's isspace() accepts; dev_valid_name() refuses names containing them.
# 0xa0 matters: it is the second byte of many UTF-8 characters (e.g. 'à' is C3 A0).
_KERNEL_SPACE_BYTES = frozenset(b"\t\n\v\f\r \xa0")
# Longest digit string worth converting: every limit here has at most 5 digits, and
# int() of a huge string is slow (and refused by Python beyond 4300 digits).
_MAX_DIGITS = 9


class RegMode(Enum):
    """Which rings a port binds: netmap's NR_REG_* modes, in our words."""

    ALL_NIC = "all_nic"  # netmap:IF      all hardware ring pairs
    ONE_NIC = "one_nic"  # netmap:IF-N    hardware ring pair N
    SW = "sw"  # netmap:IF^      all host ring pairs
    ONE_SW = "one_sw"  # netmap:IF^N     host ring pair N
    NIC_SW = "nic_sw"  # netmap:IF* (or IF+)  hardware and host ring pairs


_MODE_SUFFIX = {
    RegMode.ALL_NIC: "",
    RegMode.ONE_NIC: "-",
    RegMode.SW: "^",
    RegMode.ONE_SW: "^",
    RegMode.NIC_SW: "*",
}
_ONE_RING_MODES = (RegMode.ONE_NIC, RegMode.ONE_SW)

# Flags netmap knows but vtnetmap cannot do, with what they mean in netmap.
_REFUSED_FLAGS = {
    "z": "zero-copy monitor",
    "t": "tx copy monitor",
    "r": "rx copy monitor",
}
_REFUSED_OPTIONS = {
    "share": "share another port's memory region",
    "extmem": "external memory from a file",
    "offset": "buffer offsets in the slot ptr field",
}
# conf key -> (PortSpec attribute, lowest, highest), in canonical output order.
_CONF_KEYS: dict[str, tuple[str, int, int]] = {
    "rings": ("rings", 1, MAX_RINGS),
    "tx-rings": ("tx_rings", 1, MAX_RINGS),
    "rx-rings": ("rx_rings", 1, MAX_RINGS),
    "slots": ("slots", MIN_SLOTS, MAX_SLOTS),
    "tx-slots": ("tx_slots", MIN_SLOTS, MAX_SLOTS),
    "rx-slots": ("rx_slots", MIN_SLOTS, MAX_SLOTS),
}
_REFUSED_CONF_KEYS = {
    "host-rings": "number of host ring pairs",
    "host-tx-rings": "number of host tx rings",
    "host-rx-rings": "number of host rx rings",
}


def _ifname_problem(ifname: str) -> tuple[int, str] | None:
    """Why ``ifname`` cannot be a Linux interface named in netmap syntax, or None.

    Returns (index in ifname of the culprit, description).
    """
    if not ifname:
        return 0, "empty interface name"
    for i, ch in enumerate(ifname):
        if ch in "{}":
            return i, f"interface name {ifname!r} contains {ch!r} (netmap pipe syntax)"
        if ch in _IFNAME_STOP:
            return i, f"interface name {ifname!r} contains {ch!r}, a netmap separator"
        if ch == ":":
            return i, f"interface name {ifname!r} contains ':', which Linux forbids"
        if ch.isspace():
            return i, f"interface name {ifname!r} contains whitespace {ch!r}"
        if not ch.isprintable():
            # Also catches lone surrogates, so the encode() below cannot fail.
            return i, f"interface name {ifname!r} contains non-printable {ch!r}"
    if ifname in (".", ".."):
        return 0, f"interface name {ifname!r} is not allowed by Linux"
    raw = ifname.encode("utf-8")
    if len(raw) > MAX_IFNAME_BYTES:
        return 0, (
            f"interface name {ifname!r} is {len(raw)} bytes long; "
            f"Linux allows at most {MAX_IFNAME_BYTES}"
        )
    for i, ch in enumerate(ifname):
        if _KERNEL_SPACE_BYTES.intersection(ch.encode("utf-8")):
            return i, (
                f"interface name {ifname!r}: {ch!r} is encoded with byte 0xa0, "
                "which Linux treats as whitespace"
            )
    return None


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; True must not pass for a ring number.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class PortSpec:
    """A parsed netmap port name.

    ``name`` is the string as written and does not take part in ``==`` or ``hash``:
    ``netmap:eth0+`` and ``netmap:eth0*`` are the same port.  ``str(spec)`` is the
    canonical spelling, and ``parse_port_name(str(spec)) == spec``.  Built by hand with
    ``name=""``, ``name`` becomes the canonical spelling.  The conf fields are None when
    not given (vtnetmap then chooses); the ``effective_*`` properties apply netmap's rule
    that tx-/rx- keys override the plain ones.

    Construction checks the same rules as the parser and raises PortNameError.
    """

    name: str = field(compare=False)
    ifname: str
    mode: RegMode
    ring_id: int | None = None  # N for ONE_NIC / ONE_SW, else None
    rx: bool = True  # False with /T
    tx: bool = True  # False with /R
    exclusive: bool = False  # /x
    rings: int | None = None
    tx_rings: int | None = None
    rx_rings: int | None = None
    slots: int | None = None
    tx_slots: int | None = None
    rx_slots: int | None = None

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            shown = self.name or self.ifname
            raise PortNameError(f"invalid port spec {shown!r}: {problem}")
        if not self.name:
            object.__setattr__(self, "name", str(self))

    def _problem(self) -> str | None:
        if not isinstance(self.name, str):
            return f"name must be a str, not {type(self.name).__name__}"
        if not isinstance(self.ifname, str):
            return f"ifname must be a str, not {type(self.ifname).__name__}"
        bad = _ifname_problem(self.ifname)
        if bad is not None:
            return bad[1]
        if not isinstance(self.mode, RegMode):
            return f"mode must be a RegMode, not {self.mode!r}"
        if self.mode in _ONE_RING_MODES:
            rid = self.ring_id
            if not (_is_int(rid) and 0 <= rid < MAX_RINGS):
                return f"mode {self.mode.name} needs ring_id in 0..{MAX_RINGS - 1}"
        elif self.ring_id is not None:
            return f"mode {self.mode.name} takes no ring_id (got {self.ring_id!r})"
        for attr in ("rx", "tx", "exclusive"):
            if not isinstance(getattr(self, attr), bool):
                return f"{attr} must be a bool, not {getattr(self, attr)!r}"
        if not (self.rx or self.tx):
            return "rx and tx are both False: the port would bind no rings"
        for key, (attr, lo, hi) in _CONF_KEYS.items():
            value = getattr(self, attr)
            if value is not None and not (_is_int(value) and lo <= value <= hi):
                return f"{attr} ({key}) must be None or an integer in {lo}..{hi}, not {value!r}"
        return None

    def __str__(self) -> str:
        text = PREFIX + self.ifname + _MODE_SUFFIX[self.mode]
        if self.ring_id is not None:
            text += str(self.ring_id)
        flags = ("x" if self.exclusive else "") + ("" if self.tx else "R")
        flags += "" if self.rx else "T"
        if flags:
            text += "/" + flags
        conf = [
            f"{key}={getattr(self, attr)}"
            for key, (attr, _, _) in _CONF_KEYS.items()
            if getattr(self, attr) is not None
        ]
        if conf:
            text += "@conf:" + ",".join(conf)
        return text

    @property
    def effective_tx_rings(self) -> int | None:
        """Requested number of tx rings (tx-rings, else rings), None if not requested."""
        return self.tx_rings if self.tx_rings is not None else self.rings

    @property
    def effective_rx_rings(self) -> int | None:
        """Requested number of rx rings (rx-rings, else rings), None if not requested."""
        return self.rx_rings if self.rx_rings is not None else self.rings

    @property
    def effective_tx_slots(self) -> int | None:
        """Requested slots per tx ring (tx-slots, else slots), None if not requested."""
        return self.tx_slots if self.tx_slots is not None else self.slots

    @property
    def effective_rx_slots(self) -> int | None:
        """Requested slots per rx ring (rx-slots, else slots), None if not requested."""
        return self.rx_slots if self.rx_slots is not None else self.slots


class _Parser:
    """One pass over a port name; ``fail`` raises PortNameError with the offset."""

    def __init__(self, name: str, text: str, shift: int) -> None:
        self.name = name  # as the caller wrote it: what errors quote
        self.text = text  # with "netmap:" in front when default_prefix added it
        self.shift = shift  # len of what we prepended, to report offsets in `name`
        self.pos = 0

    def fail(self, what: str, at: int | None = None) -> NoReturn:
        offset = (self.pos if at is None else at) - self.shift
        raise PortNameError(f"invalid port name {self.name!r}: {what} (at offset {offset})")

    def peek(self, ahead: int = 0) -> str:
        i = self.pos + ahead
        return self.text[i] if i < len(self.text) else ""

    def number(self, what: str, hi: int) -> int:
        """Read ASCII digits at pos as an integer in 0..hi-1; ``what`` names it."""
        start = self.pos
        while self.peek() in _ASCII_DIGITS:
            self.pos += 1
        digits = self.text[start : self.pos]
        if len(digits) > _MAX_DIGITS or int(digits) >= hi:
            self.fail(f"{what} {_clip(digits)} is out of range 0..{hi - 1}", start)
        return int(digits)

    def parse(self) -> PortSpec:
        self.pos = len(PREFIX)
        ifname = self.interface()
        mode, ring_id = self.mode()
        rx, tx, exclusive = self.flags()
        if self.peek() == "@" and self.peek(1) in _ASCII_DIGITS:
            self.fail("memory region ids ('@N') are not supported by vtnetmap")
        conf: dict[str, int] = {}
        while self.pos < len(self.text):
            # interface(), mode() and flags() stop only at '@' or the end.
            self.option(conf)
        return PortSpec(
            name=self.name,
            ifname=ifname,
            mode=mode,
            ring_id=ring_id,
            rx=rx,
            tx=tx,
            exclusive=exclusive,
            **{_CONF_KEYS[key][0]: value for key, value in conf.items()},
        )

    def interface(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _IFNAME_STOP:
            self.pos += 1
        ifname = self.text[start : self.pos]
        for i, ch in enumerate(ifname):
            if ch in "{}":
                self.fail(f"netmap pipes ({ch!r}) are not supported by vtnetmap", start + i)
        bad = _ifname_problem(ifname)
        if bad is not None:
            self.fail(bad[1], start + bad[0])
        return ifname

    def mode(self) -> tuple[RegMode, int | None]:
        start = self.pos
        ch = self.peek()
        mode, ring_id = RegMode.ALL_NIC, None
        if ch == "-":
            self.pos += 1
            if self.peek() not in _ASCII_DIGITS:
                self.fail(
                    f"expected a hardware ring pair number after '-', found {_found(self.peek())}"
                    f"{_DASH_HINT}"
                )
            mode, ring_id = RegMode.ONE_NIC, self.number("hardware ring pair", MAX_RINGS)
        elif ch == "^":
            self.pos += 1
            mode = RegMode.SW
            if self.peek() in _ASCII_DIGITS:
                mode, ring_id = RegMode.ONE_SW, self.number("host ring pair", MAX_RINGS)
        elif ch in ("*", "+"):
            self.pos += 1
            mode = RegMode.NIC_SW
        nxt = self.peek()
        if nxt not in ("", "/", "@"):
            written = self.text[start : self.pos]
            if nxt in "{}":
                self.fail(f"netmap pipes ({nxt!r}) are not supported by vtnetmap")
            hint = _DASH_HINT if written.startswith("-") else ""
            self.fail(
                f"unexpected {nxt!r} after ring mode {written!r}; "
                f"expected '/', '@' or the end{hint}"
            )
        return mode, ring_id

    def flags(self) -> tuple[bool, bool, bool]:
        if self.peek() != "/":
            return True, True, False
        slash = self.pos
        self.pos += 1
        seen: set[str] = set()
        while self.peek() not in ("", "@"):
            ch = self.peek()
            if ch in _REFUSED_FLAGS:
                self.fail(f"flag '{ch}' ({_REFUSED_FLAGS[ch]}) is not supported by vtnetmap")
            if ch not in ("x", "R", "T"):
                self.fail(
                    f"unknown flag {ch!r} (netmap's flags are x, z, t, r, R, T; "
                    "vtnetmap supports x, R, T)"
                )
            seen.add(ch)
            self.pos += 1
        if not seen:
            self.fail("'/' must be followed by at least one flag (x, R or T)", slash)
        if {"R", "T"} <= seen:
            self.fail("flags 'R' and 'T' together would bind no rings at all", slash)
        # /R binds only the RX rings, /T only the TX rings.
        return "T" not in seen, "R" not in seen, "x" in seen

    def option(self, conf: dict[str, int]) -> None:
        at = self.pos  # at an '@'
        end = self.text.find("@", at + 1)
        if end < 0:
            end = len(self.text)
        body = self.text[at + 1 : end]
        self.pos = end
        if not body:
            self.fail("empty option after '@'", at)
        cut = min((i for i in (body.find(":"), body.find("=")) if i >= 0), default=len(body))
        optname, delim = body[:cut], body[cut : cut + 1]
        if optname in _REFUSED_OPTIONS:
            self.fail(
                f"option '@{optname}' ({_REFUSED_OPTIONS[optname]}) is not supported by vtnetmap",
                at,
            )
        if optname != "conf":
            self.fail(
                f"unknown option {'@' + optname!r} (netmap's options are @conf, @share, "
                "@extmem, @offset; vtnetmap supports @conf)",
                at,
            )
        if delim != ":":
            self.fail("option '@conf' needs keys: write '@conf:key=value,...'", at + 1 + cut)
        offset = at + 1 + cut + 1
        for item in body[cut + 1 :].split(","):
            self.conf_item(item, offset, conf)
            offset += len(item) + 1

    def conf_item(self, item: str, at: int, conf: dict[str, int]) -> None:
        if not item:
            self.fail("empty key in '@conf' (missing key or stray ',')", at)
        key, eq, value = item.partition("=")
        canon = key.replace("_", "-")  # netmap reads tx_rings and tx-rings alike
        if canon in _REFUSED_CONF_KEYS:
            self.fail(
                f"conf key {key!r} ({_REFUSED_CONF_KEYS[canon]}) is not supported by vtnetmap",
                at,
            )
        if canon not in _CONF_KEYS:
            self.fail(f"unknown conf key {key!r} (known: {', '.join(_CONF_KEYS)})", at)
        if not eq:
            self.fail(f"conf key {key!r} needs '=value'", at + len(key))
        if canon in conf:
            self.fail(f"conf key {canon!r} is set twice", at)
        _, lo, hi = _CONF_KEYS[canon]
        value_at = at + len(key) + 1
        if not value or not set(value) <= _ASCII_DIGITS:
            self.fail(f"conf key {key!r} needs a decimal integer, got {_clip(value)!r}", value_at)
        if len(value) > _MAX_DIGITS or not lo <= int(value) <= hi:
            self.fail(f"conf key {key!r} must be in {lo}..{hi}, got {_clip(value)}", value_at)
        conf[canon] = int(value)


_DASH_HINT = (
    " (netmap reads '-' after the interface name as the start of a ring pair number, "
    "so interface names containing '-' cannot be written in netmap syntax)"
)


def _found(ch: str) -> str:
    return repr(ch) if ch else "the end"


def _clip(text: str, limit: int = 20) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# libnetmap's prefixes: "vale" with an optional identifier, and "netmap" that takes none.
_VALE_PREFIX = re.compile(r"vale[A-Za-z0-9_]*:")
_NETMAP_WITH_ID = re.compile(r"netmap[A-Za-z0-9_]+:")


def parse_port_name(name: str, default_prefix: bool = False) -> PortSpec:
    """Parse a netmap port name (grammar in the module docstring) into a PortSpec.

    ``default_prefix=True`` reads a bare ``eth0-1`` as ``netmap:eth0-1`` (pkt-gen's
    rule).  Raises PortNameError (a ValueError) quoting ``name`` and the offset of the
    wrong part; TypeError if ``name`` is not a str.  Nothing is opened or changed.
    """
    if not isinstance(name, str):
        raise TypeError(f"port name must be a str, not {type(name).__name__}")
    parser = _Parser(name, name, 0)
    if not name:
        parser.fail("empty port name")
    if name.startswith(PREFIX):
        pass
    elif _VALE_PREFIX.match(name):
        parser.fail("VALE switch ports ('valeX:Y') are not supported by vtnetmap", 0)
    elif default_prefix:
        parser = _Parser(name, PREFIX + name, len(PREFIX))
    elif _NETMAP_WITH_ID.match(name):
        parser.fail("no identifier allowed between 'netmap' and ':'", len("netmap"))
    else:
        parser.fail(
            "missing 'netmap:' prefix (write e.g. 'netmap:eth0'; bare names need "
            "default_prefix=True)",
            0,
        )
    return parser.parse()
