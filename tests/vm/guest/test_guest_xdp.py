"""Native XDP on virtio_net, and the driver's refusals hit for real (main profile:
-smp 2, 4 queue pairs, QEMU's default device options). The refusals are checked in the
kernel's own words: extack messages come back through iproute2 as "Error: virtio_net: ...",
driver warnings land in the kernel log.

Where kernels differ (virtio_net got XDP multi-buffer in 6.3), the scenario probes the
feature (``frags_at_9000``: a multi-buffer aware program attaches at MTU 9000) and states
what each side expects."""

from __future__ import annotations

import os
from pathlib import Path

import guestlib
import pytest
from guestlib import XDP_ATTACHED_DRV, XDP_ATTACHED_SKB, Kmsg

# The stem of virtio_net's refusal; 6.3+ adds " without frags" (single-buffer programs).
MTU_TOO_LARGE = "virtio_net: MTU too large to enable XDP"
MTU_LOG = "XDP requires MTU less than"
QUEUE_WARNING = "XDP_TX and XDP_REDIRECT will operate in a slower locked tx mode."

pytestmark = pytest.mark.usefixtures("restore_iface")


def test_native_attach_then_detach(iface: str, xdp_pass_obj: Path) -> None:
    r = guestlib.xdp_attach(iface, xdp_pass_obj)
    assert r.returncode == 0, r.stderr
    assert guestlib.xdp_mode(iface) == XDP_ATTACHED_DRV
    prog = guestlib.link_info(iface)["xdp"]["prog"]
    assert prog["name"] == "xdp_pass"
    # 2 CPUs + 2 current queue pairs fit the 4 queue pairs: XDP gets its own TX queues.
    ch = guestlib.channels(iface)
    if ch.combined + (os.cpu_count() or 1) <= ch.max_combined:
        assert not [ln for ln in Kmsg.all_lines() if QUEUE_WARNING in ln]
    # Replies still reach the stack through the attached program (XDP_PASS).
    p = guestlib.run(["ping", "-c", "3", "-i", "0.3", "-W", "5", guestlib.HOST_IP], timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    r = guestlib.xdp_detach(iface)
    assert r.returncode == 0, r.stderr
    assert guestlib.xdp_mode(iface) == 0


def test_xdp_queues_and_channel_lock(iface: str, xdp_pass_obj: Path) -> None:
    before = guestlib.channels(iface)
    cpus = os.cpu_count() or 1
    assert guestlib.xdp_attach(iface, xdp_pass_obj).returncode == 0
    during = guestlib.channels(iface)
    # virtio_net enables one extra queue pair per CPU for XDP_TX when they fit, and
    # ethtool then counts them in "combined".
    if before.combined + cpus <= before.max_combined:
        assert during.combined == before.combined + cpus, (before, during)
    else:
        assert during.combined == before.combined, (before, during)
    r = guestlib.set_channels(iface, 1)
    assert r.returncode != 0
    assert "Invalid argument" in r.stdout + r.stderr
    assert guestlib.channels(iface) == during
    # Detaching gives the XDP queue pairs back...
    assert guestlib.xdp_detach(iface).returncode == 0
    assert guestlib.channels(iface) == before
    # ...and the change refused while attached is accepted (restore_iface undoes it).
    assert guestlib.set_channels(iface, 1).returncode == 0
    assert guestlib.channels(iface).combined == 1


def test_attach_with_one_channel(iface: str, xdp_pass_obj: Path) -> None:
    assert guestlib.set_channels(iface, 1).returncode == 0
    r = guestlib.xdp_attach(iface, xdp_pass_obj)
    assert r.returncode == 0, r.stderr
    assert guestlib.xdp_mode(iface) == XDP_ATTACHED_DRV


def test_gro_hw_locked_while_attached(iface: str, xdp_pass_obj: Path) -> None:
    # With VIRTIO_NET_F_CTRL_GUEST_OFFLOADS (QEMU's default) rx-gro-hw is changeable...
    assert guestlib.features(iface)["rx-gro-hw"] == "on"
    assert guestlib.xdp_attach(iface, xdp_pass_obj).returncode == 0
    log = Kmsg()
    # ...but XDP has turned the guest offloads off and holds them: the request fails.
    r = guestlib.run(["ethtool", "-K", iface, "rx-gro-hw", "off"])
    assert r.returncode != 0
    assert "rx-gro-hw: on [requested off]" in r.stdout + r.stderr
    assert any("set_features() failed (-16)" in ln for ln in log.new_lines()), log.new_lines()


def test_mtu_too_large_refused(iface: str, xdp_pass_obj: Path, frags_at_9000: bool) -> None:
    assert guestlib.set_mtu(iface, 9000).returncode == 0
    log = Kmsg()
    r = guestlib.xdp_attach(iface, xdp_pass_obj)
    assert r.returncode != 0
    words = guestlib.extack(r)
    assert words and words[0].startswith(MTU_TOO_LARGE), r.stderr
    assert any(MTU_LOG in ln for ln in log.new_lines()), log.new_lines()
    assert guestlib.xdp_mode(iface) == 0
    frags = guestlib.xdp_attach(iface, xdp_pass_obj, sec=guestlib.SEC_XDP_FRAGS)
    if frags_at_9000:
        # 6.3+: only single-buffer programs are refused, and the words say so; the
        # multi-buffer aware one attaches.
        assert words[0] == MTU_TOO_LARGE + " without frags", words
        assert frags.returncode == 0, frags.stderr
        assert guestlib.xdp_mode(iface) == XDP_ATTACHED_DRV
    else:
        # 6.1: no multi-buffer XDP in virtio_net: any program is refused, in the same words.
        assert words[0] == MTU_TOO_LARGE, words
        assert guestlib.extack(frags) == words, frags.stderr
        assert guestlib.xdp_mode(iface) == 0


def test_mtu_raised_while_attached_then_detach(
    iface: str, xdp_pass_obj: Path, frags_at_9000: bool
) -> None:
    assert guestlib.xdp_attach(iface, xdp_pass_obj).returncode == 0
    # virtio_net accepts the larger MTU while attached (it only checks at XDP set time)...
    assert guestlib.set_mtu(iface, 9000).returncode == 0
    r = guestlib.xdp_detach(iface)
    if frags_at_9000:
        # ...6.3+ checks only a program being attached, so detaching works...
        assert r.returncode == 0, r.stderr
        assert guestlib.xdp_mode(iface) == 0
        return
    # ...6.1 refuses to detach, because detaching runs the same check.
    assert r.returncode != 0
    assert guestlib.extack(r) == [MTU_TOO_LARGE], r.stderr
    assert guestlib.xdp_mode(iface) == XDP_ATTACHED_DRV
    assert guestlib.set_mtu(iface, 1500).returncode == 0
    assert guestlib.xdp_detach(iface).returncode == 0
    assert guestlib.xdp_mode(iface) == 0


def test_generic_attach(iface: str, xdp_pass_obj: Path) -> None:
    r = guestlib.xdp_attach(iface, xdp_pass_obj, mode="xdpgeneric")
    assert r.returncode == 0, r.stderr
    assert guestlib.xdp_mode(iface) == XDP_ATTACHED_SKB
