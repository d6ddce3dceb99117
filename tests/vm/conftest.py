"""Host side of the VM suite: one guest boot per profile per pytest session.

The guest scenarios (tests/vm/guest/test_*.py) are listed on the host with
``pytest --vtvm-list`` and become one host test per guest kernel each
(tests/vm/test_vm.py, ids ``<kernel release>:<profile>:<file>::<test>``). The first test
of a (kernel, profile) boots its VM (harness.PROFILES) and runs all the profile's
scenarios in one python process inside the guest (vagrant/provision.sh scenarios ->
guest/run.sh); every later test of that pair reads its own result from what the guest
streamed to the shared directory (tests/vm/out/<kernel>-<profile>-<pid>/results.jsonl,
junit.xml, console.txt).

Guest kernels (harness.selected_kernels): ``--vm-kernel PATH`` (repeatable; the option is
declared in tests/conftest.py so that it works from the repository root), else
``$VTNETMAP_VM_KERNEL`` (paths separated by ":"), else Debian's 6.1 and 6.12; the word
``defaults`` stands for those two.

This file is also loaded inside the guest (pytest loads conftests on the way to
tests/vm/guest), so it only defines fixtures and hooks that are inert there.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from vmsuite import VmRuns, list_scenarios  # noqa: E402

# On the host the guest scenarios must never be collected: they attach XDP to and change
# the MTU of "eth0", which here is the machine's uplink.
collect_ignore = [] if os.environ.get("VTVM_IN_GUEST") == "1" else ["guest"]

_session_runs: VmRuns | None = None


@pytest.fixture(scope="session")
def vm_runs() -> VmRuns:
    """Shared per session; skips (only) when not root."""
    global _session_runs
    if os.geteuid() != 0:
        pytest.skip("the VM suite needs root (network namespace, TAP, QEMU)")
    if _session_runs is None:
        _prune_old_results()
        _session_runs = VmRuns()
    return _session_runs


def _prune_old_results() -> None:
    """Results of earlier sessions (``<name>-<pid>`` whose pid is gone) are removed."""
    if not harness.OUT_DIR.is_dir():
        return
    for d in harness.OUT_DIR.iterdir():
        pid = d.name.rsplit("-", 1)[-1]
        if d.is_dir() and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


def _kernels(config: pytest.Config) -> tuple[list[harness.Kernel], str]:
    """The selected guest kernels, or the reason there are none."""
    try:
        return harness.selected_kernels(config.getoption("--vm-kernel", default=None) or ()), ""
    except harness.HarnessError as e:
        return [], str(e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _session_runs or not _session_runs.runs:
        return
    tr = terminalreporter
    tr.section("vtvm: VM boots")
    timings = {}
    for name, run in _session_runs.runs.items():
        if run.result is None:
            tr.line(f"{name}: not booted: {run.error}")
            continue
        r = run.result
        tr.line(
            f"{name}: rc={r.rc} wall={r.seconds:.1f}s guest-boot={r.boot_seconds}s "
            f"scenarios={len(run.records)} results={r.results_dir}"
        )
        timings[name] = {
            "kernel": run.kernel.release,
            "profile": run.profile,
            "wall_s": round(r.seconds, 1),
            "boot_s": r.boot_seconds,
            "rc": r.rc,
        }
    per_kernel: dict[str, float] = {}
    for t in timings.values():
        per_kernel[str(t["kernel"])] = per_kernel.get(str(t["kernel"]), 0.0) + float(t["wall_s"])
    for kernel, wall in per_kernel.items():
        tr.line(f"{kernel}: {wall:.0f}s of VM boots")
    with open(harness.OUT_DIR / "timings.json", "w") as f:
        json.dump(
            {
                "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "boots": timings,
                "per_kernel_wall_s": {k: round(v, 1) for k, v in per_kernel.items()},
            },
            f,
            indent=1,
        )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``guest_scenario``: one (kernel, profile, nodeid) per guest kernel and scenario;
    ``vm_profile_name``: (kernel, profile) for each profile that has scenarios. A listing
    or kernel-selection failure becomes one failing parameter."""
    names = {"guest_scenario", "vm_profile_name"} & set(metafunc.fixturenames)
    if not names:
        return
    lst = list_scenarios()
    kernels, kernel_error = _kernels(metafunc.config)
    errors = [("listing-error", lst.error), ("kernel-error", kernel_error)]
    if "guest_scenario" in names:
        params = [
            pytest.param((k, p, n), id=f"{k.label}:{p}:{n.rsplit('/', 1)[-1]}")
            for k in kernels
            for p, n in sorted(lst.scenarios, key=lambda s: s[0] != "main")
        ]
        params += [pytest.param((None, "", e), id=i) for i, e in errors if e]
        metafunc.parametrize("guest_scenario", params)
    if "vm_profile_name" in names:
        profiles = sorted({p for p, _ in lst.scenarios if p in harness.PROFILES}) or ["main"]
        pairs = [pytest.param((k, p), id=f"{k.label}:{p}") for k in kernels for p in profiles]
        pairs += [pytest.param((None, e), id=i) for i, e in errors[1:] if e]
        metafunc.parametrize("vm_profile_name", pairs)
