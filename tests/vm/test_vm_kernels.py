"""Which guest kernels the VM suite boots (harness.selected_kernels) and how a kernel
image's release and modules are found; no VM is booted here."""

from __future__ import annotations

import os
from pathlib import Path

import harness
import pytest


def _image(root: Path, release: str, modules: bool = True) -> Path:
    """An unpacked kernel package: boot/vmlinuz-<release> and lib/modules/<release>."""
    img = root / "boot" / f"vmlinuz-{release}"
    img.parent.mkdir(parents=True)
    img.write_bytes(b"not a kernel")
    if modules:
        (root / "lib" / "modules" / release).mkdir(parents=True)
    return img


def test_release_and_modules_from_an_unpacked_package(tmp_path: Path) -> None:
    img = _image(tmp_path / "pkg", "6.14.1-test-amd64")
    k = harness.Kernel.from_image(img)
    assert k.release == k.label == "6.14.1-test-amd64"
    assert k.moddir == tmp_path / "pkg" / "lib" / "modules" / "6.14.1-test-amd64"
    # the guest links that tree only where /lib/modules/<release> is missing
    assert str(k.moddir) in harness._modules_sh(k)
    bare = harness.Kernel.from_image(_image(tmp_path / "bare", "6.15.0-x", modules=False))
    assert bare.moddir is None and harness._modules_sh(bare) == ""


def test_bad_images_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(harness.HarnessError, match="no such file"):
        harness.Kernel.from_image(tmp_path / "vmlinuz-6.0")
    (tmp_path / "vmlinuz").write_bytes(b"x")
    with pytest.raises(harness.HarnessError, match="vmlinuz-<release>"):
        harness.Kernel.from_image(tmp_path / "vmlinuz")


def test_selection_order_option_then_environment_then_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _image(tmp_path / "a", "6.13.0-a")
    b = _image(tmp_path / "b", "6.14.0-b")
    d61 = _image(tmp_path / "d61", "6.1.0-99-amd64")
    d612 = _image(tmp_path / "d612", "6.12.99+deb12-amd64")
    monkeypatch.setattr(harness, "find_kernel", lambda: d61)
    monkeypatch.setattr(harness, "find_kernel_612", lambda: d612)
    monkeypatch.delenv(harness.KERNEL_ENV, raising=False)

    def releases(given: tuple[str, ...] = ()) -> list[str]:
        return [k.release for k in harness.selected_kernels(given)]

    assert releases() == ["6.1.0-99-amd64", "6.12.99+deb12-amd64"]
    monkeypatch.setenv(harness.KERNEL_ENV, f"{a}{os.pathsep}defaults")
    assert releases() == ["6.13.0-a", "6.1.0-99-amd64", "6.12.99+deb12-amd64"]
    # the option wins over the environment; a kernel given twice boots once
    assert releases((str(b), str(b))) == ["6.14.0-b"]


def test_newest_unpacked_612_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "KERNELS_DIR", tmp_path)
    with pytest.raises(harness.HarnessError, match="setup_vm.sh"):
        harness.find_kernel_612()
    for rel in ("6.12.9+deb12-amd64", "6.12.118+deb12-amd64", "6.12.107+deb12-amd64"):
        _image(tmp_path / rel, rel)
    assert harness.find_kernel_612().name == "vmlinuz-6.12.118+deb12-amd64"
