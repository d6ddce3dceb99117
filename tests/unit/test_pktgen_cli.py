"""pkt-gen's command line: refusals are one line and name the option; no kernel needed."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from vtnetmap_cli.pktgen_cmd import REFUSED, pkt_gen

from vtnet_py.apps.pktgen.engine import Config, Pacer, PktgenError, worker_port_names
from vtnet_py.apps.pktgen.frames import FrameSpec


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-F", "2"], "-F: multi-slot"),
        (["-M", "100"], "-M: multi-slot"),
        (["-I"], "-I: indirect buffers"),
        (["-P", "x.pcap"], "-P: frames from a pcap"),
        (["-X"], "-X: per-packet hex dumps"),
        (["-r"], "-r: rubbish mode"),
        (["-o", "4"], "-o: pkt-gen's numeric"),
        (["-C", "1024"], "-C: ring configuration"),
        (["-6"], "-6: IPv6"),
        (["-f", "ping", "-p", "2"], "-p 2: -f ping runs on one thread only"),
        (["-f", "txseq", "-p", "2"], "-p 2: -f txseq runs on one thread only"),
        (["-f", "rx", "-R", "1000"], "-R: -f rx does not transmit"),
        (["-f", "tx", "-l", "30"], "-l 30: an IPv4/UDP frame for -f tx needs 42..65535"),
        (["-f", "txseq", "-l", "45"], "-l 45: an IPv4/UDP frame for -f txseq needs 46"),
        (["-f", "tx", "-l", "60", "-l", "70"], "-l 70: the minimum size must be in 42..60"),
        (["-f", "tx", "-H", "8"], "-H 8: virtio-net header length must be 0, 10 or 12"),
        (["-f", "tx", "-s", "10.0.0.300"], "-s: '10.0.0.300' is not an IPv4 address"),
        (["-f", "tx", "-D", "zz:00:00:00:00:00"], "invalid MAC address"),
        (["-f", "rx", "-z"], "-f rx does not build frames"),
        (["-f", "tx", "-b", "0", "-n", "-1"], "-n -1: the count cannot be negative"),
        (["-f", "tx", "-c", "999"], "-c 999: this machine has"),
        (["-f", "tx", "-l", "60", "-l", "50", "-l", "40"], "-l: at most twice"),
    ],
)
def test_refusals_are_one_line(args: list[str], needle: str) -> None:
    r = CliRunner().invoke(pkt_gen, ["-i", "netmap:nonexistent0"] + args)
    assert r.exit_code != 0
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1, r.output
    assert needle in lines[0], r.output


def test_every_refused_option_is_hidden_but_parsed() -> None:
    r = CliRunner().invoke(pkt_gen, ["--help"])
    assert r.exit_code == 0
    for flag in REFUSED:
        assert f"\n  {flag} " not in r.output  # not advertised...
    for flag in ("-i PORT", "-f", "-n COUNT", "-l LEN", "-R PPS", "-W", "-A", "-H LEN", "--json"):
        assert flag in r.output  # ...while pkt-gen's working options are


def test_missing_interface_is_reported() -> None:
    r = CliRunner().invoke(pkt_gen, ["-f", "tx"])
    assert r.exit_code != 0 and "-i" in r.output


def test_worker_port_names() -> None:
    assert worker_port_names(Config(port="netmap:eth0/T", function="tx")) == ["netmap:eth0/T"]
    assert worker_port_names(Config(port="eth0", function="tx")) == ["netmap:eth0"]
    assert worker_port_names(Config(port="netmap:eth0/T", function="tx", threads=3)) == [
        "netmap:eth0-0/T",
        "netmap:eth0-1/T",
        "netmap:eth0-2/T",
    ]
    with pytest.raises(PktgenError, match="names one ring already"):
        worker_port_names(Config(port="netmap:eth0-1", function="tx", threads=2))


def test_config_defaults_follow_pktgen() -> None:
    assert Config(port="x", function="tx").burst == 512
    assert Config(port="x", function="ping").burst == 1
    assert Config(port="x", function="pong").burst == 1
    assert Config(port="x", function="txseq", spec=FrameSpec()).spec.payload == "seq"
    assert Config(port="x", function="ping").spec.payload == "ping"


def test_pacer_burst_and_period() -> None:
    # pkt-gen: burst shrinks to rate/300 (at least 1); period = burst / rate
    p = Pacer(1000, 512)
    assert p.burst == 3 and p.period == pytest.approx(0.003)
    p = Pacer(10_000_000, 512)
    assert p.burst == 512 and p.period == pytest.approx(512 / 1e7)
    assert Pacer(100, 512).burst == 1
