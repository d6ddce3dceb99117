"""`vtnetmap attach / detach` on a real virtio_net NIC, and virtio_net's refusals hit for
real through `vtnetmap attach` and ``open_port`` (device issue).

The kernel's own words are not copied into these tests: each refusal is first provoked
from the kernel itself (iproute2 attaching a plain XDP_PASS program natively, whose extack
comes back as "Error: virtio_net: ..."), and vtnetmap must then say the same words.

main profile: eth0 (-smp 2, 4 queue pairs) is prepared and put back exactly; MTU 9000.
refusals profile (-smp 4, 4 queue pairs): eth1 without CTRL_GUEST_OFFLOADS, eth2 with a
device MTU of 9000, eth3 a legacy device without ANY_LAYOUT, and eth0's locked-TX warning.

At MTU 9000 kernels differ: vtnetmap attaches a multi-buffer program there, which
virtio_net 6.3+ takes and 6.1 refuses. The scenarios probe it with iproute2 and the
multi-buffer aware XDP_PASS program, and expect either a working multi-buffer attach or
the kernel's refusal, in its words.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import guestlib
import pytest
from click.testing import CliRunner, Result
from guestlib import XDP_ATTACHED_DRV, Kmsg
from vtnetmap_cli.main import main as vtnetmap_main

from vtnet_py import RefusedError, VtnetError, open_port
from vtnet_py._sys.proc import netns_inode
from vtnet_py.admin.pins import pin_dir
from vtnet_py.device.record import state_path

# What netmap mode needs off on virtio_net, as `ethtool -k` names it (QEMU's default
# device has them on, none fixed): receive coalescing (LRO by the host), GRO, the TX
# checksum and every segmentation offload.
VIRTIO_OFFLOADS_OFF = (
    "rx-gro-hw",
    "generic-receive-offload",
    "tx-checksum-ip-generic",
    "tx-tcp-segmentation",
    "tx-tcp-ecn-segmentation",
    "tx-tcp6-segmentation",
    "generic-segmentation-offload",
)
# ethtool's summary lines over several of them.
SUMMARY_OFF = ("tx-checksumming", "tcp-segmentation-offload")
QUEUE_WARNING = "XDP_TX and XDP_REDIRECT will operate in a slower locked tx mode."


def cli(*args: str) -> Result:
    """`vtnetmap ARGS` run in this process: the same click command the entry point runs,
    without the ~7 s Python start-up of a TCG guest. Exit status and stdout/stderr are
    the command's; an exception the CLI does not turn into an exit status propagates."""
    return CliRunner().invoke(vtnetmap_main, list(args), catch_exceptions=False)


def vtnetmap(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The real `vtnetmap` command, as a user runs it (~8 s of Python start-up here)."""
    return guestlib.run(["vtnetmap", *args], timeout=timeout)


def kernel_refusal(nic: str, obj: Path, sec: str = guestlib.SEC_XDP) -> str:
    """Provoke the kernel's own refusal: attach a plain XDP_PASS program (section ``sec``)
    natively with iproute2 and return virtio_net's extack words ("virtio_net: ...", no
    final period)."""
    r = guestlib.xdp_attach(nic, obj, sec=sec)
    if r.returncode == 0:
        guestlib.xdp_detach(nic)
        pytest.fail(f"the kernel accepted native XDP on {nic}: nothing to refuse here")
    words = guestlib.extack(r)
    assert words, f"no virtio_net extack from iproute2: {r.stderr!r}"
    return words[0]


def kernel_takes_frags(nic: str, obj: Path) -> bool:
    """At ``nic``'s current MTU, does virtio_net take a multi-buffer aware program?"""
    r = guestlib.xdp_attach(nic, obj, sec=guestlib.SEC_XDP_FRAGS)
    if r.returncode != 0:
        return False
    assert guestlib.xdp_detach(nic).returncode == 0, f"cannot detach XDP_PASS from {nic}"
    return True


def assert_attach_uses_frags(nic: str) -> None:
    """`vtnetmap attach` on a jumbo MTU the driver takes multi-buffer XDP at: native, a
    multi-buffer program; detach puts offloads and channels back."""
    feats, ch = guestlib.features(nic), guestlib.channels(nic)
    r = cli("attach", nic)
    try:
        assert r.exit_code == 0, r.stdout + r.stderr
        st = json.loads(cli("status", nic, "--json").stdout)["interfaces"][0]
        assert st["xdp"]["vtnetmap"] and st["xdp"]["mode"] == "native", st["xdp"]
        assert st["xdp"]["frags"] and st["attach"]["frags"], st
        assert guestlib.xdp_mode(nic) == XDP_ATTACHED_DRV
    finally:
        d = cli("detach", nic)
    assert d.exit_code == 0, d.stdout + d.stderr
    assert guestlib.features(nic) == feats
    assert guestlib.channels(nic) == ch
    no_vtnetmap_state(nic)


