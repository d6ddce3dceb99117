# Over 500 lines: the live-frames run keeps its BPF program setup, ranges and workers together.
"""pkt-gen ``--live``: frames generated inside the kernel with BPF_PROG_TEST_RUN.

With ``BPF_F_TEST_XDP_LIVE_FRAMES`` the kernel runs an XDP program ``repeat`` times
on copies of one frame and really carries out what it returns
(Documentation/bpf/bpf_prog_run.rst).  Our program (``bpf/live.c``, compiled with
bcc, loaded with our own bpf() calls) returns ``bpf_redirect(IF)``, so every run
leaves through IF's ``ndo_xdp_xmit``, flushed once per kernel batch (``-b``: 64 by
default, as the kernel's own default; at most 256, the kernel's cap).  No socket, no
ring, no copy from user space: this is how xdp-trafficgen outruns a single AF_XDP TX
queue.

What is sent: the AF_XDP path's frame template (``frames.FrameGen``: packet 0 of
the walk, correct IPv4 and UDP checksums).  When the frames differ (``-s``/``-d``
ranges, ``-z``, ``-Z``) the program computes frame k of pkt-gen's walk from its own
counter, exactly as FrameGen does for the ranges, and rewrites the addresses, the
ports and both checksums (from sums precomputed here over the bytes that never
change).  ``-z``/``-Z`` draw from the kernel's ``bpf_get_prandom_u32()``, so the
random values differ from the AF_XDP path's and ``--seed`` cannot apply.  Not
available with ``--live`` (refused with one line): ``-f`` other than ``tx``, a second
``-l`` (one template, one length), ``-H``, a port name naming rings (``-N``, ``^``,
``*``, ``/R``), ``-p`` beyond the CPU count.

Counting: the program counts the frames it redirects; user space reads that count
after every call, so ``-n`` is exact even when a call is cut short.  The device may
still drop frames after the redirect (a veth whose peer has neither an XDP program
nor GRO enabled drops them all, silently): the interface's ``tx_packets`` counter is
read before and after, a run whose first call moved none of it stops with an error,
and a shortfall at the end is reported on stderr.

Cost per call: besides the frames, each BPF_PROG_TEST_RUN call sets up and tears
down its page pool; measured on 6.18 in this VM, a call of 64 frames takes 20-40 ms of
wall time for under 1 ms of CPU (the thread sleeps in the kernel).  So calls are
large: about 0.4 s of frames each (the count is published every 20 ms meanwhile, so
the -T reports stay smooth), and with ``-R`` one call every 100 ms carrying 100 ms
worth of frames (coarse pacing: the frames of one call leave back to back; the mean
rate holds).

``-p N`` runs N processes (the engine's workers), each with its own instance of the
program and its own maps, pinned to CPU i (with -a: (a + i) mod cpus); each walks
the ranges from the start, as pkt-gen's threads do.  What is left behind: nothing --
the program and its maps are file descriptors closed when the worker ends (or the
process dies); nothing is attached to any interface.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import signal
import socket
import threading
import time
from typing import Any, ClassVar, TextIO

import numpy as np
import numpy.typing as npt

from vtnet_py._sys import abi as K
from vtnet_py._sys import bpf
from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py.apps.pktgen.config import (
    F_BYTES,
    F_DONE,
    F_ERR,
    F_EVENTS,
    F_PKTS,
    F_RUNNING,
    F_TIC,
    F_TOC,
    Config,
    PktgenError,
    interface_facts,
)
from vtnet_py.apps.pktgen.engine import Run
from vtnet_py.apps.pktgen.frames import FrameGen
from vtnet_py.apps.pktgen.spec import (
    ETH_HLEN,
    IP_HLEN,
    OFF_IP_DST,
    OFF_IP_SRC,
    OFF_IP_SUM,
    OFF_UDP_DPORT,
    OFF_UDP_SPORT,
    OFF_UDP_SUM,
    FrameSpec,
)
from vtnet_py.apps.pktgen.worker import Worker
from vtnet_py.ebpf.build import LoadedProgram, ProgramImage, compile_image, instantiate
from vtnet_py.errors import DeviceError, PrivilegeError, UnsupportedError, VtnetError
from vtnet_py.netmap.portname import RegMode, parse_port_name

LIVE_SOURCE = "live.c"
LIVE_PROG = "vtnm_live"
MAX_BATCH = 256  # net/bpf/test_run.c: TEST_XDP_MAX_BATCH, the kernel's cap on batch_size
# -b's default with --live: the kernel's own default (NAPI's budget).  Each batch is one
# flush into the device; a veth peer queues it in a 256-slot ring, and 256-frame batches
# overran it here (frames dropped in xdp_xmit) where 64 never did.
DEFAULT_BATCH = 64

# Unpaced calls aim at this much sending each: long enough to make the fixed cost of a
# call (tens of ms) small, short enough that ^C ends the run within half a second.
CALL_TARGET_S = 0.4
CHUNK_START = 1 << 16
CHUNK_MIN = 1 << 12
CHUNK_MAX = 1 << 23
PACE_PERIOD_S = 0.1  # -R: one call per period, carrying a period's worth of frames
POLL_S = 0.02  # how often the running count is published for the -T reports

# bpf/live.c flags
LIVE_WALK = 1
LIVE_RANDOM_SRC = 2
LIVE_RANDOM_DST = 4


class XdpMd(ctypes.Structure):
    """include/uapi/linux/bpf.h struct xdp_md: the context passed as ctx_in."""

    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


class LiveConf(ctypes.Structure):
    """bpf/live.c struct live_conf (same order, natural alignment)."""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("src_start", ctypes.c_uint32),
        ("dst_start", ctypes.c_uint32),
        ("src_n", ctypes.c_uint64),
        ("dst_n", ctypes.c_uint64),
        ("sport0", ctypes.c_uint32),
        ("sport_n", ctypes.c_uint32),
        ("dport0", ctypes.c_uint32),
        ("dport_n", ctypes.c_uint32),
        ("ip_base", ctypes.c_uint64),
        ("udp_base", ctypes.c_uint64),
    ]


class LiveState(ctypes.Structure):
    """bpf/live.c struct live_state."""

    _fields_ = [
        ("count", ctypes.c_uint64),
        ("dst_carry", ctypes.c_uint64),
        ("dst_addr", ctypes.c_uint32),
        ("dst_port", ctypes.c_uint32),
    ]


# -- what --live can do -----------------------------------------------------------------


def live_refusal(cfg: Config) -> str | None:
    """Why ``cfg`` cannot run with --live (one line naming the option), or None."""
    spec = cfg.spec
    if cfg.function != "tx":
        return (
            f"-f {cfg.function}: --live only transmits plain frames (-f tx); the kernel "
            f"generator has no receive path and no sequence numbers"
        )
    if spec.vnet_hdr_len:
        return (
            f"-H {spec.vnet_hdr_len}: --live frames leave through the driver's XDP "
            f"transmit path, which takes no virtio-net header"
        )
    if spec.min_length:
        return "-l: --live sends frames of one length (the kernel copies one template); give one -l"
    if spec.ipv6 or spec.raw is not None:
        return (
            f"{'-6' if spec.raw is None else '-P'}: --live rewrites IPv4/UDP frames only "
            "(its walk and checksums are IPv4's)"
        )
    if cfg.frag_plan.count > 1:
        return "-F/-M: --live sends single-buffer frames (one XDP frame per run)"
    if cfg.dump:
        return "-X: --live frames never pass through a ring, so there is nothing to dump"
    if cfg.seed is not None and (spec.random_src or spec.random_dst):
        return (
            "--seed: with --live, -z/-Z draw from the kernel's bpf_get_prandom_u32(), "
            "which cannot be seeded"
        )
    ncpu = os.cpu_count() or 1
    if cfg.threads > ncpu:
        return f"-p {cfg.threads}: --live runs one process per CPU and this machine has {ncpu}"
    pspec = parse_port_name(cfg.port, default_prefix=True)
    if not pspec.tx:
        return f"{cfg.port}: --live transmits; a port opened with /R cannot"
    if pspec.mode is not RegMode.ALL_NIC:
        return (
            f"{cfg.port}: --live uses no netmap ring (frames leave through the driver's "
            f"XDP transmit queue of the CPU that generates them); name the interface, "
            f"netmap:{pspec.ifname}"
        )
    return None


def checksum_bases(template: npt.NDArray[np.uint8]) -> tuple[int, int]:
    """The unfolded one's-complement sums bpf/live.c starts from, taken from the frame.

    IPv4: the header words without the checksum and the two addresses.  UDP: the
    pseudo header (protocol, length) and the UDP words without the checksum and the
    two ports; the addresses, which both checksums cover, are added per frame.
    """
    ip = template[ETH_HLEN : ETH_HLEN + IP_HLEN].astype(np.uint64)
    ip_words = (ip[0::2] << np.uint64(8)) + ip[1::2]
    skip_ip = [
        (OFF_IP_SUM - ETH_HLEN) // 2,
        *range((OFF_IP_SRC - ETH_HLEN) // 2, (OFF_IP_DST - ETH_HLEN) // 2 + 2),
    ]
    ip_base = int(ip_words.sum()) - int(ip_words[skip_ip].sum())
    seg = template[OFF_UDP_SPORT:].astype(np.uint64)
    if seg.shape[0] % 2:  # an odd last byte is the high half of a word
        seg = np.concatenate([seg, np.zeros(1, np.uint64)])
    udp_words = (seg[0::2] << np.uint64(8)) + seg[1::2]
    udp_len = int(udp_words[2])
    skip_udp = [0, 1, (OFF_UDP_SUM - OFF_UDP_SPORT) // 2]
    udp_base = 17 + udp_len + int(udp_words.sum()) - int(udp_words[skip_udp].sum())
    return ip_base, udp_base


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _check_bases(template: npt.NDArray[np.uint8], ip_base: int, udp_base: int) -> None:
    """Recompute frame 0's checksums the way bpf/live.c does; they must be the template's
    (guards the program's arithmetic against a change of the template's layout)."""
    t = template.tobytes()

    def w(off: int) -> int:
        return int.from_bytes(t[off : off + 2], "big")

    addrs = w(OFF_IP_SRC) + w(OFF_IP_SRC + 2) + w(OFF_IP_DST) + w(OFF_IP_DST + 2)
    ip_sum = ~_fold(ip_base + addrs) & 0xFFFF
    udp_sum = ~_fold(udp_base + addrs + w(OFF_UDP_SPORT) + w(OFF_UDP_DPORT)) & 0xFFFF
    udp_sum = udp_sum or 0xFFFF
    if (ip_sum, udp_sum) != (w(OFF_IP_SUM), w(OFF_UDP_SUM)):
        raise VtnetError(
            f"--live: checksum bases do not reproduce the template's checksums "
            f"({ip_sum:#06x}/{udp_sum:#06x} vs {w(OFF_IP_SUM):#06x}/"
            f"{w(OFF_UDP_SUM):#06x})"
        )


def live_image() -> ProgramImage:
    """bpf/live.c compiled (or taken from the cache); checks the maps' value sizes."""
    image = compile_image(LIVE_SOURCE, (LIVE_PROG,))
    sizes = {m.name: m.value_size for m in (*image.maps.values(), *image.extra_maps)}
    want = {"conf": ctypes.sizeof(LiveConf), "state": ctypes.sizeof(LiveState)}
    if any(sizes.get(k) != v for k, v in want.items()):
        raise VtnetError(f"bpf/live.c and live.py disagree on the map layouts: {sizes} vs {want}")
    return image


