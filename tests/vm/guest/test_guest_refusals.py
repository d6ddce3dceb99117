"""virtio_net's XDP refusals that need a differently built VM ("refusals" profile: -smp 4
with 4 queue pairs on eth0; an extra NIC with ctrl_guest_offloads=off; an extra NIC with
host_mtu=9000). The harness names the extra NICs in $VTVM_NIC_NO_CTRL_OFFLOADS and
$VTVM_NIC_HOST_MTU."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import guestlib
import pytest
from guestlib import XDP_ATTACHED_DRV, Kmsg

pytestmark = pytest.mark.vm_profile("refusals")


def _nic(var: str) -> str:
    name = os.environ.get(var, "")
    assert name, f"${var} is not set: this scenario needs the harness's 'refusals' profile"
    assert guestlib.driver_of(name) == "virtio_net", name
    return name


@pytest.fixture
def detach_all() -> Iterator[None]:
    yield
    for var in ("VTVM_IFACE", "VTVM_NIC_NO_CTRL_OFFLOADS", "VTVM_NIC_HOST_MTU"):
        name = os.environ.get(var)
        if name:
            guestlib.xdp_detach(name)


@pytest.mark.usefixtures("detach_all")
def test_too_few_queue_pairs_for_xdp_tx(iface: str, xdp_pass_obj: Path) -> None:
    cpus = os.cpu_count() or 1
    ch = guestlib.channels(iface)
    # This profile is built so that XDP's one TX queue per CPU does not fit.
    assert ch.combined + cpus > ch.max_combined, (ch, cpus)
    # The kernel prints this warning once per boot (netdev_warn_once), whichever attach
    # triggers it first (vtnetmap's device scenarios may run before this one): look for
    # it in the whole boot's log.
    r = guestlib.xdp_attach(iface, xdp_pass_obj)
    # virtio_net still attaches, sharing TX queues under a lock, and says so.
    assert r.returncode == 0, r.stderr
    assert guestlib.xdp_mode(iface) == XDP_ATTACHED_DRV
    want = (
        f"XDP request {ch.combined + cpus} queues but max is {ch.max_combined}. "
        "XDP_TX and XDP_REDIRECT will operate in a slower locked tx mode."
    )
    warned = guestlib.queue_warnings()
    assert len(warned) == 1, warned  # netdev_warn_once: one line per boot
    dev, text = warned[0]
    if dev == iface:
        assert text == want, warned
    else:
        # Another device of this profile needed the locked mode first (eth2 with its
        # one queue pair, when a multi-buffer program attaches there: 6.3+).
        assert re.fullmatch(guestlib.shape(want), text), (want, warned)


@pytest.mark.usefixtures("detach_all")
def test_no_ctrl_guest_offloads_refuses_xdp(xdp_pass_obj: Path) -> None:
    nic = _nic("VTVM_NIC_NO_CTRL_OFFLOADS")
    # Without VIRTIO_NET_F_CTRL_GUEST_OFFLOADS the guest cannot turn the host's
    # GRO_HW/CSUM off, so the feature is fixed on and XDP is refused.
    assert guestlib.features(nic)["rx-gro-hw"] == "on [fixed]"
    r = guestlib.xdp_attach(nic, xdp_pass_obj)
    assert r.returncode != 0
    assert (
        "virtio_net: Can't set XDP while host is implementing GRO_HW/CSUM, "
        "disable GRO_HW/CSUM first."
    ) in r.stderr
    assert guestlib.xdp_mode(nic) == 0


@pytest.mark.usefixtures("detach_all")
def test_host_mtu_too_large_refuses_xdp(xdp_pass_obj: Path) -> None:
    nic = _nic("VTVM_NIC_HOST_MTU")
    assert guestlib.mtu_of(nic) == 9000  # VIRTIO_NET_F_MTU from the device
    log = Kmsg()
    r = guestlib.xdp_attach(nic, xdp_pass_obj)
    assert r.returncode != 0
    words = guestlib.extack(r)
    assert words and words[0].startswith("virtio_net: MTU too large to enable XDP"), r.stderr
    assert any("XDP requires MTU less than" in ln for ln in log.new_lines()), log.new_lines()
    frags = guestlib.xdp_attach(nic, xdp_pass_obj, sec=guestlib.SEC_XDP_FRAGS)
    guestlib.xdp_detach(nic)
    if frags.returncode == 0:
        # 6.3+: a multi-buffer aware program is taken at this MTU; only single-buffer
        # ones are refused, and the words say so.
        assert words[0].endswith(" without frags"), words
    else:
        # 6.1: every program is refused, in the same words.
        assert guestlib.extack(frags) == words, frags.stderr
    # At the usual MTU the same device takes the program.
    assert guestlib.set_mtu(nic, 1500).returncode == 0
    try:
        r = guestlib.xdp_attach(nic, xdp_pass_obj)
        assert r.returncode == 0, r.stderr
        assert guestlib.xdp_mode(nic) == XDP_ATTACHED_DRV
    finally:
        guestlib.xdp_detach(nic)
        guestlib.set_mtu(nic, 9000)
