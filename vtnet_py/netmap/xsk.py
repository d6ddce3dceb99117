"""AF_XDP building blocks: the UMEM, one socket per queue, and its four kernel rings.

This is the control path (setup and teardown, syscalls, errno mapping) plus numpy views
of the mmapped rings; the netmap semantics on top live in ring.py (and, compiled, in
_ringcore.c). A socket's rings are single-producer/single-consumer shared with the
kernel: we write descriptors first and then the producer word, and read the producer
word before the descriptors. The compiled core does this with release/acquire atomics;
the Python reference model relies on x86-64's total store order (separate numpy stores
are not reordered), which a weakly ordered CPU would not give it.

Both keep libxdp's cached views (``xsk_prod_nb_free``/``xsk_cons_nb_avail``): the
kernel's side of a ring is read only when the view we cached from the last read runs
short of what a sync asks for.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
from dataclasses import dataclass

import numpy as np

from vtnet_py._sys import abi as K
from vtnet_py.errors import (
    BusyError,
    DeviceError,
    InterfaceChangedError,
    PrivilegeError,
    UnsupportedError,
)

DESC_DTYPE = np.dtype(K.XDP_DESC_FIELDS)
ADDR_DTYPE = np.dtype("<u8")
U32_WRAP = 0xFFFFFFFF

# a kick the kernel refused for now: retried at the next sync
TRANSIENT = (errno.EAGAIN, errno.ENOBUFS, errno.EBUSY)

CHUNK_SIZE = 4096  # one page per frame: the aligned-mode chunk every driver accepts


def _close_mmap(mm: mmap.mmap | None) -> None:
    """Unmap unless an application still holds a view of it; then the last view's
    release unmaps it (mmap objects refuse to close while buffers are exported)."""
    if mm is None:
        return
    try:
        mm.close()
    except BufferError:
        pass


class KernelRing:
    """One AF_XDP ring: producer/consumer/flags words and the descriptor array.

    ``cached`` is our side's running index (u32, wrapping): the producer for FILL and TX,
    the consumer for RX and COMPLETION. ``peer`` is the kernel's index as last read.
    """

    _buf: bytearray | None = None  # the memory of an in_memory() ring

    def __init__(
        self,
        fd: int,
        pgoff: int,
        off: K.xdp_ring_offset,
        size: int,
        dtype: np.dtype,
        we_produce: bool,
    ):
        length = off.desc + size * dtype.itemsize
        self.mm: mmap.mmap | None = mmap.mmap(
            fd,
            length,
            mmap.MAP_SHARED | mmap.MAP_POPULATE,
            mmap.PROT_READ | mmap.PROT_WRITE,
            offset=pgoff,
        )
        self.mm.madvise(mmap.MADV_DONTFORK)
        self._map(self.mm, off, size, dtype, we_produce)

    @classmethod
    def in_memory(cls, size: int, dtype: np.dtype, we_produce: bool) -> KernelRing:
        """A ring in plain process memory, laid out like the kernel's (for FakeXsk)."""
        ring = cls.__new__(cls)
        ring.mm = None
        off = K.xdp_ring_offset(producer=0, consumer=64, flags=128, desc=192)
        ring._buf = bytearray(off.desc + size * dtype.itemsize)
        ring._map(ring._buf, off, size, dtype, we_produce)
        return ring

    def _map(
        self,
        buf: mmap.mmap | bytearray,
        off: K.xdp_ring_offset,
        size: int,
        dtype: np.dtype,
        we_produce: bool,
    ) -> None:
        self.size = size
        self.mask = size - 1
        self.producer = np.ndarray((1,), np.uint32, buf, off.producer)
        self.consumer = np.ndarray((1,), np.uint32, buf, off.consumer)
        self.flags = np.ndarray((1,), np.uint32, buf, off.flags)
        self.desc = np.ndarray((size,), dtype, buf, off.desc)
        # positions of `n` entries from index i are pos[i & mask : (i & mask) + n]
        self.pos = np.arange(2 * size, dtype=np.intp) & self.mask
        self.we_produce = we_produce
        self.cached = int(self.producer[0] if we_produce else self.consumer[0])
        self.peer = int(self.consumer[0] if we_produce else self.producer[0])

    def needs_wakeup(self) -> bool:
        return bool(int(self.flags[0]) & K.XDP_RING_NEED_WAKEUP)

    # producer side (FILL, TX)
    def free(self, want: int | None = None) -> int:
        """Entries we may produce; the kernel's consumer word is read only when the
        cached view shows fewer than ``want`` (None: always)."""
        f = self.size - ((self.cached - self.peer) & U32_WRAP)
        if want is None or f < want:
            self.peer = int(self.consumer[0])
            f = self.size - ((self.cached - self.peer) & U32_WRAP)
        return f

    def slots(self, n: int) -> slice | np.ndarray:
        """Positions of the next ``n`` entries from our index: a slice unless they wrap."""
        s = self.cached & self.mask
        if s + n <= self.size:
            return slice(s, s + n)
        return self.pos[s : s + n]

    def submit(self, n: int) -> None:
        self.cached = (self.cached + n) & U32_WRAP
        self.producer[0] = self.cached

    def pending(self) -> int:
        """Entries produced but not yet consumed by the kernel (both words read: the
        producer word is ours, but the compiled ring core may be the one writing it)."""
        return (int(self.producer[0]) - int(self.consumer[0])) & U32_WRAP

    # consumer side (RX, COMPLETION)
    def available(self, want: int | None = None) -> int:
        """Entries to consume, at most ``want``; the kernel's producer word is read only
        when the cached view shows fewer than ``want`` (None: always, and no limit)."""
        a = (self.peer - self.cached) & U32_WRAP
        if want is None or a < want:
            self.peer = int(self.producer[0])
            a = (self.peer - self.cached) & U32_WRAP
        return a if want is None else min(a, want)

    def release(self, n: int) -> None:
        self.cached = (self.cached + n) & U32_WRAP
        self.consumer[0] = self.cached

    def close(self) -> None:
        for attr in ("producer", "consumer", "flags", "desc"):
            setattr(self, attr, None)
        mm, self.mm = self.mm, None
        _close_mmap(mm)


