"""A throw-away sandbox: two network namespaces joined by a veth pair.

Used by ``vtnetmap demo`` (the embedded default main job) so that nothing touches the
machine's real interfaces. Both ends live in namespaces made here; ``close`` removes them
(which removes the veth too), also after an exception.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass

from vtnet_py.errors import DeviceError


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise DeviceError(f"ip {' '.join(args)}: {r.stderr.strip()}")


@dataclass
class Sandbox:
    ns_rx: str
    ns_tx: str
    if_rx: str
    if_tx: str
    queues: int

    @classmethod
    def create(cls, queues: int = 1, prefix: str = "vtdemo") -> Sandbox:
        tag = secrets.token_hex(2)
        sb = cls(
            ns_rx=f"{prefix}{tag}r",
            ns_tx=f"{prefix}{tag}t",
            if_rx=f"vtd{tag}r",
            if_tx=f"vtd{tag}t",
            queues=queues,
        )
        try:
            _ip("netns", "add", sb.ns_rx)
            _ip("netns", "add", sb.ns_tx)
            q = str(queues)
            _ip(
                "link",
                "add",
                sb.if_rx,
                "numtxqueues",
                q,
                "numrxqueues",
                q,
                "netns",
                sb.ns_rx,
                "type",
                "veth",
                "peer",
                "name",
                sb.if_tx,
                "numtxqueues",
                q,
                "numrxqueues",
                q,
                "netns",
                sb.ns_tx,
            )
            for ns, dev, addr in (
                (sb.ns_rx, sb.if_rx, "198.51.100.1/24"),
                (sb.ns_tx, sb.if_tx, "198.51.100.2/24"),
            ):
                _ip("-n", ns, "addr", "add", addr, "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
        except BaseException:
            sb.close()
            raise
        return sb

    def close(self) -> None:
        for ns in (self.ns_rx, self.ns_tx):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
