"""The acquire steps of an open that need no Port: queue bookkeeping, binding sockets,
making rings, giving buffers back, and naming an exhausted limit.

:mod:`vtnet_py.netmap.port` runs them as named steps, each with its undo.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import threading
import time
import weakref
from collections.abc import Callable

from vtnet_py._sys.proc import pid_alive
from vtnet_py.errors import BusyError, DeviceError, ResourceError, UnsupportedError
from vtnet_py.netmap.memory import Memory
from vtnet_py.netmap.plan import MAX_FRAGS, PortPlan
from vtnet_py.netmap.pool import FREE, krx, ktx
from vtnet_py.netmap.ring import Ring
from vtnet_py.netmap.xsk import RingSizes, XskSocket

BUSY_RETRY_S = 1.0  # the kernel frees a closed socket's queue in deferred work


class QueueRegistry:
    """Which port of this process has which queue, per interface: an overlapping open
    is refused naming both ports, before the kernel answers EBUSY. An entry whose port
    was dropped without close (its finalizer takes no lock) is stale and taken over."""

    def __init__(self) -> None:
        # (netns, ifindex, queue) -> (port name, the port)
        self._held: dict[tuple[int, int, int], tuple[str, weakref.ref[object]]] = {}
        self._lock = threading.Lock()

    def take(self, key: tuple[int, int], plan: PortPlan, owner: object) -> Callable[[], None]:
        """Record the plan's queues for ``owner``; returns the undo. BusyError names the
        overlap."""
        mine = [(*key, q.queue) for q in plan.queues]
        with self._lock:
            for k in mine:
                other = self._held.get(k)
                if other is not None and other[1]() is not None:
                    raise BusyError(
                        f"{plan.name}: {plan.ifname} queue {k[2]} is already open in this "
                        f"process as {other[0]} (one socket per queue: open both directions "
                        f"in one port)"
                    )
            for k in mine:
                self._held[k] = (plan.name, weakref.ref(owner))

        def undo() -> None:
            with self._lock:
                for k in mine:
                    self._held.pop(k, None)

        return undo

    def forget_after_fork(self) -> None:
        self._held.clear()
        self._lock = threading.Lock()


QUEUES = QueueRegistry()
os.register_at_fork(after_in_child=QUEUES.forget_after_fork)


# errno values that mean a limit was reached, and the limit's name
_LIMITS = {
    errno.EMFILE: "file descriptors (RLIMIT_NOFILE {nofile})",
    errno.ENFILE: "file descriptors (the system-wide limit)",
    errno.ENOMEM: "memory",
    errno.ENOBUFS: "locked memory (RLIMIT_MEMLOCK) or socket buffers",
    errno.ENOSPC: "BPF map or program space",
}


def limit_hit(exc: BaseException) -> OSError | None:
    """The OSError in ``exc``'s cause chain that reports an exhausted limit, if any."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in _LIMITS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def limit_error(port_name: str, step: str, hit: OSError) -> ResourceError:
    """One line naming the port, the step and the limit that was reached."""
    assert hit.errno is not None
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    what = _LIMITS[hit.errno].format(nofile=nofile)
    return ResourceError(f"{port_name}: {step}: out of {what}: {os.strerror(hit.errno)}")


def make_rings(
    mem: Memory,
    plan: PortPlan,
    sock: XskSocket,
    kid: int,
    *,
    rx: bool,
    tx: bool,
    queue: int,
    host: bool,
    first_buf: int,
    ring_ids: tuple[int, int],
) -> list[Ring]:
    """The RX and/or TX ring on ``sock`` (socket ``kid`` of ``mem``), their buffers from
    ``first_buf`` on; ``ring_ids`` are the (RX, TX) ring numbers they get."""
    made: list[Ring] = []
    nxt = first_buf
    for is_tx, wanted in ((False, rx), (True, tx)):
        if not wanted:
            continue
        slots = plan.tx_slots if is_tx else plan.rx_slots
        made.append(
            Ring(
                port_name=plan.name,
                ring_id=ring_ids[is_tx],
                queue=queue,
                is_tx=is_tx,
                host=host,
                num_slots=slots,
                pool=mem.pool,
                xsk=sock,
                kid=kid,
                first_buf=nxt,
                frags=plan.frags,
                max_frags=MAX_FRAGS,
                chunks=mem.umem.chunks,
                vnet_hdr=plan.vnet_hdr,
            )
        )
        nxt += slots
    return made