class Umem:
    """Anonymous page-aligned memory split into ``nchunks`` frames of CHUNK_SIZE bytes."""

    def __init__(self, nchunks: int, chunk_size: int = CHUNK_SIZE):
        self.nchunks = nchunks
        self.chunk_size = chunk_size
        self.length = nchunks * chunk_size
        self.mm: mmap.mmap | None = mmap.mmap(
            -1,
            self.length,
            mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE,
            mmap.PROT_READ | mmap.PROT_WRITE,
        )
        self.mm.madvise(mmap.MADV_DONTFORK)
        self.array = np.frombuffer(self.mm, dtype=np.uint8)
        self.addr = self.array.ctypes.data
        self.chunks = self.array.reshape(nchunks, chunk_size)

    def close(self) -> None:
        self.array = self.chunks = None  # type: ignore[assignment]
        mm, self.mm = self.mm, None
        _close_mmap(mm)


@dataclass(frozen=True)
class RingSizes:
    rx: int  # 0: no RX ring on this socket
    tx: int
    fill: int
    comp: int


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class XskSocket:
    """An AF_XDP socket bound to (ifindex, queue), with its rings mapped.

    The first socket on a Umem registers it; later ones share it (XDP_SHARED_UMEM) with
    their own FILL and COMPLETION rings. A failed construction closes everything it made.
    """

    def __init__(
        self,
        *,
        ifname: str,
        ifindex: int,
        queue: int,
        umem: Umem,
        share_with: XskSocket | None,
        sizes: RingSizes,
        zerocopy: bool,
        frags: bool,
    ):
        self.ifname = ifname
        self.queue = queue
        self.fill: KernelRing | None = None
        self.comp: KernelRing | None = None
        self.rx: KernelRing | None = None
        self.tx: KernelRing | None = None
        self.zerocopy = False
        self.sock: socket.socket | None = None
        where = f"{ifname} queue {queue}"
        try:
            self.sock = socket.socket(K.AF_XDP, socket.SOCK_RAW, 0)
        except PermissionError as exc:
            raise PrivilegeError(f"{where}: creating an AF_XDP socket needs CAP_NET_RAW") from exc
        except OSError as exc:
            raise UnsupportedError(f"{where}: AF_XDP sockets unavailable: {exc.strerror}") from exc
        try:
            self._setup(ifindex, umem, share_with, sizes, zerocopy, frags, where)
        except BaseException:
            self.close()
            raise

    def _setsockopt(self, opt: int, value: bytes | int, where: str, what: str) -> None:
        assert self.sock is not None
        try:
            self.sock.setsockopt(K.SOL_XDP, opt, value)
        except OSError as exc:
            raise DeviceError(f"{where}: {what}: {exc.strerror}") from exc

    def _setup(
        self,
        ifindex: int,
        umem: Umem,
        share_with: XskSocket | None,
        sizes: RingSizes,
        zerocopy: bool,
        frags: bool,
        where: str,
    ) -> None:
        assert self.sock is not None
        fd = self.sock.fileno()
        if share_with is None:
            reg = K.xdp_umem_reg(addr=umem.addr, len=umem.length, chunk_size=umem.chunk_size)
            self._setsockopt(K.XDP_UMEM_REG, bytes(reg), where, "registering the UMEM")
        if sizes.rx:
            self._setsockopt(K.XDP_RX_RING, sizes.rx, where, f"RX ring of {sizes.rx}")
        if sizes.tx:
            self._setsockopt(K.XDP_TX_RING, sizes.tx, where, f"TX ring of {sizes.tx}")
            if sizes.tx >= K.XDP_TX_BATCH_SIZE:
                # copy mode: one kick may send the whole TX ring, not 32 frames
                try:
                    self.sock.setsockopt(K.SOL_XDP, K.XDP_MAX_TX_SKB_BUDGET, sizes.tx)
                except OSError as exc:
                    if exc.errno != errno.ENOPROTOOPT:  # before 6.17: 32 per call
                        raise DeviceError(
                            f"{where}: TX budget of {sizes.tx}: {exc.strerror}"
                        ) from exc
        self._setsockopt(K.XDP_UMEM_FILL_RING, sizes.fill, where, f"FILL ring of {sizes.fill}")
        self._setsockopt(
            K.XDP_UMEM_COMPLETION_RING, sizes.comp, where, f"COMPLETION ring of {sizes.comp}"
        )
        raw = self.sock.getsockopt(K.SOL_XDP, K.XDP_MMAP_OFFSETS, ctypes.sizeof(K.xdp_mmap_offsets))
        off = K.xdp_mmap_offsets.from_buffer_copy(raw)
        self.fill = KernelRing(fd, K.XDP_UMEM_PGOFF_FILL_RING, off.fr, sizes.fill, ADDR_DTYPE, True)
        self.comp = KernelRing(
            fd, K.XDP_UMEM_PGOFF_COMPLETION_RING, off.cr, sizes.comp, ADDR_DTYPE, False
        )
        if sizes.rx:
            self.rx = KernelRing(fd, K.XDP_PGOFF_RX_RING, off.rx, sizes.rx, DESC_DTYPE, False)
        if sizes.tx:
            self.tx = KernelRing(fd, K.XDP_PGOFF_TX_RING, off.tx, sizes.tx, DESC_DTYPE, True)

        if share_with is not None:
            # a socket sharing the UMEM may set no other flag: it inherits copy/zero-copy,
            # need_wakeup and multi-buffer from the socket that registered the UMEM
            flags = K.XDP_SHARED_UMEM
        else:
            flags = K.XDP_USE_NEED_WAKEUP | (K.XDP_ZEROCOPY if zerocopy else K.XDP_COPY)
            if frags:
                flags |= K.XDP_USE_SG
        sa = K.sockaddr_xdp(
            sxdp_family=K.AF_XDP,
            sxdp_flags=flags,
            sxdp_ifindex=ifindex,
            sxdp_queue_id=self.queue,
            sxdp_shared_umem_fd=share_with.fileno() if share_with else 0,
        )
        if K.libc.bind(fd, ctypes.byref(sa), ctypes.sizeof(sa)) != 0:
            err = ctypes.get_errno()
            self._raise_bind(err, where, zerocopy, frags)
        opts = K.xdp_options()
        raw = self.sock.getsockopt(K.SOL_XDP, K.XDP_OPTIONS, ctypes.sizeof(opts))
        self.zerocopy = bool(K.xdp_options.from_buffer_copy(raw).flags & K.XDP_OPTIONS_ZEROCOPY)

    @staticmethod
    def _raise_bind(err: int, where: str, zerocopy: bool, frags: bool) -> None:
        msg = os.strerror(err)
        if err == errno.EBUSY:
            raise BusyError(
                f"{where} is busy: another AF_XDP socket (another netmap port, or "
                f"another program) owns it"
            )
        if err == errno.EPERM:
            raise PrivilegeError(f"{where}: binding an AF_XDP socket needs CAP_NET_ADMIN")
        if err in (errno.EOPNOTSUPP, K.ENOTSUPP, errno.EINVAL) and zerocopy:
            # EOPNOTSUPP: the driver lacks XDP_FEATURE_XSK_ZEROCOPY (6.3+ checks that
            # flag; before, the ndo_xsk_wakeup behind it); EINVAL says less
            why = (
                "the driver does not advertise xsk-zerocopy (XDP_FEATURE_XSK_ZEROCOPY)"
                if err != errno.EINVAL
                else "no zero-copy support on this queue"
            )
            # errno.errorcode names 95 ENOTSUP; the kernel's sources say EOPNOTSUPP
            name = {errno.EOPNOTSUPP: "EOPNOTSUPP", K.ENOTSUPP: "ENOTSUPP"}.get(err, "EINVAL")
            raise UnsupportedError(
                f"{where}: zero-copy AF_XDP is not supported by the driver "
                f"(XDP_ZEROCOPY bind: {name}, {msg}): {why}"
            )
        if err in (errno.EOPNOTSUPP, K.ENOTSUPP, errno.EINVAL) and frags:
            raise UnsupportedError(f"{where}: multi-buffer AF_XDP (XDP_USE_SG) refused: {msg}")
        if err == errno.ENODEV or err == errno.ENXIO:
            raise InterfaceChangedError(f"{where}: interface is gone")
        if err == errno.EINVAL:
            raise DeviceError(
                f"{where}: bind refused (EINVAL): no such queue, or the "
                f"interface is down or has no XDP support"
            )
        raise DeviceError(f"{where}: bind failed: {msg}")

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def statistics(self) -> dict[str, int]:
        """The kernel's XDP_STATISTICS counters of this socket."""
        if self.sock is None:
            return {}
        st = K.xdp_statistics()
        raw = self.sock.getsockopt(K.SOL_XDP, K.XDP_STATISTICS, ctypes.sizeof(st))
        st = K.xdp_statistics.from_buffer_copy(raw.ljust(ctypes.sizeof(st), b"\0"))
        return {f[0]: int(getattr(st, f[0])) for f in K.xdp_statistics._fields_}

    def kick_tx(self) -> int:
        """Ask the kernel to process the TX ring (sendto with no data).

        Returns the errno of a transient refusal (EAGAIN, ENOBUFS, EBUSY), 0 on success;
        raises InterfaceChangedError when the interface is down or gone.
        """
        assert self.sock is not None
        try:
            self.sock.send(b"", socket.MSG_DONTWAIT)
        except OSError as exc:
            if exc.errno in TRANSIENT:
                return exc.errno
            self.raise_kick_error(exc.errno or 0, True)
        return 0

    def wake_rx(self) -> None:
        """Tell a driver that stopped for lack of FILL entries that there are some now."""
        assert self.sock is not None
        try:
            self.sock.recv(0, socket.MSG_DONTWAIT)
        except OSError as exc:
            if exc.errno not in TRANSIENT:
                self.raise_kick_error(exc.errno or 0, False)

    def raise_kick_error(self, err: int, tx: bool) -> None:
        """Raise what a failed TX kick (sendto) or RX wakeup (recvfrom) with ``err`` means;
        the compiled ring core calls this after its own syscall failed."""
        where = f"{self.ifname} queue {self.queue}"
        if err in (errno.ENETDOWN, errno.ENXIO, errno.ENODEV):
            if tx:
                raise InterfaceChangedError(
                    f"{where}: transmit refused, interface "
                    f"{'down' if err == errno.ENETDOWN else 'gone'}"
                )
            raise InterfaceChangedError(f"{where}: interface down or gone")
        if tx:
            raise DeviceError(f"{where}: transmit kick failed: {os.strerror(err)}")
        raise OSError(err, os.strerror(err))

    def close(self) -> None:
        """Unmap the rings and close the socket (which also leaves any XSKMAP)."""
        for attr in ("fill", "comp", "rx", "tx"):
            ring = getattr(self, attr, None)
            if ring is not None:
                ring.close()
                setattr(self, attr, None)
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def ring_sizes(rx_slots: int, tx_slots: int) -> RingSizes:
    """AF_XDP rings are powers of two; netmap rings need not be. Each kernel ring is made
    large enough for every buffer its netmap ring owns, so no kernel ring can overflow."""
    rx = _pow2(rx_slots) if rx_slots else 0
    tx = _pow2(tx_slots) if tx_slots else 0
    return RingSizes(rx=rx, tx=tx, fill=max(rx, 2), comp=max(tx, 2))
