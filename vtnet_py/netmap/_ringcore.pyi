"""Types of the compiled ring core (_ringcore.c)."""

from typing import Any

class Refused(Exception):
    """args: (reason, slot, buf_idx, detail) of a refused sync."""

class Core:
    hwcur: int
    tail: int
    inflight: int
    kernel_rx: int
    ts: float
    def __init__(self, **kwargs: Any) -> None: ...
    def txsync(self, head: Any, cur: Any, /) -> int: ...
    def rxsync(self, head: Any, cur: Any, flags: int = 0, /) -> int: ...
    def prologue(self, head: Any, cur: Any, /) -> None: ...
    def counters(self) -> tuple[int, int, int, int, int, int, int, int]: ...
    def waiting(self) -> int: ...
    def close(self) -> None: ...

def move(
    rx_core: Core, rx_head: int, tx_core: Core, tx_head: int, limit: int, zerocopy: bool, /
) -> tuple[int, int]: ...
def poll(
    tx_rings: tuple[Any, ...],
    rx_rings: tuple[Any, ...],
    push: bool,
    pull: bool,
    want: int,
    socket_fds: tuple[int, ...],
    timeout_ms: int,
    watch_fds: tuple[int, ...],
    busy: bool = False,
    /,
) -> tuple[int, int]: ...
