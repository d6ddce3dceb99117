"""`vtnetmap attach / detach / status` and port-side change detection, on veth pairs in
namespaces (kernel tests).

The CLI runs as a subprocess (`python -m vtnetmap_cli`), ports of "another process" in a
child Python. Every test leaves nothing behind: the `attach_env` fixture detaches and
removes pins and state files of its interfaces before the namespaces are deleted, and
kills the children it started.
"""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from netlab_plugin import NS_PREFIX, make_veth_pair
from nettest import VethPair, cli, errors, ethtool_k, ns_inode, sh, xdp_prog

from vtnet_py import InterfaceChangedError, open_port
from vtnet_py._sys import bpf as bpf
from vtnet_py._sys.netns import netns
from vtnet_py._sys.proc import netns_cookie
from vtnet_py.admin.attach import attach, detach
from vtnet_py.admin.pins import PIN_ROOT, pin_dir
from vtnet_py.admin.pins import remove_pins as _remove_pins
from vtnet_py.admin.status import status
from vtnet_py.apps.netlab import NetLab
from vtnet_py.device import SavedState, prepare
from vtnet_py.device.netlink import NetlinkDeviceLayer
from vtnet_py.device.record import (
    STATE_DIR,
    AttachRecord,
    attached_zerocopy,
    read_record,
    state_path,
)
from vtnet_py.device.record import write_record as _write_record

pytestmark = pytest.mark.kernel

ETHERTYPE = b"\x88\xb5"

CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from vtnet_py import InterfaceChangedError, open_port
    ifname, ns, what = sys.argv[1:4]
    port = open_port("netmap:" + ifname, netns=ns)
    print("ready", port._steering.prog_id, port.xdp_mode, flush=True)
    try:
        if what == "recv":  # count our test frames (ethertype 88b5) for up to 10 s
            got, deadline = 0, time.monotonic() + 10
            while got < 5 and time.monotonic() < deadline:
                port.poll(rx=True, timeout=0.2)
                for r in port.rx_rings:
                    n = r.space()
                    if n:
                        idx = r.slots_from_head(n)
                        et = port.bufs[r.slot["buf_idx"][idx].astype(np.intp), 12:14]
                        got += int(((et[:, 0] == 0x88) & (et[:, 1] == 0xB5)).sum())
                        r.head = r.cur = r.next(r.head, n)
            print("got", got, flush=True)
            sys.stdin.readline()  # keep the port open until the test says so
        elif what == "poll":
            port.poll(rx=True, timeout=30)
            print("poll returned", flush=True)
        elif what == "fork":  # a child inherits the port's fds (and the link) and lingers
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            print("forked", pid, flush=True)
            time.sleep(60)
    except InterfaceChangedError as exc:
        print("changed", exc, flush=True)
    finally:
        port.close()