def release_rings(mem: Memory, rings: list[Ring]) -> None:
    """Every buffer of ``rings``, wherever it is now, becomes free; the rings leave the
    memory and no longer keep the UMEM mapped (an application may keep Ring objects)."""
    for r in rings:
        held, _, _ = r.held_unchecked()
        mem.pool.owner[held] = FREE
        mem.pool.owner[mem.pool.owner == (ktx(r._kid) if r.is_tx else krx(r._kid))] = FREE
    mem.remove_rings(rings)
    for r in rings:
        r.detach()


# An abstract unix socket per bound queue, named after it, in the device's network
# namespace (abstract names are per namespace): it lives exactly as long as the process
# (and its forked children) that holds the AF_XDP socket, dies with it on kill -9, and
# lets another process name that pid when the kernel answers EBUSY, also for a TX-only
# socket, which the steering program's owner map never sees.
_HOLDER = "vtnetmap-queue/{ifindex}/{queue}"


def hold_queue(ifindex: int, queue: int) -> socket.socket | None:
    """The holder name of ``queue`` (call it in the device's namespace, once the AF_XDP
    socket is bound); None if a forked child of the last owner still holds it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        s.bind("\0" + _HOLDER.format(ifindex=ifindex, queue=queue))
    except OSError as exc:
        s.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise
    return s


def queue_holder(ifindex: int, queue: int) -> int:
    """pid of a process holding ``queue``'s holder name in the current network namespace
    (0: none found). Reads /proc: for error messages only."""
    want = "@" + _HOLDER.format(ifindex=ifindex, queue=queue)
    inode = None
    try:
        with open("/proc/thread-self/net/unix") as f:  # this thread's netns, not the main one
            for line in f:
                parts = line.split()
                if len(parts) >= 8 and parts[7] == want:
                    inode = parts[6]
                    break
    except OSError:
        return 0
    if inode is None:
        return 0
    target = f"socket:[{inode}]"
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return 0


def bind_retrying(
    mem: Memory, plan: PortPlan, q: int, sizes: RingSizes, owner_of: Callable[[int], int]
) -> XskSocket:
    """Bind, and when the queue is busy but no live process owns it (a socket closed a
    moment ago, whose queue the kernel releases in deferred work), try again briefly.
    ``owner_of`` reads the owner pid the steering program records for a queue."""
    deadline = time.monotonic() + BUSY_RETRY_S
    while True:
        try:
            return _bind(mem, plan, q, sizes)
        except BusyError as exc:
            owner = owner_of(q) or queue_holder(plan.ifindex, q)
            if owner and owner != os.getpid() and pid_alive(owner):
                qp = next((x for x in plan.queues if x.queue == q), None)
                one_way = qp is not None and not (qp.rx and qp.tx)
                why = (
                    "; AF_XDP binds one socket per queue for both directions, so its RX "
                    "and TX rings cannot be split between processes (open both in one port)"
                    if one_way
                    else ""
                )
                raise BusyError(
                    f"{plan.name}: {plan.ifname} queue {q} is busy: held by pid {owner}{why}"
                ) from exc
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _bind(mem: Memory, plan: PortPlan, q: int, sizes: RingSizes) -> XskSocket:
    """Bind queue ``q``: zero copy first when "auto", copy mode if the driver refuses."""
    zerocopy = plan.attach.zerocopy
    if mem.share_socket() is not None:
        tries = [False]  # the mode is inherited from the socket that registered the UMEM
    else:
        tries = [True, False] if zerocopy == "auto" else [zerocopy == "on"]
    for i, zc in enumerate(tries):
        try:
            return XskSocket(
                ifname=plan.ifname,
                ifindex=plan.ifindex,
                queue=q,
                umem=mem.umem,
                share_with=mem.share_socket(),
                sizes=sizes,
                zerocopy=zc,
                frags=plan.frags,
            )
        except UnsupportedError as exc:
            if zc and i + 1 < len(tries) and "zero-copy" in str(exc):
                continue
            raise UnsupportedError(f"{plan.name}: {exc}") from exc
        except DeviceError as exc:
            raise type(exc)(f"{plan.name}: {exc}") from exc
    raise AssertionError("unreachable")


__all__ = [
    "QUEUES",
    "QueueRegistry",
    "bind_retrying",
    "hold_queue",
    "limit_error",
    "limit_hit",
    "make_rings",
    "queue_holder",
    "release_rings",
]
