"""Test networks: network namespaces joined by veth pairs, TAPs inside them, over netlink.

One builder for the test fixtures, the benchmarks, the VM harness and the ``vtnetmap demo``
sandbox. A :class:`NetLab` creates network namespaces (``pyroute2.netns``) and the links
inside them (``IPRoute`` opened in the namespace), records what it made, and ``close()``
removes exactly that: the namespaces, and with them every interface, address, route and
XDP program in them. It never creates anything outside a namespace it made, so the
machine's own interfaces are out of its reach.

Names. A namespace is created exclusively: ``/run/netns/<name>`` is made with O_EXCL, so a
name that exists already belongs to someone else and is never touched; the lab draws
another random tag and tries again. Interfaces live only inside the lab's namespaces, so
their names cannot meet anybody else's.

Failures. Every step raises :class:`~vtnet_py.errors.DeviceError` (``PrivilegeError``
without root) naming the namespace or interface; what the lab made before the failure
stays recorded, so ``close()`` (or leaving the ``with`` block) removes it. ``close()`` is
idempotent.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from vtnet_py._sys.netns import NETNS_RUN_DIR, netns
from vtnet_py.errors import DeviceError, PrivilegeError

TAG_BYTES = 3
ATTEMPTS = 16  # fresh tags tried before giving up on a namespace name

# A namespace name becomes a file name under /run/netns; keep it to what `ip netns` prints.
_NS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
_IFNAMSIZ = 16  # include/uapi/linux/if.h, with the terminating NUL


def random_tag() -> str:
    """The random part of a namespace name (hex)."""
    return secrets.token_hex(TAG_BYTES)


def _errmsg(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return os.strerror(exc.code)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _privileged(exc: BaseException) -> bool:
    code = exc.code if isinstance(exc, NetlinkError) else getattr(exc, "errno", None)
    return code in (errno.EPERM, errno.EACCES)


def _fail(what: str, exc: BaseException) -> DeviceError | PrivilegeError:
    if _privileged(exc):
        return PrivilegeError(f"{what} needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)")
    return DeviceError(f"{what} failed: {_errmsg(exc)}")


def remove_namespace(name: str) -> bool:
    """Remove named namespace ``name``; False if it was already gone."""
    try:
        pr_netns.remove(name)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _fail(f"removing network namespace {name}", exc) from exc
    return True


def list_namespaces() -> list[str]:
    """Names under /run/netns (empty when the directory does not exist)."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


@contextmanager
def rtnl(ns: str) -> Iterator[IPRoute]:
    """An ``IPRoute`` socket inside namespace ``ns``; never creates the namespace."""
    try:
        ipr = IPRoute(netns=ns, flags=0)
    except OSError as exc:
        raise _fail(f"opening netlink in network namespace {ns}", exc) from exc
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: IPRoute, ns: str, dev: str) -> int:
    found = ipr.link_lookup(ifname=dev)
    if not found:
        raise DeviceError(f"{dev}: no such interface in network namespace {ns}")
    return int(found[0])


@dataclass(frozen=True)
class LinkState:
    """What the tests and benchmarks ask of an interface, read over netlink."""

    ifindex: int
    lladdr: str  # aa:bb:cc:dd:ee:ff
    mtu: int
    up: bool
    xdp: bool  # a program is attached, in any mode

    @classmethod
    def from_netlink(cls, msg: Any) -> LinkState:
        xdp = msg.get_attr("IFLA_XDP")
        attached = xdp.get_attr("IFLA_XDP_ATTACHED") if xdp is not None else None
        return cls(
            ifindex=int(msg["index"]),
            lladdr=str(msg.get_attr("IFLA_ADDRESS")),
            mtu=int(msg.get_attr("IFLA_MTU")),
            up=bool(msg["flags"] & 1),  # IFF_UP
            # pyroute2 names the mode ('xdp', 'xdpgeneric', ...); XDP_ATTACHED_NONE is None
            xdp=attached not in (None, 0),
        )


def link_state(ns: str, dev: str) -> LinkState:
    """The state of ``dev`` in ``ns``."""
    with rtnl(ns) as ipr:
        (msg,) = ipr.get_links(_index(ipr, ns, dev))
    return LinkState.from_netlink(msg)


def in_namespace(ns: str, argv: list[str]) -> list[str]:
    """``argv`` run inside ``ns`` (``ip netns exec``: it also mounts the namespace's own
    /sys, which the TAP counters and ethtool need)."""
    return ["ip", "netns", "exec", ns, *argv]


