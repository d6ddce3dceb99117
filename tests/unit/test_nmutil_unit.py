"""Without the kernel: Buffer takes bytes-likes, and the queue holder names its pid."""

from __future__ import annotations

import os

import numpy as np

from vtnet_py.netmap.acquire import hold_queue, queue_holder
from vtnet_py.netmap.buffer import Buffer, as_buffer


def test_buffer_slices_take_bytes_likes_and_stay_views() -> None:
    backing = np.zeros((2, 16), np.uint8)
    b = as_buffer(backing[1])
    assert isinstance(b, Buffer) and isinstance(b[:4], Buffer)
    b[:3] = b"abc"
    b[3:5] = bytearray(b"de")
    b[5:7] = memoryview(b"fg")
    b[7:9] = np.array([1, 2], np.uint8)
    b[9] = 255
    assert bytes(backing[1, :10]) == b"abcdefg\x01\x02\xff"
    assert not backing[0].any()  # a view: only row 1 changed


def test_queue_holder_names_the_pid_while_held() -> None:
    ifindex, queue = 2_000_000_000 + os.getpid() % 1000, 7  # no real device has it
    assert queue_holder(ifindex, queue) == 0
    s = hold_queue(ifindex, queue)
    assert s is not None
    try:
        assert queue_holder(ifindex, queue) == os.getpid()
        assert hold_queue(ifindex, queue) is None  # held: a second holder is not made
    finally:
        s.close()
    assert queue_holder(ifindex, queue) == 0
