"""Entry point of the `vtnetmap` command: a click group over the public library API.

Errors from the library map to exit codes: usage 2 (click's own), runtime 1, with a
one-line message that names the interface, queue or port.
"""

from __future__ import annotations

import logging
import sys

import click

from vtnet_py.errors import VtnetError

from .bridge_cmd import bridge
from .demo import demo
from .device_cmds import COMMANDS as DEVICE_COMMANDS
from .pktgen_cmd import pkt_gen


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except VtnetError as exc:
            click.echo(f"vtnetmap: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="show informational messages")
def main(verbose: bool) -> None:
    """vtnetmap: netmap rings over AF_XDP for virtio_net (and any XDP-capable NIC)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


main.add_command(demo)
main.add_command(pkt_gen, "pkt-gen")
main.add_command(bridge)
for _cmd in DEVICE_COMMANDS:
    main.add_command(_cmd)
