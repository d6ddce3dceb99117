"""`vtnetmap demo` and its sandbox: it runs, a killed demo's namespaces are removed by the
next demo, and a name collision never touches another sandbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from vtnet_py.apps import netlab
from vtnet_py.apps.netlab import NETNS_RUN_DIR
from vtnet_py.apps.sandbox import Sandbox, owner_of, remove_orphans
from vtnet_py.errors import DeviceError

pytestmark = pytest.mark.kernel

DEMO = [sys.executable, "-m", "vtnetmap_cli", "demo"]


def exists(ns: str) -> bool:
    return os.path.lexists(os.path.join(NETNS_RUN_DIR, ns))


def test_demo_command_runs_in_a_sandbox() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "vtnetmap_cli", "demo", "-t", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "packet 0:" in r.stdout and "Mpps" in r.stdout


def test_a_killed_demos_namespaces_are_removed_by_the_next_demo() -> None:
    p = subprocess.Popen(
        [*DEMO, "-t", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # kill -9 the demo and its transmitting child together
    )
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        while line.startswith("removed namespace "):  # other demos' leftovers go first
            line = p.stdout.readline()
        assert line.startswith("sandbox: "), line + (p.stderr.read() if p.stderr else "")
        # "sandbox: NS_TX/IF_TX --veth--> NS_RX/IF_RX"
        words = line.split()
        ns_tx, ns_rx = words[1].split("/")[0], words[3].split("/")[0]
        assert owner_of(ns_tx) == p.pid and owner_of(ns_rx) == p.pid
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert exists(ns_tx) and exists(ns_rx), "kill -9 runs no cleanup: both must be left"
    r = subprocess.run([*DEMO, "-t", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not exists(ns_tx) and not exists(ns_rx)
    for ns in (ns_tx, ns_rx):
        assert f"removed namespace {ns} of a sandbox whose owner is gone" in r.stdout


@pytest.fixture
def fixed_tags(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The random tags NetLab draws, in order, from a list the test fills; the last one
    repeats forever."""
    tags: list[str] = []
    monkeypatch.setattr(netlab, "random_tag", lambda: tags.pop(0) if len(tags) > 1 else tags[0])
    yield tags


def test_a_name_collision_takes_another_name_and_leaves_the_other_sandbox(
    fixed_tags: list[str],
) -> None:
    fixed_tags += ["beef01", "beef01", "cafe02"]
    with Sandbox.create() as first:
        with Sandbox.create() as second:
            assert first.ns_rx.endswith("-beef01r") and second.ns_rx.endswith("-cafe02r")
            assert exists(first.ns_rx) and exists(first.ns_tx)
        assert not exists(second.ns_rx) and not exists(second.ns_tx)
        assert exists(first.ns_rx) and exists(first.ns_tx)
        assert first.ns_rx not in remove_orphans(), "a live owner's sandbox is no orphan"
        assert exists(first.ns_rx)
    assert not exists(first.ns_rx) and not exists(first.ns_tx)


def test_a_create_that_finds_every_name_taken_removes_nothing_of_the_other(
    fixed_tags: list[str],
) -> None:
    fixed_tags.append("beef03")
    with Sandbox.create() as first:
        with pytest.raises(DeviceError, match="every name tried is taken"):
            Sandbox.create()
        assert exists(first.ns_rx) and exists(first.ns_tx)
        # and the other sandbox still works: its veth is there and up
        assert netlab.link_state(first.ns_rx, first.if_rx).up
    assert not exists(first.ns_rx) and not exists(first.ns_tx)


def test_orphans_are_only_sandboxes_of_dead_owners() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert owner_of(f"vtdemo-{dead.pid}-abcdefr") == dead.pid
    assert owner_of("vtdemo-12-abcdefx") is None and owner_of("vtdemo12abr") is None
    with netlab.NetLab(f"vtdemo-{dead.pid}-") as lab:
        gone = lab.namespace("t")
        with netlab.NetLab(f"vtdemo-{os.getpid()}-") as live_lab:
            live = live_lab.namespace("t")
            removed = remove_orphans()
            assert gone in removed and live not in removed
            assert not exists(gone) and exists(live)