def tx_packets(ifname: str) -> int | None:
    """The interface's tx_packets (rtnetlink IFLA_STATS64) in the calling thread's
    namespace, or None when it cannot be read."""
    from pyroute2 import IPRoute  # late: only --live needs it here

    try:
        with IPRoute() as ipr:
            st = ipr.link("get", ifname=ifname)[0].get("IFLA_STATS64")
            return None if st is None else int(st["tx_packets"])
    except Exception:  # noqa: BLE001 - a missing statistic only costs the drop check
        return None


# -- the kernel generator ---------------------------------------------------------------


def _value(struct: ctypes.Structure) -> Any:
    """A structure as a map key/value: _bpfsys's map calls are typed for scalars but only
    take the object's address (ctypes.addressof), which any ctypes object has."""
    return struct


class LiveSender:
    """One instance of bpf/live.c aimed at one interface, ready for BPF_PROG_TEST_RUN.

    ``send(n)`` makes one call that generates ``n`` frames and returns how many the
    program redirected.  Must be called from a thread in the interface's network
    namespace (the kernel resolves the context's ifindex in the caller's namespace).
    On failure the constructor closes what it made; ``close()`` releases the program
    and its maps (nothing else exists: nothing is attached anywhere).
    """

    def __init__(self, spec: FrameSpec, ifname: str, ifindex: int, batch: int) -> None:
        gen = FrameGen(spec)
        self.template = np.ascontiguousarray(gen.template)
        self.ifname = ifname
        self.length = int(self.template.shape[0])
        self.batch = max(1, min(batch, MAX_BATCH))
        ip_base, udp_base = checksum_bases(self.template)
        _check_bases(self.template, ip_base, udp_base)
        flags = 0
        if spec.varies:
            flags |= LIVE_WALK
        if spec.random_src:
            flags |= LIVE_RANDOM_SRC
        if spec.random_dst:
            flags |= LIVE_RANDOM_DST
        self.conf = LiveConf(
            ifindex=ifindex,
            flags=flags,
            src_start=spec.src.start,
            dst_start=spec.dst.start,
            src_n=spec.src.n_addrs,
            dst_n=spec.dst.n_addrs,
            sport0=spec.src.port0,
            sport_n=spec.src.n_ports,
            dport0=spec.dst.port0,
            dport_n=spec.dst.n_ports,
            ip_base=ip_base,
            udp_base=udp_base,
        )
        self.prog: LoadedProgram = instantiate(
            live_image(), LIVE_PROG, K.BPF_PROG_TYPE_XDP, name=LIVE_PROG
        )
        try:
            bpf.map_update(self.prog.maps["conf"], ctypes.c_uint32(0), _value(self.conf))
            bpf.map_update(
                self.prog.maps["state"],
                ctypes.c_uint32(0),
                _value(LiveState(dst_addr=spec.dst.start, dst_port=spec.dst.port0)),
            )
        except BaseException:
            self.prog.close()
            raise
        self._data = ctypes.create_string_buffer(self.template.tobytes(), self.length)
        self._ctx = XdpMd(data=0, data_end=self.length, ingress_ifindex=ifindex)
        self._state = LiveState()
        self.count = 0  # frames redirected so far (the program's counter, last read)

    def read_count(self) -> int:
        bpf.map_lookup(self.prog.maps["state"], ctypes.c_uint32(0), _value(self._state))
        self.count = int(self._state.count)
        return self.count

    def peek_count(self) -> int:
        """The program's counter now (from another thread, while a call runs)."""
        st = LiveState()
        bpf.map_lookup(self.prog.maps["state"], ctypes.c_uint32(0), _value(st))
        return int(st.count)

    def send(self, frames: int) -> int:
        """One BPF_PROG_TEST_RUN call of ``frames`` repetitions; returns the frames the
        program redirected in it (fewer only when a signal cut the call short)."""
        attr = K.bpf_attr_test_run(
            prog_fd=self.prog.prog_fd,
            data_in=ctypes.addressof(self._data),
            data_size_in=self.length,
            repeat=frames,
            ctx_in=ctypes.addressof(self._ctx),
            ctx_size_in=ctypes.sizeof(self._ctx),
            flags=K.BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size=self.batch,
        )
        before = self.count
        try:
            bpf.prog_test_run(attr)
        except OSError as exc:
            # a signal ends the call between two batches; the counter says how far it got
            if exc.errno != errno.EINTR:
                raise self._error(exc) from exc
        return self.read_count() - before

    def _error(self, exc: OSError) -> VtnetError:
        what = "BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES"
        if exc.errno in (errno.EPERM, errno.EACCES):
            return PrivilegeError(f"--live: {what} needs CAP_BPF and CAP_NET_ADMIN")
        if exc.errno in (K.ENOTSUPP, errno.EOPNOTSUPP):
            return UnsupportedError(f"--live: this kernel has no {what} (Linux >= 5.18)")
        if exc.errno == errno.ENODEV:
            return DeviceError(f"--live: {self.ifname} disappeared")
        if exc.errno == errno.EINVAL:
            return UnsupportedError(
                f"--live: the kernel refused {what} (EINVAL): a {self.length}-byte frame must "
                f"fit one page with the kernel's headroom (about 3.5 KB)"
            )
        return VtnetError(f"--live: {what}: {exc.strerror}")

    def close(self) -> None:
        self.prog.close()


