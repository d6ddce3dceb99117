"""netmap's rule for the stack's egress on a real virtio_net NIC (main profile; on 6.1
the egress program is a cls_bpf filter, on 6.12 a tcx link).

While NIC TX rings of eth0 are open and nobody holds its host RX ring, nothing the guest's
stack transmits reaches the wire (the drops are counted); after the port closes, and with
an RX-only port open, it does. The host counts the guest's UDP datagrams on the TAP side.
"""

from __future__ import annotations

import socket
import time

import guestlib

from vtnet_py import open_port

# Host side: count UDP datagrams to ADDR:PORT until IDLE s pass without one; print it.
HOST_UDP_COUNT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("READY", flush=True)
s.settimeout(float(sys.argv[3]))
n = 0
try:
    while True:
        s.recv(2048)
        n += 1
except OSError:
    pass
print(n, flush=True)
"""
COUNT = 10


def datagrams_reaching_host(link: guestlib.HostLink, port: int) -> int:
    """COUNT datagrams from the guest's stack to the host; how many the host received."""
    h = link.spawn(["python3", "-c", HOST_UDP_COUNT, guestlib.HOST_IP, str(port), "3"])
    time.sleep(1.5)  # the receiver binds (the host link has no readiness signal)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(COUNT):
            s.sendto(b"guest-%d" % i, (guestlib.HOST_IP, port))
            time.sleep(0.02)
    finally:
        s.close()
    r = link.wait(h, timeout=30)
    return int(r.stdout.split()[-1])


def test_nic_tx_rings_cut_the_guest_stack_off_the_wire(
    restore_iface: str, host_link: guestlib.HostLink
) -> None:
    iface = restore_iface
    assert datagrams_reaching_host(host_link, 5301) == COUNT
    with open_port(f"netmap:{iface}") as port:
        assert datagrams_reaching_host(host_link, 5302) == 0
        assert port.stats()["stack_egress"]["stack_cut_dropped"] >= COUNT
    assert datagrams_reaching_host(host_link, 5303) == COUNT
    with open_port(f"netmap:{iface}/R") as port:
        assert datagrams_reaching_host(host_link, 5304) == COUNT
        assert "stack_egress" not in port.stats()
