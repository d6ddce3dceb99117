"""The compiled ring core against the reference model, without the kernel.

Two worlds, each a Memory with one RX and one TX ring on a FakeXsk: one with PyRing (the
numpy rules, checking every slot in full), one with CRing (the C core, checking only
slots whose buf_idx changed). Random operation sequences (syncs; valid and invalid
head/cur moves; RX<->TX swaps with or without NS_BUF_CHANGED; copied, out-of-range and
kernel-held buf_idx; bad len; NS_MOREFRAG chains; bridge's rings_move from RX to TX,
swapping or copying; one round of Port.poll, _ringcore.poll against poll_round;
NS_REPORT; vnet headers asking for offloads; the fake kernel delivering, dropping,
consuming and completing in or out of order; need_wakeup and transient kick errors) go
to both. After every step both worlds must agree on return values, errors (type,
message, slot, buf_idx, reason), ring indices, the whole slot table, every buffer's
owner and last slot, counters, what the fake kernel saw, and the UMEM invariant.
"""

from __future__ import annotations

import errno
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtnet_py._sys import abi as K
from vtnet_py.errors import InvariantError, RingError
from vtnet_py.netmap import _ringcore
from vtnet_py.netmap.fakexsk import fake_rings
from vtnet_py.netmap.move import rings_move
from vtnet_py.netmap.port import poll_round
from vtnet_py.netmap.ring import (
    NR_TIMESTAMP,
    NS_BUF_CHANGED,
    NS_MOREFRAG,
    NS_REPORT,
    CRing,
    PyRing,
    Ring,
)

RX_SLOTS = 8
TX_SLOTS = 6  # not a power of two: the netmap ring is smaller than its AF_XDP ring

idx = st.integers(0, 64)
OPS = st.one_of(
    st.tuples(st.just("txsync")),
    st.tuples(st.just("rxsync")),
    st.tuples(st.just("txsync")),
    st.tuples(st.just("rxsync")),
    st.tuples(st.just("deliver"), st.integers(1, 12), st.booleans()),
    st.tuples(st.just("complete"), st.integers(1, 8), st.sampled_from(["in", "reverse"])),
    st.tuples(st.just("fill_tx"), idx, st.integers(1, 1600)),
    st.tuples(st.just("release_rx"), idx),
    st.tuples(st.just("swap"), idx, idx, st.booleans()),
    st.tuples(st.just("fill_tx"), idx, st.integers(1, 1600)),
    st.tuples(st.just("release_rx"), idx),
    st.tuples(st.just("move"), st.sampled_from(["rx", "tx"]), st.integers(-2, 9), idx),
    st.tuples(st.just("cur_only"), st.sampled_from(["rx", "tx"]), idx),
    st.tuples(st.just("swap"), idx, idx, st.booleans()),
    st.tuples(st.just("swap_tx"), idx, idx, st.booleans()),
    st.tuples(st.just("copy"), st.sampled_from(["rx", "tx"]), idx, idx),
    st.tuples(st.just("copy_across"), idx, idx),
    st.tuples(st.just("bad_buf"), st.sampled_from(["rx", "tx"]), idx, st.integers(0, 40)),
    st.tuples(st.just("bad_len"), idx, st.sampled_from([0, 3841, 4000, 65535])),
    st.tuples(st.just("flags"), idx, st.sampled_from([NS_MOREFRAG, NS_REPORT, 0])),
    st.tuples(st.just("hdr_offload"), idx),
    st.tuples(st.just("deliver"), st.integers(1, 12), st.booleans()),
    st.tuples(st.just("consume"), st.integers(1, 8)),
    st.tuples(st.just("complete"), st.integers(1, 8), st.sampled_from(["in", "reverse"])),
    st.tuples(st.just("wakeup"), st.booleans()),
    st.tuples(st.just("kick_errno"), st.sampled_from([0, errno.EAGAIN, errno.EBUSY])),
    st.tuples(st.just("bridge_move"), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("bridge_cycle"), st.integers(1, 9), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("bridge_cycle"), st.integers(1, 9), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("timestamp"), st.booleans()),
    st.tuples(
        st.just("poll"), st.booleans(), st.booleans(), st.sampled_from([1, 4, 5]), st.booleans()
    ),
    st.tuples(st.just("poll"), st.just(True), st.just(True), st.just(1), st.booleans()),
)

