"""Privileges and ownership.

* open_port as a non-root user, and as root without CAP_BPF / CAP_NET_ADMIN / CAP_NET_RAW
  (dropped from the bounding set with setpriv, so the exec'd Python never has them): a
  PrivilegeError naming the capability, nothing left behind (no XDP program, the
  namespace's interfaces and addresses unchanged). A transmit-only port needs no BPF, so
  it opens without CAP_BPF and CAP_NET_ADMIN.
* The CLI in the same situations: exit status 1, one line naming the capability, no
  traceback.
* The BPF cache directory is 0700 and its files 0600, also when created under umask 0.
* Exclusive ownership: 8 processes race to open the same queue, 20 rounds: exactly one
  wins each round, the others get BusyError; never two winners.
"""

from __future__ import annotations

import json
import os
import selectors
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from nettest import VethPair, run

pytestmark = pytest.mark.kernel

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def without(*caps: str) -> list[str]:
    """Root, with ``caps`` gone from the bounding set (and so from the exec'd program's
    permitted and effective sets)."""
    return [
        "setpriv",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=" + ",".join(f"-{c}" for c in caps),
    ]


OPEN = textwrap.dedent("""
    import json, sys
    from vtnet_py import open_port, VtnetError
    try:
        p = open_port(sys.argv[1], netns=sys.argv[2] or None)
    except VtnetError as exc:
        print(json.dumps({"type": type(exc).__name__, "msg": str(exc),
                          "permission": isinstance(exc, PermissionError)}))
        sys.exit(3)
    print(json.dumps({"type": "open", "rx": len(p.rx_rings), "tx": len(p.tx_rings)}))
    p.check_invariant()
    p.close()
""")


def snapshot(veth: VethPair) -> tuple[str, str]:
    links = run("ip", "-n", veth.ns_a, "-o", "link").stdout
    addrs = run("ip", "-n", veth.ns_a, "-o", "addr").stdout
    return links, addrs


