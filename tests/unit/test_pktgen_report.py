"""pkt-gen's report lines: compared with pkt-gen's own C format strings applied by
Python's printf-style operator, so the shapes are checked against the source text."""

from __future__ import annotations

import io
import json
import re

import pytest

from vtnet_py.apps.pktgen.report import (
    FRAMING_BITS,
    Counters,
    Final,
    Output,
    Periodic,
    Reporter,
    d_prefix,
    norm,
)

# pkt-gen.c's format strings, verbatim except %llu -> %d (Python has no length modifiers).
PERIODIC_FMT = "%spps %s(%spkts %sbps in %d usec) %.2f avg_batch %d min_space"
AVG_FMT = "[avg/std %s/%s pps]"
FINAL_FMT1 = "%s %d packets %d bytes %d events %d bytes each in %.2f seconds."
FINAL_FMT2 = "Speed: %spps Bandwidth: %sbps (raw %sbps). Average batch: %.2f pkts"


def c_norm(val: float, normalize: bool = True) -> str:
    """ctrs.h norm2() as written: divide by 1000 while >= 1000, up to T."""
    units = ["", "K", "M", "G", "T"]
    i = 0
    if normalize:
        while val >= 1000 and i < 4:
            val /= 1000
            i += 1
        return "%.3f %s" % (val, units[i])  # noqa: UP031 - the C format
    return "%.0f %s" % (val, units[0])  # noqa: UP031


@pytest.mark.parametrize(
    ("val", "want"),
    [
        (0, "0.000 "),
        (999, "999.000 "),
        (1000, "1.000 K"),
        (1234567, "1.235 M"),
        (2.1e9, "2.100 G"),
        (7.5e15, "7500.000 T"),  # no unit above T
        (999999.9999, "1000.000 K"),  # rounding after the division, as in C
    ],
)
def test_norm(val: float, want: str) -> None:
    assert norm(val) == want == c_norm(val)


@pytest.mark.parametrize("val", [0, 12.4, 12.6, 1e6, 3.3e12])
def test_norm_unnormalized(val: float) -> None:
    assert norm(val, normalize=False) == c_norm(val, normalize=False)


def test_periodic_line_shape() -> None:
    p = Periodic(
        pps=1234567, pkts=1234000, bps=592320000.0, usec=1000123, avg_batch=511.5, min_space=99999
    )
    want = PERIODIC_FMT % (
        c_norm(1234567),
        "",
        c_norm(1234000),
        c_norm(592320000.0),
        1000123,
        511.5,
        99999,
    )
    assert p.line() == want
    assert want == (
        "1.235 Mpps (1.234 Mpkts 592.320 Mbps in 1000123 usec) 511.50 avg_batch 99999 min_space"
    )
    p.pps_avg, p.pps_std = 1.5e6, 2500.0
    stats = AVG_FMT % (c_norm(1.5e6), c_norm(2500.0))
    assert p.line() == PERIODIC_FMT % (
        c_norm(1234567),
        stats,
        c_norm(1234000),
        c_norm(592320000.0),
        1000123,
        511.5,
        99999,
    )
    assert "pps [avg/std 1.500 M/2.500 K pps](1.234 Mpkts" in p.line()
    p.pps_avg = p.pps_std = None
    assert p.line(normalize=False).startswith("1234567 pps (1234000 pkts 592320000 bps")


def test_final_lines_shape() -> None:
    f = Final("Sent", pkts=1000000, bytes=60000000, events=1954, seconds=0.4567)
    a, b = f.lines()
    assert a == FINAL_FMT1 % ("Sent", 1000000, 60000000, 1954, 60, 0.4567)
    assert b == FINAL_FMT2 % (
        c_norm(1000000 / 0.4567),
        c_norm(8 * 60000000 / 0.4567),
        c_norm(8 * 60000000 / 0.4567),
        1000000 / 1954,
    )
    assert a == "Sent 1000000 packets 60000000 bytes 1954 events 60 bytes each in 0.46 seconds."
    # -B adds 24 bytes of framing per packet to the raw figure only
    g = Final("Received", pkts=100, bytes=6000, events=1, seconds=1.0, framing=FRAMING_BITS)
    assert g.lines()[1] == (
        "Speed: 100.000 pps Bandwidth: 48.000 Kbps (raw 67.200 Kbps). Average batch: 100.00 pkts"
    )
    assert Final("Received", 0, 0, 0, 1.0).lines() == ["Received nothing."]