CORRUPTING = ("copy", "copy_across", "bad_buf")

CONFIGS = {
    "plain": {},
    "frags": {"frags": True, "max_frags": 3},
    "vnet_hdr": {"vnet_hdr": 12},
}


class World:
    def __init__(self, cls: type[Ring], config: dict[str, Any]):
        self.mem, self.xsk, self.rx, self.tx = fake_rings(
            cls, RX_SLOTS, TX_SLOTS, auto_complete=False, tx_budget=4, **config
        )
        assert type(self.rx) is cls
        self.tx.slot["len"][:] = 60
        self.ring = {"rx": self.rx, "tx": self.tx}
        self.last_ts = {"rx": 0.0, "tx": 0.0}

    def user(self, kind: str, i: int) -> int | None:
        """The i-th (mod) slot of the user part [head, tail) of a ring, if any."""
        r = self.ring[kind]
        h, ns = r.head, r.num_slots
        if not (
            isinstance(h, int) and 0 <= h < ns and (h - r.hwcur) % ns <= (r.tail - r.hwcur) % ns
        ):
            return None  # head was moved out of bounds: the user part is unknown until a sync
        n = (r.tail - h) % ns
        return None if n == 0 else (h + i % n) % ns

    def advance(self, kind: str, *slots: int | None) -> None:
        """Release the user part up to and including ``slots`` (head = cur = past them)."""
        r = self.ring[kind]
        reach = [(x - r.head) % r.num_slots for x in slots if x is not None]
        if reach:
            r.head = r.cur = r.next(r.head, max(reach) + 1)

    def apply(self, op: tuple) -> Any:
        kind = op[0]
        rx, tx, xsk = self.rx, self.tx, self.xsk
        if kind == "poll":  # one round of Port.poll: in C (_ringcore.poll) in the CRing world
            push, pull, want, busy = op[1], op[2], op[3], op[4]  # busy: no sleep either way
            if type(rx) is CRing:
                got, woke = _ringcore.poll((tx,), (rx,), push, pull, want, (), 0, (), busy)
                assert woke == 0 and got >= 0, (got, woke)
                return got
            return poll_round((tx,), (rx,), push, pull, bool(want & 1), bool(want & 4))
        if kind == "txsync":
            return tx.txsync()
        if kind == "rxsync":
            return rx.rxsync()
        if kind == "fill_tx":
            k = op[1] % (tx.space() + 1)
            for j in range(k):
                s = (tx.cur + j) % tx.num_slots
                tx.slot["len"][s] = 60 + (op[2] + 37 * j) % 1400
                row = self.mem.umem.chunks[int(tx.slot["buf_idx"][s]) % self.mem.nbufs]
                row[K.XDP_PACKET_HEADROOM - 12 : K.XDP_PACKET_HEADROOM] = 0
            tx.head = tx.cur = tx.next(tx.cur, k)
            return k
        if kind == "release_rx":
            k = op[1] % (rx.space() + 1)
            rx.head = rx.cur = rx.next(rx.cur, k)
            return k
        if kind == "move":
            r = self.ring[op[1]]
            r.head = (r.hwcur + op[2]) % r.num_slots if op[2] >= 0 else op[2]
            r.cur = (r.head + op[3] % 3) % r.num_slots if op[2] >= 0 else r.head
            return None
        if kind == "bridge_cycle":  # what the bridge does: receive, move, send
            got = [self.run(("deliver", op[1], False)), self.run(("rxsync",))]
            got.append(self.run(("bridge_move", op[2], op[3])))
            return [*got, self.run(("txsync",)), self.run(("complete", 8, "in"))]
        if kind == "bridge_move":
            # bridge's rings_move from the RX ring to the TX ring: the C loop in the CRing
            # world, the numpy reference in the PyRing world
            bufs = self.mem.umem.chunks[:, self.mem.umem.chunk_size - rx.nr_buf_size :]
            try:
                return rings_move(rx, tx, op[1], op[2], bufs, bufs)
            except ValueError as exc:
                return "ValueError", str(exc)
        if kind == "cur_only":
            r = self.ring[op[1]]
            r.cur = op[2] % (r.num_slots + 2)
            return None
        if kind in ("swap", "swap_tx"):
            a = self.user("rx" if kind == "swap" else "tx", op[1])
            b = self.user("tx", op[2])
            if a is None or b is None:
                return None
            ra = rx if kind == "swap" else tx
            if ra is tx and a == b:
                return None
            ba, bb = int(ra.slot["buf_idx"][a]), int(tx.slot["buf_idx"][b])
            ra.slot["buf_idx"][a], tx.slot["buf_idx"][b] = bb, ba
            if op[3]:
                ra.slot["flags"][a] |= NS_BUF_CHANGED
                tx.slot["flags"][b] |= NS_BUF_CHANGED
            tx.slot["len"][b] = 60
            if ra is rx:
                self.advance("rx", a)
            self.advance("tx", a if ra is tx else None, b)
            return None
        if kind == "copy":
            r = self.ring[op[1]]
            a, b = self.user(op[1], op[2]), self.user(op[1], op[3])
            if a is not None and b is not None:
                r.slot["buf_idx"][a] = r.slot["buf_idx"][b]
                self.advance(op[1], a)
            return None
        if kind == "copy_across":
            a, b = self.user("tx", op[1]), self.user("rx", op[2])
            if a is not None and b is not None:
                tx.slot["buf_idx"][a] = rx.slot["buf_idx"][b]
                self.advance("tx", a)
            return None
        if kind == "bad_buf":
            a = self.user(op[1], op[2])
            if a is not None:
                # past the end, or one of the RX ring's kernel-held buffers
                val = self.mem.nbufs + op[3] if op[3] % 2 else op[3] % RX_SLOTS
                self.ring[op[1]].slot["buf_idx"][a] = val
                self.advance(op[1], a)
            return None
        if kind == "bad_len":
            a = self.user("tx", op[1])
            if a is not None:
                tx.slot["len"][a] = op[2]
                self.advance("tx", a)
            return None
        if kind == "flags":
            a = self.user("tx", op[1])
            if a is not None:
                tx.slot["flags"][a] = op[2]
                self.advance("tx", a)
            return None
        if kind == "hdr_offload":
            a = self.user("tx", op[1])
            if a is not None:
                b = int(tx.slot["buf_idx"][a])
                if b < self.mem.nbufs:
                    self.mem.umem.chunks[b, K.XDP_PACKET_HEADROOM - 12] = 1  # NEEDS_CSUM
                self.advance("tx", a)
            return None
        if kind == "deliver":
            frames = [bytes([j]) * (60 + 13 * j) for j in range(op[1])]
            contd = [op[2] and j % 3 == 0 for j in range(op[1])]
            return xsk.deliver(frames, contd)
        if kind == "consume":
            return xsk.consume(op[1])
        if kind == "complete":
            k = min(op[1], len(xsk.in_flight))
            order = list(range(k))[::-1] if op[2] == "reverse" else None
            return xsk.complete(k, order)
        if kind == "wakeup":
            xsk.set_need_wakeup(op[1])
            return None
        if kind == "kick_errno":
            xsk.kick_errno = op[1]
            return None
        if kind == "timestamp":  # NR_TIMESTAMP on both rings: only rxsync stamps (netmap.c)
            for r in (rx, tx):
                r.flags = (r.flags | NR_TIMESTAMP) if op[1] else (r.flags & ~NR_TIMESTAMP)
            return None
        raise AssertionError(kind)

    def run(self, op: tuple) -> tuple[str, Any]:
        try:
            return "ok", self.apply(op)
        except RingError as exc:
            return "RingError", (str(exc), exc.slot, exc.buf_idx, exc.reason)
        except InvariantError as exc:  # pragma: no cover - a failure of either model
            return "InvariantError", str(exc)

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind, r in self.ring.items():
            out[kind] = (int(r.head), int(r.cur), r.hwcur, r.tail, r.stats, r.waiting())
            out[kind + "_held"] = r.held()[1:]
            out[kind + "_space"] = (r.space(), r.empty())
            # the clocks differ: compare whether this step stamped the ring, and that a
            # stamp is the wall clock of now
            ts = r.ts
            out[kind + "_ts"] = (ts != self.last_ts[kind], ts == 0.0 or abs(ts - time.time()) < 5)
            self.last_ts[kind] = ts
        pool = self.mem.pool
        out["slots"] = pool.slots.tobytes()
        out["owner"] = pool.owner.tobytes()
        out["where"] = pool.where.tobytes()
        out["umem"] = self.mem.umem.chunks.tobytes()
        x = self.xsk
        out["kernel"] = (list(x.sent), list(x.in_flight), list(x.fill_held), x.dropped, x.kicks)
        out["wakeups"] = x.wakeups
        for name in ("fill", "comp", "rx", "tx"):
            kr = getattr(x, name)
            out[name] = (int(kr.producer[0]), int(kr.consumer[0]), kr.desc.tobytes())
        try:
            out["invariant"] = self.mem.check_invariant()
        except InvariantError as exc:  # the application's corruption not yet refused
            out["invariant"] = str(exc)
        return out


