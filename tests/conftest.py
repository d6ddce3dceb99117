"""Shared fixtures and the kernel marker's meaning.

Test networks come from tests/netlab_plugin.py (registered here); helpers live in
nettest.py. Every folder's tests import both by name (pyproject puts tests/ on the path).
A test marked ``kernel`` is skipped, saying why, where root, AF_XDP or iproute2 is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from nettest import _why

pytest_plugins = ["netlab_plugin"]


def pytest_addoption(parser: pytest.Parser) -> None:
    # Declared here, not in tests/vm/conftest.py: pytest reads options before it loads
    # the conftests of subdirectories, so `pytest --vm-kernel ...` from the repository
    # root would be an unknown option there.
    parser.addoption(
        "--vm-kernel",
        action="append",
        default=[],
        metavar="PATH",
        help="VM suite: boot this guest vmlinuz-<release> (repeatable; 'defaults' = "
        "Debian's 6.1 and 6.12) instead of $VTNETMAP_VM_KERNEL or the two defaults",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _why and item.get_closest_marker("kernel") is not None:
        pytest.skip(_why)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests compile into their own cache dir so they prove the compile path works; the
    first test pays the bcc compile, the rest reuse it."""
    d = tmp_path_factory.mktemp("vtnetmap-cache")
    old = os.environ.get("VTNETMAP_CACHE_DIR")
    os.environ["VTNETMAP_CACHE_DIR"] = str(d)
    yield
    if old is None:
        os.environ.pop("VTNETMAP_CACHE_DIR", None)
    else:
        os.environ["VTNETMAP_CACHE_DIR"] = old
