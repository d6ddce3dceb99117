"""`vtnetmap attach`, `detach` and `status`: the device side of the tool.

Registered by cli/main.py. Library errors (VtnetError) become one line on stderr and exit
status 1 in main's group; click's usage errors exit 2; an OSError the library did not map
is reported the same way here, naming the interface.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from vtnet_py.admin.attach import attach, detach
from vtnet_py.admin.status import status
from vtnet_py.errors import VtnetError

ATTACH_HELP = """Prepare interface IF for netmap ports and leave vtnetmap's steering
program attached and pinned (bpffs, mounted if needed; files readable by root only).

Checks first (the default-route interface is refused without --force; virtio_net's XDP
preconditions are reported in the kernel's words), then sets the channels (--rings),
turns the offloads netmap needs off, recording what they were, and attaches the program.
Later `open_port("netmap:IF")` calls in any process use it; `vtnetmap detach IF` puts
everything back. --zerocopy is the default for ports that ask "auto" ("on" is checked
now by binding every queue in zero-copy mode).

\b
Examples:
  vtnetmap attach eth1
  vtnetmap attach eth1 --rings 2 --mode native
  vtnetmap attach vtd0 --netns ns1 --zerocopy off
  vtnetmap attach ens3 --force      # even though ens3 carries the default route
"""

DETACH_HELP = """Detach vtnetmap's steering program from IF, remove its pins and restore
the offloads and channels recorded by `vtnetmap attach`.

Detaching is forcible: ports of other processes still open on IF stop receiving and
fail on their next poll (the message names their pids). A program a port attached
implicitly (no `vtnetmap attach`) is removed only when all its owner processes are dead,
or with --force. Also repairs a half-done attach and stale pins. Running it again when
there is nothing to do says so and exits 0.

\b
Examples:
  vtnetmap detach eth1
  vtnetmap detach vtd0 --netns ns1
  vtnetmap detach eth1 --force      # also a program held by live ports' processes
"""

STATUS_HELP = """Show, per interface and queue, what vtnetmap has set up: the XDP program
and mode, whether it is pinned, who attached it, the owner pid of each queue (dead ones
marked), channels, offload state and the virtio-net header length. Without IF: every
interface of the namespace that has vtnetmap's program, state or pins.

AF_XDP statistics belong to each socket and can only be read inside the process that
owns it (Port.stats(), or vtnet_py.admin.status.status(ports=[...]) there).

\b
Examples:
  vtnetmap status
  vtnetmap status eth1 --json
  vtnetmap status vtd0 --netns ns1
"""

_SETTINGS = {"help_option_names": ["-h", "--help"]}


@contextmanager
def _os_errors(ifname: str | None) -> Iterator[None]:
    """Errors as one line and exit 1: a VtnetError with its notes (what an undo could
    not do, a driver hint) joined on, an OSError the library did not map naming the
    interface."""
    try:
        yield
    except VtnetError as exc:
        notes = getattr(exc, "__notes__", None)
        if not notes:
            raise  # main's group prints it
        click.echo(f"vtnetmap: {exc}; " + "; ".join(notes), err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"vtnetmap: {ifname or 'status'}: {exc.strerror or exc}", err=True)
        sys.exit(1)


def _netns_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--netns",
        "netns_name",
        metavar="NS",
        help="the interface lives in network namespace NS (ip netns name or path)",
    )(fn)


@click.command("attach", help=ATTACH_HELP, context_settings=_SETTINGS)
@click.argument("ifname", metavar="IF")
@click.option(
    "--rings",
    type=click.IntRange(min=1),
    metavar="N",
    help="set the interface's channels (ring count) to N before attaching",
)
@click.option(
    "--mode",
    type=click.Choice(["native", "generic"]),
    help="force native (driver) or generic (SKB) XDP; default by driver",
)
@click.option(
    "--zerocopy",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="zero-copy default for ports opened later",
)
@click.option(
    "--force", is_flag=True, help="attach even to the interface that carries the default route"
)
@_netns_option
def attach_cmd(
    ifname: str,
    rings: int | None,
    mode: str | None,
    zerocopy: str,
    force: bool,
    netns_name: str | None,
) -> None:
    with _os_errors(ifname):
        res = attach(
            ifname, rings=rings, mode=mode, zerocopy=zerocopy, force=force, netns=netns_name
        )
    for w in res.warnings:
        click.echo(f"vtnetmap: warning: {w}", err=True)
    for m in res.messages:
        click.echo(m)


@click.command("detach", help=DETACH_HELP, context_settings=_SETTINGS)
@click.argument("ifname", metavar="IF")
@click.option(
    "--force",
    is_flag=True,
    help="also detach a program that live processes' ports attached implicitly",
)
@_netns_option
def detach_cmd(ifname: str, force: bool, netns_name: str | None) -> None:
    with _os_errors(ifname):
        res = detach(ifname, netns=netns_name, force=force)
    for m in res.messages:
        click.echo(m)
    for p in res.problems:
        click.echo(f"vtnetmap: {p}", err=True)
    if res.problems:
        sys.exit(1)


def _owner(q: dict[str, Any]) -> str:
    if not q["owner_pid"]:
        return "kernel"
    alive = "alive" if q["owner_alive"] else "DEAD"
    return f"owner pid {q['owner_pid']} ({alive})"


def format_status(st: dict[str, Any]) -> str:
    """The text form of :func:`vtnet_py.admin.status.status`."""
    lines: list[str] = []
    where = f"netns {st['netns']} " if st.get("netns") else ""
    if not st["interfaces"]:
        return (
            f"no interface uses vtnetmap in this network namespace ({where}inode "
            f"{st['netns_inode']})"
        )
    for i in st["interfaces"]:
        if not i["exists"]:
            lines.append(f"{i['ifname']}: does not exist")
            lines += [f"  note: {n}" for n in i["notes"]]
            continue
        lines.append(
            f"{i['ifname']} (ifindex {i['ifindex']}, driver {i['driver'] or '?'}, "
            f"{where}(netns inode {i['netns_inode']}), mtu {i['mtu']}, "
            f"{'up' if i['oper_up'] else 'down'})"
        )
        x = i["xdp"]
        if x["prog_id"]:
            who = "vtnetmap" if x["vtnetmap"] else "not vtnetmap's"
            lines.append(
                f"  xdp: program {x['prog_id']} ({x['prog_name']}, {who}), "
                f"{x['mode']} mode{', multi-buffer' if x['frags'] else ''}"
            )
        else:
            lines.append("  xdp: none attached")
        lines.append(f"  pinned: {'yes, in ' + i['pin_dir'] if i['pinned'] else 'no'}")
        a = i["attach"]
        if a:
            lines.append(
                f"  attached by: pid {a['pid']} "
                f"({'alive' if a['pid_alive'] else 'exited'}) at {a['time_iso']}, "
                f"phase {a['phase']}, ports default to zerocopy={a['zerocopy']}"
            )
        ch = i["channels"]
        kinds = [k for k in ("combined", "rx", "tx", "other") if ch[k] or ch[f"max_{k}"]]
        lines.append(
            "  channels: "
            + (", ".join(f"{k} {ch[k]}/{ch['max_' + k]}" for k in kinds) or "not reported")
            + f" (rx queues {i['rx_queues']}, tx queues {i['tx_queues']})"
        )
        on = i["offloads_on"]
        lines.append(
            "  offloads netmap wants off: "
            + (
                "all off"
                if not on
                else "still on: "
                + ", ".join(n + (" [fixed]" if i["offloads"][n]["fixed"] else "") for n in on)
            )
        )
        df = i["driver_features"]
        if df is not None:
            lines.append(
                "  driver advertises: xdp "
                + (", ".join(df["xdp_features"]) or "nothing")
                + "; xsk "
                + (", ".join(df["xsk_features"]) or "nothing")
                + f"; AF_XDP zero copy {'yes' if df['xsk_zerocopy'] else 'no'}"
            )
        vh = i["vnet_hdr_len"]
        lines.append(
            f"  vnet header: {vh} bytes"
            if vh
            else "  vnet header: n/a" + ("" if i["driver"] == "virtio_net" else " (not virtio_net)")
        )
        for q in i["queues"]:
            extra = " (beyond the current channels)" if q["beyond_channels"] else ""
            lines.append(f"  queue {q['queue']}: {_owner(q)}{extra}")
            for r in q["rings"]:
                k = r["afxdp"]
                stats = " ".join(f"{n}={v}" for n, v in k.items())
                lines.append(
                    f"    {r['port']} {r['kind']} ring {r['ring']}: head {r['head']} "
                    f"cur {r['cur']} tail {r['tail']} ({r['user_slots']} user / "
                    f"{r['kernel_slots']} kernel slots, "
                    f"{'zero-copy' if r['zerocopy'] else 'copy'}) {stats}"
                )
            why = {r["mode_reason"] for r in q["rings"]}
            lines += [f"    mode: {w}" for w in sorted(why)]
        eg = i.get("stack_egress")
        if eg:
            lines.append(
                f"  stack egress ({eg['attached']} program, pids "
                f"{', '.join(map(str, eg['users'])) or 'none alive'}): "
                f"{eg['to_host_rx']} to the host RX ring, "
                f"{eg['stack_cut_dropped']} dropped (NIC TX rings open, no host RX ring)"
            )
        lines.append(f"  AF_XDP statistics: {i['afxdp_statistics']}")
        lines += [f"  note: {n}" for n in i["notes"]]
    return "\n".join(lines)


@click.command("status", help=STATUS_HELP, context_settings=_SETTINGS)
@click.argument("ifname", metavar="[IF]", required=False)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@_netns_option
def status_cmd(ifname: str | None, as_json: bool, netns_name: str | None) -> None:
    with _os_errors(ifname):
        st = status(ifname, netns=netns_name)
    click.echo(json.dumps(st, indent=1, sort_keys=True) if as_json else format_status(st))


COMMANDS = (attach_cmd, detach_cmd, status_cmd)
