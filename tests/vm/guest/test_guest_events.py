"""Interface events on a real virtio_net NIC while a port owns its queues (main profile).

The kernel tests cover these on veth; here the driver is the one the project is named
after. Link down/up and an MTU change (within the single-buffer XDP limit) while a port
owns every RX queue: the port keeps working (the host's pings still end in its rings),
and kill -9 of the owner still gives the queues back to the stack within 1 s, with no XDP
program left.
"""

from __future__ import annotations

import subprocess
import time

import guestlib
from test_guest_ownership import RETURN_WITHIN_S, Owner, host_ping, owner_factory  # noqa: F401


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _still_owns(o: Owner, link: guestlib.HostLink) -> None:
    o.read(0.5)
    before = int(o.last.get("echo", 0))
    p = host_ping(link, 3)
    assert "3 packets transmitted, 0 received" in p.stdout, p.stdout + p.stderr
    o.read(1.5)
    assert "error" not in o.last, o.last["error"]
    assert int(o.last.get("echo", 0)) >= before + 3, (before, o.last)


def _kill_and_check(o: Owner, iface: str, link: guestlib.HostLink) -> None:
    t0 = time.monotonic()
    o.kill9()
    p = host_ping(link, 1)
    took = time.monotonic() - t0
    assert p.returncode == 0 and "1 received" in p.stdout, p.stdout + p.stderr
    assert took < RETURN_WITHIN_S, f"the stack answered {took:.2f}s after kill -9"
    assert guestlib.xdp_mode(iface) == 0


def test_link_down_up_while_owned(
    iface: str, host_link: guestlib.HostLink, owner_factory: list[Owner]
) -> None:
    o = Owner(iface)
    owner_factory.append(o)
    o.wait_ready(120)
    _still_owns(o, host_link)
    _ip("link", "set", iface, "down")
    time.sleep(0.5)
    _ip("link", "set", iface, "up")
    time.sleep(1.0)
    _still_owns(o, host_link)  # the port survived the bounce and still takes every frame
    _kill_and_check(o, iface, host_link)


def test_mtu_change_while_owned(
    iface: str, host_link: guestlib.HostLink, owner_factory: list[Owner]
) -> None:
    o = Owner(iface)
    owner_factory.append(o)
    o.wait_ready(120)
    try:
        _ip("link", "set", iface, "mtu", "2000")  # below virtio_net's XDP limit (4064)
        _still_owns(o, host_link)
        _ip("link", "set", iface, "mtu", "1500")
        _still_owns(o, host_link)
        _kill_and_check(o, iface, host_link)
    finally:
        _ip("link", "set", iface, "mtu", "1500")
