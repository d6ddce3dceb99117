"""Bridge throughput NIC to NIC: vtnetmap's bridge next to a plain AF_XDP forwarding loop.

    sudo .venv/bin/python benchmarks/bridge_bench.py [--reps 3] [--secs 3]

Topology (namespaces made here with vtnet_py.apps.netlab, prefix ``vttbb<pid>-``, removed
at the end, also on error or Ctrl-C)::

    gen: b1 ==veth== a1  [forwarder, in "mid"]  a2 ==veth== b2 :drop

The generator is the suite's C live-frames sender (``xsk_bench gen`` on b1, CPU 0, 64-byte
frames); b2 counts what arrives with the suite's XDP drop counter (``xsk_bench drop``).
Forwarders, one at a time in the same run, pinned to CPU 1, one queue per veth, every
ring 2048 entries deep (the bridge's ports opened with ``@conf:slots=2048``, the C
forwarder with ``-s 2048``, and each TX budget the ring size):

  bridge     vtnet_py.apps.bridge.Bridge between netmap:a1 and netmap:a2 sharing one Memory
             (zero copy: buf_idx swap), burst 512 -- what `vtnetmap bridge` runs
  bridge -c  the same with two memories (frames copied)
  plain      the same forwarding without the netmap layer: the AF_XDP rings of the two
             sockets (one UMEM) driven directly with numpy: RX descriptors of a1 become
             TX descriptors of a2, a2's completions go back to a1's FILL ring

Each forwarder reports the frames it forwarded and the time from the first to the last;
the drop counter's figure (frames that reached b2) is printed next to it. The C programs
come from benchmarks/run.py's build (compiled on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as suite  # noqa: E402  (benchmarks/run.py: build, C binaries, process helpers)

from vtnet_py.apps.netlab import NetLab, link_state  # noqa: E402

PY = sys.executable
BURST = 512
RING = 2048  # slots of every ring, in every forwarder (the bridge's via @conf:slots)


# -- forwarders (run as `bridge_bench.py --worker KIND A1 A2 SECS`, inside "mid") ----------


def _idle_done(first: float | None, last: float, secs: float) -> bool:
    now = time.monotonic()
    return first is not None and (now - last > 1.0 or now - first > secs)


def worker_bridge(a1: str, a2: str, secs: float, copy: bool) -> dict[str, Any]:
    import io

    from vtnet_py.apps.bridge import Bridge, open_pair

    conf = f"@conf:slots={RING}"
    a, b, mem = open_pair(f"netmap:{a1}{conf}", f"netmap:{a2}{conf}", copy=copy, out=io.StringIO())
    try:
        br = Bridge(a, b, burst=BURST, zerocopy=not copy, out=io.StringIO())
        print("READY", flush=True)
        first: float | None = None
        last = time.monotonic()
        start_pk = 0
        deadline = time.monotonic() + secs + 30
        while time.monotonic() < deadline and not _idle_done(first, last, secs):
            if br.step(timeout_ms=100):
                last = time.monotonic()
                if first is None:
                    first, start_pk = last, br.a2b.packets
        pk = br.a2b.packets - start_pk
        span = (last - first) if first is not None else 0.0
        return {
            "pkts": pk,
            "seconds": span,
            "pps": pk / span if span else 0.0,
            "zerocopy": br.zerocopy,
            "avg_batch": br.a2b.packets / max(br.a2b.batches, 1),
        }
    finally:
        b.close()
        a.close()
        if mem is not None:
            mem.close()


def worker_plain(a1: str, a2: str, secs: float) -> dict[str, Any]:
    """a1 RX -> a2 TX on bare AF_XDP rings (one UMEM), numpy batches, poll() when idle."""
    import numpy as np

    from vtnet_py.device.netlink import read_device
    from vtnet_py.ebpf.steer import Steering
    from vtnet_py.netmap.xsk import CHUNK_SIZE, Umem, XskSocket, ring_sizes

    n = RING  # every buffer starts on a1's FILL ring; TX reuses the RX buffers in place
    umem = Umem(n)
    i1, i2 = read_device(a1).ifindex, read_device(a2).ifindex
    rxs = XskSocket(
        ifname=a1,
        ifindex=i1,
        queue=0,
        umem=umem,
        share_with=None,
        sizes=ring_sizes(n, 0),
        zerocopy=False,
        frags=False,
    )
    txs = XskSocket(
        ifname=a2,
        ifindex=i2,
        queue=0,
        umem=umem,
        share_with=rxs,
        sizes=ring_sizes(0, n),
        zerocopy=False,
        frags=False,
    )
    steer = Steering.acquire(a1, i1, mode=None, frags=False)
    try:
        steer.claim(0, rxs.fileno())
        fill, rx, tx, comp = rxs.fill, rxs.rx, txs.tx, txs.comp
        assert fill is not None and rx is not None and tx is not None and comp is not None
        fill.desc[fill.slots(n)] = np.arange(n, dtype=np.uint64) * CHUNK_SIZE
        fill.submit(n)
        mask = np.uint64(~(CHUNK_SIZE - 1) & 0xFFFFFFFFFFFFFFFF)
        poller = select.poll()
        poller.register(rxs.fileno(), select.POLLIN)
        fwd = 0
        first: float | None = None
        last = time.monotonic()
        print("READY", flush=True)
        deadline = time.monotonic() + secs + 30
        while time.monotonic() < deadline and not _idle_done(first, last, secs):
            got = min(rx.available(), BURST)
            if got:
                d = rx.desc[rx.slots(got)]
                m = min(got, tx.free())
                tx.desc[tx.slots(m)] = d[:m]
                tx.submit(m)
                if m < got:  # no room: straight back to FILL (dropped)
                    fill.desc[fill.slots(got - m)] = d["addr"][m:] & mask
                    fill.submit(got - m)
                rx.release(got)
                fwd += m
                last = time.monotonic()
                if first is None:
                    first, fwd = last, m
            while tx.pending():  # copy mode sends a few dozen frames per sendto()
                before = int(tx.consumer[0])
                txs.kick_tx()
                if int(tx.consumer[0]) == before:
                    break
            c = comp.available()
            if c:
                addrs = comp.desc[comp.slots(c)].copy()
                comp.release(c)
                fill.desc[fill.slots(c)] = addrs & mask
                fill.submit(c)
                if fill.needs_wakeup():
                    rxs.wake_rx()
            if not got and not c and not tx.pending():
                poller.poll(100)
        span = (last - first) if first is not None else 0.0
        return {
            "pkts": fwd,
            "seconds": span,
            "pps": fwd / span if span else 0.0,
            "rx_kernel": rxs.statistics(),
        }
    finally:
        steer.unclaim(0)
        rxs.close()
        txs.close()
        steer.release()
        umem.close()


# -- the run -------------------------------------------------------------------------------


class Topology:
    """gen b1 == a1 [mid] a2 == b2 drop, made by ``lab`` (removed with it)."""

    def __init__(self, lab: NetLab) -> None:
        self.ns = {k: lab.namespace(k) for k in ("gen", "mid", "drop")}
        tag = lab.tag
        self.a1, self.b1, self.a2, self.b2 = (f"vtbb{tag}{x}" for x in ("a1", "b1", "a2", "b2"))
        lab.veth(self.ns["mid"], self.a1, self.ns["gen"], self.b1, queues=1)
        lab.veth(self.ns["mid"], self.a2, self.ns["drop"], self.b2, queues=1)

    def has_xdp(self, ns: str, dev: str) -> bool:
        return link_state(ns, dev).xdp


def one_case(t: Topology, kind: str, secs: float) -> dict[str, Any]:
    drop = suite.start(
        t.ns["drop"],
        [suite.XSK, "drop", "-i", t.b2, "-o", suite.BPF_OBJ, "-t", str(secs + 30)],
        cpu=0,
    )
    fwd = None
    try:
        suite.wait_for(
            lambda: t.has_xdp(t.ns["drop"], t.b2) or drop.poll() is not None, 30, "the drop counter"
        )
        if kind == "cfwd":  # the C reference: xsk_bench fwd, same rings, batch and budget
            cmd = [suite.XSK, "fwd", "-i", t.a1, "-O", t.a2, "-o", suite.BPF_OBJ]
            cmd += ["-t", str(secs), "-s", str(RING), "-b", str(BURST), "-k", str(RING)]
        else:
            cmd = [PY, __file__, "--worker", kind, t.a1, t.a2, str(secs)]
        for attempt in range(3):
            fwd = suite.start(t.ns["mid"], cmd, cpu=1)
            assert fwd.stdout is not None
            line = fwd.stdout.readline()
            if line.startswith("READY"):
                break
            err = fwd.stderr.read() if fwd.stderr else ""
            fwd.wait()
            # xsk_bench's libxdp set-up sometimes finds a fresh FILL ring off by one right
            # after the previous case's sockets (it retries inside); a new process clears it
            if attempt == 2 or "filling the fill ring" not in err:
                raise RuntimeError(f"{kind} forwarder failed: {line}{err}")
            print(f"  ({kind}: set-up failed, {err.strip()}; starting it again)", file=sys.stderr)
        time.sleep(0.3)
        gen = suite.run_json(
            t.ns["gen"], [suite.XSK, "gen", "-i", t.b1, "-o", suite.BPF_OBJ, "-t", str(secs)], cpu=0
        )
        out, _ = suite.finish(fwd, timeout=secs + 60)
        r = suite.last_json(out)
        dout, _ = suite.finish(drop, timeout=secs + 40)
        d = suite.last_json(dout)
    finally:
        for p in (fwd, drop):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    r.update(gen_pps=gen["pps"], gen_pkts=gen["pkts"], peer_pkts=d["pkts"], peer_pps=d["pps"])
    return r


CASES = {
    "bridge": "bridge (zero copy)",
    "bridge-c": "bridge -c (copy)",
    "plain": "plain AF_XDP loop",
    "cfwd": "C AF_XDP forwarder",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--secs", type=float, default=3.0)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument(
        "--worker", nargs=4, metavar=("KIND", "A1", "A2", "SECS"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.worker:
        kind, a1, a2, secs = args.worker
        if kind == "plain":
            res = worker_plain(a1, a2, float(secs))
        else:
            res = worker_bridge(a1, a2, float(secs), copy=kind == "bridge-c")
        print(json.dumps(res), flush=True)
        return 0
    suite.build()
    cases = [c for c in args.cases.split(",") if c]
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    with NetLab(f"vttbb{os.getpid()}-") as lab:
        t = Topology(lab)
        for rep in range(args.reps):
            for c in cases:
                r = one_case(t, c, args.secs)
                results[c].append(r)
                print(
                    f"rep {rep + 1} {CASES[c]:20s} {r['pps'] / 1e6:6.3f} Mpps forwarded "
                    f"({r['pkts']} in {r['seconds']:.2f} s); peer counted "
                    f"{r['peer_pkts']}; generator {r['gen_pps'] / 1e6:.3f} Mpps",
                    flush=True,
                )
    print()
    print(f"{'forwarder':22s} {'median Mpps':>11s}  runs")
    for c in cases:
        pps = [r["pps"] / 1e6 for r in results[c]]
        print(f"{CASES[c]:22s} {statistics.median(pps):11.3f}  {' '.join(f'{x:.3f}' for x in pps)}")
    if "bridge" in results and "plain" in results:
        ratio = statistics.median(r["pps"] for r in results["bridge"]) / statistics.median(
            r["pps"] for r in results["plain"]
        )
        print(f"bridge / plain AF_XDP loop: {ratio:.2f}")
    if "bridge" in results and "cfwd" in results:
        ratio = statistics.median(r["pps"] for r in results["bridge"]) / statistics.median(
            r["pps"] for r in results["cfwd"]
        )
        print(f"bridge / C AF_XDP forwarder: {ratio:.2f}")
    out = HERE / "results" / f"bridge-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"raw figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
