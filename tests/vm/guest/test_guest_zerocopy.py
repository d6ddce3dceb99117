"""AF_XDP zero copy on virtio_net, and what vtnetmap reports about it (main profile).

A driver advertises its XDP features over the kernel's netdev netlink family (6.3+):
``vtnetmap status --json`` shows them per interface and, for the ports of the calling
process, each ring's mode (zero copy or copy) and why. virtio_net advertises
``xsk-zerocopy`` only in kernels newer than 6.12: where it does not, ``zerocopy="on"``
must be refused naming the errno and the missing feature, and "auto" must fall back to
copy mode and say why. The scenario that needs zero copy is reported as not applicable
(a skip naming the missing feature) where the driver lacks it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import guestlib
import pytest
from click.testing import CliRunner
from test_guest_jumbo import echo_reply, receive_echo_request
from vtnetmap_cli.main import main as vtnetmap_main

from vtnet_py import UnsupportedError, open_port
from vtnet_py.admin.status import status
from vtnet_py.device.netlink import read_xdp_features
from vtnet_py.device.types import XdpFeatures
from vtnet_py.netmap.mode import NO_NETDEV_FAMILY

pytestmark = pytest.mark.usefixtures("restore_iface")


def driver_features(iface: str) -> XdpFeatures | None:
    return read_xdp_features(iface, int(Path(f"/sys/class/net/{iface}/ifindex").read_text()))


def status_json(iface: str) -> dict:
    r = CliRunner().invoke(vtnetmap_main, ["status", iface, "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["interfaces"][0]


def test_status_shows_driver_features_and_ring_modes(iface: str) -> None:
    feats = driver_features(iface)
    # Without a port (another process's view): the driver's features, no ring modes.
    st = status_json(iface)
    if feats is None:
        # 6.1: no netdev netlink family; nothing can be read, and status says so.
        assert st["driver_features"] is None and NO_NETDEV_FAMILY in st["notes"], st
    else:
        assert st["driver_features"] == feats.to_dict(), st["driver_features"]
        # what every virtio_net with XDP does (ndo_bpf, XDP_REDIRECT to AF_XDP)
        assert {"basic", "redirect"} <= set(st["driver_features"]["xdp_features"]), st
    with open_port(f"netmap:{iface}") as port:
        st = status(iface, ports=[port])["interfaces"][0]
        rings = [r for q in st["queues"] for r in q["rings"]]
        assert len(rings) == len(port.rx_rings) + len(port.tx_rings), rings
        want = "zerocopy" if port.zerocopy else "copy"
        assert {r["mode"] for r in rings} == {want}, rings
        # The mode follows what the driver advertises ("auto" asks zero copy first).
        assert port.zerocopy == bool(feats and feats.zerocopy), (port.zerocopy, feats)
        if feats is not None and not feats.zerocopy:
            assert all("does not advertise xsk-zerocopy" in r["mode_reason"] for r in rings)
        assert all(r["mode_reason"] for r in rings), rings


def test_zerocopy_on_refused_naming_errno_and_feature_or_used(iface: str) -> None:
    feats = driver_features(iface)
    if feats is not None and feats.zerocopy:
        with open_port(f"netmap:{iface}", zerocopy="on") as port:
            assert port.zerocopy
            st = status(iface, ports=[port])["interfaces"][0]
            assert {r["mode"] for q in st["queues"] for r in q["rings"]} == {"zerocopy"}
        return
    with pytest.raises(UnsupportedError) as exc:
        open_port(f"netmap:{iface}", zerocopy="on")
    msg = str(exc.value)
    # The kernel's answer to XDP_ZEROCOPY here is EOPNOTSUPP (6.1: no ndo_xsk_wakeup;
    # 6.3+: no XDP_FEATURE_XSK_ZEROCOPY).
    assert f"netmap:{iface}" in msg and "EOPNOTSUPP" in msg, msg
    assert "xsk-zerocopy" in msg and "XDP_FEATURE_XSK_ZEROCOPY" in msg, msg
    assert "\n" not in msg
    assert guestlib.xdp_mode(iface) == 0, "the refused port left its program"
    with open_port(f"netmap:{iface}") as port:  # "auto": copy mode instead
        assert not port.zerocopy


def test_zerocopy_port_answers_pings(iface: str, host_link: guestlib.HostLink) -> None:
    feats = driver_features(iface)
    if feats is None or not feats.zerocopy:
        have = (
            "nothing: no netdev netlink family before Linux 6.3"
            if feats is None
            else ", ".join(feats.xdp_names)
        )
        pytest.skip(
            f"not applicable: {guestlib.driver_of(iface)} on {iface} does not advertise "
            f"xsk-zerocopy (XDP_FEATURE_XSK_ZEROCOPY; advertised: {have})"
        )
    with open_port(f"netmap:{iface}", zerocopy="on") as port:
        assert port.zerocopy
        ping = host_link.spawn(["ping", "-c", "1", "-W", "30", guestlib.GUEST_IP])
        lens, request = receive_echo_request(port, timeout=30)
        reply = echo_reply(request)
        tx = port.tx_rings[0]
        (i,) = tx.slots_from_head(1)
        port.buf(int(tx.slot["buf_idx"][i]))[: len(reply)] = list(reply)
        tx.slot["len"][i] = len(reply)
        tx.slot["flags"][i] = 0
        tx.head = tx.cur = tx.next(tx.head, 1)
        port.txsync()
        end = time.monotonic() + 10
        while tx.tx_pending() and time.monotonic() < end:
            port.poll(rx=False, tx=True, timeout=0.2)
        r = host_link.wait(ping, timeout=40)
        assert r.returncode == 0 and "1 received" in r.stdout, r.stdout + r.stderr
        port.check_invariant()
