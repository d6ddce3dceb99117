"""`vtnetmap bridge`: netmap's bridge over vtnetmap ports, with bridge's options and output.

Registered by cli/main.py as ``main.add_command(bridge)``.
"""

from __future__ import annotations

import signal
import socket
import time
from contextlib import suppress
from types import FrameType

import click

BRIDGE_HELP = """netmap's bridge: forward packets between two netmap ports.

\b
  vtnetmap bridge -i netmap:eth0 -i netmap:eth1     two interfaces
  vtnetmap bridge -w 0 -i netmap:eth0               eth0's NIC rings <-> its host stack
  vtnetmap bridge [-v] [-w SECS] [-L] [IFA [IFB [BURST]]]

With one interface (or the same one twice) endpoint 0 is its host rings (IF^), so
every frame between the wire and the kernel's stack passes through the bridge; -L
instead loops the interface's traffic back onto itself. The two ports share one
buffer memory and frames are forwarded by swapping buffers (zero copy) unless -c.
Lines as bridge prints them go to stderr, plus a rate line every -T ms while
traffic flows and a summary at the end. Ctrl-C or SIGTERM stops it cleanly.
"""


@click.command(
    "bridge",
    help=BRIDGE_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.option(
    "-i",
    "ifaces",
    multiple=True,
    metavar="PORT",
    help="netmap port name, up to twice (netmap:IF, netmap:IF^, netmap:IF-N ...)",
)
@click.option(
    "-b",
    "burst",
    default=1024,
    type=int,
    metavar="BURST",
    help="most packets moved per ring pair in one batch (1..8192)",
)
@click.option(
    "-w",
    "wait_link",
    default=4,
    type=int,
    metavar="SECS",
    help="seconds to wait for the link before forwarding (0..100)",
)
@click.option("-c", "copy", is_flag=True, help="copy frames instead of swapping buffers")
@click.option(
    "-L",
    "loopback",
    is_flag=True,
    help="with one interface: loop its traffic back instead of bridging it with the host stack",
)
@click.option("-v", "verbose", count=True, help="log every batch")
@click.option(
    "-T",
    "report_ms",
    default=1000,
    type=int,
    metavar="MS",
    help="milliseconds between rate lines while traffic flows (0: none)",
)
@click.option(
    "--netns", default=None, metavar="NAME", help="open the ports in this network namespace"
)
@click.argument("args", nargs=-1, metavar="[IFA [IFB [BURST]]]")
def bridge(
    ifaces: tuple[str, ...],
    burst: int,
    wait_link: int,
    copy: bool,
    loopback: bool,
    verbose: int,
    report_ms: int,
    netns: str | None,
    args: tuple[str, ...],
) -> None:
    from vtnet_py.apps.bridge import (
        DEFAULT_BURST,
        DEFAULT_WAIT_LINK,
        MAX_BURST,
        MAX_WAIT_LINK,
        Bridge,
        dlog,
        open_pair,
    )
    from vtnet_py.netmap.mode import describe_port_mode

    ifa = ifaces[0] if ifaces else None
    ifb = ifaces[1] if len(ifaces) > 1 else None
    for extra in ifaces[2:]:
        dlog("main", f"{extra} ignored, already have 2 interfaces")
    if len(args) > 3:
        raise click.UsageError("at most three arguments: IFA IFB BURST")
    if args:
        ifa = args[0]
    if len(args) > 1:
        ifb = args[1]
    if len(args) > 2:
        try:
            burst = int(args[2])
        except ValueError:
            raise click.UsageError(f"BURST must be a number, not {args[2]!r}") from None
    if ifa is None:
        raise click.UsageError("missing interface (-i netmap:IF)")
    if not 1 <= burst <= MAX_BURST:
        dlog("main", f"invalid burst {burst}, set to {DEFAULT_BURST}")
        burst = DEFAULT_BURST
    if not 0 <= wait_link <= MAX_WAIT_LINK:
        dlog("main", f"invalid wait_link {wait_link}, set to {DEFAULT_WAIT_LINK}")
        wait_link = DEFAULT_WAIT_LINK

    stop = False
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True
        signal.signal(signum, signal.SIG_DFL)  # a second one ends the process, as bridge's

    old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    a = b = mem = None
    try:
        a, b, mem = open_pair(ifa, ifb, copy=copy, loopback=loopback, netns=netns)
        br = Bridge(a, b, burst=burst, zerocopy=not copy, verbose=verbose, wake_fd=wake_r.fileno())
        dlog("main", f"------- zerocopy {'' if br.zerocopy else 'NOT '}supported")
        for p in (a, b) if b is not a else (a,):
            dlog("main", describe_port_mode(p, netns))
        dlog("main", f"Wait {wait_link} secs for link to come up...")
        deadline = time.monotonic() + wait_link
        while not stop and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        dlog(
            "main",
            f"Ready to go, {a.name} 0x{_first_rx(a):x}/{len(a.rx_rings)} <-> "
            f"{b.name} 0x{_first_rx(b):x}/{len(b.rx_rings)}.",
        )
        report_s = report_ms / 1000.0
        next_report = time.monotonic() + report_s if report_s > 0 else None
        while not stop:
            br.step()
            with suppress(BlockingIOError, InterruptedError):
                while wake_r.recv(64):  # drain what signals wrote
                    pass
            now = time.monotonic()
            if next_report is not None and now >= next_report:
                br.report(report_s + (now - next_report), only_if_moved=True)
                next_report = now + report_s
        for line in br.summary():
            dlog("main", line)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        signal.set_wakeup_fd(old_wakeup)
        if b is not None and b is not a:
            b.close()
        if a is not None:
            a.close()
        if mem is not None:
            mem.close()
        wake_r.close()
        wake_w.close()


def _first_rx(port: object) -> int:
    rings = getattr(port, "rx_rings", [])
    return int(rings[0].ring_id) if rings else 0


if __name__ == "__main__":  # python -m vtnetmap_cli.bridge_cmd
    bridge()

__all__ = ["bridge"]
