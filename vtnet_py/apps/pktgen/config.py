"""pkt-gen's run configuration: the options checked, the worker layout, the shared counters.

Everything here is checked before any device is touched (Config.__post_init__): a bad
value is one line naming the option.  ``interface_facts`` and ``worker_port_names``
read the interface and the port name once the options are known good.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import socket
import struct
from dataclasses import dataclass, field

from vtnet_py._sys.abi import SIOCGIFHWADDR, SIOCGIFMTU
from vtnet_py._sys.netns import netns as enter_netns
from vtnet_py.apps.pktgen.spec import FrameSpec
from vtnet_py.errors import VtnetError
from vtnet_py.netmap.plan import MAX_FRAGS, NR_BUF_SIZE
from vtnet_py.netmap.portname import PortSpec, RegMode, parse_port_name

FUNCTIONS = ("tx", "rx", "ping", "pong", "txseq", "rxseq")
DEFAULT_BURST = {"tx": 512, "rx": 512, "ping": 1, "pong": 1, "txseq": 512, "rxseq": 512}
SENDERS = ("tx", "txseq")
RECEIVERS = ("rx", "rxseq")
MIN_SPACE_NONE = 99999  # pkt-gen's "not measured in this interval"
TX_SPINS = 20  # txsyncs tried before blocking in poll when the TX rings are full
RX_IDLE_S = 1.0  # -W: a receiver stops after this much silence (pkt-gen: 1 s)

# Shared counter fields, one int64 row per worker.
F_PKTS, F_BYTES, F_EVENTS, F_MIN_SPACE, F_TIC, F_TOC, F_DONE, F_ERR = range(8)
F_SEQ_RECEIVED, F_SEQ_LOST, F_SEQ_GAPS, F_SEQ_GAP_PKTS, F_SEQ_OOO = range(8, 13)
F_RUNNING = 13
# the kernel's XDP_STATISTICS of the worker's RX sockets, summed over its rings
F_RX_DROPPED, F_RX_RING_FULL, F_FILL_EMPTY = range(14, 17)
NFIELDS = 17

MAX_FRAGS_OPT = 63  # pkt-gen's -F range is 1..63
SEED_MAX = (1 << 63) - 1


class PktgenError(VtnetError):
    """A pkt-gen option combination that cannot apply here (one line, says why)."""


@dataclass(frozen=True)
class FragPlan:
    """How a frame is cut into slots (-F/-M, as pkt-gen): ``count`` slots, all but the
    last ``size`` bytes, the last the rest (``last``)."""

    count: int
    size: int
    last: int

    @classmethod
    def make(cls, length: int, frags: int, frag_size: int, buf_size: int) -> FragPlan:
        """pkt-gen's rule: ``length / frags`` bytes a fragment, unless that is more than
        ``frag_size`` (0: no limit) or a buffer holds: then fragments of that size, as
        many as the frame needs."""
        cap = min(frag_size or buf_size, buf_size)
        size = length // frags
        if size > cap:
            size = cap
            frags = -(-length // cap)
        last = length - (frags - 1) * size
        if last > cap:  # pkt-gen would overfill the last slot here: one more instead
            frags = -(-length // size)
            last = length - (frags - 1) * size
        return cls(frags, size, last)

    def slot_lens(self) -> list[int]:
        return [self.size] * (self.count - 1) + [self.last]


@dataclass
class Config:
    """Everything a pkt-gen run needs; built by the CLI from pkt-gen's options."""

    port: str
    function: str = "rx"
    count: int = 0
    spec: FrameSpec = field(default_factory=FrameSpec)
    burst: int = 0  # 0: the function's default
    threads: int = 1
    report_ms: int = 1000
    wait_link: float = 2.0
    forever: bool = True  # False with -W
    rate: int = 0
    averages: bool = False
    normalize: bool = True
    framing: int = 0
    as_json: bool = False
    netns: str | None = None
    seed: int | None = None
    src_mac_given: bool = False
    affinity: int = -1  # -a: first CPU; worker i runs on CPU (a + i) % cpus
    cpus: int = 0  # -c: CPUs to use (0: all)
    frags: int = 1  # -F: fragments (slots) a frame
    frag_size: int = 0  # -M: the most bytes a fragment (0: a buffer)
    dump: bool = False  # -X: print every slot sent or received
    verbose: int = 0  # -v: start-up details and the sockets' statistics
    busy_poll: bool = False  # --busy-poll: poll() spins on the rings (latency)

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS:
            raise PktgenError(
                f"-f {self.function}: unknown function (one of {', '.join(FUNCTIONS)})"
            )
        self._check_numbers()
        self._check_frags()
        if self.dump and self.as_json:
            raise PktgenError("-X: the dumps are text on stdout, which --json keeps for JSON")
        if self.burst == 0:
            self.burst = DEFAULT_BURST[self.function]
        if self.burst < 1:
            raise PktgenError(f"-b {self.burst}: the burst must be at least 1")
        if self.threads < 1:
            raise PktgenError(f"-p {self.threads}: at least one thread")
        if self.threads > 1 and self.function in ("ping", "pong", "txseq"):
            raise PktgenError(f"-p {self.threads}: -f {self.function} runs on one thread only")
        if self.count < 0:
            raise PktgenError(f"-n {self.count}: the count cannot be negative")
        if self.rate and self.function in RECEIVERS + ("pong",):
            raise PktgenError(f"-R: -f {self.function} does not transmit at its own pace")
        if self.spec.raw is not None and self.function != "tx":
            raise PktgenError(f"-P: the frame is sent with -f tx, not -f {self.function}")
        want = {"tx": "plain", "txseq": "seq", "ping": "ping"}.get(self.function)
        if want is not None and self.spec.payload != want:
            self.spec = dataclasses.replace(self.spec, payload=want)  # type: ignore[arg-type]
        try:
            parse_port_name(self.port, default_prefix=True)
        except VtnetError as exc:
            raise PktgenError(f"-i {self.port}: {exc}") from exc

    def _check_numbers(self) -> None:
        ncpu = os.cpu_count() or 1
        if self.rate < 0:
            raise PktgenError(f"-R {self.rate}: the rate cannot be negative")
        if not 0 <= self.cpus <= ncpu:
            raise PktgenError(f"-c {self.cpus}: this machine has {ncpu} cpus")
        if not -1 <= self.affinity < ncpu:
            raise PktgenError(f"-a {self.affinity}: a CPU number 0..{ncpu - 1} (or -1: none)")
        if self.report_ms < 1:
            raise PktgenError(f"-T {self.report_ms}: the report interval must be >= 1 ms")
        if self.wait_link < 0:
            raise PktgenError(f"-w {self.wait_link:g}: the wait cannot be negative")
        if self.seed is not None and not 0 <= self.seed <= SEED_MAX:
            raise PktgenError(f"--seed {self.seed}: a seed is 0..2**63-1")

    def _check_frags(self) -> None:
        if not 1 <= self.frags <= MAX_FRAGS_OPT:
            raise PktgenError(f"-F {self.frags}: fragments a frame are 1..{MAX_FRAGS_OPT}")
        if self.frag_size < 0 or self.frag_size > 0xFFFF:
            raise PktgenError(f"-M {self.frag_size}: a fragment size is 1..65535")
        multi = self.frags > 1 or self.frag_size > 0
        if multi and self.function not in SENDERS:
            raise PktgenError(
                f"-F/-M: -f {self.function} does not cut frames (receivers take the "
                f"NS_MOREFRAG chains as they come)"
            )
        if multi and self.spec.min_length:
            raise PktgenError("-F/-M: frames of one length only (give one -l)")
        plan = self.frag_plan
        if plan.count > 1 and self.spec.vnet_hdr_len:
            raise PktgenError(
                f"-H {self.spec.vnet_hdr_len}: a virtio-net header goes with single-slot "
                f"frames only ({plan.count} slots a frame here)"
            )
        if plan.count > MAX_FRAGS:
            raise PktgenError(
                f"-F/-M: {plan.count} slots of {plan.size} bytes a frame; AF_XDP takes at "
                f"most {MAX_FRAGS} (raise -M or lower -l)"
            )

    @property
    def frag_plan(self) -> FragPlan:
        """How each frame is cut into slots (one slot unless -F/-M or -l ask for more)."""
        length = self.spec.max_slot_len
        if self.function not in SENDERS:
            return FragPlan(1, length, length)
        return FragPlan.make(length, self.frags, self.frag_size, NR_BUF_SIZE)


