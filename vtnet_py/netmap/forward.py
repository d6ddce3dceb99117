"""NS_FORWARD, netmap's transparent mode: released RX slots that carry NS_FORWARD move
to TX rings by buffer swap (no copy), on a port whose NIC and host rings share a memory."""

from __future__ import annotations

import numpy as np

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


__all__ = ["forward_slots"]
