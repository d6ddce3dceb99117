"""netmap_user.h's convenience helpers: ``nm_inject``, ``nm_nextpkt``, ``nm_dispatch``.

netmap tools (pkt-gen's ping mode, tcpdump's netmap capture, small filters) use these to
send or read one frame at a time; they are ported here with netmap's semantics:

* none of them syncs: ``nm_inject`` fills the slot at ``cur`` of the first TX ring with
  room (from the ring after the last one used, round robin) and advances ``head`` and
  ``cur``; the next ``txsync``/``poll`` sends it. ``nm_nextpkt`` and ``nm_dispatch``
  consume what the last ``rxsync``/``poll`` put between ``cur`` and ``tail`` of the RX
  rings (round robin from the last ring used) and advance ``head`` = ``cur`` past it;
  the next ``rxsync`` gives those buffers back to the kernel.
* they keep netmap's per-descriptor ring cursors on the port (``cur_tx_ring``,
  ``cur_rx_ring``, as nm_desc has).

They are a per-packet loop in Python by nature (a few microseconds a frame): the fast
path is the batch API (``slots_from_head``, ``port.bufs``, one head/cur move per batch),
as it is in netmap, where pkt-gen's bulk modes never call these either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np

from vtnet_py.netmap.ring import NS_MOREFRAG, Ring


class PortLike(Protocol):
    """What these helpers use of a :class:`~vtnet_py.netmap.port.Port` (which calls
    them from its methods, so this module cannot import it)."""

    name: str
    tx_rings: list[Ring]
    rx_rings: list[Ring]
    cur_tx_ring: int  # nm_desc's cursors
    cur_rx_ring: int


NM_MORE_PKTS = 1  # nm_pkthdr.flags: nm_dispatch has more frames for this call


class PktHdr(NamedTuple):
    """nm_pkthdr: what nm_nextpkt / nm_dispatch say about a frame."""

    len: int  # bytes of the frame (all fragments of an NS_MOREFRAG chain, in nm_dispatch)
    caplen: int  # == len: the whole frame is always there
    ts: object  # the ring's timestamp at the last sync (``ring.ts``; None if it keeps none)
    flags: int  # NM_MORE_PKTS while nm_dispatch has more frames for this call
    ring: int  # ring_id of the RX ring it came from
    slot: int  # its (first) slot
    buf_idx: int  # its (first) buffer


def _as_u8(data: object) -> np.ndarray:
    """A bytes-like (bytes, bytearray, memoryview, uint8 array, ...) as a flat uint8
    array, without a copy."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data).cast("B"), np.uint8)  # type: ignore[arg-type]


