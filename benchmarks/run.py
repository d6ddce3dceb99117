"""The vtnetmap benchmark suite: pkt-gen over the netmap API side by side with C.

    sudo .venv/bin/python benchmarks/run.py [--reps 3] [--secs 3] [--cases rx,tx,tx2,lat]

Makes one veth pair (2 queues each side) between two network namespaces it
creates (``vtpg-bench-<pid>-<tag>a`` / ``b``, 203.0.113.1 / .2, with
vtnet_py.apps.netlab), runs every case of
every repetition in the same run (so ratios hold on a noisy machine), and
always removes the namespaces, even on error or Ctrl-C.  Prints a table of
medians and writes all the raw figures as JSON into benchmarks/results/.

Cases (A is the sending side, B the receiving side):

  rx    generator on A (C, BPF_PROG_TEST_RUN live frames, pinned to CPU 0; it
        reports its own rate) and on B, pinned to CPU 1, in turn:
        pkt-gen -f rx (netmap API), the C AF_XDP receive loop, and the C XDP
        drop counter (the in-kernel ceiling; xdp-bench 1.3.1 cannot load here).
  tx    on A, pinned to CPU 1, one queue: pkt-gen -f tx (netmap API), the C
        AF_XDP transmit loop, a Python AF_PACKET send() loop; B counts with
        the C XDP drop counter.
  tx2   two queues: pkt-gen -p 2 and the C loop with two threads.
  lat   pkt-gen ping on A / pong on B, and the same exchange over UDP sockets.

The C programs (benchmarks/c/) are compiled into benchmarks/build/ by this
script with clang (BPF) and gcc (libxdp, libbpf).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vtnet_py.apps.netlab import NetLab, in_namespace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / "build"
RESULTS = HERE / "results"
PY = sys.executable
PKTGEN = [PY, "-m", "vtnetmap_cli.pktgen_cmd"]
XSK = BUILD / "xsk_bench"
BPF_OBJ = BUILD / "xdp_progs.bpf.o"
IP_A, IP_B = "203.0.113.1", "203.0.113.2"


# -- build -----------------------------------------------------------------------------


def build() -> None:
    """Compile the C references when a source is newer than its output."""
    BUILD.mkdir(exist_ok=True)
    src_bpf = HERE / "c" / "xdp_progs.bpf.c"
    src_xsk = HERE / "c" / "xsk_bench.c"
    arch_inc = f"/usr/include/{os.uname().machine}-linux-gnu"
    if not BPF_OBJ.exists() or BPF_OBJ.stat().st_mtime < src_bpf.stat().st_mtime:
        subprocess.run(
            [
                "clang",
                "-O2",
                "-g",
                "-target",
                "bpf",
                f"-I{arch_inc}",
                "-c",
                str(src_bpf),
                "-o",
                str(BPF_OBJ),
            ],
            check=True,
        )
    if not XSK.exists() or XSK.stat().st_mtime < src_xsk.stat().st_mtime:
        subprocess.run(
            [
                "gcc",
                "-O2",
                "-g",
                "-Wall",
                "-o",
                str(XSK),
                str(src_xsk),
                "-lxdp",
                "-lbpf",
                "-lpthread",
            ],
            check=True,
        )


# -- namespaces --------------------------------------------------------------------------


class Pair:
    """Two namespaces joined by a 2-queue veth pair, made by ``lab`` (removed with it)."""

    def __init__(self, lab: NetLab) -> None:
        ns_a, ns_b = lab.namespace("a"), lab.namespace("b")
        self.veth = lab.veth(
            ns_a, f"vtpgb{lab.tag}a", ns_b, f"vtpgb{lab.tag}b", queues=2, ip_a=IP_A, ip_b=IP_B
        )
        self.ns_a, self.ns_b, self.a, self.b = ns_a, ns_b, self.veth.a, self.veth.b

    def mac(self, side: str) -> str:
        return self.veth.lladdr(side)

    def has_xdp(self, side: str) -> bool:
        return self.veth.xdp_attached(side)


@contextmanager
def veth_pair() -> Iterator[Pair]:
    """The pair in namespaces ``vtpg-bench-<pid>-<tag>a`` / ``b``; removed on the way out,
    also on SIGTERM (turned into KeyboardInterrupt so the ``with`` unwinds)."""
    me = os.getpid()

    def on_term(*_: object) -> None:
        if os.getpid() != me:  # a forked helper (pyroute2's namespace child) just ends
            os._exit(0)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        with NetLab(f"vtpg-bench-{os.getpid()}-") as lab:
            yield Pair(lab)
    finally:
        signal.signal(signal.SIGTERM, old)


# -- processes ---------------------------------------------------------------------------


def in_ns(ns: str, cmd: list[str], cpu: int | None = None) -> list[str]:
    pre = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return in_namespace(ns, pre + [str(c) for c in cmd])


def start(ns: str, cmd: list[str], cpu: int | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.Popen(
        in_ns(ns, cmd, cpu),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def finish(p: subprocess.Popen[str], timeout: float = 30.0) -> tuple[str, str]:
    """Wait for ``p``; returns its stdout and stderr (RuntimeError if it failed)."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise RuntimeError(f"{p.args} did not finish in {timeout} s:\n{err[-2000:]}") from None
    if p.returncode not in (0, -signal.SIGINT):
        raise RuntimeError(f"{p.args} exited {p.returncode}:\n{err[-2000:]}")
    return out, err


