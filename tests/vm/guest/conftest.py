"""Guest-side pytest plumbing: runs INSIDE a VM (local QEMU harness or Vagrant), as root.

Any ``tests/vm/guest/test_*.py`` is collected, run in the guest and reported by the host
as its own test (tests/vm/test_vm.py); nothing needs registering.

* Safety: the scenarios attach XDP programs and change MTU/channels of ``$VTVM_IFACE``;
  on the host that would be the machine's uplink. They run only with ``VTVM_IN_GUEST=1``
  (set by the harness's guest script and by vagrant/provision.sh); otherwise the session
  stops before any test runs.
* Profiles: a scenario needing a differently built VM (QEMU device options, CPU count)
  carries ``@pytest.mark.vm_profile("refusals")``; unmarked scenarios belong to "main".
  ``--vtvm-profile=NAME`` (default ``$VTVM_PROFILE`` or "main") deselects the others. The
  host's tests/vm/conftest.py maps each profile to a VmConfig and boots it once.
* ``--vtvm-list`` prints ``VTVM-SCENARIO <profile> <nodeid>`` per scenario and runs
  nothing: the host uses it to make one host test per scenario.
* Results stream to ``$VTVM_RESULTS/results.jsonl`` (one line per test phase, fsync'd) so
  a guest that panics mid-run still reports the scenarios it finished.
* Each test is bounded by ``$VTVM_TEST_TIMEOUT`` seconds (default 240; SIGALRM fails it).

EXTENSION POINTS (scenarios waiting for library pieces being built now; add a file, it
is picked up; add a fixture here when several files share it):
  - device prep: ``vtnetmap attach eth0`` / ``detach`` restore offloads and channels
    -> tests/vm/guest/test_guest_device.py (use ``iface``, ``channels()``, ``features()``;
    the refusal cases of the device issue can reuse the "refusals" profile NICs
    ``$VTVM_NIC_NO_CTRL_OFFLOADS`` / ``$VTVM_NIC_HOST_MTU``).
  - netmap port over AF_XDP (``from vtnet_py import open_port``): rings 0..N-1 map to
    the guest's queues, every ring receives -> test_guest_port.py (host TX through
    ``host_link``, see test_guest_nic.py's kernel-socket exchange for the pattern).
  - pkt-gen: seed Test 1 (guest TX counted on the host TAP, byte-exact sample) and Test 2
    (host TX into the guest's RX rings) -> test_guest_pktgen.py; the host side runs the
    project's pkt-gen on ``host_link.info()["tap"]`` via ``host_link.run/spawn``.
  - bridge: seed Test 3 (``bridge -i netmap:eth0`` hw<->host rings, host pings and nc
    both ways, stopping the bridge restores networking) -> test_guest_bridge.py.
  - kill -9 of a port owner returns the queues to the kernel -> test_guest_ownership.py.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import guestlib
import pytest

PROFILE_DEFAULT = "main"
_results_fd: int | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("vtvm guest")
    g.addoption(
        "--vtvm-profile",
        default=os.environ.get("VTVM_PROFILE", PROFILE_DEFAULT),
        help="run only the scenarios of this VM profile (default: main)",
    )
    g.addoption(
        "--vtvm-list",
        action="store_true",
        help="print 'VTVM-SCENARIO <profile> <nodeid>' per scenario, run nothing",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm_profile(name): the VM profile a guest scenario needs")


def _profile_of(item: pytest.Item) -> str:
    m = item.get_closest_marker("vm_profile")
    return str(m.args[0]) if m else PROFILE_DEFAULT


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    mine = [it for it in items if Path(str(it.path)).parent == here]
    if config.getoption("--vtvm-list"):
        for it in mine:
            print(f"VTVM-SCENARIO {_profile_of(it)} {it.nodeid}")
        config.hook.pytest_deselected(items=list(items))
        items[:] = []
        return
    if not mine:
        return
    if os.environ.get("VTVM_IN_GUEST") != "1":
        pytest.exit(
            "tests/vm/guest runs only inside a VM (VTVM_IN_GUEST=1): it changes XDP, "
            "MTU and channels of $VTVM_IFACE. Use tests/vm (the QEMU harness) or "
            "vagrant/.",
            returncode=4,
        )
    profile = config.getoption("--vtvm-profile")
    keep = [it for it in items if it not in mine or _profile_of(it) == profile]
    drop = [it for it in items if it not in keep]
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


def pytest_sessionstart(session: pytest.Session) -> None:
    global _results_fd
    res = os.environ.get("VTVM_RESULTS")
    if res and os.environ.get("VTVM_IN_GUEST") == "1":
        _results_fd = os.open(
            os.path.join(res, "results.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _results_fd is None:
        return
    rec = {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "wasxfail": hasattr(report, "wasxfail"),
        "duration": round(report.duration, 3),
        "longrepr": str(report.longrepr) if report.longrepr else "",
        "sections": [[k, v[-20000:]] for k, v in report.sections],
    }
    os.write(_results_fd, (json.dumps(rec) + "\n").encode())
    os.fsync(_results_fd)  # the 9p share must have it even if the guest dies next


class _TestTimeout(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    limit = int(os.environ.get("VTVM_TEST_TIMEOUT", "240"))

    def on_alarm(signum: int, frame: object) -> None:
        raise _TestTimeout(f"{item.nodeid}: over VTVM_TEST_TIMEOUT={limit}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def iface() -> str:
    """The virtio_net interface under test ($VTVM_IFACE, eth0 under the harness)."""
    name = guestlib.IFACE
    assert Path(f"/sys/class/net/{name}").exists(), f"no interface {name} in the guest"
    return name


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vtvm-guest-"))
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


@pytest.fixture(scope="session")
def xdp_pass_obj(workdir: Path) -> Path:
    """BPF object with section "xdp" returning XDP_PASS (tests/vm/guest/xdp_pass.c)."""
    return guestlib.build_xdp_pass(workdir)


@pytest.fixture(scope="session")
def frags_at_9000(iface: str, xdp_pass_obj: Path) -> bool:
    """The driver of ``iface`` takes a multi-buffer program natively at MTU 9000 (probed
    once: virtio_net 6.3+ does, 6.1 does not). Scenarios that differ between kernels
    branch on this, not on the version."""
    return guestlib.frags_xdp_attaches(iface, xdp_pass_obj, 9000)


@pytest.fixture
def restore_iface(iface: str) -> Iterator[str]:
    """Leaves ``iface`` as found: no XDP program, same MTU and combined channels."""
    mtu = guestlib.mtu_of(iface)
    ch = guestlib.channels(iface)
    yield iface
    # MTU first: virtio_net refuses to detach XDP while the MTU is too large for it.
    guestlib.set_mtu(iface, mtu)
    guestlib.xdp_detach(iface, "xdpdrv")
    guestlib.xdp_detach(iface, "xdpgeneric")
    if guestlib.channels(iface).combined != ch.combined:
        guestlib.set_channels(iface, ch.combined)
    assert guestlib.xdp_mode(iface) == 0, f"could not detach XDP from {iface}"


@pytest.fixture(scope="session")
def host_link() -> Iterator[guestlib.HostLink]:
    """The host side of the run (see guestlib.HostLink). Under the harness it must exist
    ($VTVM_REQUIRE_HOST_LINK=1: missing is a failure); elsewhere (Vagrant) the scenarios
    needing it are skipped with that reason."""
    name = os.environ.get("VTVM_HOST_LINK", "vtvm.host")
    dev = guestlib.find_port(name)
    if dev is None:
        msg = f"no virtio-serial port {name!r}: the host link exists only under tests/vm/harness"
        if os.environ.get("VTVM_REQUIRE_HOST_LINK") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    link = guestlib.HostLink(dev)
    try:
        yield link
    finally:
        link.close()
