"""The test-network builder itself: what it makes is what was asked, names never collide,
and everything it made (only that) is gone after close, also after a failure half-way."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vtnet_py.apps import netlab
from vtnet_py.apps.netlab import NETNS_RUN_DIR, NetLab
from vtnet_py.errors import DeviceError

pytestmark = pytest.mark.kernel


def exists(ns: str) -> bool:
    return os.path.lexists(os.path.join(NETNS_RUN_DIR, ns))


def ip_json(ns: str, *args: str) -> list[dict]:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "-d", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def sysctl_in(ns: str, key: str) -> str:
    path = "/proc/sys/" + key
    return subprocess.run(
        ["ip", "netns", "exec", ns, "cat", path], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_veth_pair_has_the_queues_mtu_addresses_and_state_asked_for() -> None:
    with NetLab("tn") as lab:
        a, b = lab.namespace("a"), lab.namespace("b")
        p = lab.veth(a, "tna", b, "tnb", queues=3, mtu=4000, ip_a="198.51.100.1", ip_b=None)
        for ns, dev in ((a, "tna"), (b, "tnb")):
            (link,) = ip_json(ns, "link", "show", dev)
            assert link["num_tx_queues"] == 3 and link["num_rx_queues"] == 3
            assert link["mtu"] == 4000 and "UP" in link["flags"]
            assert link["linkinfo"]["info_kind"] == "veth"
            assert sysctl_in(ns, f"net/ipv6/conf/{dev}/disable_ipv6") == "1"
            (lo,) = ip_json(ns, "link", "show", "lo")
            assert "UP" in lo["flags"]
        (addr_a,) = ip_json(a, "addr", "show", "tna")
        assert [(x["local"], x["prefixlen"]) for x in addr_a["addr_info"]] == [("198.51.100.1", 24)]
        (addr_b,) = ip_json(b, "addr", "show", "tnb")
        assert addr_b["addr_info"] == []
        assert p.lladdr("a") == ip_json(a, "link", "show", "tna")[0]["address"]
        assert p.mac("b").hex(":") == ip_json(b, "link", "show", "tnb")[0]["address"]
        assert not p.xdp_attached("a")
        assert lab.namespaces == [a, b]
    assert not exists(a) and not exists(b)


def test_tap_is_multiqueue_addressed_and_has_its_permanent_neighbour() -> None:
    with NetLab("tn") as lab:
        ns = lab.namespace()
        lab.tap(ns, "tntap0", queues=4, ip="198.51.100.1")
        lab.tap(ns, "tntap1")
        lab.neighbour(ns, "tntap0", "198.51.100.2", "52:54:00:76:74:02")
        (t0,) = ip_json(ns, "link", "show", "tntap0")
        data = t0["linkinfo"]["info_data"]
        assert data["type"] == "tap" and data["multi_queue"] and not data["pi"]
        assert data["persist"]
        (addrs,) = ip_json(ns, "addr", "show", "tntap0")
        assert ("198.51.100.1", 24) in [(a["local"], a["prefixlen"]) for a in addrs["addr_info"]]
        (t1,) = ip_json(ns, "link", "show", "tntap1")
        assert not t1["linkinfo"]["info_data"]["multi_queue"]
        assert "UP" in t1["flags"]
        (neigh,) = ip_json(ns, "neigh", "show", "dev", "tntap0")
        assert neigh["dst"] == "198.51.100.2" and neigh["lladdr"] == "52:54:00:76:74:02"
        assert "PERMANENT" in neigh["state"]
    assert not exists(ns)


def test_a_taken_name_is_left_alone_and_not_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = NetLab("tn")  # someone else's namespace with the name this lab will try first
    other = theirs.namespace("x")
    try:
        tags = ["bbbbbb"]
        monkeypatch.setattr(netlab, "random_tag", lambda: tags[0])
        with NetLab("tn", tag=theirs.tag) as lab:
            mine = lab.namespace("x")
            assert mine == "tnbbbbbbx" and lab.tag == "bbbbbb"
        assert exists(other) and not exists(mine)
    finally:
        theirs.close()
    assert not exists(other)


def test_failure_half_way_removes_what_was_made_and_close_is_idempotent() -> None:
    lab = NetLab("tn")
    a, b = lab.namespace("a"), lab.namespace("b")
    lab.veth(a, "tna", b, "tnb")
    with pytest.raises(DeviceError, match=r"creating veth tna \(tn\w+a\) <-> tnc .*File exists"):
        lab.veth(a, "tna", b, "tnc")  # tna exists already in a
    assert exists(a) and exists(b)
    lab.close()
    assert not exists(a) and not exists(b)
    lab.close()
    with pytest.raises(DeviceError, match="closed"):
        lab.namespace("c")


def test_a_namespace_removed_by_someone_else_is_skipped_on_close() -> None:
    with NetLab("tn") as lab:
        a, b = lab.namespace("a"), lab.namespace("b")
        subprocess.run(["ip", "netns", "del", a], check=True)
    assert not exists(a) and not exists(b)


def test_nothing_is_built_outside_the_labs_own_namespaces() -> None:
    with NetLab("tn") as lab, NetLab("tn") as other:
        mine, theirs = lab.namespace("a"), other.namespace("a")
        with pytest.raises(ValueError, match="not made by this lab"):
            lab.veth(mine, "tna", theirs, "tnb")
        with pytest.raises(ValueError, match="not made by this lab"):
            lab.tap(theirs, "tntap0")
        with pytest.raises(ValueError, match="is not an interface name"):
            lab.veth(mine, "tn-way-too-long-name", mine, "tnb")
        assert ip_json(mine, "link", "show", "type", "veth") == []


def test_bad_configuration_names_the_interface_and_namespace() -> None:
    with NetLab("tn") as lab:
        ns = lab.namespace()
        with pytest.raises(DeviceError, match=rf"^tnnope: no such interface in .*{ns}$"):
            lab.configure(ns, "tnnope", ip="198.51.100.1")


def test_without_root_it_is_a_one_line_privilege_error_and_leaves_nothing() -> None:
    code = (
        "from vtnet_py.apps.netlab import NetLab\n"
        "from vtnet_py.errors import PrivilegeError\n"
        "lab = NetLab('tn', tag='nopriv')\n"
        "try:\n"
        "    lab.namespace('a')\n"
        "except PrivilegeError as exc:\n"
        "    print(exc)\n"
    )
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    r = subprocess.run([*nobody, sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (
        r.stdout
        == "creating network namespace tnnopriva needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)\n"
    )
    assert not exists("tnnopriva")
