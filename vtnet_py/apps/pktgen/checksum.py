"""One's-complement (RFC 1071) arithmetic on numpy batches, for IPv4, IPv6 and UDP sums.

Sums are kept unfolded in uint64 while they are built (a batch of partial sums adds
up without carries lost) and folded to 16 bits once at the end.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def fold(s: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Fold a one's-complement sum (below 2**48) to 16 bits."""
    for _ in range(3):
        s = (s & np.uint64(0xFFFF)) + (s >> np.uint64(16))
    return s


def words32(v: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Sum of the two 16-bit halves of 32-bit values."""
    return (v >> np.uint64(16)) + (v & np.uint64(0xFFFF))


def words_of(value: int, nbytes: int) -> int:
    """Sum of the big-endian 16-bit words of an ``nbytes``-byte integer (unfolded)."""
    return sum((value >> (16 * i)) & 0xFFFF for i in range(nbytes // 2))


def finish(total: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The UDP checksum field for unfolded sums: complement, and a computed zero sent
    as all ones (RFC 768 and RFC 8200: zero means "no checksum", which IPv6 forbids)."""
    out = np.uint64(0xFFFF) - fold(total)
    out[out == 0] = 0xFFFF
    return out
