"""TCP through the host rings: iperf3 across ``vtnetmap bridge -i netmap:IF`` vs plain veth.

    sudo .venv/bin/python benchmarks/hostring_bench.py [--reps 3] [--secs 4]

Topology (namespaces made here with vtnet_py.apps.netlab, prefix ``vtthb<pid>-``, removed
at the end, also on error or Ctrl-C)::

    [peer] p0 203.0.113.1 ==veth== h0 203.0.113.2 [host]   (iperf3 -s in "host")

Both veth ends keep their default offloads (tx checksumming and TSO on, as a container's
veth has): nothing is turned off to help either case. Cases, in the same run, one after
the other:

  plain    iperf3 from p0 to h0's stack over the bare veth pair
  plainmtu the same with TSO and GSO off on both veth ends (for this case only, then
           back on): every segment crosses the pair as one frame no larger than the
           MTU, as every segment crosses the host rings (AF_XDP carries no GSO
           metadata). A reference for what the frame size alone costs; the ratio that
           counts is against ``plain``
  bridge   the same while ``vtnetmap bridge -i netmap:h0`` (pinned to CPU 1) holds h0's NIC
           rings and host rings: every frame between the wire and h0's stack passes
           through the netmap bridge (NIC RX -> host TX ring -> stack; stack -> host RX
           ring -> NIC TX)

Each case runs both directions: ``up`` (client p0 sends, the stack on h0 receives) and
``down`` (iperf3 -R: h0's stack sends). The figure is iperf3's receiver throughput.
iperf3 comes from Debian (scripts/setup.sh installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import run as suite  # noqa: E402  (benchmarks/run.py: process helpers)

from vtnet_py.apps.netlab import NetLab  # noqa: E402

VTNETMAP = str(Path(sys.executable).with_name("vtnetmap"))
PEER_IP, HOST_IP = "203.0.113.1", "203.0.113.2"
CASES = {
    "plain": "plain veth",
    "plainmtu": "plain veth, MTU-sized segments",
    "bridge": "vtnetmap bridge -i netmap:IF",
}
SEGMENTATION = ("tso", "gso")  # what plainmtu turns off on both ends


def iperf(ns: str, secs: float, reverse: bool) -> dict[str, Any]:
    """One iperf3 client run from ``ns``; the receiver's bits per second and retransmits."""
    cmd = ["iperf3", "-c", HOST_IP, "-t", str(secs), "-J", "--connect-timeout", "3000"]
    if reverse:
        cmd.append("-R")
    p = subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=secs + 30
    )
    try:
        j = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"iperf3 gave no JSON (exit {p.returncode}): {p.stderr[-500:]}"
        ) from None
    if "error" in j:
        return {"bps": 0.0, "error": j["error"]}
    end = j["end"]
    return {
        "bps": end["sum_received"]["bits_per_second"],
        "retransmits": end.get("sum_sent", {}).get("retransmits"),
    }


def segmentation(ns: dict[str, str], on: bool) -> None:
    """TSO and GSO on both veth ends on or off (plainmtu)."""
    for side, dev in (("peer", "p0"), ("host", "h0")):
        args = [x for f in SEGMENTATION for x in (f, "on" if on else "off")]
        subprocess.run(
            ["ip", "netns", "exec", ns[side], "ethtool", "-K", dev, *args],
            check=True,
            capture_output=True,
        )


def one_case(lab: NetLab, ns: dict[str, str], kind: str, secs: float) -> dict[str, Any]:
    bridge = None
    try:
        if kind == "plainmtu":
            segmentation(ns, False)
        if kind == "bridge":
            cmd = [VTNETMAP, "bridge", "-w", "0", "-T", "0", "-i", "netmap:h0"]
            bridge = suite.start(ns["host"], cmd, cpu=1)
            # the bridge is ready when h0's steering program is attached
            suite.wait_for(
                lambda: lab_xdp(ns["host"], "h0") or bridge.poll() is not None,
                30,
                "the bridge",
            )
            if bridge.poll() is not None:
                _, err = bridge.communicate()
                raise RuntimeError(f"vtnetmap bridge failed: {err[-1000:]}")
            time.sleep(0.5)
        out: dict[str, Any] = {}
        for direction, reverse in (("up", False), ("down", True)):
            out[direction] = iperf(ns["peer"], secs, reverse)
        if bridge is not None:
            err = suite.interrupt(bridge)
            # the bridge's summary: what the kernel dropped on the way into its rings
            out["kernel_drops"] = "; ".join(
                ln.split(" main ", 1)[-1] for ln in err.splitlines() if "kernel drops" in ln
            )
        return out
    finally:
        if kind == "plainmtu":
            segmentation(ns, True)
        if bridge is not None and bridge.poll() is None:
            suite.interrupt(bridge)


def lab_xdp(ns: str, dev: str) -> bool:
    from vtnet_py.apps.netlab import link_state

    return link_state(ns, dev).xdp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--secs", type=float, default=4.0)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument(
        "--peer-tx-off",
        action="store_true",
        help="turn p0's tx checksumming off first (both cases; printed with the figures)",
    )
    args = ap.parse_args()
    if shutil.which("iperf3") is None:
        print("hostring_bench: iperf3 is missing (scripts/setup.sh installs it)", file=sys.stderr)
        return 2
    cases = [c for c in args.cases.split(",") if c]
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    with NetLab(f"vtthb{os.getpid()}-") as lab:
        ns = {k: lab.namespace(k) for k in ("peer", "host")}
        lab.veth(ns["peer"], "p0", ns["host"], "h0", ip_a=PEER_IP, ip_b=HOST_IP)
        if args.peer_tx_off:
            subprocess.run(
                ["ip", "netns", "exec", ns["peer"], "ethtool", "-K", "p0", "tx", "off"],
                check=True,
                capture_output=True,
            )
            print("p0: tx checksumming turned off (--peer-tx-off)")
        server = suite.start(ns["host"], ["iperf3", "-s", "-B", HOST_IP], cpu=0)
        try:
            time.sleep(0.5)
            for rep in range(args.reps):
                for c in cases:
                    r = one_case(lab, ns, c, args.secs)
                    results[c].append(r)
                    line = "  ".join(
                        f"{d} {r[d]['bps'] / 1e9:6.2f} Gbps"
                        + f" (retr {r[d].get('retransmits')})"
                        + (f" ({r[d]['error']})" if "error" in r[d] else "")
                        for d in ("up", "down")
                    )
                    print(f"rep {rep + 1} {CASES[c]:31s} {line}", flush=True)
                    if r.get("kernel_drops"):
                        print(f"      {r['kernel_drops']}", flush=True)
        finally:
            server.terminate()
            server.wait()
    print()
    print(f"{'case':31s} {'up Gbps':>8s} {'down Gbps':>10s}  (medians)")
    med: dict[str, dict[str, float]] = {}
    for c in cases:
        med[c] = {d: statistics.median(r[d]["bps"] for r in results[c]) for d in ("up", "down")}
        print(f"{CASES[c]:31s} {med[c]['up'] / 1e9:8.2f} {med[c]['down'] / 1e9:10.2f}")
    for ref_case in ("plain", "plainmtu"):
        if ref_case in med and "bridge" in med:
            for d in ("up", "down"):
                ref = med[ref_case][d]
                ratio = med["bridge"][d] / ref if ref else 0.0
                print(f"bridge / {CASES[ref_case]}, {d}: {ratio:.2f}")
    out = HERE / "results" / f"hostring-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"raw figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
