"""Rings are exclusive (AF_XDP binds one socket per queue, for both directions): netmap's
``/x`` is accepted and is the only mode, and splitting one queue's RX (``/R``) and TX
(``/T``) between two processes is refused saying why and naming the holder's pid, in both
orders (a TX-only holder is not in the steering program's owner map)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from nettest import PORT_HOLDER, VethPair, start_port_holder

from vtnet_py import open_port

pytestmark = pytest.mark.kernel


def second_open(name: str, ns: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PORT_HOLDER, name, ns], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(("first", "second"), [("R", "T"), ("T", "R")])
def test_rx_and_tx_of_one_queue_cannot_be_split_between_processes(
    veth: VethPair, first: str, second: str
) -> None:
    holder = start_port_holder(f"netmap:{veth.a}-0/{first}", veth.ns_a)
    try:
        r = second_open(f"netmap:{veth.a}-0/{second}", veth.ns_a)
        assert r.returncode == 3, r.stdout + r.stderr
        assert r.stdout.strip() == (
            f"BUSY netmap:{veth.a}-0/{second}: {veth.a} queue 0 is busy: held by pid "
            f"{holder.pid}; AF_XDP binds one socket per queue for both directions, so its "
            f"RX and TX rings cannot be split between processes (open both in one port)"
        )
        # the other queue is free for the second process
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from vtnet_py import open_port; "
                "open_port(sys.argv[1], netns=sys.argv[2]).close(); print('OK')",
                f"netmap:{veth.a}-1/{second}",
                veth.ns_a,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.stdout.strip() == "OK", r.stderr
    finally:
        holder.kill()
        holder.wait()
    with open_port(f"netmap:{veth.a}-0/{second}", netns=veth.ns_a) as port:  # freed by exit
        assert len(port.rx_rings if second == "R" else port.tx_rings) == 1


def test_x_is_accepted_and_exclusive_is_the_only_mode(veth: VethPair) -> None:
    holder = start_port_holder(f"netmap:{veth.a}-0/x", veth.ns_a)
    try:
        r = second_open(f"netmap:{veth.a}-0", veth.ns_a)
        assert r.returncode == 3
        assert f"{veth.a} queue 0 is busy: held by pid {holder.pid}" in r.stdout
        assert "split" not in r.stdout  # both directions asked: no split to explain
    finally:
        holder.kill()
        holder.wait()
