"""Exhausted resources and overlapping requests at open.

Out of file descriptors at any step of an open: one ResourceError line naming the port
and the limit, and not one fd left behind by the failed open (every step done is undone).
The sweep lowers RLIMIT_NOFILE one fd at a time in a child process, so every acquire
step that makes an fd fails once. Overlapping opens in one process (the same queue in
two ports, ``/R`` and ``/T`` of one queue) are refused naming what overlaps.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from nettest import VethPair, kernel

from vtnet_py import BusyError, Memory, open_port

pytestmark = kernel

SWEEP = textwrap.dedent(
    """
    import gc, os, resource, sys
    from vtnet_py import ResourceError, open_port

    name, ns = sys.argv[1], sys.argv[2]
    with open_port(name, netns=ns) as p:  # warm-up: imports, compiled programs
        p.check_invariant()

    def fds():
        return sorted(os.listdir("/proc/self/fd"))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(int(fd) for fd in fds())
    for extra in range(0, 60):
        before = fds()
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1 + extra, hard))
        try:
            port = open_port(name, netns=ns)
        except ResourceError as exc:
            port, msg = None, str(exc)
        except Exception as exc:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            print(f"OTHER {extra} {type(exc).__name__}: {exc}", flush=True)
            sys.exit(1)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if port is not None:
            port.check_invariant()
            port.close()
        gc.collect()  # a library object half made when the limit hit, in a reference cycle
        after = fds()
        if after != before:
            print(f"LEAK {extra} {sorted(set(after) - set(before))}", flush=True)
            sys.exit(1)
        if port is not None:
            print(f"OPENED {extra}", flush=True)
            break
        print(f"REFUSED {extra} {msg}", flush=True)
    """
)


@pytest.mark.parametrize("suffix", ["", "*"])
def test_out_of_fds_at_every_step_leaks_nothing_and_says_so(veth: VethPair, suffix: str) -> None:
    name = f"netmap:{veth.a}{suffix}"
    p = subprocess.run(
        [sys.executable, "-c", SWEEP, name, veth.ns_a],
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = p.stdout.splitlines()
    assert p.returncode == 0, p.stdout + p.stderr
    refused = [ln for ln in lines if ln.startswith("REFUSED")]
    assert lines[-1].startswith("OPENED"), lines
    assert len(refused) >= 3, lines  # device, steering, sockets, ... each failed once
    steps = set()
    for ln in refused:
        msg = ln.split(" ", 2)[2]
        assert "\n" not in msg
        assert msg.startswith(f"{name}: "), msg
        assert "out of file descriptors (RLIMIT_NOFILE" in msg, msg
        steps.add(msg.split(": ")[1])
    assert len(steps) >= 3, steps  # the failure moved through the steps
    assert not veth.xdp_attached("a")


def test_one_queue_in_two_ports_of_one_process(veth: VethPair) -> None:
    with open_port(f"netmap:{veth.a}-0/R", netns=veth.ns_a):
        with pytest.raises(
            BusyError,
            match=rf"netmap:{veth.a}-0/T: {veth.a} queue 0 is already open in this "
            rf"process as netmap:{veth.a}-0/R",
        ):
            open_port(f"netmap:{veth.a}-0/T", netns=veth.ns_a)
        with pytest.raises(BusyError, match="queue 0 is already open in this process"):
            open_port(f"netmap:{veth.a}", netns=veth.ns_a)
        with open_port(f"netmap:{veth.a}-1", netns=veth.ns_a) as other:  # no overlap
            other.check_invariant()
    with open_port(f"netmap:{veth.a}-0/T", netns=veth.ns_a) as p:  # released by close
        p.check_invariant()


def test_two_ports_on_one_memory_naming_the_same_queue(veth: VethPair) -> None:
    """What a bridge given the same port twice does: the second open says what overlaps."""
    mem = Memory(8192)
    with open_port(f"netmap:{veth.a}-1", netns=veth.ns_a, memory=mem) as first:
        with pytest.raises(BusyError, match=rf"queue 1 is already open .* netmap:{veth.a}-1"):
            open_port(f"netmap:{veth.a}-1", netns=veth.ns_a, memory=mem)
        first.check_invariant()