@pytest.mark.parametrize("config", list(CONFIGS))
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=st.lists(OPS, min_size=10, max_size=60))
def test_compiled_core_matches_the_reference_model(config: str, ops: list[tuple]) -> None:
    py = World(PyRing, CONFIGS[config])
    c = World(CRing, CONFIGS[config])
    assert py.state() == c.state()
    corrupted = False  # a slot holds a buf_idx that is not its own (until refused)
    for step, op in enumerate(ops):
        corrupted |= op[0] in CORRUPTING
        got_py, got_c = py.run(op), c.run(op)
        assert got_py == got_c, f"step {step} {op}: {got_py} != {got_c}"
        sp, sc = py.state(), c.state()
        for key in sp:
            assert sp[key] == sc[key], f"step {step} {op}: {key} differs"
        if not corrupted:
            assert isinstance(sc["invariant"], dict), f"step {step} {op}: {sc['invariant']}"


def test_the_default_ring_is_the_compiled_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, rx, tx = fake_rings(Ring, 4, 4)
    assert type(rx) is CRing and type(tx) is CRing
    monkeypatch.setenv("VTNETMAP_RINGCORE", "py")
    _, _, rx, tx = fake_rings(Ring, 4, 4)
    assert type(rx) is PyRing and type(tx) is PyRing