def interrupt(p: subprocess.Popen[str]) -> str:
    """Stop a responder with SIGINT (killed if it does not end within 10 s); returns what
    it wrote to stderr."""
    p.send_signal(signal.SIGINT)
    try:
        return p.communicate(timeout=10)[1] or ""
    except subprocess.TimeoutExpired:
        p.kill()
        return p.communicate()[1] or ""


def run_json(
    ns: str, cmd: list[str], cpu: int | None = None, timeout: float = 60.0
) -> dict[str, Any]:
    out, _ = finish(start(ns, cmd, cpu), timeout)
    return last_json(out)


def last_json(out: str, kind: str | None = None) -> dict[str, Any]:
    objs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    if kind is not None:
        objs = [o for o in objs if o.get("type") == kind]
    if not objs:
        raise RuntimeError(f"no JSON result in output:\n{out[-2000:]}")
    return objs[-1]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- cases -------------------------------------------------------------------------------


def rx_case(p: Pair, who: str, secs: float) -> dict[str, Any]:
    """A receiver on B (``who``), then the live-frames generator on A."""
    if who == "pktgen":
        cmd = PKTGEN + ["-i", f"netmap:{p.b}/R", "-f", "rx", "-W", "-w", "0", "--json"]
    elif who == "c":
        cmd = [
            XSK,
            "rx",
            "-i",
            p.b,
            "-o",
            BPF_OBJ,
            "-q",
            "2",
            "-s",
            "1024",
            "-b",
            "512",
            "-t",
            str(secs + 5),
        ]
    else:
        cmd = [XSK, "drop", "-i", p.b, "-o", BPF_OBJ, "-t", str(secs + 5)]
    rx = start(p.ns_b, cmd, cpu=1)
    try:
        wait_for(lambda: p.has_xdp("b") or rx.poll() is not None, 60, "the receiver's XDP")
        time.sleep(0.5)
        gen = run_json(p.ns_a, [XSK, "gen", "-i", p.a, "-o", BPF_OBJ, "-t", str(secs)], cpu=0)
        out, _ = finish(rx, timeout=secs + 20)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    if who == "pktgen":
        r = last_json(out, "final")
        res = {"pps": r["pps"], "pkts": r["pkts"], "seconds": r["seconds"]}
    else:
        r = last_json(out)
        res = {
            "pps": r["pps"],
            "pkts": r["pkts"],
            "seconds": r["seconds"],
            "rx_dropped": r.get("rx_dropped", 0),
        }
    res["gen_pps"] = gen["pps"]
    res["gen_pkts"] = gen["pkts"]
    res["delivered"] = res["pkts"] / gen["pkts"] if gen["pkts"] else 0.0
    return res