def no_vtnetmap_state(nic: str) -> None:
    """Neither pins nor a state file nor an XDP program are left for ``nic``."""
    ino = netns_inode()
    assert not os.path.exists(pin_dir(ino, nic)), pin_dir(ino, nic)
    assert not os.path.exists(state_path(ino, nic)), state_path(ino, nic)
    assert guestlib.xdp_mode(nic) == 0, f"XDP left on {nic}"


def assert_open_port_refused(nic: str, words: str, log: Kmsg) -> None:
    """open_port (implicit attach) must refuse like `vtnetmap attach`, in the kernel's
    words, and leave nothing: no XDP program (not even a generic-mode one) on ``nic``,
    its offloads as they were."""
    feats = guestlib.features(nic)
    try:
        port = open_port(f"netmap:{nic}")
    except RefusedError as exc:
        assert words in str(exc), (
            f"open_port's refusal is not in the kernel's words ({words!r}):\n{exc}"
        )
    except VtnetError as exc:
        pytest.fail(
            f"open_port(netmap:{nic}) failed without the kernel's words "
            f"({words!r}): {type(exc).__name__}: {exc}"
        )
    else:
        mode = port.xdp_mode
        port.close()
        pytest.fail(
            f"open_port(netmap:{nic}) opened a port in {mode} XDP mode although "
            f"virtio_net refuses native XDP here ({words!r})"
        )
    finally:
        no_vtnetmap_state(nic)
    # Generic XDP on such a device makes the kernel warn (e.g. "failed to disable GRO_HW!"
    # with a stack trace) and turns rx-gro-hw off for good: the refusal must come before
    # anything is attached.
    bad = [ln for ln in log.new_lines() if "WARNING" in ln or "failed to disable" in ln]
    assert not bad, bad
    assert guestlib.features(nic) == feats


@pytest.fixture
def restore_offloads() -> Iterator[None]:
    """Puts back offloads a failing library may leave changed (generic XDP turns rx-gro-hw
    off for good), so that later scenarios start from QEMU's defaults."""
    nics = [
        os.environ[v]
        for v in ("VTVM_IFACE", "VTVM_NIC_NO_CTRL_OFFLOADS", "VTVM_NIC_HOST_MTU", "VTVM_NIC_LEGACY")
        if os.environ.get(v)
    ]
    before = {n: guestlib.features(n) for n in nics}
    yield
    for n, feats in before.items():
        now = guestlib.features(n)
        for name, val in feats.items():
            if now.get(name) != val and val in ("on", "off"):
                guestlib.run(["ethtool", "-K", n, name, val])


# ----------------------------------------------------------------------- main profile


