"""FakeDeviceLayer: an in-memory device layer for unit tests (no kernel).

It holds :class:`DeviceInfo` values, applies ``set_features``/``set_channels`` to them the
way a driver would, records every call, and can be told to behave like a difficult driver:
refuse ``set_channels`` (virtio_net with XDP attached), refuse changing one feature
(virtio_net answering EBUSY for rx-gro-hw while attached), or drop features that depend on
another one (TSO needs a TX checksum feature, as the kernel's netdev_fix_features does).
Refusal messages are the real layer's, so tests of decisions see what users will see.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vtnet_py.device.netlink import fixed_features_message, no_such_interface
from vtnet_py.device.types import Channels, DeviceInfo, Feature, XdpFeatures
from vtnet_py.errors import BusyError, RefusedError


class FakeDeviceLayer:
    """A :class:`~vtnet_py.device.DeviceLayer` over DeviceInfo values held in memory.

    ``calls`` lists ``(method, ifname, args)`` tuples in order; reads are recorded too.
    """

    def __init__(
        self,
        devices: Iterable[DeviceInfo] = (),
        *,
        requires_any: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.devices: dict[str, DeviceInfo] = {d.ifname: d for d in devices}
        self.calls: list[tuple[str, str, Any]] = []
        # feature -> features of which at least one must be active for it to be active
        self.requires_any: dict[str, tuple[str, ...]] = {
            k: tuple(v) for k, v in (requires_any or {}).items()
        }
        # what read_xdp_features reports per interface (absent: None, as before 6.3)
        self.xdp_features: dict[str, XdpFeatures] = {}
        self._refuse_channels: dict[str, str] = {}
        self._refuse_features: dict[str, dict[str, str]] = {}

    # -- configuring the double ----------------------------------------------------------

    def add(self, info: DeviceInfo) -> None:
        self.devices[info.ifname] = info

    def remove(self, ifname: str) -> None:
        del self.devices[ifname]

    def refuse_channels(self, ifname: str, reason: str = "EINVAL") -> None:
        """Make ``set_channels`` on ``ifname`` fail as the driver would (errno name)."""
        self._refuse_channels[ifname] = reason

    def refuse_feature(self, ifname: str, name: str, reason: str = "EBUSY") -> None:
        """Make changing feature ``name`` fail (EBUSY -> BusyError, else RefusedError)."""
        self._refuse_features.setdefault(ifname, {})[name] = reason

    def mutating_calls(self) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if not c[0].startswith("read")]

    # -- DeviceLayer -----------------------------------------------------------------------

    def read(self, ifname: str) -> DeviceInfo:
        self.calls.append(("read", ifname, None))
        try:
            return self.devices[ifname]
        except KeyError:
            raise no_such_interface(ifname) from None

    def read_xdp_features(self, ifname: str, ifindex: int) -> XdpFeatures | None:
        self.calls.append(("read_xdp_features", ifname, ifindex))
        if ifname not in self.devices:
            raise no_such_interface(ifname)
        return self.xdp_features.get(ifname)

    def read_channels(self, ifname: str) -> Channels:
        self.calls.append(("read_channels", ifname, None))
        return self.read_quiet(ifname).channels

    def set_features(self, ifname: str, features: Mapping[str, bool]) -> None:
        self.calls.append(("set_features", ifname, dict(features)))
        info = self.read_quiet(ifname)
        feats = dict(info.features)
        held: dict[str, bool] = {}
        for name, value in features.items():
            cur = feats.get(name)
            if cur is None:
                raise RefusedError(f"{ifname}: the driver has no feature '{name}'")
            if cur.fixed and cur.active != bool(value):
                held[name] = cur.active
            reason = self._refuse_features.get(ifname, {}).get(name)
            if reason is not None and cur.wanted != bool(value):
                state = "on" if value else "off"
                if reason == "EBUSY":
                    raise BusyError(
                        f"{ifname}: the driver refused to set features ({name} {state}): "
                        "device busy (EBUSY)"
                    )
                raise RefusedError(
                    f"{ifname}: the driver refused to set features ({name} {state}) ({reason})"
                )
        for name, value in features.items():
            if name not in held:  # like the real layer: fixed ones stay, the rest is set
                cur = feats[name]
                feats[name] = dataclasses.replace(cur, requested=bool(value), active=bool(value))
        # Derived state, like netdev_update_features: a feature is active only if it is
        # wanted and (when it has prerequisites) one of them is active.
        for name, prereqs in self.requires_any.items():
            cur = feats.get(name)
            if cur is None or cur.fixed:
                continue
            ok = any(feats[p].active for p in prereqs if p in feats)
            feats[name] = dataclasses.replace(cur, active=cur.wanted and ok)
        self.devices[ifname] = dataclasses.replace(info, features=feats)
        if held:
            raise RefusedError(fixed_features_message(ifname, held, info.driver))

    def set_channels(
        self,
        ifname: str,
        combined: int | None = None,
        rx: int | None = None,
        tx: int | None = None,
    ) -> None:
        self.calls.append(("set_channels", ifname, {"combined": combined, "rx": rx, "tx": tx}))
        info = self.read_quiet(ifname)
        want = {"combined": combined, "rx": rx, "tx": tx}
        what = "set channels to " + " ".join(f"{k} {v}" for k, v in want.items() if v is not None)
        reason = self._refuse_channels.get(ifname)
        if reason is not None:
            raise RefusedError(f"{ifname}: the driver refused to {what} ({reason})")
        ch = info.channels
        new = dataclasses.replace(
            ch,
            combined=ch.combined if combined is None else combined,
            rx=ch.rx if rx is None else rx,
            tx=ch.tx if tx is None else tx,
        )
        # ethtool core's own check (ethnl/ioctl set_channels): counts above max are EINVAL,
        # and a device must keep at least one RX and one TX path.
        if (
            new.combined > ch.max_combined
            or new.rx > ch.max_rx
            or new.tx > ch.max_tx
            or new.combined + new.rx == 0
            or new.combined + new.tx == 0
        ):
            raise RefusedError(f"{ifname}: the driver refused to {what} (EINVAL)")
        self.devices[ifname] = dataclasses.replace(info, channels=new)

    def read_quiet(self, ifname: str) -> DeviceInfo:
        """The current value without recording a call."""
        try:
            return self.devices[ifname]
        except KeyError:
            raise no_such_interface(ifname) from None


def make_info(
    ifname: str = "vt0",
    *,
    driver: str = "veth",
    ifindex: int = 7,
    channels: Channels | None = None,
    features: Mapping[str, bool | tuple[bool, bool]] | None = None,
    **kw: Any,
) -> DeviceInfo:
    """Convenience builder for tests: ``features`` maps a name to ``active`` or to
    ``(active, fixed)``."""
    feats: dict[str, Feature] = {}
    for name, spec in (features or {}).items():
        active, fixed = spec if isinstance(spec, tuple) else (spec, False)
        feats[name] = Feature(name, active=active, fixed=fixed, requested=active)
    return DeviceInfo(
        ifname=ifname,
        ifindex=ifindex,
        driver=driver,
        channels=channels if channels is not None else Channels(),
        features=feats,
        **kw,
    )
