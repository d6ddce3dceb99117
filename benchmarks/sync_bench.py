"""Per-sync cost of the netmap ring implementations: one-slot and 512-slot txsync/rxsync.

    .venv/bin/python benchmarks/sync_bench.py [--iters 20000] [--no-kernel]

On FakeXsk (no kernel, no root): the compiled core (CRing) and the numpy reference model
(PyRing), each sync timed alone while the fake kernel completes TX and delivers RX in
bulk between syncs. Targets: <= 2 us for one slot, <= 20 us for 512.

On a real socket (root: a veth pair in two namespaces made and removed here, copy mode):
the same syncs on a port, and next to them the bare system call a sync issues (sendto
with nothing queued, recvfrom), so the kernel's share is visible: a TX sync's kernel work
(building and sending the skbs) is the whole sync minus the ring core's cost on FakeXsk.
Medians in microseconds; JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from vtnet_py.netmap.fakexsk import fake_rings  # noqa: E402
from vtnet_py.netmap.ring import CRing, PyRing, Ring  # noqa: E402

BATCHES = (1, 512)
SLOTS = 2048  # room for one batch in flight and the next one queued
FRAME = 60


def _median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000


def fake_tx(cls: type[Ring], k: int, iters: int) -> float:
    _, xsk, _, tx = fake_rings(cls, 2, SLOTS, need_wakeup=False)
    tx.slot["len"][:] = FRAME
    out = []
    clock = time.perf_counter_ns
    for _ in range(iters):
        tx.head = tx.cur = tx.next(tx.head, k)
        t0 = clock()
        tx.txsync()
        out.append(clock() - t0)
        xsk.echo_tx()
    return _median_us(out)


def fake_rx(cls: type[Ring], k: int, iters: int) -> float:
    _, xsk, rx, _ = fake_rings(cls, SLOTS, 2, need_wakeup=False)
    out = []
    clock = time.perf_counter_ns
    for _ in range(iters):
        xsk.deliver_bulk(k, FRAME)
        t0 = clock()
        got = rx.rxsync()  # releases the previous batch, takes this one
        out.append(clock() - t0)
        assert got == k, (got, k)
        rx.head = rx.cur = rx.tail
    return _median_us(out)


def kernel_figures(iters: int) -> dict[str, Any]:
    import run as suite

    from vtnet_py import open_port

    res: dict[str, Any] = {}
    with suite.veth_pair() as p:
        mac_b = bytes.fromhex(p.mac("b").replace(":", ""))
        frame = mac_b + bytes(6) + b"\x88\xb5" + bytes(FRAME - 14)
        with open_port(f"netmap:{p.a}@conf:slots=1024", netns=p.ns_a) as port:
            tx = port.tx_rings[0]
            tx.slot["len"][:] = FRAME
            port.bufs[tx.slot["buf_idx"]][:, :FRAME] = list(frame)
            sock = port._sockets[0].sock
            assert sock is not None
            clock = time.perf_counter_ns
            for k in BATCHES:
                out = []
                for _ in range(max(iters // (1 + k // 16), 200)):
                    tx.head = tx.cur = tx.next(tx.head, k)
                    t0 = clock()
                    tx.txsync()
                    out.append(clock() - t0)
                    while tx.space() < k:
                        tx.txsync()
                res[f"kernel txsync {k}"] = _median_us(out)
            bare = []
            for _ in range(iters):
                t0 = clock()
                try:
                    sock.send(b"", socket.MSG_DONTWAIT)
                except OSError:
                    pass
                bare.append(clock() - t0)
            res["bare sendto (nothing queued)"] = _median_us(bare)
            bare = []
            for _ in range(iters):
                t0 = clock()
                try:
                    sock.recv(0, socket.MSG_DONTWAIT)
                except OSError:
                    pass
                bare.append(clock() - t0)
            res["bare recvfrom"] = _median_us(bare)
            # RX: the peer sends k frames (not timed), then one rxsync takes them; its one
            # socket hashes to one queue, so one ring gets them all
            peer = _peer_socket(p.ns_b, p.b)
            try:
                peer.send(frame)
                port.poll(rx=True, timeout=2.0)
                rx = next(r for r in port.rx_rings if r.space())
                rx.head = rx.cur = rx.tail
                for k in (1, 64):
                    out = []
                    for _ in range(max(iters // (1 + k), 200)):
                        for _ in range(k):
                            peer.send(frame)
                        deadline = time.monotonic() + 1
                        while rx.waiting() < k and time.monotonic() < deadline:
                            pass
                        t0 = clock()
                        got = rx.rxsync()
                        out.append(clock() - t0)
                        rx.head = rx.cur = rx.tail
                        if got < k:
                            continue
                    res[f"kernel rxsync {k}"] = _median_us(out)
            finally:
                peer.close()
            port.check_invariant()
    return res


def _peer_socket(ns: str, ifname: str) -> socket.socket:
    from vtnet_py._sys.netns import netns

    with netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((ifname, 0))
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--no-kernel", action="store_true", help="FakeXsk figures only")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res: dict[str, Any] = {}
    for name, cls in (("C", CRing), ("py", PyRing)):
        for k in BATCHES:
            iters = a.iters if name == "C" else max(a.iters // 10, 500)
            res[f"fake txsync {k} ({name})"] = fake_tx(cls, k, iters)
            res[f"fake rxsync {k} ({name})"] = fake_rx(cls, k, iters)
    if not a.no_kernel:
        if os.geteuid() != 0:
            print("sync_bench: the kernel figures need root (--no-kernel)", file=sys.stderr)
        else:
            res.update(kernel_figures(a.iters // 4))
    if a.json:
        print(json.dumps(res))
    else:
        for key, us in res.items():
            print(f"{key:40s} {us:8.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
