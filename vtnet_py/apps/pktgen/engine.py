"""pkt-gen's functions over the netmap API: tx, rx, txseq, rxseq, ping, pong.

Layout follows pkt-gen: workers move packets and only update counters; the main
thread prints a report every ``-T`` ms and the final lines when the workers are
done.  One worker runs in a thread of this process; ``-p N`` (N > 1) runs N
worker processes, each opening one ring pair (``netmap:IF-i``), with counters in
shared memory, so they use separate cores (threads would share one GIL).

The options are checked in config.py, the workers are in worker.py, this module is
the run: start them, report, print the final lines.

On error a worker prints one line and its port is closed; the final lines are
still printed for what was counted, and the exit status is 1.  SIGINT/SIGTERM
stop the workers at the next batch and print the final lines; a third SIGINT
interrupts at once.
"""

from __future__ import annotations

import ctypes
import dataclasses
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, TextIO

import numpy as np

from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py.apps.pktgen.config import (
    F_BYTES,
    F_ERR,
    F_EVENTS,
    F_FILL_EMPTY,
    F_MIN_SPACE,
    F_PKTS,
    F_RUNNING,
    F_RX_DROPPED,
    F_RX_RING_FULL,
    F_SEQ_GAP_PKTS,
    F_SEQ_GAPS,
    F_SEQ_LOST,
    F_SEQ_OOO,
    F_SEQ_RECEIVED,
    F_TIC,
    F_TOC,
    MIN_SPACE_NONE,
    NFIELDS,
    RECEIVERS,
    SENDERS,
    Config,
    PktgenError,
    interface_facts,
    worker_port_names,
)
from vtnet_py.apps.pktgen.report import Counters, Drops, Final, Output, Reporter
from vtnet_py.apps.pktgen.spec import ETH_HLEN
from vtnet_py.apps.pktgen.worker import Worker, _child_main
from vtnet_py.netmap.portname import RegMode, parse_port_name

# -- the run ---------------------------------------------------------------------------