# -- the worker and the run -------------------------------------------------------------


class LiveWorker(Worker):
    """A pkt-gen worker whose "port" is a LiveSender (the engine's Worker.run drives it:
    affinity, errors, counters, close)."""

    _done: tuple[int, int] = (0, 0)  # (frames, kernel batches) of the completed calls

    def open(self) -> Any:
        """Load the program for the interface; None on failure, after one line on stderr."""
        pspec = parse_port_name(self.port_name, default_prefix=True)
        cfg = self.cfg
        try:
            with enter_netns(cfg.netns):
                try:
                    ifindex = socket.if_nametoindex(pspec.ifname)
                except OSError as exc:
                    raise DeviceError(
                        f"interface {pspec.ifname!r} does not exist (in this network namespace)"
                    ) from exc
            return LiveSender(cfg.spec, pspec.ifname, ifindex, cfg.burst)
        except (VtnetError, OSError) as exc:
            self.out.diag(f"cannot start --live on {pspec.ifname}: {exc}", func="worker")
            self.row[F_ERR] = 1
            self.row[F_DONE] = 1
            self.row[F_RUNNING] = 0
            return None

    def _tx(self, port: Any) -> None:
        sender: LiveSender = port
        cfg = self.cfg
        if threading.current_thread() is not threading.main_thread():
            # ^C is the main thread's business (it sets the stop word); a signal landing
            # here would only cut a call short
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        if cfg.threads > 1 and cfg.affinity < 0:
            # two generators sharing a CPU only take turns: one process per CPU
            os.sched_setaffinity(0, {self.index % (os.cpu_count() or 1)})
        with enter_netns(cfg.netns):
            self._live_loop(sender)

    def _live_loop(self, sender: LiveSender) -> None:
        cfg = self.cfg
        n = self.frames_in
        ifname = sender.ifname
        chunk = CHUNK_START
        pace_chunk = max(1, round(cfg.rate * PACE_PERIOD_S)) if cfg.rate else 0
        sent = events = 0
        self._done = (0, 0)
        self._wait_link()
        tx0 = tx_packets(ifname)
        self.row[F_TIC] = time.monotonic_ns()
        stop = threading.Event()
        poller = threading.Thread(
            target=self._poll_counts, args=(sender, stop), name="pkt-gen-live-counts", daemon=True
        )
        poller.start()
        try:
            next_t = time.monotonic()
            while not self.cancelled() and (n == 0 or sent < n):
                if cfg.rate:
                    # absolute schedule: a late call is caught up by the next ones
                    next_t += pace_chunk / cfg.rate
                    while not self.cancelled() and (d := next_t - time.monotonic()) > 0:
                        time.sleep(min(d, 0.2))
                    if self.cancelled():
                        break
                    want = pace_chunk
                else:
                    want = chunk
                if n:
                    want = min(want, n - sent)
                t0 = time.monotonic()
                done = sender.send(want)
                took = time.monotonic() - t0
                sent += done
                events += -(-done // sender.batch)  # kernel batches: one device flush each
                self._done = (sent, events)
                if not cfg.rate and done and took > 0:
                    chunk = int(min(CHUNK_MAX, max(CHUNK_MIN, done / took * CALL_TARGET_S)))
                if done and sent == done and tx0 is not None:
                    self._check_first_call(ifname, tx0, done)
        finally:
            stop.set()
            poller.join()
            self._publish(sent, events, sender.length)
            self.row[F_TOC] = time.monotonic_ns()
        tx1 = tx_packets(ifname)
        if tx0 is not None and tx1 is not None and tx1 - tx0 < sent:
            time.sleep(0.05)  # the receiving side may still be counting the last batch
            tx1 = tx_packets(ifname) or tx1
        if tx0 is not None and tx1 is not None and tx1 - tx0 < sent:
            self.out.diag(
                f"{ifname}: only {tx1 - tx0} of {sent} frames left the interface "
                f"(tx_packets); the driver dropped the rest",
                func="live_body",
            )

    def _check_first_call(self, ifname: str, tx0: int, done: int) -> None:
        """Stop when the device took (almost) none of the first call's frames."""
        moved = tx_packets(ifname)
        # other traffic may move the counter a little; a device taking XDP frames at
        # all moves it by about `done`
        if moved is not None and moved - tx0 < done // 100:
            raise PktgenError(
                f"--live: {ifname} dropped the frames of the first call ({moved - tx0} of "
                f"{done} left, by its tx_packets); on veth the peer needs an XDP program or "
                f"GRO on (ethtool -K PEER gro on) to take XDP frames"
            )

    def _publish(self, sent: int, events: int, length: int) -> None:
        self.row[F_PKTS] = sent
        self.row[F_BYTES] = sent * length
        self.row[F_EVENTS] = events

    def _poll_counts(self, sender: LiveSender, stop: threading.Event) -> None:
        """Publish the program's running count while a call is in the kernel, so the -T
        reports move smoothly instead of in steps of a whole call."""
        while not stop.wait(POLL_S):
            try:
                count = sender.peek_count()
            except OSError:
                return
            sent, events = self._done
            extra = max(0, count - sent)
            self._publish(sent + extra, events + -(-extra // sender.batch), sender.length)


class LiveRun(Run):
    """pkt-gen's run with kernel-side generation: same reports, same final lines."""

    worker_class: ClassVar[type[Worker]] = LiveWorker

    def __init__(self, cfg: Config, out: TextIO | None = None, err: TextIO | None = None):
        why = live_refusal(cfg)
        if why is not None:
            raise PktgenError(why)
        super().__init__(cfg, out, err)
        # compile once here (bcc runs in a child process): -p workers fork with the
        # image in memory instead of compiling side by side
        live_image()

    def _facts(self) -> int:
        """Source MAC, MTU check; returns the TX queue count (for the header line)."""
        from vtnet_py.device.netlink import read_device

        cfg = self.cfg
        ifname = self.pspec.ifname
        mac, mtu = interface_facts(ifname, cfg.netns)
        if not cfg.src_mac_given:
            cfg.spec = dataclasses.replace(cfg.spec, src_mac=mac)
        if cfg.spec.length - ETH_HLEN > mtu:
            raise PktgenError(
                f"-l {cfg.spec.length}: the IPv4 packet ({cfg.spec.length - ETH_HLEN}"
                f" bytes) exceeds the MTU of {ifname} ({mtu})"
            )
        with enter_netns(cfg.netns):
            info = read_device(ifname)
        return int(info.tx_queues)

    def _header(self) -> None:
        super()._header()
        spec = self.cfg.spec
        walk = (
            "one frame, repeated" if not spec.varies else "addresses and ports walked in the kernel"
        )
        self.output.diag(
            f"--live: BPF_PROG_TEST_RUN live frames out of {self.pspec.ifname}, "
            f"kernel batches of {min(self.cfg.burst, MAX_BATCH)}, {walk}",
            func="live_body",
        )