def test_a_slot_changed_without_ns_buf_changed_is_still_checked() -> None:
    """The C core checks a slot in full when its buf_idx differs from the one it last
    wrote, with or without NS_BUF_CHANGED: a copy without the flag is refused and
    repaired, as in the reference model."""
    for cls in (PyRing, CRing):
        mem, _, rx, tx = fake_rings(cls, 8, 6)
        tx.slot["len"][:] = 60
        own = int(tx.slot["buf_idx"][1])
        tx.slot["buf_idx"][1] = tx.slot["buf_idx"][4]  # no flag, slot 4 not in the batch
        tx.head = tx.cur = 2
        with pytest.raises(RingError, match="copied, not swapped") as exc:
            tx.txsync()
        assert (exc.value.slot, exc.value.reason) == (1, "copied")
        assert exc.value.buf_idx == int(tx.slot["buf_idx"][4])
        assert int(tx.slot["buf_idx"][1]) == own
        assert tx.head == tx.cur == tx.hwcur == 0
        mem.check_invariant()


def test_ring_error_fields_for_each_refusal() -> None:
    mem, _, rx, tx = fake_rings(CRing, 8, 6)
    tx.head = 7
    with pytest.raises(RingError) as exc:
        tx.txsync()
    assert (exc.value.reason, exc.value.slot, exc.value.buf_idx) == ("head_cur", None, None)
    tx.slot["len"][:] = 60
    tx.slot["len"][2] = 0
    tx.head = tx.cur = 3
    with pytest.raises(RingError, match="len 0 outside") as exc:
        tx.txsync()
    assert (exc.value.reason, exc.value.slot) == ("len", 2)
    tx.slot["len"][2] = 60
    tx.slot["buf_idx"][0] = 10**6
    tx.head = tx.cur = 3
    with pytest.raises(RingError, match="out of range") as exc:
        tx.txsync()
    assert (exc.value.reason, exc.value.slot, exc.value.buf_idx) == ("range", 0, 10**6)
    tx.slot["buf_idx"][0] = 0  # an RX buffer, with the kernel on the FILL ring
    tx.head = tx.cur = 3
    with pytest.raises(RingError, match="with the kernel for RX") as exc:
        tx.txsync()
    assert (exc.value.reason, exc.value.slot, exc.value.buf_idx) == ("owner", 0, 0)
    tx.slot["buf_idx"][0] = 8
    assert tx.txsync() == 0 and tx.hwcur == 0  # the reset ring sends nothing
    tx.head = tx.cur = 3
    assert tx.txsync() == 3
    mem.check_invariant()


