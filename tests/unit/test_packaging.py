"""A non-editable `pip install .` into a fresh venv gives a working library and command."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs Debian's python3")
def test_non_editable_install_finds_bpf_sources(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            "__pycache__",
            "*.egg-info",
            "build",
            ".mypy_cache",
            # tool caches a root run leaves behind (root-only files): not part of a source tree
            ".ruff_cache",
            ".pytest_cache",
            ".hypothesis",
            "out",
            ".vng-venv",
            "results",
            "*.so",  # the install must compile the ring core itself
        ),
    )
    venv = tmp_path / "venv"
    subprocess.run(
        ["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True
    )
    r = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-build-isolation", str(src)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:  # no setuptools/wheel in the system site: let pip fetch them
        r = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", str(src)], capture_output=True, text=True
        )
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        "import vtnet_py, vtnet_py.ebpf.build as b; "
        "p = b.bpf_source_dir(); assert 'site-packages' in str(p), p; "
        "import vtnet_py.netmap._ringcore as c; assert 'site-packages' in c.__file__, c; "
        "print(p / 'steer.c')"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_file()
    helped = subprocess.run(
        [str(venv / "bin" / "vtnetmap"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert helped.returncode == 0 and "demo" in helped.stdout
    for cmd in ("pkt-gen", "bridge", "attach", "detach", "status"):
        sub = subprocess.run(
            [str(venv / "bin" / "vtnetmap"), cmd, "--help"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
        )
        assert sub.returncode == 0, f"vtnetmap {cmd} --help: {sub.stderr}"
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not (site / "cli").exists(), "the click front end must not squat `cli`"
    assert (site / "vtnetmap_cli").is_dir()
