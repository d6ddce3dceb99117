"""Exclusive ownership of virtio_net queues, and kill -9 of the owner (main profile).

A process owning every RX queue of eth0 takes every frame: the host's pings reach its
rings, not the stack. kill -9 of that process gives the queues back to the kernel with
no help from anyone: the host's next ping is answered within 1 s. Without `vtnetmap
attach` the steering program dies with its last holder (no XDP left on the device);
with it, the program stays pinned and the queues return to the stack all the same.

The owner is a fork of this process (already importing vtnet_py and holding the compiled
program: no 7 s Python start-up under TCG); it never returns into pytest.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator

import guestlib
import numpy as np
import pytest

from vtnet_py import open_port
from vtnet_py.admin.attach import attach, detach
from vtnet_py.admin.status import status

RETURN_WITHIN_S = 1.0


def _owner_main(iface: str, w: int) -> None:
    """Child: open netmap:IF, say "ready", then count ICMP echo requests on its rings."""
    try:
        port = open_port(f"netmap:{iface}")
        os.write(w, f"ready {len(port.rx_rings)}\n".encode())
        seen = 0
        while True:
            port.poll(rx=True, timeout=0.2)
            for r in port.rx_rings:
                k = r.space()
                if not k:
                    continue
                b = port.bufs[r.slot["buf_idx"][r.slots_from_head(k)]]
                echo = (b[:, 12] == 8) & (b[:, 13] == 0) & (b[:, 23] == 1) & (b[:, 34] == 8)
                seen += int(np.count_nonzero(echo))
                r.head = r.cur = r.next(r.head, k)
            port.rxsync()
            os.write(w, f"echo {seen}\n".encode())
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
        os.write(w, f"error {type(exc).__name__}: {exc}\n".encode())
    finally:
        os._exit(1)


class Owner:
    """A forked port owner and the lines it reports."""

    def __init__(self, iface: str) -> None:
        r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(r)
            _owner_main(iface, w)
        os.close(w)
        self.fd = r
        self.buf = b""
        self.last: dict[str, str] = {}

    def read(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return
            self.buf += chunk
            *lines, self.buf = self.buf.split(b"\n")
            for ln in lines:
                k, _, v = ln.decode().partition(" ")
                self.last[k] = v
            if "error" in self.last:
                return

    def wait_ready(self, timeout: float) -> int:
        end = time.monotonic() + timeout
        while "ready" not in self.last:
            assert "error" not in self.last, f"port owner failed: {self.last['error']}"
            assert time.monotonic() < end, "port owner not ready"
            self.read(0.5)
        return int(self.last["ready"])

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.pid = 0

    def close(self) -> None:
        if self.pid:
            self.kill9()
        os.close(self.fd)


@pytest.fixture
def owner_factory(restore_iface: str) -> Iterator[list[Owner]]:
    owners: list[Owner] = []
    yield owners
    for o in owners:
        o.close()


def rx_queues(iface: str) -> int:
    return len([q for q in os.listdir(f"/sys/class/net/{iface}/queues") if q.startswith("rx-")])


def host_ping(
    link: guestlib.HostLink, count: int, wait_s: float = 1.0
) -> subprocess.CompletedProcess[str]:
    return link.run(
        ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", str(wait_s), guestlib.GUEST_IP],
        timeout=30,
    )


def own_then_kill(iface: str, link: guestlib.HostLink, owners: list[Owner]) -> float:
    """Start an owner, prove it owns every RX queue exclusively, kill -9 it. Returns the
    seconds from the kill to the host's first answered ping (sent after the kill)."""
    o = Owner(iface)
    owners.append(o)
    rings = o.wait_ready(120)
    nq = rx_queues(iface)
    assert rings == nq, f"the owner has {rings} RX rings for {nq} RX queues"
    queues = status(iface)["interfaces"][0]["queues"][:nq]
    assert {q["owner_pid"] for q in queues} == {o.pid}, queues

    # Owned: the host's pings end in the owner's rings, unanswered by the stack.
    p = host_ping(link, 3)
    assert "3 packets transmitted, 0 received" in p.stdout, p.stdout + p.stderr
    o.read(1.0)
    assert "error" not in o.last, o.last["error"]
    assert int(o.last.get("echo", 0)) >= 3, o.last

    t0 = time.monotonic()
    o.kill9()
    p = host_ping(link, 1)
    took = time.monotonic() - t0
    assert p.returncode == 0 and "1 received" in p.stdout, p.stdout + p.stderr
    print(f"kill -9 -> first answered host ping: {took:.2f}s (host link round trip included)")
    return took


def test_kill9_owner_returns_queues_and_program(
    iface: str, host_link: guestlib.HostLink, owner_factory: list[Owner]
) -> None:
    ch = guestlib.channels(iface)
    took = own_then_kill(iface, host_link, owner_factory)
    assert took < RETURN_WITHIN_S, f"the stack answered {took:.2f}s after kill -9"
    # The program was the dead process's (implicit attach): nothing of it is left, and
    # virtio_net has dropped its XDP queue pairs again.
    assert guestlib.xdp_mode(iface) == 0
    assert guestlib.channels(iface) == ch


def test_kill9_owner_of_attached_device(
    iface: str, host_link: guestlib.HostLink, owner_factory: list[Owner]
) -> None:
    attach(iface)
    try:
        prog = guestlib.link_info(iface)["xdp"]["prog"]["id"]
        took = own_then_kill(iface, host_link, owner_factory)
        assert took < RETURN_WITHIN_S, f"the stack answered {took:.2f}s after kill -9"
        # `vtnetmap attach`'s program stays, with no live owner; the queues are free.
        assert guestlib.link_info(iface)["xdp"]["prog"]["id"] == prog
        st = status(iface)["interfaces"][0]
        assert not any(q["owner_alive"] for q in st["queues"]), st["queues"]
        with open_port(f"netmap:{iface}") as port:
            assert {port.owner_of(q) for q in range(len(port.rx_rings))} == {os.getpid()}
    finally:
        detach(iface)
    assert guestlib.xdp_mode(iface) == 0
