"""pkt-gen's report lines: unit normalisation, the periodic line, the final lines, JSON.

The shapes are pkt-gen's, so scripts written against pkt-gen keep working:

periodic (stderr, with pkt-gen's ``D()`` prefix ``SSS.UUUUUU func [line]``)::

    123.456789 main_thread [0] 1.234 Mpps (1.234 Mpkts 592.320 Mbps in 1000123 usec) \
        512.00 avg_batch 99999 min_space

(one line; broken here)

with ``-A`` the window statistics sit between ``pps`` and ``(`` exactly as
pkt-gen prints them (``[avg/std 1.234 M/5.678 K pps](``, no space);

final (stdout)::

    Sent 1000 packets 60000 bytes 2 events 60 bytes each in 0.01 seconds.
    Speed: 100.000 Kpps Bandwidth: 48.000 Mbps (raw 48.000 Mbps). Average batch: 500.00 pkts

or ``Sent nothing.`` when no packet was counted.

When the kernel dropped frames on the way to the RX sockets (XDP_STATISTICS:
``rx_dropped``, ``rx_ring_full``, ``rx_fill_ring_empty_descs``), the periodic line
(for its interval) and the ``Speed:`` line (in total) end with
`` drops N ring_full N fill_empty N``; with no drops the lines are exactly
pkt-gen's.  JSON objects always carry ``rx_dropped``, ``rx_ring_full`` and
``fill_ring_empty``.  The prefix keeps pkt-gen's
three leading tokens so ``awk '{print $4}'`` still picks the rate; its line
number is 0 (there is no C source line to name).
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

UNITS = ("", "K", "M", "G", "T")
STATS_WIN = 15  # pkt-gen's -A sliding window, in reports
FRAMING_BITS = 24 * 8  # -B: 4 bytes CRC + 20 bytes preamble and gap per frame


def norm(val: float, normalize: bool = True) -> str:
    """pkt-gen's norm(): ``"%.3f %s"`` with K/M/G/T steps of 1000, or ``"%.0f "`` with -N."""
    i = 0
    if normalize:
        while val >= 1000 and i < len(UNITS) - 1:
            val /= 1000
            i += 1
        return f"{val:.3f} {UNITS[i]}"
    return f"{val:.0f} "


def d_prefix(now: float | None = None, func: str = "main_thread", line: int = 0) -> str:
    """pkt-gen's ``D()`` prefix: seconds modulo 1000, microseconds, function, line."""
    if now is None:
        now = time.time()
    sec = int(now)
    usec = int(round((now - sec) * 1e6))
    if usec >= 1000000:
        sec, usec = sec + 1, usec - 1000000
    return f"{sec % 1000:03d}.{usec:06d} {func} [{line}] "


@dataclass
class Counters:
    """Cumulative counters of one worker (or their sum), as pkt-gen's ``my_ctrs``."""

    pkts: int = 0
    bytes: int = 0
    events: int = 0
    min_space: int = 0
    drops: Drops = field(default_factory=lambda: Drops())

    def __add__(self, o: Counters) -> Counters:
        return Counters(
            self.pkts + o.pkts,
            self.bytes + o.bytes,
            self.events + o.events,
            self.min_space + o.min_space,
            self.drops + o.drops,
        )


@dataclass(frozen=True)
class Drops:
    """The kernel's drop counters of the RX sockets (XDP_STATISTICS)."""

    rx_dropped: int = 0
    rx_ring_full: int = 0
    fill_ring_empty: int = 0

    def __add__(self, o: Drops) -> Drops:
        return Drops(
            self.rx_dropped + o.rx_dropped,
            self.rx_ring_full + o.rx_ring_full,
            self.fill_ring_empty + o.fill_ring_empty,
        )

    def __sub__(self, o: Drops) -> Drops:
        return Drops(
            self.rx_dropped - o.rx_dropped,
            self.rx_ring_full - o.rx_ring_full,
            self.fill_ring_empty - o.fill_ring_empty,
        )

    def suffix(self) -> str:
        """The text field: empty when nothing was dropped, so pkt-gen's shapes hold."""
        if not (self.rx_dropped or self.rx_ring_full or self.fill_ring_empty):
            return ""
        return (
            f" drops {self.rx_dropped} ring_full {self.rx_ring_full} "
            f"fill_empty {self.fill_ring_empty}"
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "rx_dropped": self.rx_dropped,
            "rx_ring_full": self.rx_ring_full,
            "fill_ring_empty": self.fill_ring_empty,
        }


