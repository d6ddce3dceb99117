"""Shared fixtures (helpers live in nettest.py so test modules can import them)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from nettest import VethPair, _why, make_veth_pair, remove_veth_pair


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


@pytest.fixture
def veth() -> Iterator[VethPair]:
    """A 2-queue veth pair between two fresh namespaces."""
    if _why:
        pytest.skip(_why)
    pair = make_veth_pair(queues=2)
    try:
        yield pair
    finally:
        remove_veth_pair(pair)


@pytest.fixture
def veth_factory() -> Iterator:
    """Make veth pairs with chosen queues/MTU; all removed at the end of the test."""
    if _why:
        pytest.skip(_why)
    made: list[VethPair] = []

    def make(queues: int = 2, mtu: int | None = None) -> VethPair:
        p = make_veth_pair(queues=queues, mtu=mtu)
        made.append(p)
        return p

    try:
        yield make
    finally:
        for p in made:
            remove_veth_pair(p)


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
