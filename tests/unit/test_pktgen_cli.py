"""pkt-gen's command line: refusals are one line and name the option; no kernel needed."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from vtnetmap_cli.pktgen_cmd import REFUSED, pkt_gen

from vtnet_py.apps.pktgen.config import Config, PktgenError, worker_port_names
from vtnet_py.apps.pktgen.frames import FrameSpec
from vtnet_py.apps.pktgen.worker import Pacer


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-I"], "-I: indirect buffers"),
        (["-r"], "-r: rubbish mode"),
        (["-o", "4"], "-o: pkt-gen's numeric"),
        (["-C", "1024"], "-C: ring configuration"),
        (["-f", "ping", "-p", "2"], "-p 2: -f ping runs on one thread only"),
        (["-f", "txseq", "-p", "2"], "-p 2: -f txseq runs on one thread only"),
        (["-f", "rx", "-R", "1000"], "-R: -f rx does not transmit"),
        (["-f", "tx", "-l", "30"], "-l 30: an IPv4/UDP frame for -f tx needs 42..65535"),
        (["-f", "txseq", "-l", "45"], "-l 45: an IPv4/UDP frame for -f txseq needs 46"),
        (["-f", "tx", "-6", "-l", "61"], "-l 61: an IPv6/UDP frame for -f tx needs 62..65535"),
        (["-f", "tx", "-l", "60", "-l", "70"], "-l 70: the minimum size must be in 42..60"),
        (["-f", "tx", "-H", "8"], "-H 8: virtio-net header length must be 0, 10 or 12"),
        (["-f", "tx", "-s", "10.0.0.300"], "-s: '10.0.0.300' is not an IPv4 address"),
        (["-f", "tx", "-6", "-d", "[2001:db8::g]:9"], "-d: '[2001:db8::g]:9' is not [group@]"),
        (["-f", "tx", "-6", "-d", "[2001:db8:::1]:9"], "-d: '2001:db8:::1' is not an IPv6"),
        (["-f", "tx", "-6", "-d", "9@2001:db8::1"], "-d: group 9 is outside 0..7"),
        (["-f", "tx", "-6", "-d", "[::1]:1-[::1:1]:2"], "may differ only in group 7"),
        (["-f", "tx", "-s", "10.0.0.1:70000"], "-s: port 70000 is outside 0..65535"),
        (["-f", "tx", "-D", "zz:00:00:00:00:00"], "invalid MAC address"),
        (["-f", "tx", "-S", "00:11"], "invalid MAC address"),
        (["-f", "rx", "-z"], "-f rx does not build frames"),
        (["-f", "tx", "-b", "0", "-n", "-1"], "-n -1: the count cannot be negative"),
        (["-f", "tx", "-b", "-3"], "-b -3: the burst must be at least 1"),
        (["-f", "tx", "-p", "0"], "-p 0: at least one thread"),
        (["-f", "tx", "-c", "999"], "-c 999: this machine has"),
        (["-f", "tx", "-a", "999"], "-a 999: a CPU number"),
        (["-f", "tx", "-a", "-2"], "-a -2: a CPU number"),
        (["-f", "tx", "-T", "0"], "-T 0: the report interval"),
        (["-f", "tx", "-w", "-1"], "-w -1: the wait cannot be negative"),
        (["-f", "tx", "-R", "-5"], "-R -5: the rate cannot be negative"),
        (["-f", "tx", "--seed", "-1"], "--seed -1: a seed is 0..2**63-1"),
        (["-f", "tx", "-l", "60", "-l", "50", "-l", "40"], "-l: at most twice"),
        (["-f", "tx", "-F", "0"], "-F 0: fragments a frame are 1..63"),
        (["-f", "tx", "-F", "64"], "-F 64: fragments a frame are 1..63"),
        (["-f", "tx", "-M", "-1"], "-M -1: a fragment size is 1..65535"),
        (["-f", "rx", "-F", "2"], "-F/-M: -f rx does not cut frames"),
        (["-f", "tx", "-F", "2", "-l", "80", "-l", "60"], "-F/-M: frames of one length only"),
        (["-f", "tx", "-F", "2", "-H", "10"], "-H 10: a virtio-net header goes with single"),
        (["-f", "tx", "-l", "9000", "-M", "100"], "-F/-M: 90 slots of 100 bytes a frame"),
        (["-f", "tx", "-X", "--json"], "-X: the dumps are text on stdout"),
        (["-f", "tx", "-4", "-6"], "-4/-6: one address family"),
        (["-f", "tx", "-P", "/nonexistent.pcap"], "-P /nonexistent.pcap: No such file"),
        (["-f", "tx", "-P", "x.pcap", "-D", "0:1:2:3:4:5"], "-P: the frame is sent as read"),
        (["-f", "tx", "-P", "x.pcap", "-l", "100"], "from x.pcap; -l does not apply"),
        (["-f", "tx", "--live", "-6"], "-6: --live rewrites IPv4/UDP frames only"),
        (["-f", "tx", "--live", "-F", "2"], "-F/-M: --live sends single-buffer frames"),
    ],
)
def test_bad_values_are_one_line_usage_errors(args: list[str], needle: str) -> None:
    """Every value is checked before any device is touched: the interface does not even
    exist, and each bad value is still reported as itself, with exit status 2."""
    r = CliRunner().invoke(pkt_gen, ["-i", "netmap:nonexistent0"] + args)
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1, r.output
    assert needle in lines[0], r.output


def test_a_bad_port_name_is_a_usage_error() -> None:
    r = CliRunner().invoke(pkt_gen, ["-i", "netmap:", "-f", "tx"])
    assert r.exit_code == 2 and r.output.startswith("Error: -i netmap:"), r.output


def test_a_missing_interface_is_a_runtime_error() -> None:
    # good options, no such device: the run fails (exit 1), in one line naming it
    r = CliRunner().invoke(pkt_gen, ["-i", "netmap:nonexistent0", "-f", "tx", "-w", "0"])
    assert r.exit_code == 1, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "nonexistent0" in lines[0], r.output


def test_a_missing_namespace_is_a_runtime_error_found_before_any_device() -> None:
    # like a missing interface (exit 1), but found before the port is opened
    r = CliRunner().invoke(pkt_gen, ["-i", "netmap:pg0", "-f", "rx", "--netns", "pgnosuchns"])
    assert r.exit_code == 1, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert lines == ["Error: --netns pgnosuchns: no such network namespace (/run/netns/pgnosuchns)"]


def test_every_refused_option_is_hidden_but_parsed() -> None:
    r = CliRunner().invoke(pkt_gen, ["--help"])
    assert r.exit_code == 0
    for flag in REFUSED:
        assert f"\n  {flag} " not in r.output  # not advertised...
    for flag in (
        "-i PORT",
        "-f",
        "-n COUNT",
        "-l LEN",
        "-R PPS",
        "-W",
        "-A",
        "-H LEN",
        "--json",
        "-F NUM",
        "-M SIZE",
        "-P FILE",
        "-X",
        "-6",
        "-v",
    ):
        assert flag in r.output  # ...while pkt-gen's working options are


def test_missing_interface_is_reported() -> None:
    r = CliRunner().invoke(pkt_gen, ["-f", "tx"])
    assert r.exit_code == 2 and "-i" in r.output


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