@dataclass
class Periodic:
    """The figures of one periodic report."""

    pps: int
    pkts: int
    bps: float
    usec: int
    avg_batch: float
    min_space: int
    pps_avg: float | None = None
    pps_std: float | None = None
    drops: Drops = field(default_factory=Drops)

    def line(self, normalize: bool = True) -> str:
        """The report line without the D() prefix."""
        stats = ""
        if self.pps_avg is not None and self.pps_std is not None:
            stats = f"[avg/std {norm(self.pps_avg, normalize)}/{norm(self.pps_std, normalize)} pps]"
        return (
            f"{norm(self.pps, normalize)}pps {stats}({norm(self.pkts, normalize)}pkts "
            f"{norm(self.bps, normalize)}bps in {self.usec} usec) {self.avg_batch:.2f} avg_batch "
            f"{self.min_space} min_space{self.drops.suffix()}"
        )

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": "periodic",
            "pps": self.pps,
            "pkts": self.pkts,
            "bps": self.bps,
            "usec": self.usec,
            "avg_batch": self.avg_batch,
            "min_space": self.min_space,
            **self.drops.as_dict(),
        }
        if self.pps_avg is not None:
            d["pps_avg"] = self.pps_avg
            d["pps_std"] = self.pps_std
        return d


@dataclass
class Final:
    """The figures of pkt-gen's final two lines."""

    msg: str  # "Sent" or "Received"
    pkts: int
    bytes: int
    events: int
    seconds: float
    framing: int = 0  # bits added per packet for the raw figure (-B)
    drops: Drops = field(default_factory=Drops)

    @property
    def size(self) -> int:
        return self.bytes // self.pkts if self.pkts else 0

    def _delta(self) -> float:
        return self.seconds if self.seconds != 0 else 1e-6

    @property
    def pps(self) -> float:
        return self.pkts / self._delta()

    @property
    def bps(self) -> float:
        return 8.0 * self.bytes / self._delta()

    @property
    def raw_bps(self) -> float:
        return (8.0 * self.bytes + self.pkts * self.framing) / self._delta()

    @property
    def avg_batch(self) -> float:
        return self.pkts / self.events if self.events else 0.0

    def lines(self, normalize: bool = True) -> list[str]:
        if self.pkts == 0:
            return [f"{self.msg} nothing."]
        return [
            f"{self.msg} {self.pkts} packets {self.bytes} bytes {self.events} events "
            f"{self.size} bytes each in {self.seconds:.2f} seconds.",
            f"Speed: {norm(self.pps, normalize)}pps Bandwidth: {norm(self.bps, normalize)}bps "
            f"(raw {norm(self.raw_bps, normalize)}bps). Average batch: {self.avg_batch:.2f} pkts"
            + self.drops.suffix(),
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": "final",
            "msg": self.msg,
            "pkts": self.pkts,
            "bytes": self.bytes,
            "events": self.events,
            "size": self.size,
            "seconds": self.seconds,
            "pps": self.pps,
            "bps": self.bps,
            "raw_bps": self.raw_bps,
            "avg_batch": self.avg_batch,
            **self.drops.as_dict(),
        }


