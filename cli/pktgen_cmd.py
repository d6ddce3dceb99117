"""`vtnetmap pkt-gen`: netmap's pkt-gen over AF_XDP, with pkt-gen's options and output.

Registered by cli/main.py as ``main.add_command(pkt_gen, "pkt-gen")``.  Options
that cannot apply here are refused with one line saying why, never ignored.  Every
option's value is checked before any device is touched: a bad one is a one-line
usage error naming the option (exit 2); a failure while running (a queue already
owned, a worker that fails) is one line and exit 1.
"""

from __future__ import annotations

import os
import sys

import click
from click.core import ParameterSource

PKTGEN_HELP = """netmap's pkt-gen over AF_XDP: generate (tx, txseq, ping) or receive (rx, rxseq,
pong) raw UDP/IPv4 or UDP/IPv6 (-6) frames through netmap rings.

\b
  vtnetmap pkt-gen -i netmap:eth0 -f tx -l 60 -d 10.0.0.2:9-10.0.0.2:20 -D aa:bb:cc:dd:ee:ff
  vtnetmap pkt-gen -i netmap:eth0/R -f rx -W
  vtnetmap pkt-gen -i netmap:eth0 -f tx -p 2 -R 100000
  vtnetmap pkt-gen -i netmap:eth0 -f tx -6 -d '[2001:db8::2]:9' -D aa:bb:cc:dd:ee:ff
  vtnetmap pkt-gen -i netmap:eth0 -f tx -l 9014 -F 3     # jumbo frames in 3 slots each
  vtnetmap pkt-gen -i netmap:eth0 -f tx -P first.pcap -n 10 -X

Reports are pkt-gen's: a line every -T ms on stderr
(`N Mpps (N Mpkts N Gbps in N usec) N avg_batch N min_space`) and the final
`Sent|Received ...` and `Speed: ...` lines on stdout; --json prints one JSON
object per report on stdout instead.  -R is the total rate over all threads.
When the kernel drops frames on the way to the RX sockets, both lines end with
`drops N ring_full N fill_empty N` (XDP_STATISTICS).
"""

# pkt-gen options that have no meaning over AF_XDP (or are not implemented), with the
# one-line reason given when they are used.
REFUSED = {
    "-I": "indirect buffers (NS_INDIRECT) exist only on VALE ports",
    "-r": "rubbish mode (sending uninitialised buffers) is not supported",
    "-o": "pkt-gen's numeric test options are not supported",
    "-C": "ring configuration goes in the port name: netmap:IF@conf:slots=N,rings=N",
}


class OptionError(click.ClickException):
    """A bad option value: one line naming the option, exit 2 (click's usage errors)."""

    exit_code = 2


class EnvironmentProblem(click.ClickException):
    """A well-formed value naming something this machine lacks (a network namespace):
    one line, exit 1, as a missing interface is; still found before any device is touched."""

    exit_code = 1


def _refuse(flag: str) -> None:
    raise OptionError(f"{flag}: {REFUSED[flag]}")


