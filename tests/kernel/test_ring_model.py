"""Random netmap ring operations against a real port, checked against a model of netmap's
ring rules (hypothesis stateful test).

One port with small rings (8 RX slots, 6 TX slots: not a power of two, so the netmap ring
is smaller than its AF_XDP ring) on one end of a veth pair; the other end sends frames to
it and counts, with a raw socket, what the port transmits. Rules move head/cur (validly
and not), sync, poll, fill TX slots, swap buffers between user-owned slots (RX<->TX too),
echo received frames by buffer swap, and corrupt slots. After every step the ring indices
must equal the model's and the UMEM invariant must hold. The model is netmap(4)'s:

- a ring's user part is ``[head, tail)``; head may be set anywhere in ``[hwcur, tail]``
  and cur anywhere in ``[head, tail]``; anything else is refused (RingError) and the ring
  reset to head = cur = hwcur with nothing sent or released, as netmap_ring_reinit does;
- rxsync releases ``[hwcur, head)`` (hwcur := head) and appends new frames at tail, never
  more than leave one slot empty (tail stops at head - 1); the new frames are the peer's,
  in order, byte-exact; a frame that found no buffer is one the kernel counts as dropped;
- txsync submits ``[hwcur, head)`` (hwcur := head) and moves tail forward over completed
  slots only, never past hwcur - 1 (the TX hole); a bad slot (buf_idx out of range, not
  the user's or twice in the batch, len 0 or over nr_buf_size, NS_MOREFRAG on a port
  without multi-buffer) refuses the whole batch;
- the buffer travels with buf_idx: after a swap, a slot's frame is the other slot's;
- in the end, frames the peer saw == frames submitted (same bytes, same order), and
  frames received == frames the peer sent - drops counted by the kernel.

The veth pair is made once per hypothesis run by the fixture and removed even on failure;
each example opens and closes its own port and peer socket.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from nettest import VethPair

from vtnet_py import NS_BUF_CHANGED, NS_MOREFRAG, RingError, open_port

pytestmark = pytest.mark.kernel

RX_SLOTS = 8
TX_SLOTS = 6
ETHERTYPE = b"\x88\xb5"
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
TO_A, FROM_A = 1, 2  # direction byte in our frames
_runs = itertools.count()


def dist(a: int, b: int, n: int) -> int:
    """Slots from a forward to b on a ring of n."""
    return (b - a) % n


def between(a: int, b: int, n: int) -> list[int]:
    """Slot indices a, a+1, ... up to but excluding b (mod n)."""
    return [(a + i) % n for i in range(dist(a, b, n))]


def make_frame(dst: bytes, src: bytes, tag: bytes, direction: int, seq: int) -> bytes:
    size = 60 + (seq * 131 + direction * 17) % 1455
    head = dst + src + ETHERTYPE + tag + bytes([direction]) + seq.to_bytes(4, "big")
    return head + bytes((seq * 3 + direction + i) & 0xFF for i in range(size - len(head)))


def machine_for(pair: VethPair) -> type[RuleBasedStateMachine]:
    mac_a, mac_b = pair.mac("a"), pair.mac("b")
    name = f"netmap:{pair.a}-0@conf:rx-slots={RX_SLOTS},tx-slots={TX_SLOTS}"

    class RingMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.tag = (((os.getpid() << 12) + next(_runs)) & 0xFFFFFFFF).to_bytes(4, "big")
            self.peer = pair.raw_socket("b")
            self.peer.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
            self.peer.setblocking(False)
            try:
                self.port = open_port(name, netns=pair.ns_a)
            except BaseException:
                self.peer.close()
                raise
            self.rx = self.port.rx_rings[0]
            self.tx = self.port.tx_rings[0]
            assert (self.rx.num_slots, self.tx.num_slots) == (RX_SLOTS, TX_SLOTS)
            self.ring = {"rx": self.rx, "tx": self.tx}
            self.m = {
                "rx": {"head": 0, "cur": 0, "hwcur": 0, "tail": 0},
                "tx": {"head": 0, "cur": 0, "hwcur": 0, "tail": TX_SLOTS - 1},
            }
            # the frame each slot's buffer holds, as far as the model knows (None: junk)
            self.content: dict[str, list[bytes | None]] = {
                "rx": [None] * RX_SLOTS,
                "tx": [None] * TX_SLOTS,
            }
            self.peer_sent: list[bytes] = []  # b -> a, index = seq
            self.rx_next = 0  # lowest seq rxsync may still deliver
            self.rx_seen = 0
            self.tx_seq = 0
            self.tx_expected: list[bytes] = []  # a -> b, handed to the kernel, in order
            self.peer_got: list[bytes] = []

        # --- helpers ----------------------------------------------------------------
        def _set(self, kind: str, head: int, cur: int) -> None:
            self.ring[kind].head, self.ring[kind].cur = head, cur
            self.m[kind]["head"], self.m[kind]["cur"] = head, cur

        def _user(self, kind: str) -> list[int]:
            m, n = self.m[kind], self.ring[kind].num_slots
            return between(m["head"], m["tail"], n)

        def _released(self, kind: str) -> list[int]:
            m, n = self.m[kind], self.ring[kind].num_slots
            return between(m["hwcur"], m["head"], n)

        def _kernel_bufs(self) -> list[int]:
            """buf_idx values the user does not hold (with the kernel, FILL/RX/TX)."""
            rx, tx, mr, mt = self.rx, self.tx, self.m["rx"], self.m["tx"]
            held = set(rx.slot["buf_idx"][between(mr["hwcur"], mr["tail"], RX_SLOTS)].tolist())
            tx_held = between(mt["hwcur"], mt["tail"], TX_SLOTS) + [mt["tail"]]
            held |= set(tx.slot["buf_idx"][tx_held].tolist())
            assert self.port.memory is not None
            return sorted(set(range(self.port.memory.nbufs)) - held)

        def _tx_before(self) -> list[bytes]:
            """Frames the next txsync must hand over: slots [hwcur, head), whose buffers
            must still hold what the model says (the buffer follows buf_idx)."""
            out = []
            for s in self._released("tx"):
                want = self.content["tx"][s]
                assert want is not None, f"TX slot {s} submitted without a frame"
                bi, ln = int(self.tx.slot["buf_idx"][s]), int(self.tx.slot["len"][s])
                assert bytes(self.port.buf(bi)[:ln]) == want, f"TX slot {s} buffer {bi}"
                out.append(want)
            return out

        def _tx_after(self, expected: list[bytes], sent: int | None = None) -> None:
            t, m = self.tx, self.m["tx"]
            n = t.num_slots
            assert (t.head, t.cur) == (m["head"], m["cur"])
            assert t.hwcur == m["head"], "txsync must submit all of [hwcur, head)"
            if sent is not None:
                assert sent == len(expected)
            in_flight = dist(m["tail"], m["hwcur"], n) - 1 + len(expected)
            assert dist(m["tail"], t.tail, n) <= in_flight, "tail passed hwcur - 1"
            for s in self._released("tx"):
                self.content["tx"][s] = None  # with the kernel; order may change on return
            m["hwcur"] = m["head"]
            m["tail"] = t.tail
            self.tx_expected += expected

        def _rx_after(self) -> int:
            r, m = self.rx, self.m["rx"]
            n = r.num_slots
            assert (r.head, r.cur) == (m["head"], m["cur"])
            assert r.hwcur == m["head"], "rxsync must release all of [hwcur, head)"
            got = dist(m["tail"], r.tail, n)
            room = n - 1 - dist(m["head"], m["tail"], n)
            assert got <= room, f"{got} new frames, room for {room}: tail passed head - 1"
            new = between(m["tail"], r.tail, n)
            for s in new:
                bi, ln, fl = (int(r.slot[f][s]) for f in ("buf_idx", "len", "flags"))
                data = bytes(self.port.buf(bi)[:ln])
                assert fl == 0, f"RX slot {s} flags {fl:#x}"
                assert data[14:18] == self.tag and data[18] == TO_A, data[:24].hex()
                seq = int.from_bytes(data[19:23], "big")
                assert self.rx_next <= seq < len(self.peer_sent), (seq, self.rx_next)
                assert data == self.peer_sent[seq]
                self.rx_next = seq + 1
                self.rx_seen += 1
                self.content["rx"][s] = data
            m["hwcur"] = m["head"]
            m["tail"] = r.tail
            return got

        def _read_peer(self, want: int, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    data, addr = self.peer.recvfrom(65536)
                except BlockingIOError:
                    if len(self.peer_got) >= want or time.monotonic() > deadline:
                        return
                    time.sleep(0.002)
                    continue
                if (
                    addr[2] != PACKET_OUTGOING
                    and data[12:14] == ETHERTYPE
                    and data[14:18] == self.tag
                ):
                    self.peer_got.append(data)

        def _drops(self) -> int:
            k = next(d for d in self.port.stats()["rings"] if d["kind"] == "rx")["kernel"]
            return int(k["rx_dropped"]) + int(k["rx_ring_full"])

        def _account(self) -> None:
            """Let every transmission complete and every frame arrive, then compare."""
            deadline = time.monotonic() + 3.0
            while True:
                exp = self._tx_before()
                self._tx_after(exp, self.port.txsync())
                if not self.tx.tx_pending():
                    break
                assert time.monotonic() < deadline, "TX completions never came back"
                time.sleep(0.002)
            self._read_peer(len(self.tx_expected), 2.0)
            time.sleep(0.01)
            self._read_peer(0, 0.0)  # anything extra would be a frame sent twice
            assert len(self.peer_got) == len(self.tx_expected)
            assert self.peer_got == self.tx_expected
            quiet = 0
            while quiet < 3:
                self._set("rx", self.m["rx"]["tail"], self.m["rx"]["tail"])
                self.port.rxsync()
                if self._rx_after():
                    quiet = 0
                else:
                    quiet += 1
                    time.sleep(0.005)
            assert self.rx_seen + self._drops() == len(self.peer_sent), (
                self.rx_seen,
                self._drops(),
                len(self.peer_sent),
            )

        # --- actions, composed by the rules below -------------------------------------
        def _release_rx(self, data: st.DataObject) -> bool:
            """Give back 1.. of the user's RX frames: head forward, cur in [head, tail]."""
            m, n = self.m["rx"], RX_SLOTS
            if m["head"] == m["tail"]:
                return False
            k = data.draw(st.integers(1, dist(m["head"], m["tail"], n)), label="k")
            head = (m["head"] + k) % n
            cur = (head + data.draw(st.integers(0, dist(head, m["tail"], n)), label="c")) % n
            self._set("rx", head, cur)
            return True

        def _fill_tx(self, data: st.DataObject) -> bool:
            """Put frames in 1.. of the user's TX slots and advance head past them."""
            m, t, n = self.m["tx"], self.tx, TX_SLOTS
            if m["head"] == m["tail"]:
                return False
            k = data.draw(st.integers(1, dist(m["head"], m["tail"], n)), label="k")
            for s in between(m["head"], (m["head"] + k) % n, n):
                have = self.content["tx"][s]
                if have is None:  # keep a frame already there (swapped in or held back)
                    f = make_frame(mac_b, mac_a, self.tag, FROM_A, self.tx_seq)
                    self.tx_seq += 1
                    self.port.buf(int(t.slot["buf_idx"][s]))[: len(f)] = np.frombuffer(f, np.uint8)
                    t.slot["len"][s] = len(f)
                    self.content["tx"][s] = f
                else:
                    assert int(t.slot["len"][s]) == len(have)
            head = (m["head"] + k) % n
            cur = (head + data.draw(st.integers(0, dist(head, m["tail"], n)), label="c")) % n
            self._set("tx", head, cur)
            return True

        def _back_or_cur(self, kind: str, data: st.DataObject) -> None:
            """Valid moves that are not advances: head back to any slot not yet synced
            (netmap checks head against the last head it saw), cur anywhere in [head,
            tail]."""
            m, n = self.m[kind], self.ring[kind].num_slots
            head = (
                m["hwcur"] + data.draw(st.integers(0, dist(m["hwcur"], m["head"], n)), label="h")
            ) % n
            cur = (head + data.draw(st.integers(0, dist(head, m["tail"], n)), label="c")) % n
            self._set(kind, head, cur)

        def _corrupt_tx(self, data: st.DataObject, via: str) -> None:
            t, m = self.tx, self.m["tx"]
            pend = self._released("tx")
            kinds = ["range", "kernel", "len0", "len_big"]
            if len(pend) >= 2:
                kinds += ["dup", "morefrag"]
            what = data.draw(st.sampled_from(kinds), label="what")
            # NS_MOREFRAG on the batch's last slot would be an unfinished chain, held
            s = data.draw(st.sampled_from(pend[:-1] if what == "morefrag" else pend), label="slot")
            saved = t.slot[s].copy()
            nbufs = self.port.memory.nbufs  # type: ignore[union-attr]
            if what == "range":
                t.slot["buf_idx"][s] = data.draw(
                    st.sampled_from([nbufs, nbufs + 7, 0xFFFFFFFF]), label="bi"
                )
            elif what == "kernel":
                t.slot["buf_idx"][s] = data.draw(st.sampled_from(self._kernel_bufs()), label="bi")
            elif what == "dup":
                other = data.draw(st.sampled_from([p for p in pend if p != s]), label="o")
                t.slot["buf_idx"][s] = t.slot["buf_idx"][other]
            elif what == "len0":
                t.slot["len"][s] = 0
            elif what == "len_big":
                t.slot["len"][s] = data.draw(
                    st.sampled_from([t.nr_buf_size + 1, 65535]), label="len"
                )
            else:
                t.slot["flags"][s] |= NS_MOREFRAG
            tail = m["tail"]
            with pytest.raises(RingError):
                if via == "sync":
                    self.port.txsync()
                else:
                    self.port.poll(rx=False, tx=True, timeout=0)
            assert t.head == t.cur == t.hwcur == m["hwcur"]
            assert t.tail == tail
            m["head"] = m["cur"] = m["hwcur"]  # the batch is the user's again, unsent
            t.slot[s] = saved

        def _corrupt_rx(self, data: st.DataObject) -> None:
            """A released RX slot with a buffer the user does not own: refused like a bad
            TX batch (netmap_ring_reinit: head = cur = hwcur), nothing given to the kernel."""
            r, m = self.rx, self.m["rx"]
            rel = self._released("rx")
            kinds = ["range", "kernel"] + (["dup"] if len(rel) >= 2 else [])
            what = data.draw(st.sampled_from(kinds), label="what")
            s = data.draw(st.sampled_from(rel), label="slot")
            saved = r.slot[s].copy()
            nbufs = self.port.memory.nbufs  # type: ignore[union-attr]
            if what == "range":
                r.slot["buf_idx"][s] = nbufs + 1
            elif what == "kernel":
                r.slot["buf_idx"][s] = data.draw(st.sampled_from(self._kernel_bufs()), label="bi")
            else:
                other = data.draw(st.sampled_from([p for p in rel if p != s]), label="o")
                r.slot["buf_idx"][s] = r.slot["buf_idx"][other]
            tail = m["tail"]
            with pytest.raises(RingError):
                self.port.rxsync()
            r.slot[s] = saved
            self.port.check_invariant()  # nothing moved
            assert r.hwcur == m["hwcur"] and r.tail == tail
            assert r.head == r.cur == m["hwcur"], "ring not reset after a refused rxsync"
            m["head"] = m["cur"] = m["hwcur"]

        # --- rules ------------------------------------------------------------------------
        # Few rules with sub-choices rather than many with preconditions: hypothesis
        # picks among valid rules unevenly, and a rule that needs a rare state (released
        # but unsynced RX slots) would seldom run. Each rule reaches its state itself.
        @initialize(k=st.integers(0, RX_SLOTS + 2))
        def start_with_traffic(self, k: int) -> None:
            """Begin with a burst (up to more than the ring holds) and an rxsync."""
            if k:
                self.peer_sends(k)
            self.port.rxsync()
            self._rx_after()

        @rule(k=st.integers(1, RX_SLOTS + 2))
        def peer_sends(self, k: int) -> None:
            first = len(self.peer_sent)
            frames = [make_frame(mac_a, mac_b, self.tag, TO_A, first + i) for i in range(k)]
            pair.send_on_queue(frames, 0)
            self.peer_sent += frames

        @rule(kind=st.sampled_from(["rx", "tx"]), advance=st.booleans(), data=st.data())
        def move(self, kind: str, advance: bool, data: st.DataObject) -> None:
            """Advance head over the user's slots (RX: release frames; TX: fill slots with
            frames), or move head back / cur, all within the rules."""
            if advance and (self._release_rx(data) if kind == "rx" else self._fill_tx(data)):
                return
            self._back_or_cur(kind, data)

        @rule(via=st.sampled_from(["txsync", "poll"]), data=st.data())
        def transmit(self, via: str, data: st.DataObject) -> None:
            """Fill TX slots and push them at once (the common case)."""
            if not self._fill_tx(data):
                return
            exp = self._tx_before()
            if via == "txsync":
                self._tx_after(exp, self.port.txsync())
            else:
                self.port.poll(rx=False, tx=True, timeout=0)
                self._tx_after(exp)

        @rule(data=st.data())
        def echo(self, data: st.DataObject) -> None:
            """Zero-copy echo: swap received frames' buffers into TX slots, send them,
            release the RX slots (which now hold the TX ring's old buffers)."""
            r, t, mr, mt = self.rx, self.tx, self.m["rx"], self.m["tx"]
            most = 0  # frames only: a slot given a junk buffer by `swap` is not one
            for sl in self._user("rx")[: dist(mt["head"], mt["tail"], TX_SLOTS)]:
                if self.content["rx"][sl] is None:
                    break
                most += 1
            if not most:
                return
            k = data.draw(st.integers(1, most), label="k")
            ri = np.array(between(mr["head"], (mr["head"] + k) % RX_SLOTS, RX_SLOTS))
            ti = np.array(between(mt["head"], (mt["head"] + k) % TX_SLOTS, TX_SLOTS))
            for f in ("buf_idx", "len"):
                r.slot[f][ri], t.slot[f][ti] = t.slot[f][ti], r.slot[f][ri].copy()
            r.slot["flags"][ri] |= NS_BUF_CHANGED
            t.slot["flags"][ti] |= NS_BUF_CHANGED
            for a, b in zip(ri.tolist(), ti.tolist(), strict=True):
                self.content["rx"][a], self.content["tx"][b] = (
                    self.content["tx"][b],
                    self.content["rx"][a],
                )
            self._set("rx", (mr["head"] + k) % RX_SLOTS, (mr["head"] + k) % RX_SLOTS)
            self._set("tx", (mt["head"] + k) % TX_SLOTS, (mt["head"] + k) % TX_SLOTS)
            exp = self._tx_before()
            self._tx_after(exp, self.port.txsync())
            self.port.rxsync()
            self._rx_after()

        @rule(how=st.sampled_from(["rxsync", "txsync", "poll"]), rx=st.booleans(), tx=st.booleans())
        def sync(self, how: str, rx: bool, tx: bool) -> None:
            if how == "rxsync":
                self.port.rxsync()
                self._rx_after()
            elif how == "txsync":
                exp = self._tx_before()
                self._tx_after(exp, self.port.txsync())
            else:
                exp = self._tx_before()
                ready = self.port.poll(rx=rx, tx=tx, timeout=0.01)
                self._tx_after(exp)
                if rx:
                    self._rx_after()
                want = (select.POLLIN if rx and self.rx.cur != self.rx.tail else 0) | (
                    select.POLLOUT if tx and self.tx.cur != self.tx.tail else 0
                )
                assert ready == want, (rx, tx, ready)  # netmap's revents

        @rule(
            kind=st.sampled_from(["rx", "tx"]),
            via=st.sampled_from(["sync", "poll"]),
            data=st.data(),
        )
        def invalid_move(self, kind: str, via: str, data: st.DataObject) -> None:
            ring, m = self.ring[kind], self.m[kind]
            n = ring.num_slots
            span = dist(m["hwcur"], m["tail"], n)
            bad_heads = [p for p in range(n) if dist(m["hwcur"], p, n) > span]
            bad_curs = [
                p for p in range(n) if dist(m["head"], p, n) > dist(m["head"], m["tail"], n)
            ]
            outside = [n, n + 3, -1, 1 << 20]
            which = data.draw(st.sampled_from(["head", "cur", "both"]), label="which")
            head, cur = m["head"], m["cur"]
            if which in ("head", "both"):
                head = data.draw(st.sampled_from(bad_heads + outside), label="head")
            if which in ("cur", "both"):
                cur = data.draw(st.sampled_from(bad_curs + outside), label="cur")
            ring.head, ring.cur = head, cur
            tail = m["tail"]
            if kind == "tx":
                with pytest.raises(RingError, match="outside"):
                    if via == "sync":
                        self.port.txsync()
                    else:
                        self.port.poll(rx=False, tx=True, timeout=0)
            elif via == "sync":
                with pytest.raises(RingError, match="outside"):
                    self.port.rxsync()
            else:
                exp = self._tx_before()  # poll pushes TX before it syncs RX
                with pytest.raises(RingError, match="outside"):
                    self.port.poll(rx=True, timeout=0)
                self._tx_after(exp)
            assert ring.head == ring.cur == ring.hwcur == m["hwcur"]
            assert ring.tail == tail
            m["head"] = m["cur"] = m["hwcur"]

        @precondition(lambda self: len(self._user("rx")) + len(self._user("tx")) >= 2)
        @rule(data=st.data())
        def swap(self, data: st.DataObject) -> None:
            """Exchange the buffers of two user-owned slots (NS_BUF_CHANGED), RX or TX."""
            slots = [("rx", s) for s in self._user("rx")] + [("tx", s) for s in self._user("tx")]
            i, j = data.draw(
                st.lists(st.integers(0, len(slots) - 1), min_size=2, max_size=2, unique=True),
                label="pair",
            )
            (ka, sa), (kb, sb) = slots[i], slots[j]
            ra, rb = self.ring[ka].slot, self.ring[kb].slot
            for f in ("buf_idx", "len"):
                va, vb = int(ra[f][sa]), int(rb[f][sb])
                ra[f][sa], rb[f][sb] = vb, va
            ra["flags"][sa] |= NS_BUF_CHANGED
            rb["flags"][sb] |= NS_BUF_CHANGED
            ca, cb = self.content[ka][sa], self.content[kb][sb]
            self.content[ka][sa], self.content[kb][sb] = cb, ca

        @rule(
            kind=st.sampled_from(["rx", "tx"]),
            via=st.sampled_from(["sync", "poll"]),
            data=st.data(),
        )
        def corrupt(self, kind: str, via: str, data: st.DataObject) -> None:
            """Hand over a batch with one bad slot (releasing / filling one first if there
            is none): the sync refuses it whole."""
            if kind == "rx" and (self._released("rx") or self._release_rx(data)):
                self._corrupt_rx(data)
            elif self._released("tx") or self._fill_tx(data):
                self._corrupt_tx(data, via)

        @rule()
        def settle_and_account(self) -> None:
            self._account()

        @invariant()
        def rings_match_the_model(self) -> None:
            for kind, ring in self.ring.items():
                m, n = self.m[kind], ring.num_slots
                assert (ring.head, ring.cur, ring.hwcur, ring.tail) == (
                    m["head"],
                    m["cur"],
                    m["hwcur"],
                    m["tail"],
                ), kind
                # hwcur <= head <= cur <= tail, walking forward from hwcur
                assert (
                    dist(m["hwcur"], m["head"], n)
                    <= dist(m["hwcur"], m["cur"], n)
                    <= dist(m["hwcur"], m["tail"], n)
                ), kind
            # TX: the hole at tail, then the slots in flight up to hwcur
            mt = self.m["tx"]
            assert dist(mt["tail"], mt["hwcur"], TX_SLOTS) >= 1
            # nm_ring_space / nm_ring_empty count from head, not cur
            mr = self.m["rx"]
            assert self.tx.space() == dist(mt["head"], mt["tail"], TX_SLOTS)
            assert self.rx.space() == dist(mr["head"], mr["tail"], RX_SLOTS)
            assert self.tx.empty() == (mt["head"] == mt["tail"])
            assert self.rx.empty() == (mr["head"] == mr["tail"])
            assert self.rx_seen + self._drops() <= len(self.peer_sent)
            self.port.check_invariant()

        def teardown(self) -> None:
            try:
                if sys.exc_info()[1] is None:  # a failing step's error is the one to see
                    self._account()
                    self.port.check_invariant()
            finally:
                self.port.close()
                self.peer.close()

    return RingMachine


