"""Entry point of the `vtnetmap` command: a click group over the public library API.

Errors from the library map to exit codes: usage 2 (click's own), runtime 1, with a
one-line message that names the interface, queue or port.
"""

from __future__ import annotations

import logging
import sys

import click

from vtnet_py.errors import VtnetError

from .demo import demo


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
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(message)s")


main.add_command(demo)

try:  # pkt-gen lives in its own module (issue 5)
    from .pktgen_cmd import pkt_gen
except ImportError:  # pragma: no cover - only while it is being written
    pass
else:
    main.add_command(pkt_gen, "pkt-gen")

try:  # attach / detach / status live in their own module (issue 3)
    from .device_cmds import COMMANDS as _DEVICE_COMMANDS
except ImportError:  # pragma: no cover - only while it is being written
    pass
else:
    for _cmd in _DEVICE_COMMANDS:
        main.add_command(_cmd)

try:  # bridge lives in its own module (issue 4)
    from .bridge_cmd import bridge
except ImportError:  # pragma: no cover - only while it is being written
    pass
else:
    main.add_command(bridge)