def tx_case(p: Pair, who: str, secs: float, queues: int = 1) -> dict[str, Any]:
    """A sender on A (``who``); B counts what arrives with the XDP drop counter."""
    drop = start(p.ns_b, [XSK, "drop", "-i", p.b, "-o", BPF_OBJ, "-t", str(secs + 30)], cpu=0)
    try:
        wait_for(lambda: p.has_xdp("b") or drop.poll() is not None, 30, "the drop counter")
        cpu = 1 if queues == 1 else None
        if who == "pktgen":
            port = f"netmap:{p.a}-0/T" if queues == 1 else f"netmap:{p.a}/T"
            cmd = PKTGEN + [
                "-i",
                port,
                "-f",
                "tx",
                "-w",
                "0",
                "--json",
                "-b",
                "512",
                "-s",
                IP_A,
                "-d",
                f"{IP_B}:9",
                "-D",
                p.mac("b"),
            ]
            if queues > 1:
                cmd += ["-p", str(queues)]
            tx = start(p.ns_a, cmd, cpu)
            time.sleep(secs + 1.0)  # pkt-gen runs until interrupted, as netmap's does
            tx.send_signal(signal.SIGINT)
            out, _ = finish(tx, timeout=20)
            r = last_json(out, "final")
        elif who == "c":
            r = run_json(
                p.ns_a,
                [
                    XSK,
                    "tx",
                    "-i",
                    p.a,
                    "-o",
                    BPF_OBJ,
                    "-q",
                    str(queues),
                    "-s",
                    "1024",
                    "-b",
                    "512",
                    # the same copy-mode sendto() budget as vtnetmap's sockets (the
                    # TX ring's size, XDP_MAX_TX_SKB_BUDGET, kernel >= 6.17)
                    "-k",
                    "1024",
                    "-t",
                    str(secs),
                ],
                cpu,
            )
        else:
            r = run_json(p.ns_a, [PY, HERE / "afpacket_tx.py", p.a, str(secs)], cpu)
        dout, _ = finish(drop, timeout=30)
        d = last_json(dout)
    finally:
        if drop.poll() is None:
            drop.kill()
            drop.wait()
    return {
        "pps": r["pps"],
        "pkts": r["pkts"],
        "seconds": r["seconds"],
        "peer_pkts": d["pkts"],
        "peer_pps": d["pps"],
    }


def lat_case(p: Pair, who: str, count: int, busy: bool = False) -> dict[str, Any]:
    if who == "pktgen":
        extra = ["--busy-poll"] if busy else []
        pong = start(
            p.ns_b, PKTGEN + ["-i", f"netmap:{p.b}", "-f", "pong", "-w", "0"] + extra, cpu=1
        )
        try:
            wait_for(lambda: p.has_xdp("b") or pong.poll() is not None, 60, "pong")
            time.sleep(0.5)
            r = run_json(
                p.ns_a,
                PKTGEN
                + [
                    "-i",
                    f"netmap:{p.a}",
                    "-f",
                    "ping",
                    "-w",
                    "0",
                    "-n",
                    str(count),
                    "--json",
                    "-s",
                    IP_A,
                    "-d",
                    IP_B,
                    "-D",
                    p.mac("b"),
                ]
                + extra,
                cpu=0,
            )
        finally:
            interrupt(pong)
        r = {k: r[k] for k in ("min", "median", "p99", "max", "sent", "received")}
    elif who == "c":
        flag = ["--busy"] if busy else []
        pong = start(p.ns_b, [str(XSK), "pong", "-i", p.b, "-o", str(BPF_OBJ), "-t", "3"] + flag, 1)
        try:
            assert pong.stdout is not None
            line = pong.stdout.readline()
            if not line.startswith("READY"):
                raise RuntimeError(f"xsk_bench pong failed: {line}{pong.stderr.read()}")  # type: ignore[union-attr]
            r = run_json(
                p.ns_a,
                [str(XSK), "ping", "-i", p.a, "-o", str(BPF_OBJ), "-n", str(count)] + flag,
                cpu=0,
            )
        finally:
            interrupt(pong)
        r = {k: r[k] for k in ("min", "median", "p99", "max", "sent", "received")}
    else:
        srv = start(p.ns_b, [PY, HERE / "udp_pingpong.py", "server", IP_B, "9000", "2"], cpu=1)
        try:
            time.sleep(0.5)
            r = run_json(
                p.ns_a, [PY, HERE / "udp_pingpong.py", "client", IP_B, "9000", str(count)], cpu=0
            )
        finally:
            try:
                srv.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()
        r = {k: r[k] for k in ("min", "median", "p99", "max", "sent", "received")}
    return r


CASES: dict[str, list[tuple[str, Callable[[Pair, argparse.Namespace], dict[str, Any]]]]] = {
    "rx": [
        ("rx pkt-gen (netmap API)", lambda p, a: rx_case(p, "pktgen", a.secs)),
        ("rx C AF_XDP loop", lambda p, a: rx_case(p, "c", a.secs)),
        ("rx C XDP drop (ceiling)", lambda p, a: rx_case(p, "drop", a.secs)),
    ],
    "tx": [
        ("tx pkt-gen (netmap API)", lambda p, a: tx_case(p, "pktgen", a.secs)),
        ("tx C AF_XDP loop", lambda p, a: tx_case(p, "c", a.secs)),
        ("tx Python AF_PACKET", lambda p, a: tx_case(p, "afpacket", a.secs)),
    ],
    "tx2": [
        ("tx2 pkt-gen -p 2", lambda p, a: tx_case(p, "pktgen", a.secs, 2)),
        ("tx2 C AF_XDP loop, 2 queues", lambda p, a: tx_case(p, "c", a.secs, 2)),
    ],
    "lat": [
        ("lat pkt-gen ping/pong", lambda p, a: lat_case(p, "pktgen", a.count)),
        ("lat UDP sockets", lambda p, a: lat_case(p, "udp", a.count)),
        ("lat C AF_XDP ping/pong", lambda p, a: lat_case(p, "c", a.count)),
        ("lat pkt-gen --busy-poll", lambda p, a: lat_case(p, "pktgen", a.count, busy=True)),
        ("lat C AF_XDP --busy", lambda p, a: lat_case(p, "c", a.count, busy=True)),
    ],
}


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in runs if key in r]
    return statistics.median(vals) if vals else float("nan")


