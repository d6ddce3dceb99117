"""Preparing a device for netmap use and restoring it: prepare -> SavedState -> restore.

The decisions they apply are the pure checks of :mod:`vtnet_py.device.checks`, re-exported
here; ``prepare``/``restore`` change the device only through a :class:`DeviceLayer`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vtnet_py.device.checks import (
    NATIVE_DRIVERS,
    DeviceLayer,
    DeviceWarning,
    Mode,
    blocks_correctness,
    check_xdp_preconditions,
    fixed_offloads_left_on,
    held_off_offloads,
    offloads_to_disable,
    plan_offloads,
    possible_cpus,
    refuse_default_route,
    running_kernel,
    support_mode,
    virtio_xdp_mtu_limit,
)
from vtnet_py.device.types import DeviceInfo
from vtnet_py.errors import DeviceError, InterfaceChangedError, RefusedError

# -- prepare / restore --------------------------------------------------------------------


@dataclass(frozen=True)
class SavedState:
    """What ``prepare`` changed, to be put back by ``restore``.

    ``channels``: previous counts of the kinds that were changed (e.g. ``{"combined": 2}``)
    or None. ``features``: previous *requested* state of every feature whose state the
    preparation changed (asked, or dropped by the kernel as a dependency).
    """

    ifname: str
    ifindex: int
    driver: str
    mode: Mode
    channels: dict[str, int] | None = None
    features: dict[str, bool] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    version: int = 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SavedState:
        """Parse ``to_json`` output; DeviceError if it is not a saved device state."""
        try:
            d: Any = json.loads(text)
            if not isinstance(d, dict) or d.get("version") != 1:
                raise ValueError("unknown version")
            ch = d.get("channels")
            feats = d.get("features") or {}
            if ch is not None and not (
                isinstance(ch, dict)
                and all(
                    k in ("combined", "rx", "tx") and type(v) is int and 0 <= v < 2**32
                    for k, v in ch.items()
                )
            ):
                raise ValueError("bad channels")
            if not isinstance(feats, dict) or not all(
                isinstance(k, str) and isinstance(v, bool) for k, v in feats.items()
            ):
                raise ValueError("bad features")
            if d.get("mode") not in ("native", "generic"):
                raise ValueError("bad mode")
            ifindex = d.get("ifindex")
            if type(ifindex) is not int or not 0 < ifindex < 2**31:
                raise ValueError("bad ifindex")
            return cls(
                ifname=str(d["ifname"]),
                ifindex=ifindex,
                driver=str(d["driver"]),
                mode=d["mode"],
                channels=dict(ch) if ch is not None else None,
                features=dict(feats),
                warnings=tuple(str(w) for w in d.get("warnings") or ()),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DeviceError(f"saved device state is not readable: {exc}") from exc


def plan_channels(info: DeviceInfo, rings: int | None) -> dict[str, int]:
    """The ``set_channels`` arguments that give ``rings`` queues ({} if nothing to do).

    Combined channels where the driver counts them (virtio_net), rx and tx otherwise
    (veth). RefusedError when ``rings`` is outside what the driver offers.
    """
    if rings is None:
        return {}
    name, ch = info.ifname, info.channels
    if rings < 1:
        raise RefusedError(f"{name}: --rings must be at least 1 (got {rings})")
    if ch.reports_combined:
        if rings > ch.max_combined:
            raise RefusedError(
                f"{name}: {rings} rings requested but the driver offers at most "
                f"{ch.max_combined} combined channels"
            )
        return {} if ch.combined == rings else {"combined": rings}
    if ch.max_rx or ch.max_tx:
        top = min(ch.max_rx, ch.max_tx)
        if rings > top:
            raise RefusedError(
                f"{name}: {rings} rings requested but the driver offers at most "
                f"{ch.max_rx} rx / {ch.max_tx} tx channels"
            )
        out: dict[str, int] = {}
        if ch.rx != rings:
            out["rx"] = rings
        if ch.tx != rings:
            out["tx"] = rings
        return out
    if rings == info.rx_queues:
        return {}
    raise RefusedError(
        f"{name}: the driver '{info.driver}' does not report channels, so the ring count "
        f"cannot be changed from {info.rx_queues}"
    )


def _projected(info: DeviceInfo, ch_plan: Mapping[str, int]) -> DeviceInfo:
    if not ch_plan:
        return info
    return dataclasses.replace(info, channels=dataclasses.replace(info.channels, **ch_plan))


def prepare(
    layer: DeviceLayer,
    ifname: str,
    *,
    rings: int | None = None,
    force: bool = False,
    mode: str | None = None,
    frags: bool = False,
    kernel: tuple[int, int] | None = None,
    cpus: int | None = None,
    page_size: int | None = None,
) -> SavedState:
    """Check ``ifname`` and set it up for netmap use: channels first (when ``rings`` is
    given), then offloads off. Returns what was changed, for :func:`restore`.

    All checks run before anything changes: default route (unless ``force``), support
    mode, virtio_net's XDP preconditions (native mode) on the channel counts it will
    have, and fixed offloads. If a change fails half-way, the steps already done are
    undone before the error is raised, leaving the device as found; should the undo
    fail too, the error carries a note saying what was left.
    """
    info = layer.read(ifname)
    refuse_default_route(info, force)
    chosen, mode_warning = support_mode(info, mode)
    ch_plan = plan_channels(info, rings)
    warnings: list[str] = [mode_warning] if mode_warning else []
    if chosen == "native":
        warnings += [
            str(w)
            for w in check_xdp_preconditions(
                _projected(info, ch_plan),
                frags=frags,
                mode=chosen,
                kernel=kernel,
                cpus=cpus,
                page_size=page_size,
            )
        ]
    feat_plan = plan_offloads(info)
    left_on = fixed_offloads_left_on(info)
    if left_on:
        warnings.append(f"{ifname}: {', '.join(left_on)} stays on (fixed by the driver)")
    held = held_off_offloads(info)
    if held:
        why = " while its veth peer has an XDP program attached" if info.driver == "veth" else ""
        warnings.append(
            f"{ifname}: {', '.join(held)} are off only because the driver holds them off"
            f"{why}, and come back on when it lets them go"
        )
    if ch_plan and info.is_virtio and info.xdp_prog_id and info.xdp_mode == "native":
        raise RefusedError(
            f"{ifname}: virtio_net refuses to change channels while an XDP program is "
            f"attached (program id {info.xdp_prog_id}); detach it first"
        )

    prev_channels: dict[str, int] | None = None
    if ch_plan:
        prev_channels = {k: getattr(info.channels, k) for k in ch_plan}
        layer.set_channels(ifname, **ch_plan)

    prev_features: dict[str, bool] = {}
    if feat_plan:
        try:
            layer.set_features(ifname, feat_plan)
            after = layer.read(ifname)
        except Exception as exc:
            _undo(layer, info, prev_channels, exc)
            raise
        prev_features = _changed_features(info, after, feat_plan)

    return SavedState(
        ifname=ifname,
        ifindex=info.ifindex,
        driver=info.driver,
        mode=chosen,
        channels=prev_channels,
        features=prev_features,
        warnings=tuple(warnings),
    )


def _changed_features(
    before: DeviceInfo, after: DeviceInfo, asked: Mapping[str, bool]
) -> dict[str, bool]:
    """Previous requested state of the asked features and of any feature whose state
    changed as a side effect (the kernel drops TSO with the TX checksum, for one)."""
    out: dict[str, bool] = {}
    for name, f in before.features.items():
        g = after.features.get(name)
        if f.fixed or g is None:
            continue
        if name in asked or g.active != f.active or g.wanted != f.wanted:
            out[name] = f.wanted
    return out


def _undo(
    layer: DeviceLayer,
    before: DeviceInfo,
    prev_channels: Mapping[str, int] | None,
    exc: BaseException,
) -> None:
    """Put back what a failed prepare changed; add a note to ``exc`` if that fails."""
    ifname = before.ifname
    try:
        now = layer.read(ifname)
        back = {
            n: f.wanted
            for n, f in before.features.items()
            if not f.fixed and n in now.features and now.features[n].wanted != f.wanted
        }
        if back:
            layer.set_features(ifname, back)
    except Exception as undo_exc:  # noqa: BLE001 - reported on the original error
        exc.add_note(f"{ifname}: could not restore offloads after the failure: {undo_exc}")
    if prev_channels:
        try:
            layer.set_channels(ifname, **prev_channels)
        except Exception as undo_exc:  # noqa: BLE001
            exc.add_note(
                f"{ifname}: could not restore channels {prev_channels} after the failure: "
                f"{undo_exc}"
            )


def restore(layer: DeviceLayer, saved: SavedState) -> None:
    """Put back the offloads, then the channels, recorded in ``saved``.

    Only features whose requested state differs from the record are set, so a second
    restore does nothing. InterfaceChangedError if the interface was replaced (other
    ifindex). If a step fails, the other is still attempted and the first error is
    raised with notes; what failed is left as it was.
    """
    info = layer.read(saved.ifname)
    if info.ifindex != saved.ifindex:
        raise InterfaceChangedError(
            f"{saved.ifname}: the interface was replaced (ifindex {saved.ifindex} -> "
            f"{info.ifindex}); its saved offloads and channels were not applied to the new one"
        )
    errors: list[Exception] = []
    back = {
        n: v
        for n, v in saved.features.items()
        if n in info.features and info.features[n].wanted != v
    }
    if back:
        try:
            layer.set_features(saved.ifname, back)
        except Exception as exc:  # noqa: BLE001 - collected, raised below
            errors.append(exc)
    if saved.channels:
        ch = info.channels
        todo = {k: v for k, v in saved.channels.items() if getattr(ch, k) != v}
        if todo:
            try:
                layer.set_channels(saved.ifname, **todo)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
    if errors:
        first = errors[0]
        for other in errors[1:]:
            first.add_note(str(other))
        raise first


__all__ = [
    "NATIVE_DRIVERS",
    "DeviceLayer",
    "DeviceWarning",
    "Mode",
    "SavedState",
    "blocks_correctness",
    "check_xdp_preconditions",
    "fixed_offloads_left_on",
    "offloads_to_disable",
    "plan_channels",
    "plan_offloads",
    "possible_cpus",
    "prepare",
    "refuse_default_route",
    "restore",
    "running_kernel",
    "support_mode",
    "virtio_xdp_mtu_limit",
]
