"""`vtnetmap demo`: the embedded default main job.

A sandbox of two network namespaces with a veth between them; a netmap port on one end
receives what a netmap port on the other end transmits (a child process, so the two
sides run on separate cores), and the receiver prints a few packets and its Mpps.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import click
import numpy as np

from vtnet_py import Port, open_port
from vtnet_py.apps.sandbox import Sandbox, remove_orphans

FRAME = (
    bytes.fromhex(
        "ffffffffffff"
        "020000000002"
        "0800"  # Ethernet: broadcast from a local MAC, IPv4
        "45000030000000004011"
        "0000"
        "c6336402"
        "c6336401"  # IPv4 198.51.100.2 -> .1, UDP
        "04d2162e001c0000"
    )
    + b"vtnetmap demo frame!"
)  # UDP 1234 -> 5678, payload


def ipv4_checksum(header: bytes) -> int:
    s = sum(int.from_bytes(header[i : i + 2], "big") for i in range(0, len(header), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def demo_frame() -> bytes:
    f = bytearray(FRAME)
    f[24:26] = ipv4_checksum(bytes(f[14:34])).to_bytes(2, "big")
    return bytes(f)


def transmit(ifname: str, ns: str, seconds: float) -> None:
    """Child: fill the TX ring with the demo frame once, then only move head and sync."""
    frame = np.frombuffer(demo_frame(), np.uint8)
    stop = time.monotonic() + seconds
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open_port(f"netmap:{ifname}/T", netns=ns) as port:
        ring = port.tx_rings[0]
        port.bufs[ring.slot["buf_idx"], : frame.size] = frame  # every slot's buffer, once
        ring.slot["len"][:] = frame.size
        while time.monotonic() < stop:
            n = ring.space()
            if n:
                ring.head = ring.cur = ring.next(ring.head, n)
            port.poll(rx=False, tx=True, timeout=0.1)


def _duration(ctx: click.Context, param: click.Parameter, value: float) -> float:
    # `not 0 < x` also refuses nan; inf would never end
    if not 0 < value <= 86400:
        raise click.BadParameter(f"{value} is not a duration in (0, 86400] seconds")
    return value


@click.command("demo")
@click.option(
    "--seconds", "-t", default=5.0, show_default=True, callback=_duration, help="how long to run"
)
@click.option("--show", default=3, show_default=True, help="packets to print")
def demo(seconds: float, show: int) -> None:
    """Run the embedded default: a veth between two fresh network namespaces, a netmap
    port receiving what another netmap port sends; print packets and Mpps.

    \b
    Example:
      sudo vtnetmap demo -t 5
    """
    for name in remove_orphans():
        click.echo(f"removed namespace {name} of a sandbox whose owner is gone")
    with Sandbox.create(queues=1) as sb:
        click.echo(f"sandbox: {sb.ns_tx}/{sb.if_tx} --veth--> {sb.ns_rx}/{sb.if_rx}")
        with open_port(f"netmap:{sb.if_rx}", netns=sb.ns_rx) as port:
            click.echo(
                f"opened netmap:{sb.if_rx}: {len(port.rx_rings)} RX ring(s), "
                f"XDP {port.xdp_mode}, {'zero-copy' if port.zerocopy else 'copy'} "
                f"mode, {port.rx_rings[0].num_slots} slots"
            )
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys; from vtnetmap_cli.demo import transmit; "
                    "transmit(sys.argv[1], sys.argv[2], float(sys.argv[3]))",
                    sb.if_tx,
                    sb.ns_tx,
                    str(seconds),
                ]
            )
            try:
                _receive(port, seconds, show)
            finally:
                child.terminate()
                child.wait()
            port.check_invariant()


def _receive(port: Port, seconds: float, show: int) -> None:
    ring = port.rx_rings[0]
    total = total_bytes = shown = 0
    t0 = last = time.monotonic()
    last_total = 0
    end = t0 + seconds + 1.0
    while time.monotonic() < end:
        if not port.poll(rx=True, timeout=0.25):
            continue
        n = ring.space()
        idx = ring.slots_from_head(n)
        while shown < show and shown < n:
            s = ring.slot[idx[shown]]
            data = bytes(port.buf(int(s["buf_idx"]))[: int(s["len"])])
            click.echo(f"packet {shown}: {len(data)} bytes  {data[:42].hex(' ')}")
            shown += 1
        total += n
        total_bytes += int(ring.slot["len"][idx].sum())
        ring.head = ring.cur = ring.next(ring.head, n)
        now = time.monotonic()
        if now - last >= 1.0:
            click.echo(f"{(total - last_total) / (now - last) / 1e6:.3f} Mpps")
            last, last_total = now, total
    port.rxsync()
    el = time.monotonic() - t0
    click.echo(
        f"Received {total} packets {total_bytes} bytes in {el:.2f} s: "
        f"{total / el / 1e6:.3f} Mpps average"
    )
    if total == 0:
        raise click.ClickException("no packet received")