""")


def ethtool_l(ns: str, dev: str) -> str:
    return sh(ns, f"ethtool -l {dev}").split("Current hardware settings:", 1)[1]


def frame(dst: bytes, src: bytes, seq: int) -> bytes:
    return dst + src + ETHERTYPE + seq.to_bytes(4, "big") + bytes(42)


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@dataclass
class AttachEnv:
    """veth pairs whose vtnetmap state is cleaned before the namespaces go; children
    started with ``child`` are killed at the end."""

    make_pair: Callable[..., VethPair]
    pairs: list[VethPair] = field(default_factory=list)
    children: list[subprocess.Popen[str]] = field(default_factory=list)
    extra_pids: list[int] = field(default_factory=list)

    def pair(self, queues: int = 2) -> VethPair:
        p = self.make_pair(queues=queues)
        self.pairs.append(p)
        return p

    def child(self, ifname: str, ns: str, what: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", CHILD, ifname, ns, what],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.children.append(p)
        return p

    def cleanup(self) -> None:
        for pid in self.extra_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for c in self.children:
            if c.poll() is None:
                c.kill()
            c.wait(10)
        for p in self.pairs:
            for ns, dev in ((p.ns_a, p.a), (p.ns_b, p.b)):
                try:
                    detach(dev, netns=ns, force=True)
                except Exception:  # noqa: BLE001 - best effort; the removal below is sure
                    pass
                nsino = ns_inode(ns)
                _remove_pins(pin_dir(nsino, dev))
                try:
                    os.unlink(state_path(nsino, dev))
                except FileNotFoundError:
                    pass


@pytest.fixture
def env(veth_factory: Callable[..., VethPair]) -> Iterator[AttachEnv]:
    e = AttachEnv(veth_factory)
    try:
        yield e
    finally:
        e.cleanup()


def readline(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    if not r:
        raise AssertionError(f"child said nothing in {timeout} s")
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"child exited ({proc.wait(5)}): {err}")
    return line.strip()


# --- attach / second process / status / detach ---------------------------------------------


def test_attach_pins_and_a_second_process_joins_then_detach_restores(env: AttachEnv) -> None:
    v = env.pair(queues=4)
    # veth takes XDP only if it has as many rx queues as its peer has tx queues
    sh(v.ns_b, f"ethtool -L {v.b} tx 2")
    feats0, chans0 = ethtool_k(v.ns_a, v.a), ethtool_l(v.ns_a, v.a)
    nsino = ns_inode(v.ns_a)

    r = cli("attach", v.a, "--rings", "2", "--netns", v.ns_a)
    assert r.returncode == 0, r.stderr
    assert f"{v.a}: attached vtnetmap's steering program" in r.stdout
    assert "channels rx 4 -> 2, tx 4 -> 2" in r.stdout
    # offloads off, channels set, program attached and still there after the CLI exited
    k = ethtool_k(v.ns_a, v.a)
    for name in (
        "rx-checksumming",
        "tx-checksumming",
        "tcp-segmentation-offload",
        "generic-segmentation-offload",
        "tx-checksum-ip-generic",
    ):
        assert k[name].startswith("off"), (name, k[name])
    assert "RX:\t\t2" in ethtool_l(v.ns_a, v.a) and "TX:\t\t2" in ethtool_l(v.ns_a, v.a)
    prog = xdp_prog(v.ns_a, v.a)
    assert prog
    # pins and state file: root only
    pdir = pin_dir(nsino, v.a)
    assert sorted(os.listdir(pdir)) == ["link", "owners", "xsks"]
    for name in ("link", "owners", "xsks"):
        assert mode_of(os.path.join(pdir, name)) == 0o600
    for dirname in (pdir, os.path.dirname(pdir), PIN_ROOT):
        assert mode_of(dirname) == 0o700, dirname
    assert mode_of(state_path(nsino, v.a)) == 0o600 and mode_of(STATE_DIR) == 0o700
    rec = read_record(nsino, v.a)
    assert rec is not None and rec.phase == "attached" and rec.prog_id == prog
    assert rec.saved.channels == {"rx": 4, "tx": 4} and rec.netns == v.ns_a
    assert rec.saved.features["rx-checksum"] is True and rec.mode == "native"
    linkfd = bpf.obj_get(os.path.join(pdir, "link"))
    try:
        assert bpf.link_info(linkfd).prog_id == prog
    finally:
        os.close(linkfd)

    # a second process opens a port: it joins the pinned program and receives
    child = env.child(v.a, v.ns_a, "recv")
    ready = readline(child).split()
    assert ready == ["ready", str(prog), "native"]
    v.send_on_queue([frame(v.mac("a"), v.mac("b"), i) for i in range(5)], 0)
    assert readline(child) == "got 5"

    js = cli("status", v.a, "--json", "--netns", v.ns_a)
    assert js.returncode == 0, js.stderr
    st = json.loads(js.stdout)["interfaces"][0]
    assert st["xdp"] == {
        "prog_id": prog,
        "mode": "native",
        "prog_name": "vtnm_steer",
        "vtnetmap": True,
        "frags": False,
    }
    assert st["pinned"] and st["attach"]["pid_alive"] is False
    assert [(q["queue"], q["owner_pid"], q["owner_alive"]) for q in st["queues"]] == [
        (0, child.pid, True),
        (1, child.pid, True),
    ]
    assert st["offloads_on"] == [] and (st["rx_queues"], st["tx_queues"]) == (2, 2)
    assert str(child.pid) in st["afxdp_statistics"]
    txt = cli("status", v.a, "--netns", v.ns_a)
    assert txt.returncode == 0, txt.stderr
    assert f"queue 0: owner pid {child.pid} (alive)" in txt.stdout
    assert f"pinned: yes, in {pdir}" in txt.stdout

    # the port's process ends: the pinned program stays; its dead pid is marked
    child.kill()
    child.wait(10)
    assert xdp_prog(v.ns_a, v.a) == prog
    txt = cli("status", "--netns", v.ns_a)  # all interfaces that vtnetmap uses
    assert f"queue 1: owner pid {child.pid} (DEAD)" in txt.stdout
    assert txt.stdout.startswith(f"{v.a} (")

    d = cli("detach", v.a, "--netns", v.ns_a)
    assert d.returncode == 0, d.stderr
    assert f"{v.a}: detached vtnetmap's steering program (id {prog})" in d.stdout
    assert "restored offloads" in d.stdout and "channels rx 4, tx 4" in d.stdout
    assert ethtool_k(v.ns_a, v.a) == feats0
    assert ethtool_l(v.ns_a, v.a) == chans0
    assert xdp_prog(v.ns_a, v.a) == 0
    assert not os.path.exists(pdir) and not os.path.exists(state_path(nsino, v.a))
    assert not os.path.exists(os.path.dirname(pdir))

    again = cli("detach", v.a, "--netns", v.ns_a)
    assert again.returncode == 0
    assert again.stdout.strip() == f"{v.a}: not attached by vtnetmap; nothing to do"
    none = cli("status", "--netns", v.ns_a)
    assert none.returncode == 0 and none.stdout.startswith("no interface uses vtnetmap")


def test_attach_twice_is_refused_and_changes_nothing(env: AttachEnv) -> None:
    v = env.pair()
    assert cli("attach", v.a, "--netns", v.ns_a).returncode == 0
    k = ethtool_k(v.ns_a, v.a)
    rec = read_record(ns_inode(v.ns_a), v.a)
    assert rec is not None
    r = cli("attach", v.a, "--netns", v.ns_a)
    assert r.returncode == 1
    assert errors(r) == [
        f"vtnetmap: {v.a} is already attached by vtnetmap (program {rec.prog_id}, pinned in "
        f"{pin_dir(ns_inode(v.ns_a), v.a)}); `vtnetmap detach {v.a}` first to attach it "
        "again"
    ]
    assert ethtool_k(v.ns_a, v.a) == k and read_record(ns_inode(v.ns_a), v.a) == rec


def test_default_route_interface_is_refused_without_force(env: AttachEnv) -> None:
    v = env.pair()
    sh(v.ns_a, f"ip route add default via {v.ip_b} dev {v.a}")
    feats0 = ethtool_k(v.ns_a, v.a)
    r = cli("attach", v.a, "--netns", v.ns_a)
    assert r.returncode == 1
    assert errors(r) == [
        f"vtnetmap: {v.a} carries the default route of this network namespace: taking it "
        "over would cut this machine's traffic; use --force to attach anyway"
    ]
    assert r.stdout == ""
    assert ethtool_k(v.ns_a, v.a) == feats0 and xdp_prog(v.ns_a, v.a) == 0
    nsino = ns_inode(v.ns_a)
    assert not os.path.exists(pin_dir(nsino, v.a))
    assert not os.path.exists(state_path(nsino, v.a))

    r = cli("attach", v.a, "--force", "--netns", v.ns_a)
    assert r.returncode == 0, r.stderr
    assert xdp_prog(v.ns_a, v.a)
    assert cli("detach", v.a, "--netns", v.ns_a).returncode == 0
    assert ethtool_k(v.ns_a, v.a) == feats0 and xdp_prog(v.ns_a, v.a) == 0


def test_failed_attach_puts_channels_and_offloads_back(env: AttachEnv) -> None:
    v = env.pair(queues=4)  # the peer keeps 4 tx queues: veth refuses XDP with 2 rx
    feats0, chans0 = ethtool_k(v.ns_a, v.a), ethtool_l(v.ns_a, v.a)
    r = cli("attach", v.a, "--rings", "2", "--netns", v.ns_a)
    assert r.returncode == 1
    err = errors(r)
    assert len(err) == 1 and err[0].startswith(
        f"vtnetmap: {v.a}: attaching XDP in native mode refused: "
    )
    assert err[0].endswith(
        f"; {v.a}: veth takes XDP only with at least as many rx queues as "
        "its peer has tx queues; lower the peer's first "
        "(`ethtool -L PEER tx N`)"
    )
    nsino = ns_inode(v.ns_a)
    assert ethtool_k(v.ns_a, v.a) == feats0 and ethtool_l(v.ns_a, v.a) == chans0
    assert xdp_prog(v.ns_a, v.a) == 0
    assert not os.path.exists(pin_dir(nsino, v.a))
    assert not os.path.exists(state_path(nsino, v.a))


def test_zerocopy_on_is_checked_and_off_is_the_ports_default(env: AttachEnv) -> None:
    v = env.pair()
    feats0 = ethtool_k(v.ns_a, v.a)
    r = cli("attach", v.a, "--zerocopy", "on", "--netns", v.ns_a)
    assert r.returncode == 1  # veth has no zero-copy AF_XDP
    err = errors(r)
    assert len(err) == 1 and err[0].startswith(f"vtnetmap: {v.a}: --zerocopy on: netmap:{v.a}: ")
    assert "zero-copy AF_XDP is not supported by the driver" in err[0]
    # taken back completely
    nsino = ns_inode(v.ns_a)
    assert ethtool_k(v.ns_a, v.a) == feats0 and xdp_prog(v.ns_a, v.a) == 0
    assert not os.path.exists(pin_dir(nsino, v.a))
    assert not os.path.exists(state_path(nsino, v.a))

    assert cli("attach", v.a, "--zerocopy", "off", "--netns", v.ns_a).returncode == 0
    with netns(v.ns_a):
        assert attached_zerocopy(v.a, "auto") == "off"
        assert attached_zerocopy(v.a, "on") == "on"  # an explicit request wins
        assert attached_zerocopy(v.b, "auto") == "auto"  # not attached
    with open_port(f"netmap:{v.a}", netns=v.ns_a) as port:
        assert port.zerocopy is False


# --- forced detach, dead owners, stale state ---------------------------------------------


def test_detach_is_forcible_and_the_open_port_fails_clearly(env: AttachEnv) -> None:
    v = env.pair()
    res = attach(v.a, netns=v.ns_a)
    assert res.record.phase == "attached"
    child = env.child(v.a, v.ns_a, "poll")
    assert readline(child).startswith("ready")
    d = cli("detach", v.a, "--netns", v.ns_a)
    assert d.returncode == 0, d.stderr
    assert (
        f"{v.a}: forcibly detached although pid {child.pid} still had queue 0, 1 open: "
        "those ports receive nothing more and fail on their next poll"
    ) in d.stdout
    line = readline(child, 10)
    assert line == (
        f"changed netmap:{v.a}: the steering program on {v.a} was detached "
        "(`vtnetmap detach`?); reopen the port"
    )
    assert child.wait(10) == 0
    assert xdp_prog(v.ns_a, v.a) == 0


def test_same_process_port_after_forced_detach(env: AttachEnv) -> None:
    v = env.pair()
    attach(v.a, netns=v.ns_a)
    port = open_port(f"netmap:{v.a}", netns=v.ns_a)
    try:
        res = detach(v.a, netns=v.ns_a)
        assert any(f"pid {os.getpid()} still had queue 0, 1 open" in m for m in res.messages)
        with pytest.raises(InterfaceChangedError, match="steering program on .* detached"):
            port.poll(rx=True, timeout=2.0)
        # while this process still holds the old program, a new port says so
        with pytest.raises(InterfaceChangedError, match="was detached meanwhile"):
            open_port(f"netmap:{v.a}", netns=v.ns_a)
    finally:
        port.close()
    with open_port(f"netmap:{v.a}", netns=v.ns_a) as again:  # implicit attach works again
        assert xdp_prog(v.ns_a, v.a) == again._steering.prog_id  # type: ignore[union-attr]
    assert xdp_prog(v.ns_a, v.a) == 0


def test_detach_cleans_a_program_whose_owners_are_dead(env: AttachEnv) -> None:
    v = env.pair()
    child = env.child(v.a, v.ns_a, "fork")
    prog = int(readline(child).split()[1])
    grandchild = int(readline(child).split()[1])
    env.extra_pids.append(grandchild)
    # the owner is alive: an implicitly attached program is not taken without --force
    r = cli("detach", v.a, "--netns", v.ns_a)
    assert r.returncode == 1
    assert errors(r) == [
        f"vtnetmap: {v.a}: vtnetmap's steering program (id {prog}) is in use by open ports "
        f"of pid {child.pid} (queue 0, 1); close them, or `vtnetmap detach --force {v.a}`"
    ]
    # attach refuses too, naming the pid
    r = cli("attach", v.a, "--netns", v.ns_a)
    assert r.returncode == 1 and f"implicitly by open ports of pid {child.pid}" in r.stderr
    child.kill()
    child.wait(10)
    # the forked grandchild still holds the link: the program outlives its owner
    assert xdp_prog(v.ns_a, v.a) == prog
    st = status(v.a, netns=v.ns_a)["interfaces"][0]
    assert st["queues"][0]["owner_pid"] == child.pid and st["queues"][0]["owner_alive"] is False
    assert not st["pinned"] and "attached implicitly" in st["notes"][0]
    r = cli("detach", v.a, "--netns", v.ns_a)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        f"{v.a}: detached vtnetmap's steering program (id {prog}) "
        f"left behind by dead pid {child.pid}"
    )
    assert xdp_prog(v.ns_a, v.a) == 0


def test_dead_attacher_and_stale_pins_are_repaired(env: AttachEnv) -> None:
    v = env.pair()
    nsino = ns_inode(v.ns_a)
    feats0 = ethtool_k(v.ns_a, v.a)
    # an attacher killed after preparing the device, before pinning: only the record
    dead = subprocess.Popen(["true"])
    dead.wait()
    layer = NetlinkDeviceLayer()
    with netns(v.ns_a):
        saved = prepare(layer, v.a)
        cookie = netns_cookie()
    rec = AttachRecord(
        ifname=v.a,
        ifindex=saved.ifindex,
        netns_inode=nsino,
        phase="prepared",
        saved=saved,
        mode="native",
        frags=False,
        zerocopy="auto",
        rings=None,
        pid=dead.pid,
        time=time.time(),
        netns_cookie=cookie,
    )
    _write_record(rec)
    assert ethtool_k(v.ns_a, v.a) != feats0
    r = cli("status", v.a, "--netns", v.ns_a)
    assert "note: stale attach record (phase prepared" in r.stdout
    r = cli("attach", v.a, "--netns", v.ns_a)  # repairs first, then attaches anew
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == (
        f"{v.a}: repairing an attach that did not finish (pid {dead.pid}, dead; phase prepared)"
    )
    again = read_record(nsino, v.a)
    assert again is not None and again.saved.features["rx-checksum"] is True

    # stale pins: the pinned link was detached behind vtnetmap's back
    pdir = pin_dir(nsino, v.a)
    fd = bpf.obj_get(os.path.join(pdir, "link"))
    try:
        bpf.link_detach(fd)
    finally:
        os.close(fd)
    assert xdp_prog(v.ns_a, v.a) == 0
    r = cli("detach", v.a, "--netns", v.ns_a)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == (
        f"{v.a}: the pinned program {again.prog_id} was no longer attached (interface gone "
        "or detached elsewhere); removed its pins"
    )
    assert ethtool_k(v.ns_a, v.a) == feats0
    assert not os.path.exists(pdir) and not os.path.exists(state_path(nsino, v.a))


def test_pins_left_by_a_deleted_namespace_are_swept(env: AttachEnv) -> None:
    lab = NetLab(NS_PREFIX)
    gone = make_veth_pair(lab)
    try:
        nsino = ns_inode(gone.ns_a)
        attach(gone.a, netns=gone.ns_a)
        with netns(gone.ns_b):  # and a record of an attach that died before pinning
            _write_record(
                AttachRecord(
                    ifname=gone.b,
                    ifindex=1,
                    netns_inode=ns_inode(gone.ns_b),
                    phase="preparing",
                    saved=SavedState(ifname=gone.b, ifindex=1, driver="veth", mode="native"),
                    mode="native",
                    frags=False,
                    zerocopy="auto",
                    rings=None,
                    pid=os.getpid(),
                    time=time.time(),
                    netns_cookie=netns_cookie(),
                )
            )
        nsino_b = ns_inode(gone.ns_b)
    finally:
        lab.close()  # deleted while attached: the veth goes, the pins stay
    try:
        assert os.path.exists(pin_dir(nsino, gone.a))
        v = env.pair()
        r = cli("detach", v.a, "--netns", v.ns_a)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()  # (other leftovers on this host would be listed too)
        assert lines[0] == f"{v.a}: not attached by vtnetmap; nothing to do"
        assert (
            f"{gone.a}: removed the stale pins and state of an interface in a deleted "
            f"network namespace (inode {nsino})"
        ) in lines
        assert (
            f"{gone.b}: removed the state of an interface in a deleted network namespace "
            f"(inode {nsino_b})"
        ) in lines
        assert not os.path.exists(os.path.join(PIN_ROOT, str(nsino)))
        assert not os.path.exists(state_path(nsino, gone.a))
        assert not os.path.exists(state_path(nsino_b, gone.b))
    finally:
        _remove_pins(pin_dir(nsino, gone.a))
        for path in (state_path(nsino, gone.a), state_path(nsino_b, gone.b)):
            if os.path.exists(path):
                os.unlink(path)


# --- change detection and status of ports in this process ------------------------------


def test_channel_change_while_a_port_is_open_is_reported(env: AttachEnv) -> None:
    # The kernel refuses to shrink channels below a queue with an AF_XDP socket bound;
    # growing is allowed, and frames of the new queue would bypass the port's rings.
    v = env.pair(queues=4)
    sh(v.ns_b, f"ethtool -L {v.b} tx 2")
    sh(v.ns_a, f"ethtool -L {v.a} rx 2 tx 2")
    with open_port(f"netmap:{v.a}", netns=v.ns_a) as port:
        assert len(port.rx_rings) == 2
        assert port.poll(rx=True, timeout=0.3) == 0  # no change: no error
        sh(v.ns_a, f"ethtool -L {v.a} rx 3")
        with pytest.raises(InterfaceChangedError) as ei:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                if port.poll(rx=True, timeout=0.5):
                    for r in port.rx_rings:  # stray frames: release them, keep polling
                        r.head = r.cur = r.tail
        assert str(ei.value) == (
            f"netmap:{v.a}: {v.a} channels changed from rx 2, tx 2 to rx 3, tx 2; reopen the port"
        )
        with pytest.raises(InterfaceChangedError, match="channels changed"):
            time.sleep(0.15)
            port.poll(rx=True, timeout=0.5)  # and keeps saying so


def test_status_shows_this_process_rings_and_statistics(env: AttachEnv) -> None:
    v = env.pair()
    with open_port(f"netmap:{v.a}", netns=v.ns_a) as port:
        v.send_on_queue([frame(v.mac("a"), v.mac("b"), i) for i in range(3)], 1)
        deadline = time.monotonic() + 3
        while port.rx_rings[1].space() < 3 and time.monotonic() < deadline:
            port.poll(rx=True, timeout=0.2)
        st = status(v.a, netns=v.ns_a, ports=[port])["interfaces"][0]
        assert not st["pinned"] and st["attach"] is None
        q1 = st["queues"][1]
        assert q1["owner_pid"] == os.getpid() and q1["owner_alive"] is True
        rx = [r for r in q1["rings"] if r["kind"] == "rx"][0]
        assert rx["user_slots"] >= 3 and rx["tail"] == port.rx_rings[1].tail
        assert rx["kernel_slots"] == rx["num_slots"] - 1 - rx["user_slots"]
        assert {
            "rx_dropped",
            "rx_invalid_descs",
            "tx_invalid_descs",
            "rx_ring_full",
            "rx_fill_ring_empty_descs",
            "tx_ring_empty_descs",
        } <= set(rx["afxdp"])
        assert st["afxdp_statistics"] == "shown per ring for the ports of this process"
