"""Port-name grammar (vtnet_py.netmap.portname): pure parsing, no root, no network."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtnet_py.errors import PortNameError
from vtnet_py.netmap.portname import (
    MAX_RINGS,
    MAX_SLOTS,
    MIN_SLOTS,
    PortSpec,
    RegMode,
    parse_port_name,
)

CONF_ATTRS = ("rings", "tx_rings", "rx_rings", "slots", "tx_slots", "rx_slots")

# name, default_prefix, expected fields (others at their defaults), canonical spelling
ACCEPTED: list[tuple[str, bool, dict[str, Any], str]] = [
    ("netmap:eth0", False, {"ifname": "eth0", "mode": RegMode.ALL_NIC}, "netmap:eth0"),
    ("netmap:eth0-0", False, {"mode": RegMode.ONE_NIC, "ring_id": 0}, "netmap:eth0-0"),
    ("netmap:eth0-007", False, {"mode": RegMode.ONE_NIC, "ring_id": 7}, "netmap:eth0-7"),
    ("netmap:eth0-255", False, {"ring_id": MAX_RINGS - 1}, "netmap:eth0-255"),
    ("netmap:eth0^", False, {"mode": RegMode.SW, "ring_id": None}, "netmap:eth0^"),
    ("netmap:eth0^3", False, {"mode": RegMode.ONE_SW, "ring_id": 3}, "netmap:eth0^3"),
    ("netmap:eth0*", False, {"mode": RegMode.NIC_SW}, "netmap:eth0*"),
    ("netmap:eth0+", False, {"mode": RegMode.NIC_SW}, "netmap:eth0*"),
    ("netmap:eth0/x", False, {"exclusive": True, "rx": True, "tx": True}, "netmap:eth0/x"),
    ("netmap:eth0/R", False, {"rx": True, "tx": False}, "netmap:eth0/R"),
    ("netmap:eth0/T", False, {"rx": False, "tx": True}, "netmap:eth0/T"),
    (
        "netmap:eth0-1/Rxx",
        False,
        {"ring_id": 1, "tx": False, "exclusive": True},
        "netmap:eth0-1/xR",
    ),
    (
        "netmap:eth0^/Tx",
        False,
        {"mode": RegMode.SW, "rx": False, "exclusive": True},
        "netmap:eth0^/xT",
    ),
    (
        "netmap:eth0@conf:rings=2,slots=1024",
        False,
        {"rings": 2, "slots": 1024},
        "netmap:eth0@conf:rings=2,slots=1024",
    ),
    (
        "netmap:eth0*/x@conf:rx_slots=512,tx-rings=4@conf:slots=2048",
        False,
        {"mode": RegMode.NIC_SW, "exclusive": True, "rx_slots": 512, "tx_rings": 4, "slots": 2048},
        "netmap:eth0*/x@conf:tx-rings=4,slots=2048,rx-slots=512",
    ),
    (
        f"netmap:e@conf:rings={MAX_RINGS},slots={MAX_SLOTS},tx-slots={MIN_SLOTS}",
        False,
        {"ifname": "e", "rings": MAX_RINGS, "slots": MAX_SLOTS, "tx_slots": MIN_SLOTS},
        f"netmap:e@conf:rings={MAX_RINGS},slots={MAX_SLOTS},tx-slots={MIN_SLOTS}",
    ),
    ("netmap:abcdefghijklmno", False, {"ifname": "abcdefghijklmno"}, "netmap:abcdefghijklmno"),
    ("netmap:vale0", False, {"ifname": "vale0"}, "netmap:vale0"),
    ("netmap:br.10_x", False, {"ifname": "br.10_x"}, "netmap:br.10_x"),
    ("netmap:é1", False, {"ifname": "é1"}, "netmap:é1"),
    # default_prefix: pkt-gen's rule, a bare name means netmap:<name>
    ("eth0-1", True, {"ifname": "eth0", "mode": RegMode.ONE_NIC, "ring_id": 1}, "netmap:eth0-1"),
    ("veth0^/T", True, {"ifname": "veth0", "mode": RegMode.SW, "rx": False}, "netmap:veth0^/T"),
    ("netmap:eth0", True, {"ifname": "eth0"}, "netmap:eth0"),
    ("vale0", True, {"ifname": "vale0"}, "netmap:vale0"),
    ("netmap0", True, {"ifname": "netmap0"}, "netmap:netmap0"),
]


@pytest.mark.parametrize(("name", "default_prefix", "fields", "canonical"), ACCEPTED)
def test_accepted(name: str, default_prefix: bool, fields: dict[str, Any], canonical: str) -> None:
    spec = parse_port_name(name, default_prefix=default_prefix)
    defaults = {
        "ifname": "eth0",
        "mode": RegMode.ALL_NIC if "ring_id" not in fields else RegMode.ONE_NIC,
        "ring_id": None,
        "rx": True,
        "tx": True,
        "exclusive": False,
        **{attr: None for attr in CONF_ATTRS},
    }
    for attr, default in defaults.items():
        assert getattr(spec, attr) == fields.get(attr, default), attr
    assert spec.name == name
    assert str(spec) == canonical
    assert parse_port_name(canonical) == spec


# name, default_prefix, message fragments, offset of the culprit in `name`
REFUSED: list[tuple[str, bool, list[str], int]] = [
    ("", False, ["empty port name"], 0),
    ("eth0", False, ["missing 'netmap:' prefix"], 0),
    ("netmapx:eth0", False, ["no identifier allowed between 'netmap' and ':'"], 6),
    ("vale0:a", False, ["VALE switch ports", "not supported by vtnetmap"], 0),
    ("vale:a", True, ["VALE switch ports", "not supported by vtnetmap"], 0),
    ("netmap:", False, ["empty interface name"], 7),
    ("netmap:-1", False, ["empty interface name"], 7),
    ("/x", True, ["empty interface name"], 0),
    ("netmap:abcdefghijklmnop", False, ["'abcdefghijklmnop' is 16 bytes long", "at most 15"], 7),
    ("netmap:ééééééééé", False, ["is 18 bytes long"], 7),
    ("netmap:.", False, ["interface name '.' is not allowed"], 7),
    ("netmap:..", False, ["interface name '..' is not allowed"], 7),
    ("netmap:eth 0", False, ["contains whitespace ' '"], 10),
    ("netmap:eth\x000", False, ["contains non-printable '\\x00'"], 10),
    ("netmap:à", False, ["byte 0xa0", "whitespace"], 7),
    ("netmap:eth0:1", False, ["contains ':'", "Linux forbids"], 11),
    ("netmap:a{1", False, ["netmap pipes ('{') are not supported by vtnetmap"], 8),
    ("netmap:a}1", False, ["netmap pipes ('}') are not supported by vtnetmap"], 8),
    ("netmap:a-1{2", False, ["netmap pipes ('{') are not supported by vtnetmap"], 10),
    ("netmap:veth-a", False, ["after '-', found 'a'", "names containing '-'"], 12),
    ("netmap:eth0-", False, ["after '-', found the end"], 12),
    ("netmap:eth0-1a", False, ["unexpected 'a' after ring mode '-1'"], 13),
    ("netmap:eth0^*", False, ["unexpected '*' after ring mode '^'"], 12),
    ("netmap:eth0*1", False, ["unexpected '1' after ring mode '*'"], 12),
    ("netmap:eth0-256", False, ["hardware ring pair 256 is out of range 0..255"], 12),
    ("netmap:eth0^4096", False, ["host ring pair 4096 is out of range"], 12),
    ("netmap:eth0-" + "9" * 5000, False, ["out of range"], 12),
    ("netmap:eth0-²", False, ["found '²'"], 12),
    ("netmap:eth0/", False, ["'/' must be followed by at least one flag"], 11),
    ("netmap:eth0/@conf:rings=1", False, ["'/' must be followed by at least one flag"], 11),
    ("netmap:eth0/z", False, ["flag 'z' (zero-copy monitor) is not supported by vtnetmap"], 12),
    ("netmap:eth0/xt", False, ["flag 't' (tx copy monitor) is not supported by vtnetmap"], 13),
    ("netmap:eth0/r", False, ["flag 'r' (rx copy monitor) is not supported by vtnetmap"], 12),
    ("netmap:eth0/e", False, ["unknown flag 'e'"], 12),
    ("netmap:eth0/S", False, ["unknown flag 'S'"], 12),
    ("netmap:eth0/x/R", False, ["unknown flag '/'"], 13),
    ("netmap:eth0/RT", False, ["flags 'R' and 'T' together would bind no rings"], 11),
    ("netmap:eth0/TxR", False, ["flags 'R' and 'T' together"], 11),
    ("netmap:eth0@1", False, ["memory region ids ('@N') are not supported by vtnetmap"], 11),
    ("netmap:eth0-2/x@2", False, ["memory region ids"], 15),
    ("netmap:eth0@", False, ["empty option after '@'"], 11),
    ("netmap:eth0@conf:rings=1@", False, ["empty option after '@'"], 24),
    ("netmap:eth0@@conf:rings=1", False, ["empty option after '@'"], 11),
    ("netmap:eth0@foo", False, ["unknown option '@foo'"], 11),
    ("netmap:eth0@share=netmap:eth1", False, ["option '@share'", "not supported by vtnetmap"], 11),
    ("netmap:eth0@extmem:file=/x", False, ["option '@extmem'", "not supported by vtnetmap"], 11),
    ("netmap:eth0@offset=64", False, ["option '@offset'", "not supported by vtnetmap"], 11),
    ("netmap:eth0@conf", False, ["option '@conf' needs keys"], 16),
    ("netmap:eth0@conf=4", False, ["option '@conf' needs keys"], 16),
    ("netmap:eth0@conf:", False, ["empty key in '@conf'"], 17),
    ("netmap:eth0@conf:rings=2,", False, ["empty key in '@conf'"], 25),
    ("netmap:eth0@conf:rings", False, ["conf key 'rings' needs '=value'"], 22),
    ("netmap:eth0@conf:rings=", False, ["conf key 'rings' needs a decimal integer, got ''"], 23),
    ("netmap:eth0@conf:rings=0x10", False, ["needs a decimal integer, got '0x10'"], 23),
    ("netmap:eth0@conf:rings=-1", False, ["needs a decimal integer, got '-1'"], 23),
    ("netmap:eth0@conf:rings=0", False, ["conf key 'rings' must be in 1..256, got 0"], 23),
    ("netmap:eth0@conf:tx-rings=257", False, ["must be in 1..256, got 257"], 26),
    ("netmap:eth0@conf:slots=1", False, ["conf key 'slots' must be in 2..65536, got 1"], 23),
    ("netmap:eth0@conf:rx_slots=65537", False, ["conf key 'rx_slots' must be in 2..65536"], 26),
    ("netmap:eth0@conf:slots=" + "1" * 40, False, ["got 11111111111111111111..."], 23),
    ("netmap:eth0@conf:rings=1,rings=2", False, ["conf key 'rings' is set twice"], 25),
    ("netmap:eth0@conf:tx_rings=1@conf:tx-rings=2", False, ["'tx-rings' is set twice"], 33),
    ("netmap:eth0@conf:host-rings=1", False, ["conf key 'host-rings'", "not supported"], 17),
    ("netmap:eth0@conf:host_tx_rings=1", False, ["conf key 'host_tx_rings'", "not supported"], 17),
    ("netmap:eth0@conf:rings=1,bogus=2", False, ["unknown conf key 'bogus'"], 25),
]


@pytest.mark.parametrize(("name", "default_prefix", "fragments", "offset"), REFUSED)
def test_refused(name: str, default_prefix: bool, fragments: list[str], offset: int) -> None:
    with pytest.raises(PortNameError) as info:
        parse_port_name(name, default_prefix=default_prefix)
    message = str(info.value)
    assert message.startswith(f"invalid port name {name!r}: ")
    for fragment in fragments:
        assert fragment in message
    assert message.endswith(f"(at offset {offset})")


def test_port_name_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        parse_port_name("netmap:eth0/z")


def test_non_str_is_type_error() -> None:
    with pytest.raises(TypeError):
        parse_port_name(b"netmap:eth0")  # type: ignore[arg-type]


def test_effective_counts() -> None:
    spec = parse_port_name("netmap:eth0@conf:rings=4,rx-rings=2,slots=512,tx-slots=1024")
    assert (spec.effective_tx_rings, spec.effective_rx_rings) == (4, 2)
    assert (spec.effective_tx_slots, spec.effective_rx_slots) == (1024, 512)
    other = parse_port_name("netmap:eth0@conf:tx-rings=3,rings=4,rx-slots=256,slots=128")
    assert (other.effective_tx_rings, other.effective_rx_rings) == (3, 4)
    assert (other.effective_tx_slots, other.effective_rx_slots) == (128, 256)
    plain = parse_port_name("netmap:eth0")
    assert plain.effective_tx_rings is None and plain.effective_rx_slots is None


def test_name_is_kept_but_not_compared() -> None:
    star, plus = parse_port_name("netmap:eth0*"), parse_port_name("netmap:eth0+")
    assert star == plus and hash(star) == hash(plus)
    assert (star.name, plus.name) == ("netmap:eth0*", "netmap:eth0+")
    assert parse_port_name("netmap:eth1") != parse_port_name("netmap:eth0")


def test_hand_built_spec_gets_canonical_name() -> None:
    spec = PortSpec(name="", ifname="eth0", mode=RegMode.ONE_SW, ring_id=0, tx=False, slots=64)
    assert spec.name == "netmap:eth0^0/R@conf:slots=64"
    assert parse_port_name(spec.name) == spec


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"ifname": "eth-0"}, "'-', a netmap separator"),
        ({"ifname": ""}, "empty interface name"),
        ({"ifname": "x" * 16}, "16 bytes long"),
        ({"ifname": "a{b"}, "netmap pipe syntax"),
        ({"mode": RegMode.ONE_NIC}, "needs ring_id in 0..255"),
        ({"mode": RegMode.ONE_NIC, "ring_id": MAX_RINGS}, "needs ring_id in 0..255"),
        ({"mode": RegMode.ONE_NIC, "ring_id": True}, "needs ring_id"),
        ({"mode": RegMode.SW, "ring_id": 1}, "takes no ring_id"),
        ({"mode": "all_nic"}, "must be a RegMode"),
        ({"rx": False, "tx": False}, "bind no rings"),
        ({"exclusive": 1}, "exclusive must be a bool"),
        ({"slots": 1}, "slots (slots) must be None or an integer in 2..65536"),
        ({"tx_rings": 0}, "tx_rings (tx-rings) must be None or an integer in 1..256"),
        ({"rx_slots": 512.0}, "rx_slots (rx-slots)"),
    ],
)
def test_hand_built_spec_is_checked(kwargs: dict[str, Any], fragment: str) -> None:
    fields: dict[str, Any] = {"name": "", "ifname": "eth0", "mode": RegMode.ALL_NIC, **kwargs}
    with pytest.raises(PortNameError, match=re.escape(fragment)):
        PortSpec(**fields)


# ---------------------------------------------------------------- property tests

# Characters that steer the parser into every branch, plus a few awkward ones.
GRAMMAR_CHARS = "netmap:vale0129-^*+/@{}xzrtRTSe=,conf_slotsingshx. \t\x00àé²"


def _check_outcome(name: str, default_prefix: bool) -> None:
    try:
        spec = parse_port_name(name, default_prefix=default_prefix)
    except PortNameError as exc:
        assert str(exc).startswith(f"invalid port name {name!r}: ")
        assert re.search(r"\(at offset \d+\)$", str(exc))
        return
    # Whatever parses must survive its own canonical spelling.
    again = parse_port_name(str(spec))
    assert again == spec
    assert str(again) == str(spec)


@settings(max_examples=400, deadline=500)
@given(st.text(), st.booleans())
def test_any_text_parses_or_raises_port_name_error(name: str, default_prefix: bool) -> None:
    _check_outcome(name, default_prefix)


@settings(max_examples=600, deadline=500)
@given(
    st.sampled_from(["netmap:", "", "vale0:", "netmap"]),
    st.text(alphabet=GRAMMAR_CHARS, max_size=40),
    st.booleans(),
)
def test_grammar_like_text_parses_or_raises_port_name_error(
    prefix: str, rest: str, default_prefix: bool
) -> None:
    _check_outcome(prefix + rest, default_prefix)


IFNAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.é"


@st.composite
def port_specs(draw: st.DrawFn) -> PortSpec:
    ifname = draw(
        st.text(alphabet=IFNAME_CHARS, min_size=1, max_size=15).filter(
            lambda s: s not in (".", "..") and len(s.encode()) <= 15
        )
    )
    mode = draw(st.sampled_from(list(RegMode)))
    ring_id = (
        draw(st.integers(0, MAX_RINGS - 1)) if mode in (RegMode.ONE_NIC, RegMode.ONE_SW) else None
    )
    rx, tx = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    conf: dict[str, int | None] = {}
    for attr in CONF_ATTRS:
        lo, hi = (1, MAX_RINGS) if attr.endswith("rings") else (MIN_SLOTS, MAX_SLOTS)
        conf[attr] = draw(st.none() | st.integers(lo, hi))
    return PortSpec(
        name="",
        ifname=ifname,
        mode=mode,
        ring_id=ring_id,
        rx=rx,
        tx=tx,
        exclusive=draw(st.booleans()),
        **conf,
    )


@st.composite
def spellings(draw: st.DrawFn, spec: PortSpec) -> str:
    """Another way netmap lets one write ``spec``: the parser must see through it."""
    text = spec.ifname
    if spec.mode is RegMode.NIC_SW:
        text += draw(st.sampled_from("*+"))
    elif spec.mode is RegMode.SW:
        text += "^"
    elif spec.mode in (RegMode.ONE_NIC, RegMode.ONE_SW):
        zeros = "0" * draw(st.integers(0, 3))  # netmap reads "-007" as ring 7
        text += ("-" if spec.mode is RegMode.ONE_NIC else "^") + zeros + str(spec.ring_id)
    flags = ["x"] * spec.exclusive + ["R"] * (not spec.tx) + ["T"] * (not spec.rx)
    if flags:
        flags += draw(st.lists(st.sampled_from(flags), max_size=3))  # repeats are allowed
        text += "/" + "".join(draw(st.permutations(flags)))
    items = [
        f"{attr.replace('_', draw(st.sampled_from('-_')))}={'0' * draw(st.integers(0, 2))}{value}"
        for attr in CONF_ATTRS
        if (value := getattr(spec, attr)) is not None
    ]
    items = draw(st.permutations(items))
    while items:
        take = draw(st.integers(1, len(items)))
        text += "@conf:" + ",".join(items[:take])
        items = items[take:]
    return text


@settings(max_examples=300, deadline=500)
@given(port_specs())
def test_canonical_round_trip(spec: PortSpec) -> None:
    parsed = parse_port_name(str(spec))
    assert parsed == spec
    assert dataclasses.asdict(parsed) == dataclasses.asdict(spec)  # name too: both canonical
    bare = parse_port_name(str(spec).removeprefix("netmap:"), default_prefix=True)
    assert bare == spec


@settings(max_examples=300, deadline=500)
@given(st.data(), port_specs())
def test_other_spellings_parse_to_the_same_spec(data: st.DataObject, spec: PortSpec) -> None:
    spelled = data.draw(spellings(spec))
    parsed = parse_port_name("netmap:" + spelled)
    assert parsed == spec
    assert parsed.name == "netmap:" + spelled
    assert str(parsed) == str(spec)