def in_ns(veth: VethPair, pre: list[str], *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` inside a's namespace (entered as root), then with reduced rights."""
    return subprocess.run(
        ["ip", "netns", "exec", veth.ns_a, *pre, *cmd], capture_output=True, text=True, timeout=120
    )


def open_as(veth: VethPair, pre: list[str], name: str, netns: str = "") -> dict:
    r = in_ns(veth, pre, sys.executable, "-c", OPEN, name, netns)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode in (0, 3), (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


CASES = [
    # who, port suffix, expected outcome (error class + capability named, or "open")
    ("nobody", "", ("PrivilegeError", "CAP_BPF")),
    ("nobody", "/T", ("PrivilegeError", "CAP_NET_RAW")),
    ("no-bpf", "", ("PrivilegeError", "CAP_BPF")),
    ("no-bpf", "/T", ("open", "")),  # TX only: no program needed
    ("no-net-admin", "", ("PrivilegeError", "CAP_NET_ADMIN")),
    ("no-net-admin", "/T", ("open", "")),
    ("no-net-raw", "", ("PrivilegeError", "CAP_NET_RAW")),  # after the program attached
    ("no-net-raw", "-1/T", ("PrivilegeError", "CAP_NET_RAW")),
    ("none", "", ("PrivilegeError", "CAP_")),
]
# CAP_SYS_ADMIN (and CAP_PERFMON for bpf) would stand in for the dropped ones, so they go too
PRE = {
    "nobody": NOBODY,
    "no-bpf": without("bpf", "sys_admin", "perfmon"),
    "no-net-admin": without("net_admin", "sys_admin"),
    "no-net-raw": without("net_raw"),
    "none": without("bpf", "net_admin", "net_raw", "sys_admin", "perfmon"),
}


@pytest.mark.parametrize(
    ("who", "suffix", "expect"), CASES, ids=[f"{w}{s or '-all'}" for w, s, _ in CASES]
)
def test_open_port_without_privileges(
    veth: VethPair, who: str, suffix: str, expect: tuple[str, str]
) -> None:
    before = snapshot(veth)
    out = open_as(veth, PRE[who], f"netmap:{veth.a}{suffix}")
    kind, cap = expect
    assert out["type"] == kind, out
    if kind != "open":
        assert out["permission"] and cap in out["msg"] and "\n" not in out["msg"], out
    assert not veth.xdp_attached("a"), "a failed open left its program"
    assert snapshot(veth) == before


def test_entering_a_namespace_without_privileges_names_the_capability(veth: VethPair) -> None:
    r = subprocess.run(
        [*NOBODY, sys.executable, "-c", OPEN, f"netmap:{veth.a}", veth.ns_a],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["type"] == "PrivilegeError" and "CAP_SYS_ADMIN" in out["msg"], out


CLI_CASES = [
    ("nobody", ["pkt-gen", "-i", "netmap:{a}", "-f", "rx", "-n", "1"], "CAP_BPF"),
    ("none", ["pkt-gen", "-i", "netmap:{a}", "-f", "rx", "-n", "1"], "CAP_BPF"),
    ("none", ["pkt-gen", "-i", "netmap:{a}/T", "-f", "tx", "-n", "1"], "CAP_NET_RAW"),
    ("nobody", ["attach", "{a}"], "CAP_NET_ADMIN"),
    ("none", ["attach", "{a}"], "CAP_NET_ADMIN"),
    ("nobody", ["detach", "{a}"], "root"),
    ("nobody", ["bridge", "-w", "0", "-i", "netmap:{a}"], "CAP_"),
]


@pytest.mark.parametrize(
    ("who", "args", "cap"),
    CLI_CASES,
    ids=[f"{w}-{a[0]}{'-T' if any('/T' in x for x in a) else ''}" for w, a, _ in CLI_CASES],
)
def test_cli_without_privileges_exits_1_with_one_line(
    veth: VethPair, who: str, args: list[str], cap: str
) -> None:
    from vtnetmap_cli.main import main as cli_main

    if args[0] not in cli_main.commands:
        pytest.skip(f"`vtnetmap {args[0]}` is not registered")
    before = snapshot(veth)
    argv = [a.format(a=veth.a) for a in args]
    r = in_ns(veth, PRE[who], sys.executable, "-m", "vtnetmap_cli", *argv)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    named = [ln for ln in r.stderr.splitlines() if cap in ln]
    assert len(named) == 1, r.stderr
    assert not veth.xdp_attached("a")
    assert snapshot(veth) == before


# --- file modes ------------------------------------------------------------------------------


def modes(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue  # a symlink's mode means nothing; its target is outside
            out[str(p.relative_to(root))] = (
                "dir" if stat.S_ISDIR(st.st_mode) else "file",
                stat.S_IMODE(st.st_mode),
            )
    return out


def test_configured_cache_dir_is_root_only(veth: VethPair) -> None:
    from vtnet_py import open_port
    from vtnet_py.ebpf.build import cache_dir

    with open_port(f"netmap:{veth.a}", netns=veth.ns_a):
        pass  # the steering program's image is in the cache now
    d = cache_dir()
    assert str(d) == os.environ["VTNETMAP_CACHE_DIR"]
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and d.stat().st_uid == 0
    found = modes(d)
    assert any(n.startswith("image-") for n in found), found
    bad = {n: oct(m) for n, (kind, m) in found.items() if m != (0o700 if kind == "dir" else 0o600)}
    assert not bad, bad


def test_fresh_cache_under_umask_0_is_root_only(tmp_path: Path) -> None:
    """A first compile into a new cache directory, with umask 0: still 0700 / 0600."""
    d = tmp_path / "deep" / "cache"
    code = (
        "import os; os.umask(0)\n"
        "from vtnet_py.ebpf.build import compile_image\n"
        "from vtnet_py.ebpf.steer import PROG_NAME, MAX_QUEUES\n"
        "compile_image('steer.c', (PROG_NAME,), (f'-DVTNM_MAX_QUEUES={MAX_QUEUES}',))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VTNETMAP_CACHE_DIR": str(d)},
    )
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    found = modes(d)
    assert any(n.startswith("image-") for n in found), found
    bad = {n: oct(m) for n, (kind, m) in found.items() if m != (0o700 if kind == "dir" else 0o600)}
    assert not bad, bad


# --- exclusive ownership ---------------------------------------------------------------------

RACER = textwrap.dedent("""
    import sys
    from vtnet_py import BusyError, VtnetError, open_port
    import vtnet_py.netmap.port, vtnet_py.ebpf.steer  # imported before the race starts
    port = None
    print("READY", flush=True)
    for line in sys.stdin:
        cmd, _, name = line.strip().partition(" ")
        if cmd == "open":
            try:
                port = open_port(name, netns=sys.argv[1])
                print("OPEN", flush=True)
            except BusyError as exc:
                print("BUSY", str(exc), flush=True)
            except VtnetError as exc:
                print("ERROR", type(exc).__name__, str(exc), flush=True)
        elif cmd == "close":
            if port is not None:
                port.check_invariant()
                port.close()
                port = None
            print("CLOSED", flush=True)
""")


def test_racing_opens_of_one_queue_have_exactly_one_winner(veth: VethPair) -> None:
    nproc, rounds = 8, 20
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, veth.ns_a],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(nproc)
    ]
    sel = selectors.DefaultSelector()
    for i, p in enumerate(procs):
        assert p.stdout is not None
        sel.register(p.stdout, selectors.EVENT_READ, i)

    def replies(want: set[int], timeout: float = 60.0) -> dict[int, str]:
        got: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        while set(got) != want:
            left = deadline - time.monotonic()
            assert left > 0, f"no answer from racers {want - set(got)}"
            for key, _ in sel.select(timeout=left):
                line = key.fileobj.readline()  # type: ignore[union-attr]
                assert line, f"racer {key.data} died: {procs[key.data].stderr.read()}"
                got[key.data] = line.strip()
        return got

    def tell(i: int, msg: str) -> None:
        stdin = procs[i].stdin
        assert stdin is not None
        stdin.write(msg + "\n")
        stdin.flush()

    busy = 0
    try:
        assert set(replies(set(range(nproc))).values()) == {"READY"}
        for rnd in range(rounds):
            # alternate one queue and the whole port (both queues, bound in order)
            name = f"netmap:{veth.a}-0" if rnd % 2 == 0 else f"netmap:{veth.a}"
            for i in range(nproc):  # as close together as writes to 8 pipes go
                tell(i, f"open {name}")
            res = replies(set(range(nproc)))
            winners = [i for i, r in res.items() if r == "OPEN"]
            assert len(winners) == 1, f"round {rnd}: {res}"
            losers = [r for i, r in res.items() if i != winners[0]]
            assert all(r.startswith("BUSY") and f"{veth.a} queue 0" in r for r in losers), res
            busy += len(losers)
            tell(winners[0], "close")
            assert replies({winners[0]}) == {winners[0]: "CLOSED"}
    finally:
        for p in procs:
            p.kill()
            p.communicate(timeout=10)
    assert not veth.xdp_attached("a")
    print(
        f"\nownership race: {rounds} rounds x {nproc} processes: one winner each round, "
        f"{busy} BusyError"
    )
