"""DeviceWatch: notices, for an open port, that the interface changed under it."""

from __future__ import annotations

import errno
import time

from pyroute2.ethtool.ioctl import IoctlEthtool, NoSuchDevice, NotSupportedError

from vtnet_py.device.types import Channels
from vtnet_py.ebpf.steer import Steering
from vtnet_py.errors import DeviceError, InterfaceChangedError

CHECK_INTERVAL_S = 0.1


def _fmt_channels(ch: Channels) -> str:
    parts = [f"{k} {getattr(ch, k)}" for k in ("combined", "rx", "tx", "other") if getattr(ch, k)]
    return ", ".join(parts) or "none reported"


class DeviceWatch:
    """Notices, for an open port, that the interface changed under it: channel counts
    (``ethtool -L``, possible on veth while XDP is attached), the interface gone, or the
    steering program detached. netmap_config's "fail clearly" choice: ``check`` raises
    InterfaceChangedError, and keeps raising while the change lasts.

    Create it in the port's network namespace: it keeps an ethtool socket made there,
    so checks need no setns. A check costs one ioctl (plus one bpf() call for the
    program) and runs at most every ``interval`` seconds. ``close`` frees the socket.
    """

    def __init__(
        self, port_name: str, ifname: str, channels: Channels, interval: float = CHECK_INTERVAL_S
    ):
        self.port_name = port_name
        self.ifname = ifname
        self.channels = channels
        self.interval = interval
        self._eth: IoctlEthtool | None = IoctlEthtool(ifname)
        self._next = time.monotonic() + interval

    def _current(self) -> Channels:
        assert self._eth is not None
        try:
            return Channels.from_netlink(self._eth.get_channels())
        except NotSupportedError:
            return Channels()
        except (NoSuchDevice, OSError) as exc:
            if isinstance(exc, NoSuchDevice) or getattr(exc, "errno", None) == errno.ENODEV:
                raise InterfaceChangedError(
                    f"{self.port_name}: {self.ifname} is gone; reopen the port"
                ) from exc
            raise DeviceError(
                f"{self.port_name}: reading the channels of {self.ifname} failed: {exc}"
            ) from exc

    def check(self, steering: Steering | None = None, *, now: float | None = None) -> None:
        """Raise InterfaceChangedError if the interface changed (rate-limited)."""
        if self._eth is None:
            return
        now = time.monotonic() if now is None else now
        if now < self._next:
            return
        self._next = now + self.interval
        cur = self._current()
        old = self.channels
        if (cur.combined, cur.rx, cur.tx, cur.other) != (old.combined, old.rx, old.tx, old.other):
            raise InterfaceChangedError(
                f"{self.port_name}: {self.ifname} channels changed from {_fmt_channels(old)} "
                f"to {_fmt_channels(cur)}; reopen the port"
            )
        if steering is not None and not steering.still_attached():
            raise InterfaceChangedError(
                f"{self.port_name}: the steering program on {self.ifname} was detached "
                "(`vtnetmap detach`?); reopen the port"
            )

    def close(self) -> None:
        eth, self._eth = self._eth, None
        if eth is not None:
            eth.close()