@dataclass
class Reporter:
    """Turns counter snapshots into periodic reports, as pkt-gen's main_thread does.

    ``sample(cur, now)`` returns a ``Periodic`` for the interval since the
    previous sample, or None when the interval is under 10 ms (pkt-gen skips
    those as meaningless).  With ``averages`` (-A) the pps of the last 15
    reports give a mean and a standard deviation over the non-zero samples.
    """

    framing: int = 0
    averages: bool = False
    prev: Counters = field(default_factory=Counters)
    prev_t: float = field(default_factory=time.monotonic)
    window: deque[int] = field(default_factory=lambda: deque([0] * STATS_WIN, maxlen=STATS_WIN))

    def sample(self, cur: Counters, now: float | None = None) -> Periodic | None:
        if now is None:
            now = time.monotonic()
        usec = int((now - self.prev_t) * 1e6)
        if usec < 10000:
            return None
        pkts = cur.pkts - self.prev.pkts
        nbytes = cur.bytes - self.prev.bytes
        events = cur.events - self.prev.events
        # pkt-gen rounds the integer pps to nearest.
        pps = (pkts * 1000000 + usec // 2) // usec
        avg_batch = pkts / events if events > 0 else 0.0
        bps = 1000000 * (nbytes * 8 + pkts * self.framing) / usec
        p = Periodic(
            pps, pkts, bps, usec, avg_batch, cur.min_space, drops=cur.drops - self.prev.drops
        )
        if self.averages:
            self.window.append(pps)
            nz = [w for w in self.window if w]
            if nz:
                avg = sum(self.window) / len(nz)
                std = math.sqrt(sum((w - avg) ** 2 for w in nz) / len(nz))
            else:
                avg = std = 0.0
            p.pps_avg, p.pps_std = avg, std
        self.prev, self.prev_t = cur, now
        return p


class Output:
    """Where reports go: pkt-gen's text lines, or one JSON object a line (--json).

    Text: periodic and diagnostic lines to ``err`` with the D() prefix (pkt-gen
    prints them with D(), on stderr), final lines to ``out``.  JSON: every
    report is one object on ``out``; diagnostics stay text on ``err``.
    """

    def __init__(
        self, out: TextIO, err: TextIO, as_json: bool = False, normalize: bool = True
    ) -> None:
        self.out, self.err = out, err
        self.as_json = as_json
        self.normalize = normalize

    def diag(self, msg: str, func: str = "main_thread") -> None:
        self.err.write(d_prefix(func=func) + msg + "\n")
        self.err.flush()

    def info(self, msg: str) -> None:
        """A plain stdout line pkt-gen prints with printf (header lines)."""
        if not self.as_json:
            self.out.write(msg + "\n")
            self.out.flush()

    def text(self, block: str) -> None:
        """Lines printed as they are on stdout (-X dumps)."""
        self.out.write(block)
        self.out.flush()

    def periodic(self, p: Periodic) -> None:
        if self.as_json:
            self._json(p.as_dict())
        else:
            self.diag(p.line(self.normalize))

    def final(self, f: Final, extra: dict[str, Any] | None = None) -> None:
        if self.as_json:
            d = f.as_dict()
            if extra:
                d.update(extra)
            self._json(d)
        else:
            for line in f.lines(self.normalize):
                self.out.write(line + "\n")
            self.out.flush()

    def record(self, d: dict[str, Any], text: list[str]) -> None:
        """Some other report (rxseq summary, ping RTT): JSON object or text lines."""
        if self.as_json:
            self._json(d)
        else:
            for line in text:
                self.out.write(line + "\n")
            self.out.flush()

    def _json(self, d: dict[str, Any]) -> None:
        d.setdefault("time", time.time())
        self.out.write(json.dumps(d, sort_keys=True) + "\n")
        self.out.flush()


def hexdump(data: bytes, ring: int, cur: int, buf_idx: int, flags: int) -> str:
    """One slot as pkt-gen's dump_payload() prints it (-X): a header line, then 16
    bytes a line: offset, hex bytes, printable characters ('.' for the rest).  The
    ring is named by its index, where pkt-gen prints its address."""
    lines = [f"ring {ring} cur {cur:5d} [buf {buf_idx:6d} flags 0x{flags:04x} len {len(data):5d}]"]
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        hexpart = "".join(f"{b:02x} " for b in chunk)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{off:5d}: {hexpart:<48}{text}")
    return "\n".join(lines) + "\n"