def test_attach_prepares_and_detach_restores_exactly(iface: str) -> None:
    feats_before = guestlib.features(iface)
    ch_before = guestlib.channels(iface)
    mtu = guestlib.mtu_of(iface)
    cpus = os.cpu_count() or 1
    assert guestlib.driver_of(iface) == "virtio_net"
    for name in VIRTIO_OFFLOADS_OFF:
        assert feats_before[name] == "on", (name, feats_before[name])
    assert ch_before.combined > 1, "--rings 1 below must change the channels"

    r = vtnetmap("attach", iface, "--rings", "1")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "native XDP" in r.stdout, r.stdout
        feats = guestlib.features(iface)
        for name in VIRTIO_OFFLOADS_OFF + SUMMARY_OFF:
            assert feats[name] == "off", (name, feats[name])
        assert guestlib.xdp_mode(iface) == XDP_ATTACHED_DRV
        assert guestlib.link_info(iface)["xdp"]["prog"]["name"] == "vtnm_steer"
        # One ring, plus the TX queue pair per CPU virtio_net adds for XDP, which ethtool
        # counts in "combined" while a program is attached.
        want = 1 + cpus if 1 + cpus <= ch_before.max_combined else 1
        assert guestlib.channels(iface).combined == want, guestlib.channels(iface)
        # The program outlives the attaching process: pinned, owned by nobody yet.
        st = json.loads(cli("status", iface, "--json").stdout)["interfaces"][0]
        assert st["driver"] == "virtio_net"
        assert st["vnet_hdr_len"] == 12  # VIRTIO_NET_F_MRG_RXBUF: virtio_net_hdr_mrg_rxbuf
        assert st["xdp"]["vtnetmap"] and st["xdp"]["mode"] == "native" and st["pinned"]
        assert st["attach"]["phase"] == "attached" and not st["attach"]["pid_alive"]
        assert all(q["owner_pid"] == 0 for q in st["queues"]), st["queues"]
        # Only what the driver fixes stays on: virtio_net's receive checksum (validated
        # by the host, harmless to the rings).
        assert all(st["offloads"][n]["fixed"] for n in st["offloads_on"]), st["offloads"]
        assert feats["rx-checksumming"] == "on [fixed]"
        # No port is open: every queue still belongs to the stack.
        p = guestlib.run(["ping", "-c", "2", "-i", "0.2", "-W", "3", guestlib.HOST_IP], timeout=20)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        d = cli("detach", iface)
    assert d.exit_code == 0, d.stdout + d.stderr
    assert (
        "restored offloads" in d.stdout and f"channels combined {ch_before.combined}" in d.stdout
    ), d.stdout
    assert guestlib.features(iface) == feats_before
    assert guestlib.channels(iface) == ch_before
    assert guestlib.mtu_of(iface) == mtu
    no_vtnetmap_state(iface)
    again = cli("detach", iface)
    assert again.exit_code == 0 and "nothing to do" in again.stdout, again.stdout


@pytest.mark.usefixtures("restore_iface")
def test_attach_at_mtu_9000_frags_or_kernel_words(iface: str, xdp_pass_obj: Path) -> None:
    assert guestlib.set_mtu(iface, 9000).returncode == 0
    if kernel_takes_frags(iface, xdp_pass_obj):
        # 6.3+: multi-buffer XDP; nothing to refuse.
        assert_attach_uses_frags(iface)
        return
    # 6.1: any program is refused at this MTU; vtnetmap must say why in the same words.
    log = Kmsg()
    words = kernel_refusal(iface, xdp_pass_obj, sec=guestlib.SEC_XDP_FRAGS)
    assert words.startswith("virtio_net: MTU too large to enable XDP"), words
    limits = {
        m.group(1)
        for ln in log.new_lines()
        if (m := re.search(r"XDP requires MTU less than (\d+)", ln))
    }
    assert len(limits) == 1, log.new_lines()
    feats = guestlib.features(iface)
    ch = guestlib.channels(iface)

    r = cli("attach", iface)
    assert r.exit_code == 1, r.stdout + r.stderr
    assert words in r.stderr and f"less than {limits.pop()}" in r.stderr, r.stderr
    # Refused before anything changed.
    assert guestlib.features(iface) == feats
    assert guestlib.channels(iface) == ch
    no_vtnetmap_state(iface)


@pytest.mark.usefixtures("restore_iface", "restore_offloads")
def test_open_port_at_mtu_9000_frags_or_kernel_words(iface: str, xdp_pass_obj: Path) -> None:
    assert guestlib.set_mtu(iface, 9000).returncode == 0
    if kernel_takes_frags(iface, xdp_pass_obj):
        with open_port(f"netmap:{iface}") as port:
            assert port.frags and port.xdp_mode == "native", (port.frags, port.xdp_mode)
            port.check_invariant()
        no_vtnetmap_state(iface)
        return
    words = kernel_refusal(iface, xdp_pass_obj, sec=guestlib.SEC_XDP_FRAGS)
    assert_open_port_refused(iface, words, Kmsg())


# -------------------------------------------------------------------- refusals profile

REFUSED_NICS = [
    pytest.param(
        "VTVM_NIC_NO_CTRL_OFFLOADS",
        "virtio_net: Can't set XDP while host is implementing GRO_HW/CSUM, "
        "disable GRO_HW/CSUM first",
        id="no_ctrl_guest_offloads",
    ),
    pytest.param(
        "VTVM_NIC_HOST_MTU", "virtio_net: MTU too large to enable XDP", id="host_mtu_9000"
    ),
    pytest.param(
        "VTVM_NIC_LEGACY",
        "virtio_net: XDP expects header/data in single page, any_header_sg required",
        id="legacy_no_any_header_sg",
    ),
]