@click.command(
    "pkt-gen",
    help=PKTGEN_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.option(
    "-i",
    "iface",
    required=True,
    metavar="PORT",
    help="netmap port name (netmap:IF, netmap:IF-N, .../T, .../R; a bare IF "
    "gets the netmap: prefix)",
)
@click.option(
    "-f",
    "function",
    default="rx",
    type=click.Choice(["tx", "rx", "ping", "pong", "txseq", "rxseq"]),
    help="what to do",
)
@click.option(
    "-n",
    "count",
    default=0,
    type=int,
    metavar="COUNT",
    help="packets to send/receive, or ping/pong transactions (0: forever)",
)
@click.option(
    "-l",
    "lengths",
    multiple=True,
    type=int,
    metavar="LEN",
    help="frame length without CRC (default 60, or the least -f and -6 need); a second "
    "-l gives the minimum of random lengths [second, first)",
)
@click.option(
    "-b",
    "burst",
    default=0,
    type=int,
    metavar="BURST",
    help="packets per batch (default 512, 1 for ping/pong)",
)
@click.option(
    "-s",
    "src",
    default=None,
    metavar="IP[:PORT[-IP:PORT]]",
    help="source address and port, or a range (default 10.0.0.1, -6: 2001:db8::1); "
    "IPv6: [GROUP@][IP]:PORT, the range walks 16-bit group GROUP (default 7)",
)
@click.option(
    "-d",
    "dst",
    default=None,
    metavar="IP[:PORT[-IP:PORT]]",
    help="destination address and port, or a range (default 10.1.0.1, -6: 2001:db8:1::1)",
)
@click.option(
    "-S", "src_mac", default=None, metavar="MAC", help="source MAC (default: the interface's)"
)
@click.option("-D", "dst_mac", default="ff:ff:ff:ff:ff:ff", metavar="MAC", help="destination MAC")
@click.option(
    "-a",
    "affinity",
    default=-1,
    type=int,
    metavar="CPU",
    help="pin thread i to CPU (CPU + i) mod cpus",
)
@click.option("-c", "cpus", default=0, type=int, metavar="CPUS", help="CPUs to use for -a (0: all)")
@click.option(
    "-p",
    "threads",
    default=1,
    type=int,
    metavar="THREADS",
    help="worker processes, one ring pair each",
)
@click.option(
    "-T", "report_ms", default=1000, type=int, metavar="MS", help="milliseconds between reports"
)
@click.option(
    "-w",
    "wait_link",
    default=2,
    type=int,
    metavar="SECS",
    help="seconds to wait for the link before starting",
)
@click.option("-W", "exit_idle", is_flag=True, help="receivers stop after 1 s without traffic")
@click.option(
    "-R",
    "rate",
    default=0,
    type=int,
    metavar="PPS",
    help="transmit rate in packets per second (total)",
)
@click.option("-z", "random_src", is_flag=True, help="random source address and port")
@click.option("-Z", "random_dst", is_flag=True, help="random destination address and port")
@click.option(
    "-H",
    "vnet_hdr",
    default=0,
    type=int,
    metavar="LEN",
    help="virtio-net header bytes before each frame (0, 10 or 12)",
)
@click.option(
    "-A",
    "averages",
    is_flag=True,
    help="mean and standard deviation of the rate over the last 15 reports",
)
@click.option("-N", "no_normalize", is_flag=True, help="do not scale units (pps, bps)")
@click.option(
    "-B",
    "framing",
    is_flag=True,
    help="count 24 bytes of Ethernet framing and CRC in the raw bandwidth",
)
@click.option(
    "-v",
    "verbose",
    count=True,
    help="more messages: ranges, fragments, each port's mode, and at the end every "
    "socket's XDP_STATISTICS",
)
@click.option("-4", "ipv4", is_flag=True, help="IPv4/UDP frames (the default)")
@click.option("-6", "ipv6", is_flag=True, help="IPv6/UDP frames")
@click.option(
    "-F",
    "frags",
    default=1,
    type=int,
    metavar="NUM",
    help="-f tx/txseq: NUM slots a frame (NS_MOREFRAG), 1..63",
)
@click.option(
    "-M",
    "frag_size",
    default=0,
    type=int,
    metavar="SIZE",
    help="with -F: at most SIZE bytes a slot (default: a buffer)",
)
@click.option("-I", "indirect", is_flag=True, hidden=True)
@click.option(
    "-P",
    "pcap",
    default=None,
    metavar="FILE",
    help="-f tx: send the first packet of this pcap file, as it is",
)
@click.option("-X", "dump", is_flag=True, help="print every slot sent or received, in hex")
@click.option("-r", "rubbish", is_flag=True, hidden=True)
@click.option("-o", "test_options", default=None, type=int, hidden=True)
@click.option("-C", "ring_conf", default=None, hidden=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per report on stdout")
@click.option(
    "--netns", default=None, metavar="NAME", help="open the port in this network namespace"
)
@click.option("--seed", default=None, type=int, help="seed for -z/-Z and random lengths")
@click.option(
    "--busy-poll",
    "busy_poll",
    is_flag=True,
    help="spin on the rings instead of sleeping in poll (lower latency, one busy CPU "
    "per worker; the sockets also ask the kernel to busy-poll the queue)",
)
@click.option(
    "--live",
    is_flag=True,
    help="-f tx generated in the kernel (BPF_PROG_TEST_RUN live XDP frames "
    "redirected out of IF; -b is the kernel batch: default 64, at most 256)",
)
def pkt_gen(
    iface: str,
    function: str,
    count: int,
    lengths: tuple[int, ...],
    burst: int,
    src: str | None,
    dst: str | None,
    src_mac: str | None,
    dst_mac: str,
    affinity: int,
    cpus: int,
    threads: int,
    report_ms: int,
    wait_link: int,
    exit_idle: bool,
    rate: int,
    random_src: bool,
    random_dst: bool,
    vnet_hdr: int,
    averages: bool,
    no_normalize: bool,
    framing: bool,
    verbose: int,
    ipv4: bool,
    ipv6: bool,
    frags: int,
    frag_size: int,
    indirect: bool,
    pcap: str | None,
    dump: bool,
    rubbish: bool,
    test_options: int | None,
    ring_conf: str | None,
    as_json: bool,
    netns: str | None,
    seed: int | None,
    busy_poll: bool,
    live: bool,
) -> None:
    ctx = click.get_current_context()

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is not ParameterSource.DEFAULT

    for flag, used in (
        ("-I", indirect),
        ("-r", rubbish),
        ("-o", test_options is not None),
        ("-C", ring_conf is not None),
    ):
        if used:
            _refuse(flag)
    if ipv4 and ipv6:
        raise OptionError("-4/-6: one address family")
    if len(lengths) > 2:
        raise OptionError("-l: at most twice (frame length, then minimum length)")
    if function in ("rx", "rxseq", "pong") and (random_src or random_dst or len(lengths) > 1):
        raise OptionError(f"-z/-Z/second -l: -f {function} does not build frames")
    if pcap is not None:
        for name, flag in (
            ("src", "-s"),
            ("dst", "-d"),
            ("src_mac", "-S"),
            ("dst_mac", "-D"),
            ("lengths", "-l"),
            ("ipv6", "-6"),
        ):
            if given(name):
                raise OptionError(
                    f"-P: the frame is sent as read from {pcap}; {flag} does not apply"
                )
    if netns is not None:
        from vtnet_py._sys.netns import NETNS_RUN_DIR

        path = netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)
        if "\0" in netns or not os.path.exists(path):
            raise EnvironmentProblem(f"--netns {netns}: no such network namespace ({path})")

    from vtnet_py.apps.pktgen.addresses import (
        DEFAULT_DST,
        DEFAULT_DST6,
        DEFAULT_SRC,
        DEFAULT_SRC6,
        FrameSpecError,
        parse_mac,
        parse_range,
    )
    from vtnet_py.apps.pktgen.config import Config, PktgenError
    from vtnet_py.apps.pktgen.engine import Run
    from vtnet_py.apps.pktgen.pcap import first_packet
    from vtnet_py.apps.pktgen.report import FRAMING_BITS
    from vtnet_py.apps.pktgen.spec import FrameSpec, min_frame_len
    from vtnet_py.errors import VtnetError

    if live:
        from vtnet_py.apps.pktgen import live as live_mode

    # Everything below until Run() only checks and builds values: no device is touched,
    # so every error here is a usage error.
    try:
        payload = {"txseq": "seq", "ping": "ping"}.get(function, "plain")
        raw = first_packet(pcap).data if pcap is not None else None
        default_len = max(60, min_frame_len(payload, ipv6))  # type: ignore[arg-type]
        spec = FrameSpec(
            src_mac=parse_mac(src_mac) if src_mac else b"\0" * 6,
            dst_mac=parse_mac(dst_mac),
            src=parse_range(src or (DEFAULT_SRC6 if ipv6 else DEFAULT_SRC), "-s", ipv6),
            dst=parse_range(dst or (DEFAULT_DST6 if ipv6 else DEFAULT_DST), "-d", ipv6),
            length=lengths[0] if lengths else default_len,
            min_length=lengths[1] if len(lengths) > 1 else 0,
            random_src=random_src,
            random_dst=random_dst,
            vnet_hdr_len=vnet_hdr,
            payload=payload,  # type: ignore[arg-type]
            raw=raw,
        )
        cfg = Config(
            port=iface,
            function=function,
            count=count,
            spec=spec,
            burst=burst or (live_mode.DEFAULT_BATCH if live else 0),
            threads=threads,
            report_ms=report_ms,
            wait_link=float(wait_link),
            forever=not exit_idle,
            rate=rate,
            averages=averages,
            normalize=not no_normalize,
            framing=FRAMING_BITS if framing else 0,
            as_json=as_json,
            netns=netns,
            seed=seed,
            src_mac_given=src_mac is not None,
            affinity=affinity,
            cpus=cpus,
            frags=frags,
            frag_size=frag_size,
            dump=dump,
            verbose=verbose,
            busy_poll=busy_poll,
        )
        why = live_mode.live_refusal(cfg) if live else None
    except (FrameSpecError, PktgenError) as exc:
        raise OptionError(str(exc)) from exc
    if why is not None:
        raise OptionError(why)
    try:
        status = (live_mode.LiveRun(cfg) if live else Run(cfg)).run()
    except (FrameSpecError, PktgenError, VtnetError) as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(status)


if __name__ == "__main__":  # python -m vtnetmap_cli.pktgen_cmd, before main.py registers it
    pkt_gen()
