"""NS_FORWARD, netmap's transparent mode: released RX slots that carry NS_FORWARD move
to TX rings by buffer swap (no copy), on a port whose NIC and host rings share a memory
(:func:`forward_slots`), or by copy into a host TX ring started on demand, on a port with
NIC rings only (:class:`StackForward`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vtnet_py.errors import VtnetError
from vtnet_py.netmap.ring import NS_BUF_CHANGED, NS_FORWARD, NS_MOREFRAG, Ring


def forward_slots(
    src: Ring, idx: np.ndarray, *, dsts: list[Ring], stats: dict[str, int], key: str
) -> None:
    """NS_FORWARD: move the released slots ``idx`` of ``src`` that carry NS_FORWARD into
    the TX rings ``dsts`` (first with room first) by swapping buffers, then sync those
    TX rings. Frames that find no room are dropped (their slots are released as usual)."""
    fl = src.slot["flags"]
    sel = idx[(fl[idx] & NS_FORWARD) != 0]
    if not sel.size:
        return
    bi = src.slot["buf_idx"]
    ln = src.slot["len"]
    done = 0
    for dst in dsts:
        left = sel.size - done
        if left <= 0:
            break
        room = (dst.tail - dst.head) % dst.num_slots
        k = min(room, left)
        if k <= 0:
            continue
        part = sel[done : done + k]
        if k < left and fl[part[-1]] & NS_MOREFRAG:
            # do not split a multi-slot frame: it would be sent without its end
            ends = np.flatnonzero((fl[part] & NS_MOREFRAG) == 0)
            k = int(ends[-1]) + 1 if ends.size else 0
            part = part[:k]
            if not k:
                continue
        ti = dst.slots_from_head(k)
        tmp = bi[part].copy()
        bi[part] = dst.slot["buf_idx"][ti]
        dst.slot["buf_idx"][ti] = tmp
        dst.slot["len"][ti] = ln[part]
        dst.slot["flags"][ti] = NS_BUF_CHANGED | (fl[part] & NS_MOREFRAG)
        fl[part] = NS_BUF_CHANGED
        dst.head = dst.cur = dst.next(dst.head, k)
        done += k
        dst.txsync()
    stats[key] += done
    stats["forward_dropped"] += int(sel.size) - done


class StackForward:
    """NS_FORWARD on a port without host rings (plain ``netmap:IF``): released RX slots
    marked NS_FORWARD, on rings whose ``flags`` has NR_FORWARD, go up IF's stack.

    netmap forwards such slots from any NIC port; here the host TX ring that carries them
    is started on demand, by the first rxsync that forwards anything: ``open_host`` opens
    ``netmap:IF^/T`` (the helper pair and its TC program: a fraction of a second). It
    has its own memory, so frames are copied (one numpy copy per batch), not swapped; the
    NIC port's slots are released as usual. Frames that find the host TX ring full are
    dropped and counted, as netmap does.
    """

    def __init__(self, name: str, open_host: Callable[[], Any], src_bufs: Callable[[], np.ndarray]):
        self.name = name
        self._open_host = open_host
        self._src_bufs = src_bufs
        self.host: Any = None  # the Port of IF^/T, once started
        self.stats = {"forwarded_to_host": 0, "forward_dropped": 0}

    def hook(self, src: Ring, idx: np.ndarray) -> None:
        fl = src.slot["flags"]
        sel = idx[(fl[idx] & NS_FORWARD) != 0]
        if not sel.size:
            return
        if self.host is None:
            try:
                self.host = self._open_host()
            except VtnetError as exc:
                raise type(exc)(f"{self.name}: NS_FORWARD to the host stack: {exc}") from exc
        dst: Ring = self.host.tx_rings[0]
        if (dst.tail - dst.head) % dst.num_slots < sel.size:
            dst.txsync()  # reclaim what the stack has taken since
        room = (dst.tail - dst.head) % dst.num_slots
        k = min(room, int(sel.size))
        part = sel[:k]
        if k < sel.size and k and fl[part[-1]] & NS_MOREFRAG:
            ends = np.flatnonzero((fl[part] & NS_MOREFRAG) == 0)
            k = int(ends[-1]) + 1 if ends.size else 0
            part = part[:k]
        if k:
            ti = dst.slots_from_head(k)
            lens = src.slot["len"][part]
            width = int(lens.max())
            dst_bufs = self.host.bufs
            dst_bufs[dst.slot["buf_idx"][ti], :width] = self._src_bufs()[
                src.slot["buf_idx"][part], :width
            ]
            dst.slot["len"][ti] = lens
            dst.slot["flags"][ti] = fl[part] & NS_MOREFRAG
            dst.head = dst.cur = dst.next(dst.head, k)
            dst.txsync()
        fl[sel] &= ~np.uint16(NS_FORWARD)
        self.stats["forwarded_to_host"] += k
        self.stats["forward_dropped"] += int(sel.size) - k

    def close(self) -> None:
        if self.host is not None:
            self.host.close()
            self.host = None


__all__ = ["StackForward", "forward_slots"]