def _refused_nic(var: str) -> str:
    name = os.environ.get(var, "")
    assert name, f"${var} is not set: this scenario needs the harness's 'refusals' profile"
    assert guestlib.driver_of(name) == "virtio_net", name
    return name


@pytest.fixture
def detach_everything() -> Iterator[None]:
    yield
    for var in ("VTVM_IFACE", "VTVM_NIC_NO_CTRL_OFFLOADS", "VTVM_NIC_HOST_MTU", "VTVM_NIC_LEGACY"):
        name = os.environ.get(var)
        if name:
            cli("detach", name, "--force")
            guestlib.xdp_detach(name, "xdpdrv")
            guestlib.xdp_detach(name, "xdpgeneric")


def _kernel_words_or_frags(nic: str, expected: str, obj: Path) -> str | None:
    """The kernel's refusal for ``nic`` (None: it takes a multi-buffer program, as
    virtio_net 6.3+ does at a device MTU of 9000: nothing to refuse)."""
    if expected.startswith("virtio_net: MTU too large") and kernel_takes_frags(nic, obj):
        return None
    words = kernel_refusal(nic, obj, sec=guestlib.SEC_XDP_FRAGS)
    # The scenario hits the refusal it is named after (the QEMU options made it); the
    # MTU refusal's words differ between kernels after this stem.
    assert words.startswith(expected), (words, expected)
    return words


@pytest.mark.vm_profile("refusals")
@pytest.mark.usefixtures("detach_everything")
@pytest.mark.parametrize(("var", "expected"), REFUSED_NICS)
def test_attach_refused_in_kernel_words(var: str, expected: str, xdp_pass_obj: Path) -> None:
    nic = _refused_nic(var)
    words = _kernel_words_or_frags(nic, expected, xdp_pass_obj)
    if words is None:
        assert_attach_uses_frags(nic)
        return
    feats = guestlib.features(nic)
    r = cli("attach", nic)
    assert r.exit_code == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"vtnetmap: {nic}: {words}"), r.stderr
    assert guestlib.features(nic) == feats
    no_vtnetmap_state(nic)


@pytest.mark.vm_profile("refusals")
@pytest.mark.usefixtures("detach_everything", "restore_offloads")
@pytest.mark.parametrize(("var", "expected"), REFUSED_NICS)
def test_open_port_refused_in_kernel_words(var: str, expected: str, xdp_pass_obj: Path) -> None:
    nic = _refused_nic(var)
    words = _kernel_words_or_frags(nic, expected, xdp_pass_obj)
    if words is None:
        with open_port(f"netmap:{nic}") as port:
            assert port.frags and port.xdp_mode == "native", (port.frags, port.xdp_mode)
            port.check_invariant()
        no_vtnetmap_state(nic)
        return
    assert_open_port_refused(nic, words, Kmsg())


@pytest.mark.vm_profile("refusals")
@pytest.mark.usefixtures("detach_everything")
def test_too_few_queue_pairs_warned_in_kernel_words(iface: str) -> None:
    cpus = os.cpu_count() or 1
    ch = guestlib.channels(iface)
    feats = guestlib.features(iface)
    assert ch.combined + cpus > ch.max_combined, (ch, cpus)  # what this profile is for
    r = cli("attach", iface)
    try:
        assert r.exit_code == 0, r.stdout + r.stderr
        assert guestlib.xdp_mode(iface) == XDP_ATTACHED_DRV
        # virtio_net prints this once per boot (netdev_warn_once), for whichever device
        # needed it first: take its words from the whole boot; when they were printed for
        # another NIC of this profile, only that device's counts differ.
        warned = guestlib.queue_warnings()
        assert warned, "virtio_net did not warn about its locked TX mode"
        dev, kernel = warned[0]
        assert kernel.endswith(QUEUE_WARNING)
        if dev == iface:
            assert f"vtnetmap: warning: {iface}: {kernel}" in r.stderr, (kernel, r.stderr)
        else:
            pattern = f"vtnetmap: warning: {re.escape(iface)}: {guestlib.shape(kernel)}"
            assert re.search(pattern, r.stderr), (warned, r.stderr)
        # The warning says what it costs (the command goes on: AF_XDP receive is fine).
        assert "Cost:" in r.stderr
    finally:
        d = cli("detach", iface)
    assert d.exit_code == 0, d.stdout + d.stderr
    assert guestlib.features(iface) == feats
    assert guestlib.channels(iface) == ch
    no_vtnetmap_state(iface)