def test_one_slot_echo_loop_on_the_compiled_core() -> None:
    """A one-slot echo loop on the compiled core: the buffer the kernel handed back is
    in the slot, so it goes out without a full check, and the invariant holds."""
    mem, xsk, rx, tx = fake_rings(CRing, 8, 6)
    tx.slot["len"][:] = 60
    for _ in range(50):
        tx.head = tx.cur = tx.next(tx.head)
        assert tx.txsync() == 1
        xsk.complete(1)
        tx.txsync()
    assert tx.stats["frames"] == 50 and len(xsk.sent) == 50
    mem.check_invariant()
    assert np.count_nonzero(mem.pool.owner == 1) == 6  # the TX slots; RX buffers on FILL


@pytest.mark.parametrize("cls", [PyRing, CRing])
def test_space_and_empty_count_from_head_not_cur(cls: type[Ring]) -> None:
    """nm_ring_space / nm_ring_empty: cur moved alone leaves the slots the application's."""
    _, xsk, rx, tx = fake_rings(cls, 8, 6)
    assert tx.space() == 5 and not tx.empty()
    tx.cur = tx.tail  # "wake me when there is more room": the slots stay the user's
    assert tx.space() == 5 and not tx.empty()
    xsk.deliver([b"x" * 60] * 3, [False] * 3)
    assert rx.rxsync() == 3
    rx.cur = rx.tail
    assert rx.space() == 3 and not rx.empty()
    rx.head = rx.tail
    assert rx.space() == 0 and rx.empty()


@pytest.mark.parametrize("cls", [PyRing, CRing])
def test_rxsync_stamps_ts_only_when_nr_timestamp_asks(cls: type[Ring]) -> None:
    """netmap.c's ring_timestamp_set: ring.ts is the wall clock of the last rxsync of a
    ring with NR_TIMESTAMP; txsync and rings without the flag leave it alone."""
    _, xsk, rx, tx = fake_rings(cls, 8, 6)
    assert rx.ts == 0.0 and tx.ts == 0.0
    rx.rxsync()
    assert rx.ts == 0.0
    rx.flags |= NR_TIMESTAMP
    tx.flags |= NR_TIMESTAMP
    t0 = time.time()
    rx.rxsync()  # nothing arrived: stamped all the same
    first = rx.ts
    assert t0 <= first <= time.time()
    time.sleep(0.01)
    xsk.deliver([b"y" * 60], [False])
    assert rx.rxsync() == 1
    assert rx.ts > first
    tx.txsync()
    assert tx.ts == 0.0
    rx.flags &= ~NR_TIMESTAMP
    stamped = rx.ts
    rx.rxsync()
    assert rx.ts == stamped


def test_a_buf_idx_written_back_after_its_buffer_moved_is_checked() -> None:
    """Found by the differential test: the bridge swaps a buffer out of an RX slot into
    a TX slot, a refused rxsync keeps the swap unreleased, and the application writes the
    slot's old buf_idx back. The value equals what the core last wrote there, but the
    buffer now sits in the TX ring: both models refuse it as copied."""
    ops = [
        ("deliver", 1, False),
        ("bridge_cycle", 3, 1, False),
        ("bridge_cycle", 3, 1, False),
        ("txsync",),
        ("bridge_cycle", 1, 5, True),
        ("txsync",),
        ("bad_buf", "rx", 0, 0),
        ("rxsync",),
        ("bridge_move", 3, False),
        ("bad_buf", "rx", 1, 6),
        ("rxsync",),
    ]
    py, c = World(PyRing, CONFIGS["plain"]), World(CRing, CONFIGS["plain"])
    for step, op in enumerate(ops):
        got_py, got_c = py.run(op), c.run(op)
        assert got_py == got_c, f"step {step} {op}: {got_py} != {got_c}"
    assert got_c[0] == "RingError" and got_c[1][3] == "copied", got_c
