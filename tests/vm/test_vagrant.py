"""vagrant/Vagrantfile is valid for Debian's vagrant (and vagrant-libvirt when present).

`vagrant up` cannot run here (no box download, no KVM); the provisioning's scenario step
(vagrant/provision.sh scenarios) is what the QEMU harness runs in its guest."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import harness
import pytest

pytestmark = pytest.mark.vm


def _vagrant(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.fail("vagrant is not installed: run tests/vm/setup_vm.sh", pytrace=False)
    # Vagrant's state (~/.vagrant.d, vagrant/.vagrant) goes to the test's temp dir.
    env = dict(
        os.environ,
        VAGRANT_HOME=str(home),
        VAGRANT_DOTFILE_PATH=str(home / "dot"),
        VAGRANT_CHECKPOINT_DISABLE="1",
        VAGRANT_DEFAULT_PROVIDER="libvirt",
    )
    return subprocess.run(
        [vagrant, *args],
        cwd=harness.REPO / "vagrant",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_vagrantfile_validates(tmp_path: Path) -> None:
    plugins = _vagrant("plugin", "list", home=tmp_path)
    with_provider = "vagrant-libvirt" in plugins.stdout
    # Without the libvirt plugin, provider-specific settings cannot be checked.
    r = _vagrant("validate", *([] if with_provider else ["--ignore-provider"]), home=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Vagrantfile validated successfully" in r.stdout


def test_vagrant_provisioning_runs_the_harness_scenarios() -> None:
    # The harness's guest command is the Vagrant provisioning step itself.
    cmd = harness.guest_suite_command("main")
    assert "vagrant/provision.sh" in cmd and " scenarios " in cmd
    text = (harness.REPO / "vagrant" / "Vagrantfile").read_text()
    assert "provision.sh scenarios" in text
