"""Jumbo frames through a netmap port on virtio_net (main profile): at MTU 9000 a frame
spans several buffers, a chain of slots with NS_MOREFRAG (AF_XDP multi-buffer).

virtio_net takes multi-buffer XDP from Linux 6.3: there the host's 8000-byte ping arrives
on an RX ring as a chain of slots and this scenario answers it with a chain on a TX ring,
so the host's ping gets its reply from the netmap port (the guest's stack never sees the
request: every queue belongs to the port). Where the driver refuses (6.1), the same
``open_port`` is refused in the kernel's own words. Which case applies is probed
(``frags_at_9000``), not read from the kernel version.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import guestlib
import numpy as np
import pytest

from vtnet_py import NS_MOREFRAG, Port, RefusedError, open_port

MTU = 9000
PING_SIZE = 8000  # ICMP payload: an 8028-byte IPv4 packet, an 8042-byte Ethernet frame
FRAME_LEN = 14 + 20 + 8 + PING_SIZE


def _csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    s = int(np.frombuffer(data, ">u2").astype(np.uint64).sum())
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def echo_reply(request: bytes) -> bytes:
    """The ICMP echo reply to an Ethernet/IPv4 echo request, built here byte by byte."""
    ihl = (request[14] & 0x0F) * 4
    ip = bytearray(request[14 : 14 + ihl])
    ip[12:16], ip[16:20] = request[30:34], request[26:30]  # swap addresses
    ip[8] = 64  # TTL
    ip[10:12] = b"\0\0"
    ip[10:12] = _csum(bytes(ip)).to_bytes(2, "big")
    icmp = bytearray(request[14 + ihl :])
    icmp[0] = 0  # echo reply; code, id, sequence and payload as asked
    icmp[2:4] = b"\0\0"
    icmp[2:4] = _csum(bytes(icmp)).to_bytes(2, "big")
    return request[6:12] + request[0:6] + request[12:14] + bytes(ip) + bytes(icmp)


def receive_echo_request(port: Port, timeout: float) -> tuple[list[int], bytes]:
    """The first ICMP echo request from the host on any RX ring, reassembled from its
    chain of slots: (slot lengths, frame). Everything else received is released."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        port.poll(rx=True, timeout=0.5)
        for r in port.rx_rings:
            n = r.space()
            idx = r.slots_from_head(n)
            more = (r.slot["flags"][idx] & NS_MOREFRAG) != 0
            ends = np.flatnonzero(~more)
            if not ends.size:
                continue  # the chain's tail is still with the kernel
            take = int(ends[-1]) + 1
            start = 0
            found = None
            for e in ends:
                chain = idx[start : int(e) + 1]
                lens = [int(x) for x in r.slot["len"][chain]]
                frame = b"".join(
                    bytes(port.buf(int(b))[:ln])
                    for b, ln in zip(r.slot["buf_idx"][chain], lens, strict=True)
                )
                is_ping = (
                    frame[12:14] == b"\x08\x00"
                    and frame[23] == 1  # ICMP
                    and frame[26:30] == bytes(map(int, guestlib.HOST_IP.split(".")))
                    and frame[14 + (frame[14] & 0x0F) * 4] == 8  # echo request
                )
                if is_ping and found is None:
                    found = (lens, frame)
                start = int(e) + 1
            r.head = r.cur = r.next(r.head, take)
            port.rxsync()
            if found is not None:
                return found
    pytest.fail(f"no ICMP echo request from {guestlib.HOST_IP} within {timeout:.0f} s")


def put_chain(port: Port, data: bytes) -> int:
    """Write ``data`` into TX ring 0 from head, one full buffer per slot, NS_MOREFRAG on
    every slot but the last; returns the number of slots."""
    tx = port.tx_rings[0]
    size = port.nr_buf_size
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    idx = tx.slots_from_head(len(pieces))
    for i, piece in zip(idx, pieces, strict=True):
        port.buf(int(tx.slot["buf_idx"][i]))[: len(piece)] = np.frombuffer(piece, np.uint8)
    tx.slot["len"][idx] = [len(p) for p in pieces]
    tx.slot["flags"][idx] = [NS_MOREFRAG] * (len(pieces) - 1) + [0]
    tx.head = tx.cur = tx.next(tx.head, len(pieces))
    return len(pieces)


@pytest.fixture
def jumbo_link(restore_iface: str, host_link: guestlib.HostLink) -> Iterator[str]:
    """eth0 and the host's TAP at MTU 9000; both put back afterwards."""
    tap = host_link.info()["tap"]
    before = host_link.run(["cat", f"/sys/class/net/{tap}/mtu"]).stdout.strip()
    r = host_link.run(["ip", "link", "set", "dev", tap, "mtu", str(MTU)])
    assert r.returncode == 0, r.stderr
    try:
        assert guestlib.set_mtu(restore_iface, MTU).returncode == 0
        yield restore_iface
    finally:
        host_link.run(["ip", "link", "set", "dev", tap, "mtu", before or "1500"])


def test_jumbo_ping_answered_through_morefrag_chains(
    jumbo_link: str, host_link: guestlib.HostLink, frags_at_9000: bool, xdp_pass_obj: Path
) -> None:
    iface = jumbo_link
    if not frags_at_9000:
        # 6.1: no multi-buffer XDP in virtio_net. The kernel's words for the program
        # vtnetmap would attach (multi-buffer aware) must be in open_port's refusal.
        r = guestlib.xdp_attach(iface, xdp_pass_obj, sec=guestlib.SEC_XDP_FRAGS)
        assert r.returncode != 0, "the kernel took multi-buffer XDP at MTU 9000"
        words = guestlib.extack(r)
        assert words, r.stderr
        with pytest.raises(RefusedError) as exc:
            open_port(f"netmap:{iface}")
        assert words[0] in str(exc.value), (words, str(exc.value))
        assert guestlib.xdp_mode(iface) == 0
        return
    with open_port(f"netmap:{iface}") as port:
        assert port.frags and port.xdp_mode == "native", (port.frags, port.xdp_mode)
        ping = host_link.spawn(
            ["ping", "-c", "1", "-s", str(PING_SIZE), "-M", "do", "-W", "60", guestlib.GUEST_IP]
        )
        lens, request = receive_echo_request(port, timeout=60)
        # One frame, as long as it was sent, in as few full buffers as can hold it.
        assert len(request) == sum(lens) == FRAME_LEN, lens
        assert len(lens) == -(-FRAME_LEN // port.nr_buf_size) == 3, lens
        assert all(ln == port.nr_buf_size for ln in lens[:-1]), lens
        assert request[0:6] == bytes.fromhex(os.environ["VTVM_GUEST_MAC"].replace(":", ""))
        port.check_invariant()

        assert put_chain(port, echo_reply(request)) == 3
        port.txsync()
        end = time.monotonic() + 10
        while port.tx_rings[0].tx_pending() and time.monotonic() < end:
            port.poll(rx=False, tx=True, timeout=0.2)
        r = host_link.wait(ping, timeout=70)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "1 received" in r.stdout, r.stdout
        assert f"{PING_SIZE + 8} bytes from {guestlib.GUEST_IP}" in r.stdout, r.stdout
        port.check_invariant()
