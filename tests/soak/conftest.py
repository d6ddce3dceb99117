"""The soak tests: the long one runs only with ``--soak`` (when tests/soak is on the command
line) or ``VTNETMAP_SOAK=1``; its short version is part of the default run.

    cd /work/main && VTNETMAP_SOAK=1 .venv/bin/python -m pytest tests/soak -q -s
    cd /work/main && .venv/bin/python -m pytest tests/soak --soak -q -s
    VTNETMAP_SOAK_SECONDS=600 ...   (default 300)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    try:
        parser.addoption(
            "--soak",
            action="store_true",
            default=False,
            help="run the long soak tests in tests/soak (also VTNETMAP_SOAK=1)",
        )
    except ValueError:  # registered already
        pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak", default=False) or os.environ.get("VTNETMAP_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="long soak: run with --soak or VTNETMAP_SOAK=1")
    for item in items:
        if "slow" in item.keywords and HERE in Path(str(item.fspath)).parents:
            item.add_marker(skip)