# -- interface facts (read in the port's namespace) ------------------------------------


def interface_facts(ifname: str, ns: str | None) -> tuple[bytes, int]:
    """(MAC address, MTU) of ``ifname``, read with ioctls in namespace ``ns``."""
    with enter_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16s16x", ifname.encode())
        try:
            hw = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)
            mtu_raw = fcntl.ioctl(s.fileno(), SIOCGIFMTU, req)
        except OSError as exc:
            raise PktgenError(f"{ifname}: cannot read the interface: {exc.strerror}") from exc
    finally:
        s.close()
    mac = hw[18:24]
    (mtu,) = struct.unpack_from("i", mtu_raw, 16)
    return mac, mtu


def worker_port_names(cfg: Config) -> list[str]:
    """The port each worker opens: the name as given, or ring i of it with -p N."""
    spec = parse_port_name(cfg.port, default_prefix=True)
    if cfg.threads == 1:
        return [spec.name if spec.name.startswith("netmap:") else str(spec)]
    if spec.mode is not RegMode.ALL_NIC:
        raise PktgenError(
            f"-p {cfg.threads}: {cfg.port} names one ring already; "
            f"give the interface (netmap:IF) to spread over rings"
        )
    names = []
    for i in range(cfg.threads):
        one: PortSpec = dataclasses.replace(spec, name="", mode=RegMode.ONE_NIC, ring_id=i)
        names.append(str(one))
    return names