def table(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [f"{'case':34} {'median':>12} {'runs':>40}  notes"]

    def row(name: str, key: str, unit: str, scale: float, note: str = "") -> None:
        runs = results.get(name)
        if not runs:
            return
        vals = " ".join(f"{r[key] / scale:.3f}" for r in runs if key in r)
        lines.append(f"{name:34} {median_of(runs, key) / scale:9.3f} {unit:2} {vals:>40}  {note}")

    for name in results:
        if name.startswith("rx"):
            gen = median_of(results[name], "gen_pps") / 1e6
            dl = median_of(results[name], "delivered")
            row(name, "pps", "M", 1e6, f"generator {gen:.3f} Mpps, {dl:.1%} of it received")
        elif name.startswith("tx"):
            peer = median_of(results[name], "peer_pps") / 1e6
            row(name, "pps", "M", 1e6, f"peer counted {peer:.3f} Mpps")
        elif name.startswith("lat"):
            for k in ("median", "p99"):
                row(f"{name}", k, "us", 1e3, k)
    ratios = []

    def ratio(a: str, b: str, label: str) -> None:
        if a in results and b in results:
            ra, rb = median_of(results[a], "pps"), median_of(results[b], "pps")
            ratios.append(f"{label}: {ra / rb:.2f}x")

    ratio("rx pkt-gen (netmap API)", "rx C AF_XDP loop", "RX netmap API / C")
    ratio("tx pkt-gen (netmap API)", "tx C AF_XDP loop", "TX netmap API / C")
    ratio("tx pkt-gen (netmap API)", "tx Python AF_PACKET", "TX netmap API / AF_PACKET")
    ratio("tx2 pkt-gen -p 2", "tx2 C AF_XDP loop, 2 queues", "TX 2 queues netmap API / C")
    if ratios:
        lines.append("ratios of medians: " + "; ".join(ratios))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions of every case")
    ap.add_argument("--secs", type=float, default=3.0, help="seconds of traffic per run")
    ap.add_argument("--count", type=int, default=5000, help="round trips per latency run")
    ap.add_argument("--cases", default="rx,tx,tx2,lat", help="comma-separated case groups")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run.py: needs root (namespaces, BPF, AF_XDP)", file=sys.stderr)
        return 2
    groups = [g for g in args.cases.split(",") if g]
    for g in groups:
        if g not in CASES:
            print(f"run.py: unknown case group {g!r} (rx, tx, tx2, lat)", file=sys.stderr)
            return 2
    build()
    results: dict[str, list[dict[str, Any]]] = {}
    errors: list[str] = []
    started = datetime.datetime.now(datetime.UTC)
    with veth_pair() as pair:
        # warm-up: the first port open compiles the steering program with bcc
        warm = start(
            pair.ns_b, PKTGEN + ["-i", f"netmap:{pair.b}/R", "-f", "rx", "-w", "0", "-n", "1"]
        )
        wait_for(lambda: pair.has_xdp("b") or warm.poll() is not None, 120, "warm-up")
        warm.send_signal(signal.SIGINT)
        warm.communicate(timeout=20)
        for rep in range(args.reps):
            for g in groups:
                for name, fn in CASES[g]:
                    t0 = time.monotonic()
                    try:
                        r = fn(pair, args)
                    except RuntimeError as exc:
                        errors.append(f"rep {rep} {name}: {exc}")
                        print(f"[{rep}] {name}: FAILED {str(exc).splitlines()[0]}", flush=True)
                        continue
                    results.setdefault(name, []).append(r)
                    short = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()}
                    print(f"[{rep}] {name} ({time.monotonic() - t0:.1f} s): {short}", flush=True)
    lines = table(results)
    print()
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "args": vars(args),
                "uname": " ".join(os.uname()),
                "cpus": os.cpu_count(),
                "results": results,
                "table": lines,
                "errors": errors,
            },
            indent=2,
        )
    )
    print(f"\nwritten {out.relative_to(ROOT)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
