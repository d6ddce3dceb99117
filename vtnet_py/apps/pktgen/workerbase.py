"""pkt-gen's worker: one port, a shared counters row, and what every function shares
(opening the port, the drop counters, -X dumps, -R pacing).

The functions themselves are pkt-gen's bodies: sender.py (tx, txseq), receiver.py
(rx, rxseq), pingpong.py (ping, pong); worker.Worker puts them together.  A worker
that fails prints one line, closes its port and marks its row failed: the run then
exits 1.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vtnet_py.apps.pktgen.config import (
    F_DONE,
    F_ERR,
    F_FILL_EMPTY,
    F_RUNNING,
    F_RX_DROPPED,
    F_RX_RING_FULL,
    F_TOC,
    Config,
)
from vtnet_py.apps.pktgen.report import Output, hexdump
from vtnet_py.errors import VtnetError

STATS_S = 0.1  # how often a worker copies its sockets' drop counters

# -- pacing ----------------------------------------------------------------------------


class Pacer:
    """-R: ``burst`` packets every ``burst / rate`` seconds on an absolute schedule.

    Sleeps (never spins) until each deadline; oversleeping is caught up by the
    next deadlines, so the mean rate holds while a slow rate costs no CPU.
    As in pkt-gen the burst shrinks to rate/300 (at least 1) so that something
    is sent about every 3 ms.
    """

    def __init__(self, rate: int, burst: int):
        self.burst = max(1, min(burst, rate // 300))
        self.period = self.burst / rate
        self.next = time.monotonic()

    def wait(self, cancel: Callable[[], bool]) -> int:
        """Wait for the next slot; returns how many packets it allows."""
        self.next += self.period
        while not cancel():
            d = self.next - time.monotonic()
            if d <= 0:
                break
            time.sleep(min(d, 0.2))
        return self.burst


# -- workers ---------------------------------------------------------------------------


@dataclass
class WorkerBase:
    """One pkt-gen thread: a port, a counters row, and a way to see cancellation."""

    cfg: Config
    index: int
    port_name: str
    row: np.ndarray  # int64[NFIELDS], shared with the reporter
    cancelled: Callable[[], bool]
    out: Output
    frames_in: int = 0  # share of -n for this worker (0: forever)
    ping_rtts: list[np.ndarray] = field(default_factory=list)
    _stats_t: float = 0.0

    def open(self) -> Any:
        """Open this worker's port (in the calling thread: bcc compiles the steering
        program on first use, which must happen in a main thread); None on failure,
        after one line on stderr."""
        from vtnet_py import open_port  # late: the CLI's --help must not need the core

        try:
            # -H: the port gives every slot a virtio-net header (zeroed on RX,
            # stripped on TX), as netmap's NETMAP_REQ_PORT_HDR_SET.  Frames cut into
            # several slots need a multi-buffer socket; otherwise the port decides
            # from the MTU.
            port = open_port(
                self.port_name,
                netns=self.cfg.netns,
                vnet_hdr=self.cfg.spec.vnet_hdr_len,
                frags=True if self.cfg.frag_plan.count > 1 else None,
                busy_poll=self.cfg.busy_poll,
            )
        except (VtnetError, OSError) as exc:
            self.out.diag(f"cannot open {self.port_name}: {exc}", func="worker")
            self.row[F_ERR] = 1
            self.row[F_DONE] = 1
            self.row[F_RUNNING] = 0
            return None
        from vtnet_py.netmap.mode import describe_port_mode

        # copy or zero copy, and why: what a user of a driver without zero copy asks first
        self.out.diag(describe_port_mode(port, self.cfg.netns), func="open_port")
        if self.cfg.verbose:
            st = port.stats()
            self.out.diag(
                f"{self.port_name}: {len(port.rx_rings)} RX and {len(port.tx_rings)} TX rings, "
                f"{st['xdp_mode']} XDP, {'zero-copy' if st['zerocopy'] else 'copy'} mode, "
                f"multi-buffer {'on' if st['frags'] else 'off'}",
                func="worker",
            )
        return port

    def run(self, port: Any = None) -> None:
        """Run the function on ``port`` (opened here when None); closes the port."""
        self.row[F_RUNNING] = 1
        if self.cfg.affinity >= 0:
            cpus = self.cfg.cpus or os.cpu_count() or 1
            # pid 0 is the calling thread: a worker thread pins only itself
            os.sched_setaffinity(0, {(self.cfg.affinity + self.index) % cpus})
        if port is None:
            port = self.open()
            if port is None:
                return
        f = self.cfg.function
        try:
            # the body of each function is a method of the final class (worker.Worker)
            body = getattr(self, "_" + {"txseq": "tx", "rxseq": "rx"}.get(f, f))
            body(port)
            self.row[F_DONE] = 1
        except (VtnetError, OSError) as exc:
            self.out.diag(f"{self.port_name}: {exc}", func="worker")
            self.row[F_ERR] = 1
        except Exception as exc:  # a bug, or numpy refusing a value: one line, exit 1
            self.out.diag(f"{self.port_name}: {type(exc).__name__}: {exc}", func="worker")
            self.row[F_ERR] = 1
        finally:
            if not self.row[F_TOC]:
                self.row[F_TOC] = time.monotonic_ns()
            with contextlib.suppress(Exception):
                self._kernel_stats(port, final=True)
            with contextlib.suppress(Exception):
                port.close()
            self.row[F_RUNNING] = 0

    def _kernel_stats(self, port: Any, final: bool = False) -> None:
        """Copy the RX sockets' drop counters (XDP_STATISTICS) into the shared row; at
        most every STATS_S unless ``final``, since each is a getsockopt per ring."""
        now = time.monotonic()
        if not final and now - self._stats_t < STATS_S:
            return
        self._stats_t = now
        st = port.stats()
        rings = [r for r in st["rings"] if r["kind"] == "rx"]
        for f, key in (
            (F_RX_DROPPED, "rx_dropped"),
            (F_RX_RING_FULL, "rx_ring_full"),
            (F_FILL_EMPTY, "rx_fill_ring_empty_descs"),
        ):
            self.row[f] = sum(int(r["kernel"].get(key, 0)) for r in rings)
        if final and self.cfg.verbose:
            for r in st["rings"]:
                k = " ".join(f"{n} {v}" for n, v in r["kernel"].items())
                self.out.diag(f"{self.port_name} {r['kind']} ring {r['ring']}: {k}", func="worker")

    def _dump(self, port: Any, ring: Any, idx: np.ndarray) -> None:
        """-X: each slot of ``idx`` as pkt-gen's dump_payload() prints it."""
        for i in idx:
            slot = ring.slot[int(i)]
            n = int(slot["len"])
            data = bytes(port.buf(int(slot["buf_idx"]))[:n])
            self.out.text(
                hexdump(data, ring.ring_id, int(i), int(slot["buf_idx"]), int(slot["flags"]))
            )

    def _wait_link(self) -> None:
        end = time.monotonic() + self.cfg.wait_link
        while not self.cancelled() and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