def test_ring_rules_hold_under_random_operations(veth_factory) -> None:
    pair = veth_factory(queues=1)
    # No shrink phase: an example costs real time (a port, frames, waits), so shrinking a
    # failure can take hypothesis's full five minutes; the failing example is printed
    # step by step as found (at most 30 steps).
    run_state_machine_as_test(
        machine_for(pair),
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    assert not pair.xdp_attached("a")  # every example's port let go of the interface


@pytest.mark.parametrize("what", ["range", "dup", "kernel"])
def test_refused_rxsync_resets_the_ring_like_txsync(veth_factory, what: str) -> None:
    """The deterministic form of the model's corrupt-RX rule: releasing a slot whose
    buf_idx is out of range, twice in the batch, or a buffer the kernel holds is refused
    and, as for a refused TX batch (and netmap_ring_reinit), head = cur = hwcur."""
    pair = veth_factory(queues=1)
    mac_a, mac_b = pair.mac("a"), pair.mac("b")
    with open_port(f"netmap:{pair.a}-0@conf:slots={RX_SLOTS}", netns=pair.ns_a) as port:
        r = port.rx_rings[0]
        pair.send_on_queue([make_frame(mac_a, mac_b, b"rset", TO_A, i) for i in range(3)], 0)
        port.rxsync()
        assert (r.hwcur, r.tail) == (0, 3)
        r.head = r.cur = 2
        saved = r.slot[1].copy()
        if what == "range":
            r.slot["buf_idx"][1] = port.memory.nbufs + 1  # type: ignore[union-attr]
        elif what == "dup":
            r.slot["buf_idx"][1] = r.slot["buf_idx"][0]
        else:  # slot 5 is outside [hwcur, tail): its buffer is on the FILL ring
            r.slot["buf_idx"][1] = r.slot["buf_idx"][5]
        with pytest.raises(RingError):
            port.rxsync()
        r.slot[1] = saved
        port.check_invariant()  # nothing was given to the kernel
        assert r.hwcur == 0 and r.tail == 3
        assert r.head == r.cur == 0, "a refused rxsync must reset head = cur = hwcur"
