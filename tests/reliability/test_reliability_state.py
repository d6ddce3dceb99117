"""Attach state that cannot be fooled: records and pins bound to the device they are
about, state files read and written safely, detach beside a busy veth peer.

Kernel tests run the CLI on veth pairs inside namespaces they create; state is handled
at the level of its JSON and its file names, as another root process (or bad luck) would
leave it. Every test removes what it made, also on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nettest import (
    VethPair,
    cli,
    errors,
    ethtool_k,
    kernel,
    ns_inode,
    run,
    start_port_holder,
    xdp_prog,
)

from vtnet_py.admin import pins
from vtnet_py.admin.attach import detach
from vtnet_py.admin.pins import pin_dir, remove_pins
from vtnet_py.apps.netlab import NetLab
from vtnet_py.device import record
from vtnet_py.device.record import state_path
from vtnet_py.errors import DeviceError

TSO = "tcp-segmentation-offload"


@dataclass
class Env:
    """veth pairs (and extra namespaces) whose vtnetmap state is removed at the end."""

    make_pair: Callable[..., VethPair]
    pairs: list[VethPair] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    holders: list[subprocess.Popen[str]] = field(default_factory=list)
    lab: NetLab = field(default_factory=lambda: NetLab("st"))

    def pair(self) -> VethPair:
        p = self.make_pair(queues=2)
        self.pairs.append(p)
        return p

    def netns(self) -> str:
        ns = self.lab.namespace("c")
        self.namespaces.append(ns)
        return ns

    def cleanup(self) -> None:
        for h in self.holders:
            h.kill()
            h.wait(10)
        inodes = {ns_inode(ns) for p in self.pairs for ns in (p.ns_a, p.ns_b)}
        inodes |= {ns_inode(ns) for ns in self.namespaces}
        for p in self.pairs:
            for ns in (p.ns_a, p.ns_b, *self.namespaces):
                for dev in (p.a, p.b, p.a + "r"):
                    try:
                        detach(dev, netns=ns, force=True)
                    except Exception:  # noqa: BLE001 - best effort; the removal below is sure
                        pass
        for fn in os.listdir(record.STATE_DIR) if os.path.isdir(record.STATE_DIR) else []:
            head = fn.partition("-")[0]
            if head.isdigit() and int(head) in inodes:
                os.unlink(os.path.join(record.STATE_DIR, fn))
        for ino in inodes:
            root = os.path.dirname(pin_dir(ino, "x"))
            if os.path.isdir(root):
                for dev in os.listdir(root):
                    remove_pins(os.path.join(root, dev))
        self.lab.close()


@pytest.fixture
def env(veth_factory: Callable[..., VethPair]) -> Iterator[Env]:
    e = Env(veth_factory)
    try:
        yield e
    finally:
        e.cleanup()


def ifindex(ns: str, dev: str) -> int:
    out = run("ip", "-j", "-n", ns, "link", "show", "dev", dev).stdout
    return int(json.loads(out)[0]["ifindex"])


def attach_ok(dev: str, ns: str) -> None:
    r = cli("attach", dev, "--netns", ns)
    assert r.returncode == 0, r.stderr


def load(ns: str, dev: str) -> dict[str, Any]:
    return json.loads(Path(state_path(ns_inode(ns), dev)).read_text())


# --- 1. identity of what is recorded ----------------------------------------------------


@kernel
def test_a_reused_namespace_inode_never_restores_onto_another_device(env: Env) -> None:
    # A namespace deleted while attached leaves its record; the kernel gives its inode
    # to the next namespace made, where an interface of the same name and ifindex (the
    # first veth of a fresh namespace) finds the record under its own key.
    old = env.pair()
    attach_ok(old.a, old.ns_a)
    left = load(old.ns_a, old.a)
    run("ip", "netns", "del", old.ns_a)  # the veth goes with it, the record stays
    env.pairs.remove(old)
    run("ip", "netns", "del", old.ns_b)
    os.unlink(state_path(left["netns_inode"], old.a))
    v = env.pair()
    v.sh_a(f"ethtool -K {v.a} tso off")  # the user's own setting
    idx = ifindex(v.ns_a, v.a)
    left.update(ifname=v.a, ifindex=idx, netns_inode=ns_inode(v.ns_a))
    left["saved"].update(ifname=v.a, ifindex=idx)
    path = state_path(ns_inode(v.ns_a), v.a)
    Path(path).write_text(json.dumps(left))
    os.chmod(path, 0o600)
    before = ethtool_k(v.ns_a, v.a)
    assert before[TSO] == "off"

    r = cli("detach", v.a, "--netns", v.ns_a)
    assert r.returncode == 0, r.stderr
    assert ethtool_k(v.ns_a, v.a) == before  # TSO stays off: nothing was "restored"
    assert f"{v.a}: {path} was not applied: it was written in another network namespace" in (
        r.stdout
    )
    assert not os.path.exists(path)


@kernel
def test_a_renamed_interface_is_found_by_status_and_detach_under_both_names(env: Env) -> None:
    for by_new_name in (True, False):
        v = env.pair()
        feats0 = ethtool_k(v.ns_a, v.a)
        attach_ok(v.a, v.ns_a)
        prog = xdp_prog(v.ns_a, v.a)
        new = v.a + "r"
        v.sh_a(f"ip link set {v.a} down && ip link set {v.a} name {new} && ip link set {new} up")

        st = json.loads(cli("status", "--json", "--netns", v.ns_a).stdout)
        by = {i["ifname"]: i for i in st["interfaces"]}
        assert by[new]["pinned"] and by[new]["attach"]["phase"] == "attached"
        assert any(f"attached by vtnetmap as {v.a}" in n for n in by[new]["notes"])
        assert not by[v.a]["exists"]
        assert by[v.a]["notes"] == [
            f"{v.a} was renamed to {new} since the attach (ifindex {ifindex(v.ns_a, new)}): "
            f"`vtnetmap status {new}`, `vtnetmap detach {new}`"
        ]

        r = cli("detach", new if by_new_name else v.a, "--netns", v.ns_a)
        assert r.returncode == 0, r.stderr
        assert f"detached vtnetmap's steering program (id {prog})" in r.stdout
        assert xdp_prog(v.ns_a, new) == 0
        assert ethtool_k(v.ns_a, new) == feats0
        nsino = ns_inode(v.ns_a)
        assert not os.path.exists(state_path(nsino, v.a))
        assert not os.path.exists(pin_dir(nsino, v.a))


@kernel
def test_an_interface_moved_to_another_namespace_is_found_there(env: Env) -> None:
    v = env.pair()
    feats0 = ethtool_k(v.ns_a, v.a)
    attach_ok(v.a, v.ns_a)
    prog = xdp_prog(v.ns_a, v.a)
    there = env.netns()
    run("ip", "-n", v.ns_a, "link", "set", v.a, "netns", there)

    st = cli("status", "--netns", v.ns_a)
    assert st.returncode == 0, st.stderr
    assert f"{v.a} (ifindex " in st.stdout and f"was moved to network namespace {there}" in (
        st.stdout
    )
    r = cli("detach", v.a, "--netns", v.ns_a)  # from where it was: says where it is now
    assert r.returncode == 1
    assert errors(r) == [
        f"vtnetmap: {v.a} (ifindex {load(v.ns_a, v.a)['ifindex']}) was moved to network "
        f"namespace {there} as {v.a} with vtnetmap's program {prog} still attached: "
        f"`vtnetmap detach {v.a} --netns {there}` restores it there; `vtnetmap detach "
        f"{v.a} --force` here detaches the program and drops the record, leaving its "
        "offloads and channels as they are"
    ]
    assert xdp_prog(there, v.a) == prog

    r = cli("detach", v.a, "--netns", there)
    assert r.returncode == 0, r.stderr
    assert f"{v.a}: detached vtnetmap's steering program (id {prog})" in r.stdout
    assert xdp_prog(there, v.a) == 0 and ethtool_k(there, v.a) == feats0
    assert not os.path.exists(state_path(ns_inode(v.ns_a), v.a))
    assert not os.path.exists(pin_dir(ns_inode(v.ns_a), v.a))


# --- 2. state files read and written safely ---------------------------------------------

GARBLED = {
    "huge pid": lambda d: d.update(pid=2**64),
    "negative pid": lambda d: d.update(pid=-5),
    "huge time": lambda d: d.update(time=1e308),
    "NaN time": lambda d: d.update(time=float("nan")),
    "huge ifindex": lambda d: d.update(ifindex=2**70),
    "huge channel": lambda d: d["saved"].update(channels={"rx": 2**80}),
}


@kernel
@pytest.mark.parametrize("how", [*GARBLED, "truncated"])
def test_a_garbled_record_blocks_neither_status_nor_forced_detach(env: Env, how: str) -> None:
    v = env.pair()
    attach_ok(v.a, v.ns_a)
    path = state_path(ns_inode(v.ns_a), v.a)
    text = Path(path).read_text()
    if how == "truncated":
        Path(path).write_text(text[: len(text) // 2])
    else:
        d = json.loads(text)
        GARBLED[how](d)
        Path(path).write_text(json.dumps(d))
    # a second interface of the namespace, with a garbled record of its own
    other = state_path(ns_inode(v.ns_a), "vtgone0")
    Path(other).write_text('{"version": 2, "pid": 1e999')

    st = cli("status", "--netns", v.ns_a)
    assert st.returncode == 0 and not st.stderr.strip(), st.stderr
    assert "Traceback" not in st.stdout
    assert f"  note: {path} is not readable: " in st.stdout
    assert f"  note: {other} is not readable: " in st.stdout

    r = cli("detach", v.a, "--netns", v.ns_a)
    assert r.returncode == 1 and len(errors(r)) == 1, r.stderr
    assert errors(r)[0].startswith(f"vtnetmap: {path} is not readable: ")
    assert errors(r)[0].endswith(
        f"`vtnetmap detach {v.a} --force` removes what is vtnetmap's on {v.a} and this file"
    )
    assert xdp_prog(v.ns_a, v.a)

    r = cli("detach", v.a, "--force", "--netns", v.ns_a)
    assert r.returncode == 0, r.stderr
    assert xdp_prog(v.ns_a, v.a) == 0
    assert not os.path.exists(path) and not os.path.exists(pin_dir(ns_inode(v.ns_a), v.a))
    assert f"{v.a}: removed the unreadable {path}" in r.stdout
    os.unlink(other)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setattr(record, "STATE_DIR", str(d))
    return d


def a_record(ifname: str = "stx0") -> record.AttachRecord:
    saved = record.SavedState(ifname=ifname, ifindex=5, driver="veth", mode="native")
    return record.AttachRecord.from_json(
        json.dumps(
            {
                "version": 2,
                "ifname": ifname,
                "ifindex": 5,
                "netns_inode": 4026531840,
                "netns_cookie": 1,
                "phase": "attached",
                "saved": json.loads(saved.to_json()),
                "mode": "native",
                "frags": False,
                "zerocopy": "auto",
                "rings": None,
                "pid": 1,
                "time": 1.0,
                "prog_id": 0,
                "link_id": 0,
            }
        )
    )


def test_a_symlink_planted_at_the_temporary_path_is_not_followed(
    state_dir: Path, tmp_path: Path
) -> None:
    rec = a_record()
    record.write_record(rec)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o644)
    path = state_path(rec.netns_inode, rec.ifname)
    os.symlink(victim, f"{path}.{os.getpid()}.tmp")  # the name a writer of this pid used
    os.unlink(path)
    os.symlink(victim, path)  # and one in the state file's own place
    record.write_record(rec)
    assert victim.read_text() == "precious" and (victim.stat().st_mode & 0o777) == 0o644
    assert not os.path.islink(path) and record.read_record_file(path) == rec


def test_a_symlinked_state_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "state"
    link.symlink_to(elsewhere)
    monkeypatch.setattr(record, "STATE_DIR", str(link))
    with pytest.raises(DeviceError) as ei:
        record.write_record(a_record())
    assert str(ei.value) == (
        f"{link} is a symlink; vtnetmap keeps its root-only state there: remove it"
    )
    assert os.listdir(elsewhere) == []


def test_a_record_read_through_a_symlink_is_refused(state_dir: Path, tmp_path: Path) -> None:
    rec = a_record()
    record.write_record(rec)
    path = state_path(rec.netns_inode, rec.ifname)
    real = tmp_path / "real.json"
    os.rename(path, real)
    os.symlink(real, path)
    with pytest.raises(DeviceError) as ei:
        record.read_record(rec.netns_inode, rec.ifname)
    assert str(ei.value).startswith(f"{path} is not readable: ")


def test_a_symlink_planted_among_the_pins_is_refused_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pins, "PIN_ROOT", str(tmp_path / "pins"))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("precious")
    pdir = pin_dir(4026531840, "stx0")
    os.makedirs(os.path.dirname(pdir))
    os.symlink(victim, pdir)
    with pytest.raises(DeviceError) as ei:
        remove_pins(pdir)
    assert str(ei.value) == (
        f"{pdir} is a symlink; vtnetmap keeps its root-only state there: remove it"
    )
    assert os.listdir(victim) == ["keep"]


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    run("mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "sttmpfs", str(d))
    try:
        yield d
    finally:
        run("umount", "-l", str(d), check=False)


def fill(d: Path) -> None:
    """Take every block of the filesystem at ``d`` (a file of its own, as others' would)."""
    try:
        with open(d / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 512)
    except OSError:
        pass


@kernel
def test_attach_on_a_full_state_dir_names_it_and_changes_nothing(
    env: Env, small_mount: Path
) -> None:
    v = env.pair()
    feats0 = ethtool_k(v.ns_a, v.a)
    fill(small_mount)
    r = subprocess.run(
        [sys.executable, "-m", "vtnetmap_cli", "attach", v.a, "--netns", v.ns_a],
        env={**os.environ, "VTNETMAP_STATE_DIR": str(small_mount)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    path = os.path.join(small_mount, f"{ns_inode(v.ns_a)}-{v.a}.json")
    assert r.returncode == 1
    assert errors(r) == [
        f"vtnetmap: {path}: cannot write vtnetmap's state: No space left on device"
    ]
    assert sorted(os.listdir(small_mount)) == ["filler"]  # no partial or temporary file
    assert ethtool_k(v.ns_a, v.a) == feats0 and xdp_prog(v.ns_a, v.a) == 0


def test_write_record_on_a_read_only_state_dir(state_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a bind mount needs root")
    rec = a_record()
    record.write_record(rec)
    before = Path(state_path(rec.netns_inode, rec.ifname)).read_text()
    run("mount", "--bind", str(state_dir), str(state_dir))
    try:
        run("mount", "-o", "remount,bind,ro", str(state_dir))
        rec.pid = 2
        with pytest.raises(DeviceError) as ei:
            record.write_record(rec)
        path = state_path(rec.netns_inode, rec.ifname)
        assert str(ei.value) == f"{path}: cannot write vtnetmap's state: Read-only file system"
        with pytest.raises(DeviceError) as ei:
            record.remove_record(rec.netns_inode, rec.ifname)
        assert str(ei.value) == f"{path}: cannot remove vtnetmap's state: Read-only file system"
    finally:
        run("umount", "-l", str(state_dir), check=False)
    assert os.listdir(state_dir) == [os.path.basename(path)]
    assert Path(path).read_text() == before


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        ({"pid": 2**64}, "pid 18446744073709551616 is not an integer in [1, 2147483647]"),
        ({"pid": -1}, "pid -1 is not an integer in [1, 2147483647]"),
        ({"pid": True}, "pid True is not an integer in [1, 2147483647]"),
        ({"time": float("inf")}, "time inf is not a time in [0, 8589934592]"),
        ({"time": -1.0}, "time -1.0 is not a time in [0, 8589934592]"),
        ({"netns_cookie": 0}, "netns_cookie 0 is not an integer in [1, 18446744073709551615]"),
        ({"rings": 10**40}, f"rings {str(10**40)[:37]}... is not an integer in [1, 65536]"),
        ({"ifname": "../x"}, "'../x' is not a valid interface name"),
        ({"version": 1}, "version 1, not 2 (written by another vtnetmap version)"),
    ],
)
def test_out_of_range_values_are_one_line_errors(edit: dict[str, Any], says: str) -> None:
    d = json.loads(a_record().to_json())
    d.update(edit)
    with pytest.raises(DeviceError) as ei:
        record.AttachRecord.from_json(json.dumps(d), "/run/vtnetmap/x.json")
    assert str(ei.value).startswith(f"/run/vtnetmap/x.json is not readable: {says}")
    assert "\n" not in str(ei.value)


# --- 3. detach beside a busy veth peer --------------------------------------------------


@kernel
@pytest.mark.parametrize("peer", ["port", "attach"])
def test_detach_beside_a_busy_peer_restores_what_it_can_and_names_the_peer(
    env: Env, peer: str
) -> None:
    v = env.pair()
    feats0 = ethtool_k(v.ns_a, v.a)
    attach_ok(v.a, v.ns_a)
    if peer == "port":
        env.holders.append(start_port_holder(f"netmap:{v.b}", v.ns_b))
    else:
        attach_ok(v.b, v.ns_b)
    r = cli("detach", v.a, "--netns", v.ns_a)
    assert r.returncode == 1
    (line,) = errors(r)
    assert line.startswith(f"vtnetmap: {v.a}: restored offloads rx-checksum on, ")
    assert (f"cannot be turned on while the veth peer of {v.a} has an XDP program attached") in line
    assert "fixed off by the driver" not in line
    assert line.endswith(
        f"the record stays in {state_path(ns_inode(v.ns_a), v.a)}: run `vtnetmap detach "
        f"{v.a}` again then"
    )
    k = ethtool_k(v.ns_a, v.a)
    assert xdp_prog(v.ns_a, v.a) == 0
    assert k["rx-checksumming"] == "on" and k["tx-checksumming"] == "on"
    assert k["tx-tcp-segmentation"] == "off [fixed]"  # held by veth while the peer runs XDP

    if peer == "port":
        holder = env.holders.pop()
        holder.kill()
        holder.wait(10)
    else:
        assert cli("detach", v.b, "--netns", v.ns_b).returncode == 0
    r = cli("detach", v.a, "--netns", v.ns_a)
    assert r.returncode == 0, r.stderr
    assert ethtool_k(v.ns_a, v.a) == feats0
    assert not os.path.exists(state_path(ns_inode(v.ns_a), v.a))