def nm_inject(port_or_ring: PortLike | Ring, data: object) -> int:
    """Put one frame (any bytes-like) in the first TX ring with room, at ``cur``, and
    advance ``head`` = ``cur`` past it. No sync: the next txsync or poll sends it.
    Returns len(data), or 0 when no TX ring has room (netmap's nm_inject). A frame
    longer than a buffer spans NS_MOREFRAG slots on a port opened with frags, and is
    refused with ValueError (naming the ring) on one without."""
    frame = _as_u8(data)
    size = int(frame.size)
    if isinstance(port_or_ring, Ring):
        rings, port = [port_or_ring], None
        if not port_or_ring.is_tx:
            r = port_or_ring
            raise ValueError(f"{r.port_name} RX ring {r.ring_id}: nm_inject needs a TX ring")
        start = 0
    else:
        port = port_or_ring
        rings = port.tx_rings
        if not rings:
            raise ValueError(f"{port.name}: nm_inject: the port has no TX ring")
        start = port.cur_tx_ring % len(rings)
    for k in range(len(rings)):
        ri = (start + k) % len(rings)
        ring = rings[ri]
        nbuf = ring.nr_buf_size
        need = max(1, -(-size // nbuf))
        if need > 1 and not ring._frags:
            raise ValueError(
                f"{ring._what}: a frame of {size} bytes does not fit one {nbuf}-byte "
                f"buffer; open the port with frags=True"
            )
        if ring.space() < need:
            continue
        j = ring.cur
        for f in range(need):
            chunk = frame[f * nbuf : (f + 1) * nbuf]
            ring.buf(int(ring.slot["buf_idx"][j]))[: chunk.size] = chunk
            ring.slot["len"][j] = chunk.size
            last = f == need - 1
            fl = int(ring.slot["flags"][j]) & ~NS_MOREFRAG
            ring.slot["flags"][j] = fl if last else fl | NS_MOREFRAG
            j = ring.next(j)
        ring.head = ring.cur = j
        if port is not None:
            port.cur_tx_ring = ri
        return size
    return 0


def _next_ready(port: PortLike) -> tuple[int, Ring] | None:
    """The first RX ring with a frame between cur and tail, round robin from the port's
    cur_rx_ring (nm_nextpkt's scan)."""
    rings = port.rx_rings
    n = len(rings)
    for k in range(n):
        ri = (port.cur_rx_ring + k) % n
        if rings[ri].cur != rings[ri].tail:
            return ri, rings[ri]
    return None


def nm_nextpkt(port: PortLike) -> tuple[PktHdr, bytes] | None:
    """The next received frame as (header, a copy of its bytes), or None when every RX
    ring is empty between cur and tail; advances that ring's head = cur past its slot.
    As netmap's nm_nextpkt, one slot at a time: a multi-buffer frame comes as several,
    NS_MOREFRAG on all but the last (``port.rx_rings[hdr.ring].slot["flags"]``). No sync:
    call ``port.poll()`` or ``port.rxsync()`` when it returns None."""
    found = _next_ready(port)
    if found is None:
        return None
    ri, ring = found
    i = ring.cur
    bi, ln = int(ring.slot["buf_idx"][i]), int(ring.slot["len"][i])
    data = ring.buf(bi)[:ln].tobytes()
    ring.head = ring.cur = ring.next(i)
    port.cur_rx_ring = ri
    hdr = PktHdr(ln, ln, getattr(ring, "ts", None), 0, ring.ring_id, i, bi)
    return hdr, data


def nm_dispatch(port: PortLike, cnt: int, callback: Callable[[PktHdr, memoryview], object]) -> int:
    """Call ``callback(hdr, data)`` for up to ``cnt`` received frames (``cnt`` <= 0: all
    that are between cur and tail), ring after ring from the port's cur_rx_ring, then
    advance each ring's head = cur past them; returns how many. ``data`` is the frame
    in its buffer, without a copy, valid during the call only (``bytes(data)`` keeps
    it); an NS_MOREFRAG chain comes as one frame (its fragments joined). As in netmap,
    ``hdr.flags`` has NM_MORE_PKTS while more frames follow in this call. No sync."""
    got = 0
    rings = port.rx_rings
    n = len(rings)
    pending: tuple[PktHdr, memoryview] | None = None
    start = port.cur_rx_ring % n if n else 0
    for k in range(n):
        if cnt > 0 and got >= cnt:
            break
        ri = (start + k) % n
        ring = rings[ri]
        while ring.cur != ring.tail and not (cnt > 0 and got >= cnt):
            if pending is not None:
                callback(*pending)
            i = ring.cur
            bi = int(ring.slot["buf_idx"][i])
            ln = int(ring.slot["len"][i])
            view = memoryview(ring.buf(bi)[:ln])  # type: ignore[arg-type]
            j = ring.next(i)
            if int(ring.slot["flags"][i]) & NS_MOREFRAG:
                parts = [view.tobytes()]
                k2 = i
                while int(ring.slot["flags"][k2]) & NS_MOREFRAG and j != ring.tail:
                    k2 = j
                    b2, l2 = int(ring.slot["buf_idx"][k2]), int(ring.slot["len"][k2])
                    parts.append(ring.buf(b2)[:l2].tobytes())
                    j = ring.next(k2)
                view = memoryview(b"".join(parts))
                ln = view.nbytes
            port.cur_rx_ring = ri
            pending = (
                PktHdr(ln, ln, getattr(ring, "ts", None), NM_MORE_PKTS, ring.ring_id, i, bi),
                view,
            )
            ring.head = ring.cur = j
            got += 1
    if pending is not None:
        callback(pending[0]._replace(flags=0), pending[1])
    return got


__all__ = ["NM_MORE_PKTS", "PktHdr", "nm_dispatch", "nm_inject", "nm_nextpkt"]