class Run:
    """Start the workers, report every -T ms, print the final lines."""

    # what each worker is: live.LiveRun swaps in its kernel-side generator
    worker_class: ClassVar[type[Worker]] = Worker

    def __init__(self, cfg: Config, out: TextIO | None = None, err: TextIO | None = None):
        self.cfg = cfg
        self.output = Output(
            out or sys.stdout, err or sys.stderr, as_json=cfg.as_json, normalize=cfg.normalize
        )
        self.names = worker_port_names(cfg)
        self.pspec = parse_port_name(self.names[0])
        self.queues = self._facts()
        nw = len(self.names)
        self._shared = mp.RawArray(ctypes.c_int64, nw * NFIELDS + 1)
        arr = np.frombuffer(memoryview(self._shared).cast("B"), dtype=np.int64)
        self.rows = arr[: nw * NFIELDS].reshape(nw, NFIELDS)
        self._cancel = arr[nw * NFIELDS :]  # one shared word: 1 = stop
        self.workers: list[Worker] = []
        self._signals = 0

    def _facts(self) -> int:
        """Fill in the source MAC, check the frame against the MTU; returns the queue
        count of the direction this function uses."""
        from vtnet_py.device.netlink import read_device

        cfg = self.cfg
        ifname = self.pspec.ifname
        mac, mtu = interface_facts(ifname, cfg.netns)
        if not cfg.src_mac_given:
            cfg.spec = dataclasses.replace(cfg.spec, src_mac=mac)
        if cfg.function in SENDERS + ("ping",) and cfg.spec.length - ETH_HLEN > mtu:
            raise PktgenError(
                f"-l {cfg.spec.length}: the packet ({cfg.spec.length - ETH_HLEN}"
                f" bytes) exceeds the MTU of {ifname} ({mtu})"
            )
        with enter_netns(cfg.netns):
            info = read_device(ifname)
        q = info.tx_queues if cfg.function in SENDERS else info.rx_queues
        if cfg.threads > q:
            raise PktgenError(f"-p {cfg.threads}: {ifname} has only {q} queues")
        return q

    def cancelled(self) -> bool:
        return bool(self._cancel[0])

    def cancel(self) -> None:
        self._cancel[0] = 1

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        self.output.diag(f"received {signal.Signals(signum).name}", func="sigint_h")
        # workers see the stop word within one batch or poll timeout (<= 3 s); a
        # third ^C is for a worker stuck anyway
        if self._signals > 2 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.cancel()

    def _header(self) -> None:
        cfg = self.cfg
        kind = (
            "Sending on"
            if cfg.function in SENDERS
            else "Receiving from"
            if cfg.function in RECEIVERS
            else "Working on"
        )
        nq = self.queues if self.pspec.mode is RegMode.ALL_NIC or cfg.threads > 1 else 1
        cpus = cfg.cpus or (os.cpu_count() or 1)
        self.output.info(f"{kind} {cfg.port}: {nq} queues, {cfg.threads} threads and {cpus} cpus.")
        if cfg.function in SENDERS:
            from vtnet_py.apps.pktgen.addresses import format_mac

            s = cfg.spec
            if s.raw is not None:
                self.output.info(
                    f"a {s.length}-byte frame from a pcap file "
                    f"({format_mac(s.raw[6:12])} -> {format_mac(s.raw[0:6])})"
                )
            else:
                self.output.info(
                    f"{s.src} -> {s.dst} ({format_mac(s.src_mac)} -> {format_mac(s.dst_mac)})"
                )
        if cfg.verbose and cfg.function not in RECEIVERS + ("pong",):
            s = cfg.spec
            what = "a frame from -P" if s.raw is not None else "IPv6" if s.ipv6 else "IPv4"
            self.output.diag(f"source range is {s.src}, destination range is {s.dst} ({what})")
            plan = cfg.frag_plan
            self.output.diag(
                f"frame {s.length} bytes (+{s.vnet_hdr_len} header), {plan.count} slots of "
                f"{plan.size} bytes (last {plan.last}), burst {cfg.burst}"
            )

    def run(self) -> int:
        """Run to the end; returns the exit status (0, or 1 when a worker failed)."""
        cfg = self.cfg
        nw = len(self.names)
        per = cfg.count // nw if cfg.count else 0
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self._header()
        procs: list[Any] = []
        threads: list[threading.Thread] = []
        try:
            for i, name in enumerate(self.names):
                self.rows[i, F_MIN_SPACE] = -1
                w = self.worker_class(
                    cfg,
                    i,
                    name,
                    self.rows[i],
                    self.cancelled,
                    self.output,
                    frames_in=per + (cfg.count - per * nw if i == 0 and cfg.count else 0),
                )
                self.workers.append(w)
            if nw == 1:
                port = self.workers[0].open()
                if port is not None:
                    th = threading.Thread(
                        target=self.workers[0].run, args=(port,), name="pkt-gen-worker", daemon=True
                    )
                    self.rows[0, F_RUNNING] = 1
                    th.start()
                    threads.append(th)
            else:
                ctx = mp.get_context("fork")
                for i, w in enumerate(self.workers):
                    self.rows[i, F_RUNNING] = 1
                    p = ctx.Process(target=_child_main, args=(w,), name=f"pkt-gen-{i}")
                    p.start()
                    procs.append(p)
            self._report_loop(
                lambda: any(t.is_alive() for t in threads) or any(p.is_alive() for p in procs)
            )
        finally:
            self.cancel()
            for t in threads:
                t.join(timeout=5.0)
            for i, p in enumerate(procs):
                p.join(timeout=5.0)
                if p.is_alive():
                    p.terminate()
                    p.join()
                if p.exitcode and not self.rows[i, F_ERR]:
                    # killed or crashed before it could mark its row: still a failure
                    how = (
                        f"signal {signal.Signals(-p.exitcode).name}"
                        if p.exitcode < 0
                        else f"status {p.exitcode}"
                    )
                    self.output.diag(f"{self.names[i]}: worker pid {p.pid} ended with {how}")
                    self.rows[i, F_ERR] = 1
            for s, h in old.items():
                signal.signal(s, h)
        self._final()
        return 1 if self.rows[:, F_ERR].any() else 0

    def _snapshot(self) -> Counters:
        c = Counters()
        for row in self.rows:
            ms = int(row[F_MIN_SPACE])
            c = c + Counters(
                int(row[F_PKTS]),
                int(row[F_BYTES]),
                int(row[F_EVENTS]),
                ms if ms >= 0 else MIN_SPACE_NONE,
                _drops(row),
            )
            row[F_MIN_SPACE] = -1  # reset per interval, as pkt-gen's main thread does
        return c

    def _report_loop(self, alive: Callable[[], bool]) -> None:
        rep = Reporter(framing=self.cfg.framing, averages=self.cfg.averages)
        interval = self.cfg.report_ms / 1000.0
        next_t = time.monotonic() + interval
        while True:
            while time.monotonic() < next_t:
                if not alive():
                    break
                time.sleep(min(0.05, max(0.0, next_t - time.monotonic())))
            done = not alive()
            p = rep.sample(self._snapshot())
            # no line for a run that never started (its port did not open)
            if p is not None and (not done or self.rows[:, F_TIC].any()):
                self.output.periodic(p)
            if done:
                return
            next_t += interval

    def _final(self) -> None:
        cfg = self.cfg
        rows = self.rows
        pkts = int(rows[:, F_PKTS].sum())
        nbytes = int(rows[:, F_BYTES].sum())
        events = int(rows[:, F_EVENTS].sum())
        # pkt-gen takes the latest start and the latest end over the threads
        tics = rows[:, F_TIC][rows[:, F_TIC] > 0]
        tocs = rows[:, F_TOC][rows[:, F_TOC] > 0]
        secs = (int(tocs.max()) - int(tics.max())) / 1e9 if tics.size and tocs.size else 0.0
        secs = max(secs, 0.0)
        if cfg.function in SENDERS or cfg.function in RECEIVERS:
            msg = "Sent" if cfg.function in SENDERS else "Received"
            extra: dict[str, Any] = {}
            drops = sum((_drops(r) for r in rows), Drops())
            f = Final(msg, pkts, nbytes, events, secs, cfg.framing, drops)
            if cfg.function == "rxseq":
                extra = {
                    "seq_received": int(rows[:, F_SEQ_RECEIVED].sum()),
                    "lost": int(rows[:, F_SEQ_LOST].sum()),
                    "gaps": int(rows[:, F_SEQ_GAPS].sum()),
                    "gap_packets": int(rows[:, F_SEQ_GAP_PKTS].sum()),
                    "out_of_order": int(rows[:, F_SEQ_OOO].sum()),
                }
            self.output.final(f, extra)
            if cfg.function == "rxseq" and not cfg.as_json:
                self.output.record(
                    {},
                    [
                        f"Sequence: {extra['seq_received']} numbered packets, "
                        f"{extra['lost']} lost, "
                        f"{extra['gaps']} gaps ({extra['gap_packets']} packets), "
                        f"{extra['out_of_order']} out of order."
                    ],
                )
        elif cfg.function == "ping":
            self._ping_final(pkts)
        else:
            self.output.record(
                {
                    "type": "final",
                    "msg": "Replied",
                    "pkts": pkts,
                    "bytes": nbytes,
                    "events": events,
                    "seconds": secs,
                },
                [f"Replied to {pkts} packets in {secs:.2f} seconds."],
            )

    def _ping_final(self, sent: int) -> None:
        w = self.workers[0]
        rtts = np.concatenate(w.ping_rtts) if w.ping_rtts else np.zeros(0, np.int64)
        received = int(rtts.size)
        d: dict[str, Any] = {"type": "final", "msg": "RTT", "sent": sent, "received": received}
        lines = []
        if received:
            q = np.percentile(rtts, [50, 99])
            d.update(
                min=int(rtts.min()),
                avg=float(rtts.mean()),
                median=float(q[0]),
                p99=float(q[1]),
                max=int(rtts.max()),
            )
            lines.append(
                f"RTT over {received} packets: min {int(rtts.min())} av {int(rtts.mean())} ns"
            )
            lines.append(
                f"RTT percentiles: min {int(rtts.min())} median {int(q[0])} "
                f"p99 {int(q[1])} max {int(rtts.max())} ns "
                f"({sent} sent, {received} replies)"
            )
        else:
            lines.append(f"RTT: no reply to {sent} packets")
        self.output.record(d, lines)


def _drops(row: np.ndarray) -> Drops:
    return Drops(int(row[F_RX_DROPPED]), int(row[F_RX_RING_FULL]), int(row[F_FILL_EMPTY]))
