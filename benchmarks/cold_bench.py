"""What one call costs right after the CPU was idle, next to the same call warm.

    sudo .venv/bin/python benchmarks/cold_bench.py [--iters 2000] [--idle-ms 1] [--cpu 1]

A sleeping ping/pong side wakes up once per round trip and then runs its Python on
caches the idle time emptied. This times, pinned to one CPU, single calls of:

  port.poll()      ``Port.poll(rx=True, timeout=0)`` on an idle port (a veth pair in two
                   namespaces made here with vtnet_py.apps.netlab, prefix ``vtcold<pid>-``,
                   removed at the end)
  C poll           the same round through ``_ringcore.poll`` directly (no Python wrapper)
  empty call       a Python lambda that does nothing (the interpreter's own share)

each ``--iters`` times back to back ("warm") and each time after sleeping ``--idle-ms``
in poll(2) on a pipe nobody writes ("after idle"). Medians in microseconds.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import time
from collections.abc import Callable

from vtnet_py import open_port
from vtnet_py.apps.netlab import NetLab
from vtnet_py.netmap._ringcore import poll as c_poll


def timed(fn: Callable[[], object], iters: int, idle_ms: int) -> float:
    """Median ns of one call of ``fn``; after an idle sleep each time if ``idle_ms``."""
    r, w = os.pipe()
    sleeper = select.poll()
    sleeper.register(r, select.POLLIN)
    clock = time.perf_counter_ns
    out = []
    try:
        for _ in range(iters):
            if idle_ms:
                sleeper.poll(idle_ms)
            t0 = clock()
            fn()
            out.append(clock() - t0)
    finally:
        os.close(r)
        os.close(w)
    return statistics.median(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--idle-ms", type=int, default=1)
    ap.add_argument("--cpu", type=int, default=1)
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    with NetLab(f"vtcold{os.getpid()}-") as lab:
        a, b = lab.namespace("a"), lab.namespace("b")
        lab.veth(a, "ca", b, "cb")
        with open_port("netmap:ca-0", netns=a) as port:
            port.poll(rx=True, timeout=0)
            rings_tx, rings_rx = tuple(port.tx_rings), tuple(port.rx_rings)
            socks = tuple(port.socket_fds())
            cases: dict[str, Callable[[], object]] = {
                "port.poll()": lambda: port.poll(rx=True, timeout=0),
                "C poll": lambda: c_poll(rings_tx, rings_rx, True, True, 1, socks, 0, ()),
                "empty call": lambda: None,
            }
            print(f"{'call':14s} {'warm us':>9s} {'after idle us':>14s}  (idle {args.idle_ms} ms)")
            for name, fn in cases.items():
                warm = timed(fn, args.iters, 0) / 1000
                cold = timed(fn, args.iters, args.idle_ms) / 1000
                print(f"{name:14s} {warm:9.2f} {cold:14.2f}  ({cold / warm:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