def test_d_prefix() -> None:
    assert d_prefix(1700000123.0000042) == "123.000004 main_thread [0] "
    assert re.fullmatch(r"\d{3}\.\d{6} main_thread \[0\] ", d_prefix())
    # awk '{print $4" "$5}' picks the rate as on pkt-gen's lines
    line = d_prefix(5.5) + Periodic(2000000, 2000000, 9.6e8, 1000000, 64.0, 0).line()
    assert line.split()[3:5] == ["2.000", "Mpps"]


def test_reporter_interval_figures() -> None:
    r = Reporter(prev_t=100.0)
    assert r.sample(Counters(5, 300, 1), now=100.005) is None  # < 10 ms: skipped
    p = r.sample(Counters(1000001, 60000060, 2000, 7), now=101.000003)
    assert p is not None
    assert p.usec == 1000003
    # pkt-gen: pps = (pkts * 1e6 + usec / 2) / usec in integers
    assert p.pps == (1000001 * 1000000 + 1000003 // 2) // 1000003
    assert p.pkts == 1000001 and p.min_space == 7
    assert p.avg_batch == pytest.approx(1000001 / 2000)
    assert p.bps == pytest.approx(1e6 * 60000060 * 8 / 1000003)
    q = r.sample(Counters(1000001, 60000060, 2000), now=102.000003)
    assert q is not None and (q.pps, q.pkts, q.avg_batch) == (0, 0, 0.0)


def test_reporter_window_averages() -> None:
    r = Reporter(averages=True, prev_t=0.0)
    total = 0
    seen = []
    for i, pps in enumerate([100, 200, 0, 300] + [400] * 20):
        total += pps
        p = r.sample(Counters(total), now=float(i + 1))
        assert p is not None and p.pps == pps
        seen.append(p)
    # after 4 reports: the zero counts in the sum but not in the sample count
    assert seen[3].pps_avg == pytest.approx(600 / 3)
    nz = [100, 200, 300]
    m = 600 / 3
    assert seen[3].pps_std == pytest.approx((sum((x - m) ** 2 for x in nz) / 3) ** 0.5)
    # the window holds 15 reports: old ones fall out
    assert seen[-1].pps_avg == pytest.approx(400) and seen[-1].pps_std == pytest.approx(0)


def test_output_text_and_json() -> None:
    out, err = io.StringIO(), io.StringIO()
    o = Output(out, err)
    o.info("Sending on netmap:x: 1 queues, 1 threads and 1 cpus.")
    o.periodic(Periodic(10, 10, 4800.0, 1000000, 1.0, 0))
    o.final(Final("Sent", 10, 600, 10, 1.0))
    assert err.getvalue().endswith(
        "main_thread [0] 10.000 pps (10.000 pkts 4.800 Kbps in 1000000 usec) "
        "1.00 avg_batch 0 min_space\n"
    )
    assert out.getvalue().splitlines() == [
        "Sending on netmap:x: 1 queues, 1 threads and 1 cpus.",
        "Sent 10 packets 600 bytes 10 events 60 bytes each in 1.00 seconds.",
        "Speed: 10.000 pps Bandwidth: 4.800 Kbps (raw 4.800 Kbps). Average batch: 1.00 pkts",
    ]
    out, err = io.StringIO(), io.StringIO()
    o = Output(out, err, as_json=True)
    o.info("header lines are text only")
    o.periodic(Periodic(10, 10, 4800.0, 1000000, 1.0, 0))
    o.final(Final("Sent", 10, 600, 10, 1.0), extra={"lost": 0})
    objs = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [o_["type"] for o_ in objs] == ["periodic", "final"]
    assert objs[0]["pps"] == 10 and objs[0]["usec"] == 1000000
    assert objs[1]["msg"] == "Sent" and objs[1]["pkts"] == 10 and objs[1]["lost"] == 0
    assert objs[1]["pps"] == pytest.approx(10.0) and objs[1]["size"] == 60
    assert err.getvalue() == ""
