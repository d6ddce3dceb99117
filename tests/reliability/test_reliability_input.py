"""Bad input: fuzzed port names and API arguments against a real veth, fuzzed
CLI options, and ring misuse by the application.

* Every port name / argument combination ends in an open Port or a VtnetError/ValueError
  whose message is one line; never another exception, a hang, or a partial attach: after
  each input the namespace holds exactly its two interfaces (no host-ring helper left),
  no XDP program, and this process no extra fd.
* Every CLI invocation ends with exit status 2 (usage: click's "Error:" line) or 1
  (runtime: one line), never a traceback. Interfaces named by the CLI fuzz never exist,
  and no fuzzed command can touch this machine's real interfaces.
* Ring misuse: head/cur outside the allowed range, a buf_idx out of range, twice in a
  batch or held by the kernel for another ring, a len of 0 or over the buffer, NS_MOREFRAG
  without frags or in a chain that never ends are refused whole (ring reset, nothing
  sent); everything the library accepted reaches the peer byte-exact and once; the
  invariant holds after every step.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nettest import VethPair, run
from vtnetmap_cli.main import main as cli_main

from vtnet_py import (
    NS_MOREFRAG,
    InterfaceChangedError,
    RingError,
    VtnetError,
    open_port,
)
from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py.ebpf.steer import xdp_attachment

pytestmark = pytest.mark.kernel

ETHERTYPE = b"\x88\xb5"
PACKET_OUTGOING = 4
EXAMPLE_TIMEOUT_S = 20  # an input that takes longer than this counts as a hang
FUZZ = settings(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# the machine's own interfaces: never named by a fuzzed CLI command
HOST_IFACES = set(os.listdir("/sys/class/net"))


class Hang(Exception):
    pass


@contextmanager
def watchdog(seconds: float = EXAMPLE_TIMEOUT_S) -> Iterator[None]:
    """Raise Hang in this thread if the block runs longer than ``seconds``."""

    def fire(signum: int, frame: object) -> None:
        raise Hang(f"no result within {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def ns_state(veth: VethPair) -> tuple[list[str], dict[str, int]]:
    """(interfaces of a's namespace, XDP program id per interface)."""
    with enter_netns(veth.ns_a):
        links = socket.if_nameindex()
        xdp = {name: xdp_attachment(idx)[0] for idx, name in links}
    return sorted(name for _, name in links), xdp


def assert_nothing_left(veth: VethPair, fds_before: int, what: str) -> None:
    want = sorted(["lo", veth.a])
    deadline = time.monotonic() + 2.0  # a host-ring helper dies with its namespace
    while True:
        links, xdp = ns_state(veth)
        if links == want or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert links == want, f"{what}: left {links}"
    assert not any(xdp.values()), f"{what}: XDP left attached {xdp}"
    assert fd_count() == fds_before, f"{what}: fds {fds_before} -> {fd_count()}"


def check_outcome(veth: VethPair, call, what: str) -> str:
    """Run ``call`` (which opens a port); returns "open" or the error class name."""
    fds = fd_count()
    try:
        with watchdog():
            port = call()
    except (VtnetError, ValueError) as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, f"{what}: message not one line: {msg!r}"
        assert_nothing_left(veth, fds, what)
        return type(exc).__name__
    try:
        port.check_invariant()
        assert port.rx_rings or port.tx_rings
    finally:
        port.close()
    assert_nothing_left(veth, fds, what)
    return "open"


# --- port names against a real veth ------------------------------------------------------

CONF_KEYS = [
    "rings",
    "tx-rings",
    "rx-rings",
    "slots",
    "tx-slots",
    "rx-slots",
    "tx_slots",
    "host-rings",
    "bogus",
    "",
]


def conf_value() -> st.SearchStrategy[str]:
    # ring sizes stay <= 4096 when valid, so a valid example maps at most ~64 MiB
    return st.one_of(
        st.integers(0, 4096).map(str),
        st.sampled_from(["65537", "99999999999999999999", "-1", "0x10", "", "1e3", " 8", "٣"]),
        st.text(max_size=3),
    )


def maybe(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly well-formed pieces (7 in 8), so that many names reach the kernel."""
    return st.integers(0, 7).flatmap(lambda i: bad if i == 0 else good)


@st.composite
def port_names(draw, ifname: str) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=40))  # anything at all
    prefix = draw(
        maybe(
            st.just("netmap:"),
            st.sampled_from(["", "netmap", "NETMAP:", "vale0:", "netmap::", " netmap:"]),
        )
    )
    name = draw(
        maybe(
            st.sampled_from([ifname, ifname, "lo"]),
            st.one_of(
                st.sampled_from([ifname + "x", ifname[:-1], "nxrel0", ifname.upper()]),
                st.text(min_size=0, max_size=17),
            ),
        )
    )
    mode = draw(
        maybe(
            st.one_of(
                st.just(""),
                st.integers(0, 2).map(lambda n: f"-{n}"),
                st.sampled_from(["^", "^0", "*", "+", "-01"]),
            ),
            st.one_of(
                st.integers(-2, 300).map(lambda n: f"-{n}"),
                st.sampled_from(["^1", "-", "--1", "-0x1", "{1", "}0", "^^", "-1-1"]),
            ),
        )
    )
    flags = draw(
        maybe(
            st.sampled_from(["", "", "/x", "/R", "/T", "/Rx", "/TT"]),
            st.text(alphabet="xRTzrt/ ", max_size=4).map(lambda s: "/" + s),
        )
    )
    keys = maybe(st.sampled_from(CONF_KEYS[:7]), st.sampled_from(CONF_KEYS[7:]))
    values = maybe(st.sampled_from(["2", "64", "256", "1024", "4096"]), conf_value())
    opts = draw(st.lists(st.tuples(keys, values), max_size=2))
    conf = "".join(
        draw(maybe(st.just("@conf:"), st.sampled_from(["@", "@share:", "@conf"]))) + f"{k}={v}"
        for k, v in opts
    )
    return prefix + name + mode + flags + conf


def test_fuzz_port_names_against_a_real_veth(veth: VethPair) -> None:
    outcomes: dict[str, int] = {}

    @settings(FUZZ, max_examples=300)
    @given(name=port_names(veth.a))
    def one(name: str) -> None:
        if "eth0" in name:  # never name the uplink, even in a namespace that lacks it
            return
        r = check_outcome(veth, lambda: open_port(name, netns=veth.ns_a), repr(name))
        outcomes[r] = outcomes.get(r, 0) + 1

    one()
    print(f"\nport-name fuzz: {sum(outcomes.values())} names: {outcomes}")
    assert outcomes.get("open", 0) > 0 and outcomes.get("PortNameError", 0) > 0


def test_fuzz_open_port_arguments(veth: VethPair) -> None:
    outcomes: dict[str, int] = {}
    junk = st.one_of(
        st.none(),
        st.integers(-5, 20),
        st.text(max_size=6),
        st.floats(),
        st.booleans(),
        st.binary(max_size=4),
    )

    @settings(FUZZ, max_examples=100)
    @given(
        name=st.sampled_from(
            [f"netmap:{veth.a}", f"netmap:{veth.a}-1", f"netmap:{veth.a}/T", f"netmap:{veth.a}-0/R"]
        ),
        ns=maybe(
            st.just(veth.ns_a),
            st.sampled_from(["nxrelns", "", ".", "..", "/nonexistent", veth.ns_a + "/", "a\0b"]),
        ),
        zerocopy=maybe(st.sampled_from(["auto", "on", "off"]), junk),
        mode=maybe(st.sampled_from([None, "native", "generic"]), junk),
        frags=maybe(st.sampled_from([None, True, False]), junk),
        vnet_hdr=maybe(st.sampled_from([0, 10, 12]), junk),
        force=st.booleans(),
    )
    def one(name, ns, zerocopy, mode, frags, vnet_hdr, force) -> None:
        r = check_outcome(
            veth,
            lambda: open_port(
                name,
                netns=ns,
                zerocopy=zerocopy,
                mode=mode,
                frags=frags,
                vnet_hdr=vnet_hdr,
                force=force,
            ),
            f"{name} netns={ns!r} zc={zerocopy!r} mode={mode!r} frags={frags!r} hdr={vnet_hdr!r}",
        )
        outcomes[r] = outcomes.get(r, 0) + 1

    one()
    print(f"\nopen_port argument fuzz: {sum(outcomes.values())} calls: {outcomes}")
    assert outcomes.get("open", 0) > 0


# --- the CLI -------------------------------------------------------------------------------

MISSING = [
    "nxrel0",
    "netmap:nxrel0",
    "netmap:nxrel1-1",
    "netmap:nxrel0/T",
    "nxrel0^",
    "netmap:nxrel0@conf:slots=64",
]


def missing_iface() -> st.SearchStrategy[str]:
    """Interface names that exist nowhere, and junk that is no valid name at all."""
    return st.one_of(
        st.sampled_from(MISSING),
        st.text(max_size=12).map(lambda s: "nx" + s),
        st.text(max_size=12).map(lambda s: "netmap:nx" + s),
    )


PKTGEN_OPTS: dict[str, st.SearchStrategy[str] | None] = {
    "-f": st.sampled_from(["tx", "rx", "ping", "pong", "txseq", "rxseq"]),
    "-n": st.integers(0, 10**6).map(str),
    "-l": st.integers(42, 9000).map(str),
    "-b": st.integers(1, 2048).map(str),
    "-s": st.sampled_from(["10.0.0.1", "10.0.0.1:9"]),
    "-d": st.sampled_from(["10.1.0.1", "10.1.0.1:9-10.1.0.2:20"]),
    "-D": st.sampled_from(["ff:ff:ff:ff:ff:ff", "02:00:00:00:00:01"]),
    "-p": st.integers(1, 4).map(str),
    "-T": st.integers(1, 5000).map(str),
    "-w": st.integers(0, 3).map(str),
    "-R": st.integers(0, 10**6).map(str),
    "-H": st.sampled_from(["0", "10", "12"]),
    "--seed": st.integers(0, 99).map(str),
    "-W": None,
    "-z": None,
    "-Z": None,
    "-A": None,
    "-N": None,
    "-B": None,
    "--json": None,
    "-v": None,
}
# options every function takes, whatever else is given (no cross-option refusal)
PKTGEN_ANY_FUNCTION = {"-n", "-w", "--seed", "-W", "--json", "-v"}
BAD_TOKENS = [
    "--bogus",
    "-Q",
    "-n",
    "-l",
    "-f",
    "abc",
    "-1",
    "1e9",
    "",
    "--",
    "-b=x",
    "-F",
    "-X",
    "-6",
    "-C",
    "--netns",
]


@st.composite
def pktgen_args(draw) -> tuple[list[str], bool | None]:
    """(arguments, whether they are well formed: True for a valid port name with options
    that combine with any function, None where pkt-gen's up-front checks may refuse the
    combination or the name, False for junk)."""
    args = ["pkt-gen"]
    name = None
    if draw(st.integers(0, 9)):
        name = draw(missing_iface())
        args += ["-i", name]
    opts = draw(st.lists(st.sampled_from(sorted(PKTGEN_OPTS)), max_size=6))
    for opt in opts:
        strat = PKTGEN_OPTS[opt]
        args += [opt] if strat is None else [opt, draw(strat)]
    well_formed: bool | None = None
    if name is None:
        well_formed = False
    elif name in MISSING and set(opts) <= PKTGEN_ANY_FUNCTION:
        well_formed = True
    if draw(st.booleans()):
        bad = draw(
            st.lists(
                st.one_of(st.sampled_from(BAD_TOKENS), st.text(max_size=6)), min_size=1, max_size=3
            )
        )
        args += bad
        well_formed = False
    return args, well_formed


@st.composite
def demo_args(draw) -> list[str]:
    """demo arguments that are always a usage error (a valid demo would run for real)."""
    pool = [
        ["--seconds", draw(st.sampled_from(["x", "", "1,5", "--", "0x"]))],
        ["--show", draw(st.sampled_from(["1.5", "x", ""]))],
        [draw(st.sampled_from(["--bogus", "-x", "extra"]))],
        ["--seconds"],
    ]
    bad = draw(st.sampled_from(pool))
    good = draw(
        st.lists(st.sampled_from([["-t", "1"], ["--show", "2"], ["-t", "0.5"]]), max_size=2)
    )
    parts = [p for g in good for p in g]
    return ["demo", *parts, *bad]  # a bare trailing --seconds lacks its value


@st.composite
def bridge_args(draw) -> tuple[list[str], bool]:
    args = ["bridge"]
    for _ in range(draw(st.integers(0, 2))):
        args += ["-i", draw(missing_iface())]
    if draw(st.booleans()):
        args += [draw(missing_iface())]
    for opt, strat in (
        ("-b", st.integers(-5, 10000)),
        ("-w", st.integers(-1, 3)),
        ("-T", st.integers(0, 2000)),
    ):
        if draw(st.booleans()):
            args += [opt, str(draw(strat))]
    args += draw(st.lists(st.sampled_from(["-c", "-L", "-v"]), max_size=2))
    well_formed = len(args) > 1 and any(a.startswith(("nx", "netmap:")) for a in args)
    if draw(st.integers(0, 3)) == 0:
        args += draw(st.lists(st.sampled_from(BAD_TOKENS), min_size=1, max_size=2))
        well_formed = False
    return args, well_formed


def invoke(args: list[str]):
    runner = CliRunner()
    with watchdog():
        return runner.invoke(cli_main, args, catch_exceptions=True)


def assert_clean_exit(args: list[str], res, well_formed: bool | None) -> int:
    where = f"vtnetmap {' '.join(map(repr, args))}"
    out = res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        f"{where}: {type(res.exception).__name__}: {res.exception}"
    )
    assert "Traceback" not in out, f"{where}: {out}"
    if res.exit_code == 2:  # click's usage error: one "Error:" line after the usage
        assert sum(line.startswith("Error:") for line in out.splitlines()) == 1, where
        assert well_formed is not True, f"{where}: well-formed arguments refused: {out}"
    else:
        assert res.exit_code == 1, f"{where}: exit {res.exit_code}: {out}"
        # the tool's own progress lines may come first; the error is one line, the last
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        errs = [ln for ln in lines if ln.startswith(("Error:", "vtnetmap:"))]
        assert len(errs) == 1 and lines[-1] == errs[0], f"{where}: {res.stderr!r}"
    return int(res.exit_code)


def _no_host_iface(args: list[str]) -> bool:
    names = {a.split(":")[-1].split("-")[0].split("^")[0].split("/")[0].split("@")[0] for a in args}
    return not (names & HOST_IFACES)


def test_fuzz_cli_options() -> None:
    counts = {"demo": [0, 0], "pkt-gen": [0, 0], "bridge": [0, 0]}
    commands = main_commands()

    @settings(FUZZ, max_examples=120)
    @given(data=st.data())
    def one(data) -> None:
        which = data.draw(st.sampled_from([c for c in counts if c in commands]))
        if which == "demo":
            args, wf = data.draw(demo_args()), False
        elif which == "pkt-gen":
            args, wf = data.draw(pktgen_args())
        else:
            args, wf = data.draw(bridge_args())
        assert _no_host_iface(args)  # (the strategies never name a real interface)
        code = assert_clean_exit(args, invoke(args), wf)
        counts[which][code - 1] += 1

    one()
    print(f"\nCLI fuzz (exit 1 / exit 2): {counts}")
    assert sum(c[1] for c in counts.values()) > 0 and counts["pkt-gen"][0] > 0


def main_commands() -> set[str]:
    return set(cli_main.commands)


def test_device_commands_with_bad_arguments_touch_nothing(veth: VethPair) -> None:
    """attach/detach/status with junk, always inside the test namespace (a command of the
    fuzz can never reach the real interfaces): a clean exit and no state left."""
    if not {"attach", "detach", "status"} <= main_commands():
        pytest.skip("vtnetmap attach/detach/status are not registered")
    fds = fd_count()
    seen: dict[int, int] = {}

    @settings(FUZZ, max_examples=25)
    @given(
        cmd=st.sampled_from(["attach", "detach", "status"]),
        ifname=st.one_of(
            st.sampled_from(["nxrel0", "", "-", "a b", "x" * 20]),
            st.text(max_size=8).map(lambda s: "nx" + s),
        ),
        extra=st.lists(
            st.sampled_from(
                [
                    ["--rings", "0"],
                    ["--rings", "x"],
                    ["--mode", "bogus"],
                    ["--zerocopy", "maybe"],
                    ["--force"],
                    ["--json"],
                    ["--bogus"],
                ]
            ),
            max_size=2,
        ),
    )
    def one(cmd, ifname, extra) -> None:
        args = [cmd, ifname, *[p for e in extra for p in e], "--netns", veth.ns_a]
        args = [a for a in args if a != "--force" or cmd != "status"]
        res = invoke(args)
        code = assert_clean_exit(args, res, None) if res.exit_code else 0
        seen[code] = seen.get(code, 0) + 1

    one()
    assert_nothing_left(veth, fds, "device commands")
    print(f"\ndevice command fuzz: exit codes {seen}")


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vtnetmap_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["bogus-command"], 2),
        (["pkt-gen"], 2),  # -i is required
        (["pkt-gen", "-i", "netmap:nxrel0", "-f", "fly"], 2),
        (["pkt-gen", "-i", "netmap:nxrel0", "-f", "tx"], 1),  # no such interface
        (["pkt-gen", "-i", "netmap:nxrel0", "--netns", "nxrelns"], 1),
        (["demo", "--seconds", "soon"], 2),
        (["demo", "--seconds", "inf"], 2),  # would never end
        (["demo", "--seconds", "nan"], 2),
        (["demo", "--seconds", "-1"], 2),
    ],
)
def test_cli_exit_codes_in_a_real_process(args: list[str], code: int) -> None:
    if args[0] in ("pkt-gen",) and args[0] not in main_commands():
        pytest.skip(f"{args[0]} is not registered")
    r = run_cli(*args)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith(("Error:", "vtnetmap:"))]
    assert len(errs) == 1, r.stderr


# --- ring misuse ---------------------------------------------------------------------------


def checked_frame(dst: bytes, src: bytes, seq: int, size: int) -> bytes:
    """A frame that proves itself: seq, its own length and a CRC of its filler."""
    filler = np.random.default_rng(seq).integers(0, 256, size - 24, np.uint8).tobytes()
    return dst + src + ETHERTYPE + struct.pack(">IHI", seq, size, zlib.crc32(filler))[:10] + filler


def frame_ok(data: bytes) -> int | None:
    """The seq of a well-formed checked frame, else None."""
    seq, size, crc = struct.unpack(">IHI", data[14:24])
    if size != len(data) or zlib.crc32(data[24:]) != crc:
        return None
    return seq


def write_frames(port, ring, frames: list[bytes]) -> np.ndarray:
    idx = ring.slots_from_head(len(frames))
    for i, f in zip(idx, frames, strict=True):
        port.buf(int(ring.slot["buf_idx"][i]))[: len(f)] = np.frombuffer(f, np.uint8)
        ring.slot["len"][i] = len(f)
        ring.slot["flags"][i] = 0
    return idx


def drain_peer(s: socket.socket, quiet: float = 0.15) -> list[bytes]:
    out = []
    s.settimeout(quiet)
    while True:
        try:
            data, addr = s.recvfrom(65536)
        except TimeoutError:
            return out
        if addr[2] != PACKET_OUTGOING and data[12:14] == ETHERTYPE:
            out.append(data)


OPS = st.one_of(
    st.tuples(st.just("send"), st.integers(1, 63)),
    st.tuples(
        st.just("bad_len"),
        st.integers(1, 20),
        st.integers(0, 19),
        st.sampled_from([0, 3841, 65535]),
    ),
    st.tuples(
        st.just("bad_buf"),
        st.integers(1, 20),
        st.integers(0, 19),
        st.sampled_from(["range", "twice", "kernel_rx"]),
    ),
    st.tuples(st.just("bad_head"), st.sampled_from([-1, 64, 71, 2.5, None, "3"])),
    st.tuples(st.just("bad_cur"), st.integers(1, 20)),
    st.tuples(st.just("morefrag"), st.integers(1, 20), st.integers(0, 19)),
    st.tuples(st.just("poll")),
)


def test_fuzz_ring_misuse_sends_nothing_corrupt(veth: VethPair) -> None:
    """Random sequences of good batches and broken ones on a 64-slot TX ring (a fresh
    port per example, so every example replays exactly): every broken batch is refused
    whole; the peer receives exactly the accepted frames, each byte-exact, once; the
    invariant holds after every step."""
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    s = veth.raw_socket("b")
    s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
    seq = [0]
    totals = {"accepted": 0, "refused": 0, "ops": 0}

    def fresh(k: int) -> list[bytes]:
        sizes = np.random.default_rng(seq[0]).integers(60, 1500, k)
        out = [checked_frame(mac_b, mac_a, seq[0] + i, int(n)) for i, n in enumerate(sizes)]
        seq[0] += k
        return out

    def refused(port, tx, expect: str) -> None:
        hw = tx.hwcur
        with pytest.raises(RingError, match=expect):
            port.txsync()
        assert tx.head == tx.cur == hw
        totals["refused"] += 1

    def step(port, tx, rx, op, accepted: list[int]) -> None:
        kind = op[0]
        space = tx.space()
        if kind == "send":
            k = min(op[1], space)
            if k:
                frames = fresh(k)
                write_frames(port, tx, frames)
                tx.head = tx.cur = tx.next(tx.head, k)
                assert port.txsync() == k
                accepted += [frame_ok(f) for f in frames]  # type: ignore[misc]
        elif kind in ("bad_len", "bad_buf", "morefrag") and space:
            k = min(op[1], space)
            i = op[2] % k
            idx = write_frames(port, tx, fresh(k))
            slot = int(idx[i])
            if kind == "bad_len":
                tx.slot["len"][slot] = op[3]
                tx.head = tx.cur = tx.next(tx.head, k)
                refused(port, tx, f"len {op[3]} outside")
            elif kind == "morefrag":
                tx.slot["flags"][slot] = NS_MOREFRAG
                tx.head = tx.cur = tx.next(tx.head, k)
                # complete or not (a chain at the end), it could never go out here
                refused(port, tx, "NS_MOREFRAG on a port opened without multi-buffer")
                tx.slot["flags"][slot] = 0
            else:
                saved = int(tx.slot["buf_idx"][slot])
                if op[3] == "range":
                    bad, expect = port.memory.nbufs + 7, "out of range"
                elif op[3] == "twice" and k > 1:
                    bad, expect = int(tx.slot["buf_idx"][idx[(i + 1) % k]]), "twice"
                else:  # a buffer the RX ring has given to the kernel (FILL ring)
                    bad = int(rx.slot["buf_idx"][rx.next(rx.tail, 5)])
                    expect = "with the kernel for RX"
                tx.slot["buf_idx"][slot] = bad
                tx.head = tx.cur = tx.next(tx.head, k)
                refused(port, tx, expect)
                tx.slot["buf_idx"][slot] = saved  # the application repairs its slot
        elif kind == "bad_head":
            tx.head = op[1]
            refused(port, tx, "outside")
        elif kind == "bad_cur" and space:
            k = min(op[1], space)
            write_frames(port, tx, fresh(k))
            tx.head = tx.next(tx.head, k)
            tx.cur = tx.next(tx.tail, 1) if tx.next(tx.tail, 1) != tx.hwcur else -3
            refused(port, tx, "outside")
        elif kind == "poll":
            assert port.poll(rx=False, tx=True, timeout=0) in (0, select.POLLOUT)

    @settings(FUZZ, max_examples=60)
    @given(ops=st.lists(OPS, min_size=1, max_size=12))
    def one(ops) -> None:
        drain_peer(s, 0.01)  # nothing of an earlier (failed) example may count
        accepted: list[int] = []
        with open_port(f"netmap:{veth.a}-0@conf:slots=64", netns=veth.ns_a) as port:
            tx, rx = port.tx_rings[0], port.rx_rings[0]
            for op in ops:
                totals["ops"] += 1
                step(port, tx, rx, op, accepted)
                port.check_invariant()
            while tx.tx_pending():
                port.poll(rx=False, tx=True, timeout=1.0)
            port.check_invariant()
        got = drain_peer(s)
        seqs = [frame_ok(g) for g in got]
        assert None not in seqs, "a corrupt frame reached the peer"
        assert sorted(seqs) == sorted(accepted), "accepted != received"  # type: ignore[type-var]
        totals["accepted"] += len(accepted)

    try:
        one()
    finally:
        s.close()
    print(
        f"\nring misuse fuzz: {totals['ops']} operations, {totals['refused']} refused "
        f"batches, {totals['accepted']} accepted frames all received byte-exact once"
    )
    assert totals["refused"] > 0 and totals["accepted"] > 0


def test_releasing_a_buffer_the_kernel_holds_for_tx_is_refused(veth: VethPair) -> None:
    """An RX slot given a buffer that is in flight on TX (kept so by a link down) is refused
    at rxsync, nothing moves, and the invariant holds."""
    mac_a, mac_b = veth.mac("a"), veth.mac("b")
    with open_port(f"netmap:{veth.a}-0@conf:slots=64", netns=veth.ns_a) as port:
        rx, tx = port.rx_rings[0], port.tx_rings[0]
        veth.send_on_queue([checked_frame(mac_a, mac_b, i, 100) for i in range(3)], 0)
        deadline = time.monotonic() + 3
        while rx.space() < 3 and time.monotonic() < deadline:
            port.poll(rx=True, timeout=0.1)
        run("ip", "-n", veth.ns_a, "link", "set", veth.a, "down")
        idx = write_frames(port, tx, [checked_frame(mac_b, mac_a, 9, 100)] * 2)
        tx.head = tx.cur = tx.next(tx.head, 2)
        with pytest.raises(InterfaceChangedError):
            port.txsync()  # both buffers now sit on the kernel's TX ring
        inflight = int(tx.slot["buf_idx"][idx[0]])
        mine = int(rx.slot["buf_idx"][rx.head])
        rx.slot["buf_idx"][rx.head] = inflight
        rx.head = rx.cur = rx.next(rx.head, 1)
        hw = rx.hwcur
        with pytest.raises(RingError, match="with the kernel for TX"):
            port.rxsync()
        assert rx.hwcur == hw  # nothing released
        rx.slot["buf_idx"][hw] = mine  # repaired, released again: it goes through
        rx.head = rx.cur = rx.next(hw, 1)
        port.rxsync()
        assert rx.space() == 2
        run("ip", "-n", veth.ns_a, "link", "set", veth.a, "up")
        port.check_invariant()


def test_a_buffer_in_slots_of_two_rings_is_refused(veth: VethPair) -> None:
    with open_port(f"netmap:{veth.a}-0@conf:slots=64", netns=veth.ns_a) as port:
        rx, tx = port.rx_rings[0], port.tx_rings[0]
        veth.send_on_queue([checked_frame(veth.mac("a"), veth.mac("b"), 1, 100)], 0)
        deadline = time.monotonic() + 3
        while rx.space() < 1 and time.monotonic() < deadline:
            port.poll(rx=True, timeout=0.1)
        # the TX slot's buffer also goes into the RX slot (a copy: the RX slot's own
        # buffer would be lost): refused, and the slot repaired with its own buffer
        own = int(rx.slot["buf_idx"][rx.head])
        rx.slot["buf_idx"][rx.head] = tx.slot["buf_idx"][tx.head]
        rx.head = rx.cur = rx.next(rx.head, 1)
        with pytest.raises(RingError, match="copied, not swapped"):
            port.rxsync()
        assert int(rx.slot["buf_idx"][rx.hwcur]) == own
        port.check_invariant()
        # the same copy into a TX slot, on the vector path (a batch of two)
        tx.slot["len"][:] = 60
        own_tx = int(tx.slot["buf_idx"][tx.head + 1])
        tx.slot["buf_idx"][tx.head + 1] = rx.slot["buf_idx"][rx.hwcur]
        tx.head = tx.cur = tx.next(tx.head, 2)
        with pytest.raises(RingError, match="copied, not swapped"):
            port.txsync()
        assert int(tx.slot["buf_idx"][tx.hwcur + 1]) == own_tx
        port.check_invariant()
        # a swap (both slots exchanged) is fine
        a, b = int(rx.slot["buf_idx"][rx.hwcur]), int(tx.slot["buf_idx"][tx.hwcur])
        rx.slot["buf_idx"][rx.hwcur], tx.slot["buf_idx"][tx.hwcur] = b, a
        rx.head = rx.cur = rx.next(rx.hwcur, 1)
        port.rxsync()
        port.check_invariant()


def test_morefrag_chains_that_never_end(veth_factory) -> None:
    jumbo = veth_factory(queues=1, mtu=9000)
    mac_a, mac_b = jumbo.mac("a"), jumbo.mac("b")
    s = jumbo.raw_socket("b")
    with open_port(f"netmap:{jumbo.a}-0/T@conf:slots=64", netns=jumbo.ns_a) as port:
        assert port.frags
        tx = port.tx_rings[0]
        nbs = port.nr_buf_size

        def chain(n: int, end: bool, size: int = 1000) -> None:
            idx = write_frames(
                port, tx, [checked_frame(mac_b, mac_a, 500 + i, size) for i in range(n)]
            )
            tx.slot["flags"][idx] = NS_MOREFRAG
            if end:
                tx.slot["flags"][idx[-1]] = 0
            tx.head = tx.cur = tx.next(tx.head, n)

        # an unfinished chain is held (not sent, not refused) while it could still end
        start = tx.hwcur
        chain(17, end=False)
        for _ in range(3):
            assert port.txsync() == 0
        assert tx.hwcur == start and drain_peer(s) == []
        port.check_invariant()
        # one more unfinished slot: 18 MOREFRAG slots can never become a frame
        chain(1, end=False)
        with pytest.raises(RingError, match="never ends"):
            port.txsync()
        assert tx.head == tx.cur == tx.hwcur == start
        # the whole ring flagged NS_MOREFRAG
        chain(tx.num_slots - 1, end=False)
        with pytest.raises(RingError, match="never ends"):
            port.txsync()
        # a chain that ends but has more fragments than a frame may have
        chain(19, end=True)
        with pytest.raises(RingError, match="more than 18 fragments"):
            port.txsync()
        assert drain_peer(s) == [] and tx.hwcur == start
        port.check_invariant()
        # a finished chain longer than the MTU allows: the kernel drops it, counted
        chain(3, end=True, size=nbs)
        assert port.txsync() == 3
        port.txsync()
        assert drain_peer(s) == []
        st_tx = next(d for d in port.stats()["rings"] if d["kind"] == "tx")
        assert st_tx["tx_dropped"] == 1 and st_tx["with_kernel"] == 0
        # and a proper frame still goes out whole
        data = checked_frame(mac_b, mac_a, 900, 9000)
        pieces = [data[i : i + nbs] for i in range(0, len(data), nbs)]
        idx = write_frames(port, tx, pieces)
        tx.slot["flags"][idx[:-1]] = NS_MOREFRAG
        tx.head = tx.cur = tx.next(tx.head, len(pieces))
        assert port.txsync() == len(pieces)
        assert drain_peer(s, 0.5) == [data]
        port.check_invariant()
    s.close()
