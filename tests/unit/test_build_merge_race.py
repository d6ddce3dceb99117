"""The merged kernel-header tree is made by whichever process compiles first; two making
it at once (pkt-gen -p N on a cold cache) must both succeed.  No kernel needed."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from vtnet_py.ebpf import build


def make_sources(root: Path) -> list[Path]:
    a, b = root / "arch", root / "common"
    for base, names in ((a, ["x.h", "only-a.h"]), (b, ["x.h", "only-b.h"])):
        for sub in ("include/linux", "include/uapi", "arch/x86"):
            (base / sub).mkdir(parents=True)
            for n in names:
                (base / sub / n).write_text(f"{base.name} {n}\n")
    return [a, b]


def test_a_link_made_meanwhile_by_another_process_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = make_sources(tmp_path)
    dst = tmp_path / "merged"
    build._merge_tree(dst, sources)
    # the other process made every link between our check and our symlink() call
    monkeypatch.setattr(Path, "is_symlink", lambda self: False)
    monkeypatch.setattr(Path, "exists", lambda self: False)
    build._merge_tree(dst, sources)
    monkeypatch.undo()
    assert (dst / "include/linux/x.h").read_text() == "arch x.h\n"
    assert (dst / "include/linux/only-b.h").read_text() == "common only-b.h\n"


def _merge(dst: str, sources: list[str]) -> None:
    build._merge_tree(Path(dst), [Path(s) for s in sources])


def test_processes_merging_at_once_all_succeed(tmp_path: Path) -> None:
    sources = make_sources(tmp_path)
    for round_ in range(5):
        dst = tmp_path / f"merged{round_}"
        ctx = mp.get_context("fork")
        procs = [
            ctx.Process(target=_merge, args=(str(dst), [str(s) for s in sources])) for _ in range(4)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
        assert (dst / "arch/x86/only-a.h").read_text() == "arch only-a.h\n"