@dataclass
class VethPair:
    """``a`` in namespace ``ns_a`` and ``b`` in ``ns_b`` (the same namespace for a pair
    inside one); ``ip_a``/``ip_b`` their IPv4 addresses, if given."""

    ns_a: str
    ns_b: str
    a: str
    b: str
    ip_a: str | None = None
    ip_b: str | None = None

    def end(self, side: str) -> tuple[str, str]:
        """(namespace, interface) of side 'a' or 'b'."""
        if side not in ("a", "b"):
            raise ValueError(f"side {side!r} is neither 'a' nor 'b'")
        return (self.ns_a, self.a) if side == "a" else (self.ns_b, self.b)

    def sh(self, side: str, cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Shell command ``cmd`` inside side ``side``'s namespace; output captured."""
        ns, _ = self.end(side)
        return subprocess.run(
            in_namespace(ns, ["sh", "-c", cmd]), check=check, capture_output=True, text=True
        )

    def sh_a(self, cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sh("a", cmd, check)

    def sh_b(self, cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sh("b", cmd, check)

    def lladdr(self, side: str) -> str:
        """MAC address of one end as text (aa:bb:cc:dd:ee:ff)."""
        return link_state(*self.end(side)).lladdr

    def mac(self, side: str) -> bytes:
        """MAC address of one end as 6 bytes."""
        return bytes.fromhex(self.lladdr(side).replace(":", ""))

    def xdp_attached(self, side: str = "a") -> bool:
        return link_state(*self.end(side)).xdp


class NetLab:
    """Namespaces named ``<prefix><tag><role>`` and the links inside them.

    ``tag`` is random unless given (``self.tag``); a name already taken gets a fresh
    random tag. Use as a context manager, or call ``close()``: both remove everything the
    lab made.
    """

    def __init__(self, prefix: str, tag: str | None = None) -> None:
        self.prefix = prefix
        self.tag = random_tag() if tag is None else tag
        self.namespaces: list[str] = []  # made by this lab, in order
        self._closed = False
        # pyroute2 runs its namespace work in forked children; one that unwinds through
        # our caller's stack (a signal handler that raises, in the child) must not tear
        # down the parent's namespaces.
        self._owner = os.getpid()

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- namespaces --------------------------------------------------------------------

    def namespace(self, role: str = "") -> str:
        """Create a fresh namespace ``<prefix><tag><role>`` with ``lo`` up; its name.

        A name that exists is someone else's: another tag is drawn (``ATTEMPTS`` times)
        and becomes the lab's ``tag``.
        """
        if self._closed:
            raise DeviceError(f"network lab {self.prefix}{self.tag} is closed")
        tag = self.tag
        for _ in range(ATTEMPTS):
            name = f"{self.prefix}{tag}{role}"
            if not _NS_NAME.match(name):
                raise ValueError(f"{name!r} is not a usable network namespace name")
            if self._create_exclusive(name):
                self.tag = tag  # the lab's later names follow the tag that was free
                break
            tag = random_tag()
        else:
            raise DeviceError(
                f"network namespace {self.prefix}<tag>{role}: every name tried is taken"
            )
        self.namespaces.append(name)
        self.set_up(name, "lo")
        return name

    def _create_exclusive(self, name: str) -> bool:
        """Create ``name``; False when it exists (someone else's: left alone)."""
        path = os.path.join(NETNS_RUN_DIR, name)
        if os.path.lexists(path):
            return False
        try:
            pr_netns.create(name)
        except FileExistsError:
            return False  # made by someone else between the look and the O_EXCL create
        except Exception as exc:
            # The name was free a moment ago, so a file there now is this attempt's (a
            # create that failed after its O_EXCL step, or timed out).
            if os.path.lexists(path):
                remove_namespace(name)
            raise _fail(f"creating network namespace {name}", exc) from exc
        return True

    def _ours(self, ns: str) -> None:
        if ns not in self.namespaces:
            raise ValueError(f"network namespace {ns!r} was not made by this lab")

    # -- links ---------------------------------------------------------------------------

    def veth(
        self,
        ns_a: str,
        a: str,
        ns_b: str,
        b: str,
        *,
        queues: int = 1,
        mtu: int | None = None,
        ip_a: str | None = None,
        ip_b: str | None = None,
        prefixlen: int = 24,
        up: bool = True,
        ipv6: bool = False,
    ) -> VethPair:
        """A veth pair ``a`` (in ``ns_a``) <-> ``b`` (in ``ns_b``; may equal ``ns_a``),
        ``queues`` RX and TX queues on each end, optional MTU and IPv4 addresses, link up.
        Without ``ipv6`` the ends carry no IPv6 (no router solicitations or DAD frames in
        tests that count frames)."""
        self._ours(ns_a)
        self._ours(ns_b)
        for dev in (a, b):
            _check_ifname(dev)
        if queues < 1:
            raise ValueError(f"veth {a}: {queues} queues (at least 1)")
        common: dict[str, Any] = {"num_tx_queues": queues, "num_rx_queues": queues}
        if mtu:
            common["mtu"] = mtu
        what = f"creating veth {a} ({ns_a}) <-> {b} ({ns_b})"
        try:
            peer_ns = os.open(os.path.join(NETNS_RUN_DIR, ns_b), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _fail(what, exc) from exc
        try:
            with rtnl(ns_a) as ipr:
                ipr.link(
                    "add",
                    ifname=a,
                    kind="veth",
                    peer={"ifname": b, "net_ns_fd": peer_ns, **common},
                    **common,
                )
        except (NetlinkError, OSError) as exc:
            raise _fail(what, exc) from exc
        finally:
            os.close(peer_ns)
        pair = VethPair(ns_a=ns_a, ns_b=ns_b, a=a, b=b, ip_a=ip_a, ip_b=ip_b)
        for ns, dev, ip in ((ns_a, a, ip_a), (ns_b, b, ip_b)):
            self.configure(ns, dev, ip=ip, prefixlen=prefixlen, up=up, ipv6=ipv6)
        return pair

    def tap(
        self,
        ns: str,
        name: str,
        *,
        queues: int = 1,
        ip: str | None = None,
        prefixlen: int = 24,
        up: bool = True,
        ipv6: bool = True,
    ) -> str:
        """A persistent TAP ``name`` in ``ns`` (multi_queue when ``queues`` > 1, no packet
        information header: what QEMU's ``-netdev tap`` opens), optional address, up."""
        self._ours(ns)
        _check_ifname(name)
        flags = {"no_pi": 1, "multi_queue": 1 if queues > 1 else 0}
        try:
            with rtnl(ns) as ipr:
                ipr.link("add", ifname=name, kind="tuntap", mode="tap", ifr=flags)
        except (NetlinkError, OSError) as exc:
            raise _fail(f"creating TAP {name} in {ns}", exc) from exc
        self.configure(ns, name, ip=ip, prefixlen=prefixlen, up=up, ipv6=ipv6)
        return name

    def configure(
        self,
        ns: str,
        dev: str,
        *,
        ip: str | None = None,
        prefixlen: int = 24,
        up: bool = True,
        ipv6: bool = True,
    ) -> None:
        """IPv6 off (unless ``ipv6``), IPv4 address ``ip``, then link up, on ``dev``."""
        self._ours(ns)
        if not ipv6:
            self.sysctl(ns, f"net/ipv6/conf/{dev}/disable_ipv6", "1")
        try:
            with rtnl(ns) as ipr:
                index = _index(ipr, ns, dev)
                if ip:
                    ipr.addr("add", index=index, address=ip, prefixlen=prefixlen)
                if up:
                    ipr.link("set", index=index, state="up")
        except NetlinkError as exc:
            raise _fail(f"configuring {dev} in {ns}", exc) from exc

    def set_up(self, ns: str, dev: str) -> None:
        self.configure(ns, dev)

    def neighbour(self, ns: str, dev: str, ip: str, lladdr: str) -> None:
        """A permanent neighbour entry ``ip`` -> ``lladdr`` on ``dev`` (replaces one)."""
        self._ours(ns)
        try:
            with rtnl(ns) as ipr:
                ipr.neigh(
                    "replace",
                    dst=ip,
                    lladdr=lladdr,
                    ifindex=_index(ipr, ns, dev),
                    state="permanent",
                )
        except NetlinkError as exc:
            raise _fail(f"neighbour {ip} on {dev} in {ns}", exc) from exc

    def sysctl(self, ns: str, key: str, value: str) -> None:
        """Write ``/proc/sys/<key>`` as seen from ``ns`` (net.* sysctls are per namespace
        and resolved for the thread that opens them)."""
        self._ours(ns)
        try:
            with netns(ns), open(os.path.join("/proc/sys", key), "w") as f:
                f.write(value)
        except OSError as exc:
            raise _fail(f"sysctl {key} in {ns}", exc) from exc

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        """Remove every namespace this lab made, newest first (their interfaces go with
        them); one already gone is skipped. Idempotent. If a removal fails the others are
        still tried, and DeviceError names the ones left. In a forked copy of the owner
        it does nothing."""
        self._closed = True
        if os.getpid() != self._owner:
            return
        left: list[str] = []
        while self.namespaces:
            name = self.namespaces.pop()
            try:
                remove_namespace(name)
            except (DeviceError, PrivilegeError) as exc:
                left.append(str(exc))
        if left:
            raise DeviceError("; ".join(left))


def _check_ifname(dev: str) -> None:
    if not dev or len(dev) >= _IFNAMSIZ or "/" in dev or dev.strip() != dev:
        raise ValueError(f"{dev!r} is not an interface name (1-15 characters, no '/')")
