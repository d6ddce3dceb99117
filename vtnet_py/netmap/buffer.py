"""Buffer: a netmap buffer as a numpy uint8 array that also takes bytes-likes.

``port.buf(i)`` and ``ring.buf(i)`` (NETMAP_BUF) return one. numpy itself refuses
``a[:n] = b"..."`` on a uint8 array (it reads bytes as one scalar); a Buffer reads any
bytes-like (bytes, bytearray, memoryview) on the right of a slice assignment as its
bytes, so the natural idiom works. Everything else is numpy's: slices and views are
Buffers too, and it is the UMEM's memory, no copy. ``port.write(i, data)`` is the
explicit form; ``np.frombuffer(data, np.uint8)`` does the same for a plain array.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Buffer(np.ndarray):
    """A uint8 view of a netmap buffer; slice assignment accepts bytes-likes."""

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = np.frombuffer(memoryview(value).cast("B"), np.uint8)
        super().__setitem__(key, value)


def as_buffer(view: np.ndarray) -> Buffer:
    return view.view(Buffer)


__all__ = ["Buffer", "as_buffer"]
