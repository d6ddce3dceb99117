"""Fork safety: a port belongs to the process that opened it.

A forked child shares the port's fds; as in netmap, only the opener's close releases the
rings. A child that exits normally (interpreter shutdown runs finalizers, and a careless
child may even call ``close()``) must not take the queue away from the parent; a
``multiprocessing`` child (fork context) that opens its own port on another queue works
while the parent keeps receiving. Frames are counted exactly.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from nettest import VethPair, kernel

from vtnet_py import Port, open_port

pytestmark = kernel

ETHERTYPE = b"\x88\xb6"

# Opens netmap:IF-0/R, counts our frames; at BEFORE frames it forks a child that closes
# the inherited port and exits normally (sys.exit: finalizers run), then counts on.
FORKER = textwrap.dedent(
    """
    import os, sys, time
    from vtnet_py import open_port

    name, ns, before, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    port = open_port(name, netns=ns)
    print("OPEN", flush=True)
    got = 0

    def count(upto, limit):
        global got
        deadline = time.monotonic() + limit
        while got < upto and time.monotonic() < deadline:
            port.poll(rx=True, timeout=0.1)
            for r in port.rx_rings:
                n = r.space()
                for i in r.slots_from_head(n):
                    b = port.buf(int(r.slot["buf_idx"][i]))
                    got += bytes(b[12:14]) == bytes.fromhex("88b6")
                r.head = r.cur = r.next(r.head, n)

    count(before, 10.0)
    pid = os.fork()
    if pid == 0:
        port.close()  # a careless child: must release nothing of the parent's
        del port
        sys.exit(0)  # a normal exit: interpreter shutdown, finalizers
    _, status = os.waitpid(pid, 0)
    print(f"FORKED {got} child status {status}", flush=True)
    count(total, 10.0)
    print(f"TOTAL {got} owner {port.owner_of(0) == os.getpid()}", flush=True)
    port.check_invariant()
    port.close()
    """
)


def frames(veth: VethPair, n: int, first: int = 0) -> list[bytes]:
    dst, src = veth.mac("a"), veth.mac("b")
    return [dst + src + ETHERTYPE + (first + i).to_bytes(4, "big") + bytes(46) for i in range(n)]


def test_a_forked_child_exiting_leaves_the_parent_receiving(veth: VethPair) -> None:
    before, after = 40, 60
    p = subprocess.Popen(
        [sys.executable, "-c", FORKER, f"netmap:{veth.a}-0/R", veth.ns_a, str(before)]
        + [str(before + after)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "OPEN"
        veth.send_on_queue(frames(veth, before), 0)
        line = p.stdout.readline().split()
        assert line[:2] == ["FORKED", str(before)] and line[-1] == "0", line
        veth.send_on_queue(frames(veth, after, before), 0)
        out, err = p.communicate(timeout=30)
        # every frame sent after the child exited arrived: nothing went to the kernel
        assert out.split() == ["TOTAL", str(before + after), "owner", "True"], out + err
        assert p.returncode == 0, err
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert not veth.xdp_attached("a")  # the parent's close released everything


def receive_count(port: Port, want: int, limit: float = 10.0) -> int:
    got = 0
    deadline = time.monotonic() + limit
    while got < want and time.monotonic() < deadline:
        port.poll(rx=True, timeout=0.1)
        for r in port.rx_rings:
            n = r.space()
            idx = r.slots_from_head(n)
            types = port.bufs[r.slot["buf_idx"][idx].astype(np.intp), 12:14]
            got += int((types == np.frombuffer(ETHERTYPE, np.uint8)).all(axis=1).sum())
            r.head = r.cur = r.next(r.head, n)
    return got


def _child_opens_queue_1(name: str, ns: str, want: int, conn: object) -> None:
    port = open_port(name, netns=ns)
    conn.send("open")  # type: ignore[attr-defined]
    got = receive_count(port, want)
    port.check_invariant()
    port.close()
    conn.send(got)  # type: ignore[attr-defined]


def test_a_multiprocessing_child_opens_its_own_port_on_another_queue(veth: VethPair) -> None:
    ctx = multiprocessing.get_context("fork")
    with open_port(f"netmap:{veth.a}-0/R", netns=veth.ns_a) as port:
        veth.send_on_queue(frames(veth, 20), 0)
        assert receive_count(port, 20) == 20
        here, there = ctx.Pipe()
        child = ctx.Process(
            target=_child_opens_queue_1, args=(f"netmap:{veth.a}-1/R", veth.ns_a, 30, there)
        )
        child.start()
        try:
            assert here.poll(15) and here.recv() == "open"
            veth.send_on_queue(frames(veth, 30, 100), 1)
            veth.send_on_queue(frames(veth, 25, 200), 0)
            assert receive_count(port, 25) == 25  # the parent's queue, while the child runs
            assert here.poll(15) and here.recv() == 30
        finally:
            child.join(15)
            if child.exitcode is None:
                child.kill()
        assert child.exitcode == 0
        # after the child closed its port and exited, queue 0 is still the parent's
        veth.send_on_queue(frames(veth, 15, 300), 0)
        assert receive_count(port, 15) == 15
        assert port.owner_of(1) == 0 and port.owner_of(0) != 0
        port.check_invariant()
    assert not veth.xdp_attached("a")


@pytest.mark.parametrize("how", ["close", "del"])
def test_the_parent_still_receives_after_the_childs_close_or_finalizer(
    veth: VethPair, how: str
) -> None:
    """In-process variant: the child (multiprocessing fork) closes, or drops and collects,
    the port it inherited; exactly every frame sent afterwards reaches the parent."""
    ctx = multiprocessing.get_context("fork")
    with open_port(f"netmap:{veth.a}-0/R", netns=veth.ns_a) as port:
        child = ctx.Process(target=_drop_inherited, args=(port, how))
        child.start()
        child.join(15)
        assert child.exitcode == 0
        veth.send_on_queue(frames(veth, 50), 0)
        assert receive_count(port, 50) == 50
        port.check_invariant()


def _drop_inherited(port: Port, how: str) -> None:
    import gc

    if how == "close":
        port.close()
    else:
        port.__del__()  # what the finalizer runs at the child's exit
        del port
        gc.collect()


def test_the_finalizer_closes_fds_and_nothing_else(
    veth: VethPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port dropped without close: its finalizer makes no bpf() map change, opens no
    netlink socket and takes no lock (it may run inside a GC pass anywhere); the queue
    goes back to the kernel with the socket, and the next open works."""
    import gc

    from vtnet_py._sys import bpf
    from vtnet_py.ebpf.steer import Steering
    from vtnet_py.netmap import hosthelper, hostrings

    port = open_port(f"netmap:{veth.a}-0", netns=veth.ns_a)
    calls: list[str] = []

    def record(what: str) -> object:
        return lambda *a, **k: calls.append(what)

    class Lock:
        def __enter__(self) -> None:
            calls.append("lock")

        def __exit__(self, *exc: object) -> None:
            pass

    for mod, attr in ((bpf, "map_update"), (bpf, "map_delete")):
        monkeypatch.setattr(mod, attr, record(attr))
    for mod in (hostrings, hosthelper):
        monkeypatch.setattr(mod, "IPRoute", record("netlink"))
    monkeypatch.setattr(Steering, "_lock", Lock())
    del port
    gc.collect()
    assert calls == []
    monkeypatch.undo()
    veth.send_on_queue(frames(veth, 10), 0)  # the queue is the kernel's again: not lost
    with open_port(f"netmap:{veth.a}-0", netns=veth.ns_a) as again:
        veth.send_on_queue(frames(veth, 10), 0)
        assert receive_count(again, 10) == 10
