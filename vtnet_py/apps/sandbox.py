"""A throw-away sandbox: two network namespaces joined by a veth pair.

Used by ``vtnetmap demo`` (the embedded default main job) so that nothing touches the
machine's real interfaces. Both ends live in namespaces made here (vtnet_py.apps.netlab);
``close`` removes them (which removes the veth too), also after an exception.

Names. The namespaces are ``vtdemo-<owner pid>-<tag>r`` and ``...t``, created exclusively:
a name that exists belongs to another sandbox and is never touched (another tag is drawn),
and a failed create removes only what this sandbox made. A sandbox whose owner died without
closing it (kill -9) is found by the pid in its names: :func:`remove_orphans` removes the
namespaces of sandboxes whose owner is no longer alive. A pid reused by a new process
keeps its old sandbox until that process is gone too: the check errs on the side of
leaving a namespace, never of removing a live one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from vtnet_py._sys.proc import pid_alive
from vtnet_py.apps.netlab import NetLab, list_namespaces, remove_namespace

PREFIX = "vtdemo-"
_ROLE_RX, _ROLE_TX = "r", "t"


def owner_of(name: str, prefix: str = PREFIX) -> int | None:
    """The owner pid recorded in sandbox namespace ``name`` (None: not a sandbox's)."""
    m = re.fullmatch(rf"{re.escape(prefix)}([1-9][0-9]*)-[0-9a-f]+[{_ROLE_RX}{_ROLE_TX}]", name)
    return int(m.group(1)) if m else None


def remove_orphans(prefix: str = PREFIX) -> list[str]:
    """Remove the namespaces of sandboxes whose owner process is gone; their names."""
    removed = []
    for name in list_namespaces():
        pid = owner_of(name, prefix)
        if pid is not None and not pid_alive(pid) and remove_namespace(name):
            removed.append(name)
    return removed


@dataclass
class Sandbox:
    ns_rx: str
    ns_tx: str
    if_rx: str
    if_tx: str
    queues: int
    lab: NetLab = field(repr=False)

    @classmethod
    def create(cls, queues: int = 1, prefix: str = PREFIX) -> Sandbox:
        """Namespaces ``<prefix><pid>-<tag>r`` / ``...t`` and a veth ``vtd<tag>r`` (rx,
        198.51.100.1/24) <-> ``vtd<tag>t`` (tx, .2) with ``queues`` queues each, up.
        On failure whatever was made here is removed, nothing else."""
        lab = NetLab(f"{prefix}{os.getpid()}-")
        try:
            ns_rx = lab.namespace(_ROLE_RX)
            ns_tx = lab.namespace(_ROLE_TX)
            pair = lab.veth(
                ns_rx,
                f"vtd{lab.tag}{_ROLE_RX}",
                ns_tx,
                f"vtd{lab.tag}{_ROLE_TX}",
                queues=queues,
                ip_a="198.51.100.1",
                ip_b="198.51.100.2",  # no IPv6: the receiver sees only the demo's frames
            )
        except BaseException:
            lab.close()
            raise
        return cls(ns_rx=ns_rx, ns_tx=ns_tx, if_rx=pair.a, if_tx=pair.b, queues=queues, lab=lab)

    def close(self) -> None:
        self.lab.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
