"""`vtnetmap attach / detach / status` through click's CliRunner, without a kernel: the
device layer is the test double, the state directory and pin root are temporary.

Kernel behaviour (pins, XDP, a second process) is in test_attach.py.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from vtnetmap_cli import device_cmds
from vtnetmap_cli.main import main

from vtnet_py._sys.proc import netns_cookie, netns_inode, pid_alive
from vtnet_py.admin import attach as admin_attach
from vtnet_py.admin import pins
from vtnet_py.admin import status as admin_status
from vtnet_py.device import Channels, FakeDeviceLayer, SavedState, make_info, record
from vtnet_py.device.types import (
    VIRTIO_F_VERSION_1,
    VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
    VIRTIO_NET_F_MRG_RXBUF,
    XdpFeatures,
)
from vtnet_py.errors import DeviceError, InterfaceChangedError
from vtnet_py.netmap.watch import DeviceWatch

VETH_CH = Channels(rx=2, tx=2, max_rx=2, max_tx=2)
OFFLOADS: dict[str, bool | tuple[bool, bool]] = {
    "rx-checksum": True,
    "tx-checksum-ip-generic": True,
    "tx-tcp-segmentation": True,
    "rx-lro": (False, True),
}


def dead_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1  # never a process


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeDeviceLayer]:
    layer = FakeDeviceLayer([make_info("vtf0", channels=VETH_CH, features=OFFLOADS)])
    monkeypatch.setattr(admin_attach, "NetlinkDeviceLayer", lambda: layer)
    monkeypatch.setattr(admin_status, "NetlinkDeviceLayer", lambda: layer)
    monkeypatch.setattr(record, "STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(pins, "PIN_ROOT", str(tmp_path / "pins"))
    monkeypatch.setattr(admin_status, "_ours_on_links", lambda: [])  # no XDP programs to look for
    yield layer


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def records(tmp_path: Path) -> list[str]:
    d = tmp_path / "state"
    return sorted(os.listdir(d)) if d.is_dir() else []


# --- help and usage -----------------------------------------------------------------------


@pytest.mark.parametrize("cmd", ["attach", "detach", "status"])
def test_help_carries_examples(cmd: str) -> None:
    r = run(cmd, "--help")
    assert r.exit_code == 0
    assert "Examples:" in r.output and f"  vtnetmap {cmd} " in r.output
    assert "--netns NS" in r.output


@pytest.mark.parametrize(
    "args, says",
    [
        (["attach"], "Missing argument 'IF'"),
        (["attach", "vtf0", "--rings", "0"], "--rings"),
        (["attach", "vtf0", "--mode", "turbo"], "--mode"),
        (["attach", "vtf0", "--zerocopy", "maybe"], "--zerocopy"),
        (["detach"], "Missing argument 'IF'"),
        (["status", "a", "b"], "unexpected extra argument"),
    ],
)
def test_usage_errors_exit_2(args: list[str], says: str) -> None:
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert says in r.output


# --- refusals: exit 1, one line, nothing changed ---------------------------------------------


def test_default_route_refused_before_anything_changes(
    fake: FakeDeviceLayer, tmp_path: Path
) -> None:
    fake.add(make_info("vtf0", channels=VETH_CH, features=OFFLOADS, carries_default_route=True))
    r = run("attach", "vtf0")
    assert r.exit_code == 1
    assert r.stderr == (
        "vtnetmap: vtf0 carries the default route of this network namespace: "
        "taking it over would cut this machine's traffic; use --force to "
        "attach anyway\n"
    )
    assert r.stdout == "" and fake.mutating_calls() == [] and records(tmp_path) == []


def test_too_many_rings_refused(fake: FakeDeviceLayer, tmp_path: Path) -> None:
    r = run("attach", "vtf0", "--rings", "4")
    assert r.exit_code == 1
    assert r.stderr == (
        "vtnetmap: vtf0: 4 rings requested but the driver offers at most 2 rx / 2 tx channels\n"
    )
    assert fake.mutating_calls() == [] and records(tmp_path) == []


def test_virtio_precondition_in_the_kernels_words_and_record_removed(
    fake: FakeDeviceLayer, tmp_path: Path
) -> None:
    feats = frozenset(
        {VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS}
    )
    fake.add(
        make_info(
            "vtf0",
            driver="virtio_net",
            mtu=3700,
            virtio_features=feats,
            channels=Channels(combined=1, max_combined=4),
            features=OFFLOADS,
        )
    )
    r = run("attach", "vtf0")
    assert r.exit_code == 1
    lines = r.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "vtnetmap: vtf0: virtio_net: MTU too large to enable XDP "
        "without frags (single-buffer XDP requires MTU less than "
    )
    assert lines[0].endswith("; MTU is 3700)")
    # the pending record written before prepare() was taken back with it
    assert fake.mutating_calls() == [] and records(tmp_path) == []


def test_missing_netns_and_interface(fake: FakeDeviceLayer) -> None:
    r = run("status", "vtf0", "--netns", "vtf-no-such-ns")
    assert r.exit_code == 1
    assert r.stderr == (
        "vtnetmap: network namespace 'vtf-no-such-ns' does not exist (/run/netns/vtf-no-such-ns)\n"
    )
    r = run("status", "vtfnope")
    assert r.exit_code == 1
    assert r.stderr == "vtnetmap: interface 'vtfnope' does not exist (in this network namespace)\n"


def test_unmapped_oserror_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(device_cmds, "detach", boom)
    r = run("detach", "vtf0")
    assert r.exit_code == 1 and r.stderr == "vtnetmap: vtf0: Input/output error\n"


# --- detach and status over the double ------------------------------------------------------


def _record(layer: FakeDeviceLayer, phase: str = "attached", pid: int = 0) -> record.AttachRecord:
    info = layer.read("vtf0")
    saved = SavedState(
        ifname="vtf0",
        ifindex=info.ifindex,
        driver=info.driver,
        mode="native",
        features={"rx-checksum": True, "tx-tcp-segmentation": True},
    )
    return record.AttachRecord(
        ifname="vtf0",
        ifindex=info.ifindex,
        netns_inode=netns_inode(),
        phase=phase,
        saved=saved,
        mode="native",
        frags=False,
        zerocopy="off",
        rings=None,
        pid=pid or dead_pid(),
        time=time.time(),
        netns_cookie=netns_cookie(),
    )


def test_detach_restores_the_record_and_is_idempotent(
    fake: FakeDeviceLayer, tmp_path: Path
) -> None:
    fake.set_features("vtf0", {"rx-checksum": False, "tx-tcp-segmentation": False})
    record.write_record(_record(fake, phase="prepared"))
    assert oct(os.stat(tmp_path / "state").st_mode & 0o777) == "0o700"
    assert [oct(os.stat(tmp_path / "state" / n).st_mode & 0o777) for n in records(tmp_path)] == [
        "0o600"
    ]
    r = run("detach", "vtf0")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [
        f"vtf0: repairing an attach that did not finish (pid {dead_pid()}, dead; phase prepared)",
        "vtf0: restored offloads rx-checksum on, tx-tcp-segmentation on",
    ]
    f = fake.read("vtf0").features
    assert f["rx-checksum"].wanted and f["tx-tcp-segmentation"].wanted
    assert records(tmp_path) == []
    r = run("detach", "vtf0")
    assert r.exit_code == 0 and r.stdout == "vtf0: not attached by vtnetmap; nothing to do\n"
    fake.remove("vtf0")
    r = run("detach", "vtf0")
    assert r.exit_code == 0 and r.stdout == (
        "vtf0: no such interface here and no vtnetmap state for it; nothing to do\n"
    )


def test_detach_restores_what_it_can_and_names_what_veth_holds(
    fake: FakeDeviceLayer, tmp_path: Path
) -> None:
    # the peer runs XDP: veth holds the segmentation offloads off ("fixed"), the rest
    # can be put back; the record stays for another detach once the peer lets go
    info = fake.read("vtf0")
    held = dataclasses.replace(
        info.features["tx-tcp-segmentation"], active=False, fixed=True, requested=False
    )
    fake.add(dataclasses.replace(info, features={**info.features, "tx-tcp-segmentation": held}))
    fake.set_features("vtf0", {"rx-checksum": False})
    record.write_record(_record(fake))
    r = run("detach", "vtf0")
    assert r.exit_code == 1
    assert r.stderr == (
        "vtnetmap: vtf0: restored offloads rx-checksum on; not restored: tx-tcp-segmentation "
        "cannot be turned on while the veth peer of vtf0 has an XDP program attached (veth "
        "holds them off then: an open vtnetmap port or `vtnetmap attach` on the peer); close "
        f"that port or detach the peer first; the record stays in {records_path(tmp_path)}: "
        "run `vtnetmap detach vtf0` again then\n"
    )
    assert fake.read("vtf0").features["rx-checksum"].wanted
    fake.add(
        dataclasses.replace(
            fake.read("vtf0"),
            features={
                **fake.read("vtf0").features,
                "tx-tcp-segmentation": dataclasses.replace(held, fixed=False),
            },
        )
    )
    r = run("detach", "vtf0")
    assert r.exit_code == 0 and r.stdout == "vtf0: restored offloads tx-tcp-segmentation on\n"
    assert records(tmp_path) == []


def records_path(tmp_path: Path) -> str:
    (name,) = records(tmp_path)
    return str(tmp_path / "state" / name)


def test_status_text_and_json(fake: FakeDeviceLayer, tmp_path: Path) -> None:
    feats = frozenset({VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF})
    fake.add(
        make_info(
            "vtf0",
            driver="virtio_net",
            virtio_features=feats,
            vnet_hdr_len=12,
            channels=Channels(combined=2, max_combined=4),
            features=OFFLOADS,
            oper_up=True,
        )
    )
    me = os.getpid()
    record.write_record(_record(fake, pid=me))
    r = run("status", "vtf0")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("vtf0 (ifindex 7, driver virtio_net, (netns inode ")
    assert lines[0].endswith("mtu 1500, up)")
    assert "  xdp: none attached" in lines and "  pinned: no" in lines
    assert "  channels: combined 2/4 (rx queues 2, tx queues 2)" in lines
    assert (
        "  offloads netmap wants off: still on: rx-checksum, tx-checksum-ip-generic, "
        "tx-tcp-segmentation"
    ) in lines
    assert "  vnet header: 12 bytes" in lines
    assert lines.count("  queue 0: kernel") == 1 and "  queue 1: kernel" in lines
    assert any(x.startswith(f"  attached by: pid {me} (alive) at ") for x in lines)
    assert "  note: stale attach record (phase attached" in r.stdout  # no pinned program
    j = run("status", "vtf0", "--json")
    st = json.loads(j.stdout)["interfaces"][0]
    assert st["vnet_hdr_len"] == 12 and st["attach"]["zerocopy"] == "off"
    assert st["offloads"]["rx-lro"] == {"active": False, "fixed": True}
    assert [q["owner_pid"] for q in st["queues"]] == [0, 0]
    # with no interface named: the ones with state (here the record) are listed
    everything = json.loads(run("status", "--json").stdout)
    assert [i["ifname"] for i in everything["interfaces"]] == ["vtf0"]


def test_format_status_marks_dead_owners_and_rings() -> None:
    ring = {
        "port": "netmap:vtf0",
        "ring": 0,
        "kind": "rx",
        "num_slots": 8,
        "head": 1,
        "cur": 1,
        "tail": 4,
        "user_slots": 3,
        "kernel_slots": 4,
        "zerocopy": False,
        "mode": "copy",
        "mode_reason": "the driver does not advertise xsk-zerocopy",
        "afxdp": {"rx_dropped": 2},
    }
    st = {
        "netns": None,
        "netns_inode": 1,
        "interfaces": [
            {
                "ifname": "vtf0",
                "exists": True,
                "ifindex": 3,
                "driver": "veth",
                "netns_inode": 1,
                "mtu": 1500,
                "oper_up": True,
                "vnet_hdr_len": None,
                "channels": VETH_CH.to_dict(),
                "rx_queues": 2,
                "tx_queues": 2,
                "xdp": {
                    "prog_id": 9,
                    "mode": "native",
                    "prog_name": "vtnm_steer",
                    "vtnetmap": True,
                    "frags": False,
                },
                "driver_features": XdpFeatures(xdp=0b100011).to_dict(),
                "pinned": True,
                "pin_dir": "/p",
                "attach": None,
                "offloads": {},
                "offloads_on": [],
                "queues": [
                    {
                        "queue": 0,
                        "owner_pid": 5,
                        "owner_alive": False,
                        "beyond_channels": False,
                        "rings": [ring],
                    },
                    {
                        "queue": 2,
                        "owner_pid": 6,
                        "owner_alive": True,
                        "beyond_channels": True,
                        "rings": [],
                    },
                ],
                "afxdp_statistics": "x",
                "notes": [],
            }
        ],
    }
    text = device_cmds.format_status(st)
    assert "  queue 0: owner pid 5 (DEAD)" in text
    assert "  queue 2: owner pid 6 (alive) (beyond the current channels)" in text
    assert (
        "    netmap:vtf0 rx ring 0: head 1 cur 1 tail 4 (3 user / 4 kernel slots, copy) "
        "rx_dropped=2"
    ) in text
    assert "  driver advertises: xdp basic, redirect, rx-sg; xsk nothing; AF_XDP zero copy no" in (
        text
    )
    assert "    mode: the driver does not advertise xsk-zerocopy" in text
    assert "  channels: rx 2/2, tx 2/2 (rx queues 2, tx queues 2)" in text
    assert "  vnet header: n/a (not virtio_net)" in text


# --- library pieces -------------------------------------------------------------------------


def test_record_round_trip_and_garbled_file(fake: FakeDeviceLayer, tmp_path: Path) -> None:
    rec = _record(fake)
    assert record.AttachRecord.from_json(rec.to_json()) == rec
    record.write_record(rec)
    path = record.state_path(rec.netns_inode, "vtf0")
    Path(path).write_text('{"version": 2, "phase": "half"}')
    with pytest.raises(DeviceError) as ei:
        record.read_record(rec.netns_inode, "vtf0")
    assert str(ei.value) == f"{path} is not readable: bad phase 'half'"
    assert record.read_record(rec.netns_inode, "vtfother") is None


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(dead_pid()) and not pid_alive(0)
    p = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # exited but not reaped: a zombie is dead
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    assert not pid_alive(p.pid)
    p.wait()


def test_device_watch_rate_limit_and_message(monkeypatch: pytest.MonkeyPatch) -> None:
    w = DeviceWatch("netmap:lo", "lo", VETH_CH, interval=0.1)
    try:
        now = [VETH_CH]
        monkeypatch.setattr(w, "_current", lambda: now[0])
        t0 = time.monotonic()
        w.check(now=t0 + 0.2)  # due, unchanged: fine
        now[0] = Channels(rx=3, tx=2, max_rx=4, max_tx=4)
        w.check(now=t0 + 0.25)  # changed, but checked 50 ms ago: not looked at yet
        with pytest.raises(InterfaceChangedError) as ei:
            w.check(now=t0 + 0.31)
        assert str(ei.value) == (
            "netmap:lo: lo channels changed from rx 2, tx 2 to rx 3, tx 2; reopen the port"
        )
        now[0] = Channels(rx=2, tx=2, max_rx=4, max_tx=4)  # only the maximum differs
        w.check(now=t0 + 0.5)
    finally:
        w.close()
    w.check(now=time.monotonic() + 10)  # closed: a no-op


def test_device_watch_reads_a_real_interface() -> None:
    w = DeviceWatch("netmap:lo", "lo", Channels())
    try:
        assert w._current() == Channels()  # lo has no ethtool channels
    finally:
        w.close()
