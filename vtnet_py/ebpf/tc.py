"""TC attachments of BPF programs: a tcx link where the kernel has tcx, else clsact + cls_bpf.

tcx links (Linux 6.6+) die with the last fd, like the steering program's XDP link. Older
kernels get a clsact qdisc with a direct-action cls_bpf filter, which outlives a crashed
process; such filters are found again by program name (:func:`filters_named`) and removed
by whoever cleans up after a dead owner. A classic cls_bpf filter with an act_mirred action
redirects what it matches into another interface's ingress (``mirred_to``).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Collection
from contextlib import suppress
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vtnet_py._sys import abi as K
from vtnet_py._sys import bpf as bpf
from vtnet_py.ebpf.build import LoadedProgram
from vtnet_py.errors import DeviceError, PrivilegeError

TC_MODE_ENV = "VTNETMAP_HOST_TC"  # "tcx" or "clsact": force the attachment kind
TC_PRIO = 0xC1  # cls_bpf filter priority used for our filters (clsact fallback only)
TC_HANDLE = 1


class TcAttachment:
    """One TC program on one hook of one interface: a tcx link or a cls_bpf filter
    (direct-action), or with ``mirred_to`` a classic cls_bpf filter whose act_mirred action
    redirects every frame it matches into that interface's ingress.

    ``mode`` is None (tcx, else clsact), "tcx" or "clsact". A failed attach leaves nothing.
    """

    def __init__(
        self, ifindex: int, egress: bool, prog: LoadedProgram, mode: str | None, mirred_to: int = 0
    ):
        self.ifindex = ifindex
        self.egress = egress
        self.link_fd = -1
        self.kind = ""
        self.created_qdisc = False
        if mirred_to:
            self._attach_cls_bpf(prog, mirred_to)
            self.kind = "mirred"
            return
        if mode in (None, "tcx"):
            try:
                self.link_fd = bpf.link_create(
                    prog.prog_fd, ifindex, K.BPF_TCX_EGRESS if egress else K.BPF_TCX_INGRESS
                )
                self.kind = "tcx"
                return
            except OSError as exc:
                if exc.errno == errno.EPERM:
                    raise PrivilegeError(
                        "attaching a TC program needs CAP_NET_ADMIN and CAP_BPF"
                    ) from exc
                # EINVAL: a kernel without tcx (before 6.6) does not know the attach type
                if mode == "tcx" or exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise DeviceError(
                        f"ifindex {ifindex}: tcx attach failed: {exc.strerror}"
                    ) from exc
        self._attach_cls_bpf(prog)
        self.kind = "clsact"

    @property
    def parent(self) -> int:
        return K.TC_H_CLSACT_EGRESS if self.egress else K.TC_H_CLSACT_INGRESS

    def _attach_cls_bpf(self, prog: LoadedProgram, mirred_to: int = 0) -> None:
        if mirred_to:
            how: dict[str, Any] = {
                "action": {
                    "kind": "mirred",
                    "direction": "ingress",
                    "action": "redirect",
                    "ifindex": mirred_to,
                }
            }
        else:
            how = {"direct_action": True}
        with IPRoute() as ipr:
            try:
                ipr.tc("add", "clsact", self.ifindex)
                self.created_qdisc = True
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise DeviceError(
                        f"ifindex {self.ifindex}: adding a clsact qdisc: {exc}"
                    ) from exc
            try:
                ipr.tc(
                    "add-filter",
                    "bpf",
                    self.ifindex,
                    TC_HANDLE,
                    fd=prog.prog_fd,
                    name=prog.name,
                    parent=self.parent,
                    classid=1,
                    prio=TC_PRIO,
                    **how,
                )
            except NetlinkError as exc:
                if self.created_qdisc:
                    with suppress(NetlinkError):
                        ipr.tc("del", "clsact", self.ifindex)
                raise DeviceError(
                    f"ifindex {self.ifindex}: adding the {prog.name} filter: {exc}"
                ) from exc

    def detach(self) -> None:
        """Remove the attachment (idempotent; a vanished interface is not an error)."""
        if self.kind == "tcx":
            self.close_fd()
        elif self.kind in ("clsact", "mirred"):
            with IPRoute() as ipr:
                del_filter(ipr, self.ifindex, self.parent, TC_PRIO, TC_HANDLE)
                if self.created_qdisc and not filters(ipr, self.ifindex):
                    with suppress(NetlinkError):
                        ipr.tc("del", "clsact", self.ifindex)
        self.kind = ""

    def close_fd(self) -> None:
        """Close the tcx link fd only (no netlink): what a finalizer may do. A cls_bpf
        filter stays until :meth:`detach` or a stale-filter cleanup removes it."""
        if self.link_fd >= 0:
            os.close(self.link_fd)
            self.link_fd = -1


def filters(ipr: IPRoute, ifindex: int) -> list[Any]:
    """Every TC filter on the clsact hooks of ``ifindex``."""
    out = []
    for parent in (K.TC_H_CLSACT_INGRESS, K.TC_H_CLSACT_EGRESS):
        try:
            out += [f for f in ipr.get_filters(index=ifindex, parent=parent) if f.get("TCA_KIND")]
        except NetlinkError:
            pass
    return out


def del_filter(ipr: IPRoute, ifindex: int, parent: int, prio: int, handle: int) -> None:
    """Delete one cls_bpf filter; one that is already gone is not an error."""
    with suppress(NetlinkError):
        ipr.tc("del-filter", "bpf", ifindex, handle, parent=parent, prio=prio)


def filters_named(ipr: IPRoute, ifindex: int, names: Collection[str]) -> list[tuple[int, int, int]]:
    """(parent, prio, handle) of the cls_bpf filters on ``ifindex`` whose program is named
    one of ``names``."""
    out = []
    for f in filters(ipr, ifindex):
        if f.get("TCA_KIND") != "bpf":
            continue
        opts = f.get("TCA_OPTIONS")
        name = opts.get("TCA_BPF_NAME") if opts is not None else None
        if name in names:
            out.append((f["parent"], f["info"] >> 16, f["handle"]))
    return out


__all__ = ["TC_MODE_ENV", "TcAttachment", "del_filter", "filters", "filters_named"]
