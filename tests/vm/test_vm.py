"""Host-side VM tests: the guest scenarios (one test each), the integrity of each boot,
and the harness's own failure paths (timeout, panic, missing prerequisites)."""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import harness
import pytest
from vmsuite import VmRuns, list_scenarios, run_suffix

pytestmark = pytest.mark.vm

# How a guest scenario says it does not apply to this kernel's driver (pytest.skip reason).
NOT_APPLICABLE = "not applicable: "
# Kernel console lines that make a boot fail even if every scenario passed.
_CONSOLE_ALARMS = ("Kernel panic", "BUG:", "Oops:", "Call Trace:", "general protection fault")


def _fail_with(run_text: str, result: harness.GuestResult | None, tail: int = 8000) -> None:
    pytest.fail(run_text + ("\n" + result.describe(tail) if result else ""), pytrace=False)


def _console_tail(result: harness.GuestResult, tail: int = 4000) -> str:
    c = result.console
    return f"\n--- guest console (last {tail} chars; all files in {result.results_dir}) ---\n" + (
        c if len(c) <= tail else "...[cut]...\n" + c[-tail:]
    )


def test_guest_scenario(
    vm_runs: VmRuns, guest_scenario: tuple[harness.Kernel | None, str, str]
) -> None:
    kernel, profile, nodeid = guest_scenario
    if kernel is None:  # listing or kernel selection failed; nodeid holds why
        pytest.fail(nodeid, pytrace=False)
    run = vm_runs.get(kernel, profile)
    if run.result is None:
        pytest.fail(
            f"VM profile {profile!r} on {kernel.image} could not start: {run.error}",
            pytrace=False,
        )
    outcome, text = run.outcome(nodeid)
    if outcome == "passed":
        return
    head = f"guest scenario {nodeid} [{kernel.release} {profile}]: {outcome}\n"
    if outcome == "skipped" and NOT_APPLICABLE in text:
        # The one skip the guest may report: a scenario needing a driver feature this
        # kernel lacks (the reason names it), e.g. AF_XDP zero copy on virtio_net < 6.13.
        pytest.skip(f"[{kernel.release}] " + text[text.index(NOT_APPLICABLE) :].split("')")[0])
    if outcome == "missing":
        # Hang, panic, timeout or a collection error in the guest: show everything.
        _fail_with(head + "the guest reported no result for this scenario", run.result)
    # A skip inside the harness's guest is a failure too: every scenario can run here.
    pytest.fail(head + text + _console_tail(run.result), pytrace=False)


def test_guest_suite_completed(
    vm_runs: VmRuns, vm_profile_name: tuple[harness.Kernel | None, str]
) -> None:
    """The boot ran the whole guest suite to its end, cleanly, and cleaned up after."""
    kernel, profile = vm_profile_name
    if kernel is None:  # kernel selection failed; profile holds why
        pytest.fail(profile, pytrace=False)
    run = vm_runs.get(kernel, profile)
    r = run.result
    if r is None:
        pytest.fail(
            f"VM profile {profile!r} on {kernel.image} could not start: {run.error}",
            pytrace=False,
        )
    # The guest really ran the kernel it was given.
    assert f"Linux version {kernel.release} " in r.console, "guest console names another kernel"
    ns = harness.NS_PREFIX + run_suffix(kernel, profile)
    assert (
        ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    ), f"namespace {ns} left behind"
    if r.timed_out:
        _fail_with(f"guest timed out after {r.seconds:.0f}s", r)
    exit_file = r.results_dir / "exit-code"
    if not exit_file.exists():
        _fail_with("the guest command did not finish (panic or power-off before the end)", r)
    if int(exit_file.read_text()) != r.rc:
        _fail_with(f"vng rc {r.rc} != guest exit code {exit_file.read_text().strip()}", r)
    junit = r.results_dir / "junit.xml"
    if not junit.exists():
        _fail_with("no junit.xml from the guest", r)
    cases = ET.parse(junit).getroot().iter("testcase")
    want = {nodeid for prof, nodeid in list_scenarios().scenarios if prof == profile}
    assert len(list(cases)) == len(want), "junit.xml does not list every scenario"
    assert set(run.records) == want, "results.jsonl does not cover every scenario"
    alarms = [ln for ln in r.console.splitlines() if any(a in ln for a in _CONSOLE_ALARMS)]
    if alarms:
        _fail_with("kernel console alarms:\n" + "\n".join(alarms), r)


def test_timeout_kills_qemu_and_removes_namespace(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    suffix = f"timeout-{os.getpid()}"
    r = harness.boot("sleep 600", harness.VmConfig(timeout=6, host_link=False), suffix=suffix)
    assert r.timed_out and r.rc == 124
    assert r.seconds < 30
    ns = harness.NS_PREFIX + suffix
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    # No process of that boot is left (qemu's command line names the results dir).
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if str(r.results_dir) in cmd:
            left.append(f"{pid} {stat.split(')')[-1].split()[0]} {cmd[:200]}")
    assert not left, left


def test_guest_panic_is_a_failure_with_console() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    r = harness.boot(
        "echo c > /proc/sysrq-trigger; sleep 30",
        harness.VmConfig(timeout=120, host_link=False),
        suffix=f"panic-{os.getpid()}",
    )
    assert r.rc != 0 and not r.timed_out, r.describe(3000)
    assert "Kernel panic" in r.console, r.describe(3000)
    assert not (r.results_dir / "exit-code").exists()


def test_missing_prerequisite_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(harness, "VNG", tmp_path / "no-vng")
    with pytest.raises(harness.HarnessError, match="setup_vm.sh"):
        harness.boot("true", suffix=f"missing-{os.getpid()}", results_dir=tmp_path / "r")
