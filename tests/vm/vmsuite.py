"""Host-side bookkeeping of the VM suite: which guest scenarios exist (listed, not run,
on the host), one boot per profile, and each scenario's outcome from the guest's
streamed results. Used by conftest.py and test_vm.py."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import harness

_LIST_PREFIX = "VTVM-SCENARIO "


@dataclass
class Listing:
    scenarios: list[tuple[str, str]]  # (profile, nodeid)
    error: str = ""


_listing: Listing | None = None


def list_scenarios() -> Listing:
    """The guest scenarios and their profiles, collected (not run) on the host."""
    global _listing
    if _listing is None:
        p = (
            subprocess.run(
                [
                    str(harness.GUEST_PYTHON),
                    "-m",
                    "pytest",
                    "-p",
                    "no:cacheprovider",
                    "-q",
                    "--vtvm-list",
                    "tests/vm/guest",
                ],
                cwd=harness.REPO,
                capture_output=True,
                text=True,
                timeout=120,
                # Lifts collect_ignore above; --vtvm-list deselects everything, nothing runs.
                env=dict(os.environ, VTVM_IN_GUEST="1"),
            )
            if harness.GUEST_PYTHON.is_file()
            else None
        )
        if p is None:
            _listing = Listing([], f"{harness.GUEST_PYTHON} missing: run scripts/setup.sh")
        else:
            found = []
            for ln in p.stdout.splitlines():
                if ln.startswith(_LIST_PREFIX):
                    prof, _, nodeid = ln[len(_LIST_PREFIX) :].partition(" ")
                    found.append((prof, nodeid))
            err = ""
            if p.returncode not in (0, 5) or not found:
                err = f"listing guest scenarios failed (rc={p.returncode}):\n{p.stdout}{p.stderr}"
            unknown = sorted({prof for prof, _ in found} - set(harness.PROFILES))
            if unknown:
                err += f"guest scenarios name unknown VM profiles {unknown}; add to PROFILES"
            _listing = Listing(found, err)
    return _listing


@dataclass
class ProfileRun:
    """One boot of one profile on one kernel and what its guest pytest reported."""

    profile: str
    kernel: harness.Kernel
    result: harness.GuestResult | None = None
    error: str = ""  # the VM could not be started at all
    records: dict[str, list[dict[str, object]]] = field(default_factory=dict)

    def load_records(self) -> None:
        assert self.result is not None
        path = self.result.results_dir / "results.jsonl"
        if not path.exists():
            return
        for ln in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(ln)
            except ValueError:
                continue  # a line cut by a dying guest
            self.records.setdefault(str(rec["nodeid"]), []).append(rec)

    def outcome(self, nodeid: str) -> tuple[str, str]:
        """("passed"|"failed"|"error"|"skipped"|"missing", the guest's report text)."""
        recs = self.records.get(nodeid, [])
        text = "\n".join(
            f"[{r['when']}: {r['outcome']}]\n{r['longrepr']}"
            + "".join(f"\n--- {k} ---\n{v}" for k, v in r["sections"])  # type: ignore[attr-defined]
            for r in recs
            if r["outcome"] != "passed" or r["sections"]
        )
        if any(r["outcome"] == "failed" for r in recs):
            call_failed = any(r["outcome"] == "failed" and r["when"] == "call" for r in recs)
            return ("failed" if call_failed else "error"), text
        call = [r for r in recs if r["when"] == "call"]
        if call and call[0]["outcome"] == "passed":
            return "passed", text
        if any(r["outcome"] == "skipped" for r in recs):
            if any(r["wasxfail"] for r in recs):
                return "passed", text  # an expected failure that failed as expected
            return "skipped", text
        return "missing", text


class VmRuns:
    """Boots each (kernel, profile) at most once per session, on first use."""

    def __init__(self) -> None:
        self.runs: dict[str, ProfileRun] = {}

    @staticmethod
    def key(kernel: harness.Kernel, profile: str) -> str:
        """The run's name in test ids, the summary and its results directory."""
        return f"{kernel.label}:{profile}"

    def get(self, kernel: harness.Kernel, profile: str) -> ProfileRun:
        key = self.key(kernel, profile)
        if key not in self.runs:
            self.runs[key] = self._boot(kernel, profile)
        return self.runs[key]

    def _boot(self, kernel: harness.Kernel, profile: str) -> ProfileRun:
        run = ProfileRun(profile, kernel)
        cfg = harness.PROFILES[profile]
        env = dict(cfg.env)
        obj = _prebuild_xdp_pass()
        if obj:
            env["VTVM_XDP_PASS_OBJ"] = str(obj)
        cfg = dataclasses.replace(cfg, env=env, kernel=kernel)
        try:
            run.result = harness.boot(
                harness.guest_suite_command(profile),
                cfg,
                suffix=run_suffix(kernel, profile),
            )
        except harness.HarnessError as e:
            run.error = str(e)
            return run
        run.load_records()
        return run


def run_suffix(kernel: harness.Kernel, profile: str) -> str:
    """Names the run's namespace (vtvm-<suffix>) and results directory; ends with our pid
    so that a later session can tell a dead session's results (conftest prunes them)."""
    return f"{re.sub(r'[^A-Za-z0-9.]', '_', kernel.label)}-{profile}-{os.getpid()}"


def _prebuild_xdp_pass() -> Path | None:
    """Build xdp_pass.o on the host (fast) for the guest to use (clang in TCG: ~7 s)."""
    src = harness.VM_DIR / "guest" / "xdp_pass.c"
    out = harness.OUT_DIR / "build" / "xdp_pass.o"
    out.parent.mkdir(parents=True, exist_ok=True)
    p = (
        subprocess.run(
            ["clang", "-O2", "-g", "-target", "bpf", "-c", str(src), "-o", str(out)],
            capture_output=True,
            text=True,
        )
        if shutil.which("clang")
        else None
    )
    return out if p is not None and p.returncode == 0 else None
