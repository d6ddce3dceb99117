"""Entry point of the `vtnetmap` command."""
import click


@click.group()
def main() -> None:
    """vtnetmap: netmap rings over AF_XDP for virtio_net."""
