"""vtnetmap: netmap-style rings over AF_XDP, driven from Python.

    from vtnet_py import open_port
    with open_port("netmap:veth0") as port:
        rx = port.rx_rings[0]
        port.poll(rx=True, timeout=1.0)
        ...

Public names are re-exported here; the modules behind them are implementation.
"""

from vtnet_py.errors import (
    BusyError,
    DeviceError,
    InterfaceChangedError,
    InvariantError,
    PortClosedError,
    PortNameError,
    PrivilegeError,
    RefusedError,
    ResourceError,
    RingError,
    UnsupportedError,
    VtnetError,
)
from vtnet_py.netmap.buffer import Buffer
from vtnet_py.netmap.memory import Memory
from vtnet_py.netmap.nmutil import NM_MORE_PKTS, PktHdr, nm_dispatch, nm_inject, nm_nextpkt
from vtnet_py.netmap.pool import SLOT_DTYPE
from vtnet_py.netmap.port import Port, open_port
from vtnet_py.netmap.portname import PortSpec, RegMode, parse_port_name
from vtnet_py.netmap.ring import (
    NR_FORWARD,
    NR_TIMESTAMP,
    NS_BUF_CHANGED,
    NS_FORWARD,
    NS_INDIRECT,
    NS_MOREFRAG,
    NS_NO_LEARN,
    NS_REPORT,
    Ring,
)

__all__ = [
    "Buffer",
    "BusyError",
    "DeviceError",
    "InterfaceChangedError",
    "InvariantError",
    "Memory",
    "NM_MORE_PKTS",
    "NR_FORWARD",
    "NR_TIMESTAMP",
    "NS_BUF_CHANGED",
    "NS_FORWARD",
    "NS_INDIRECT",
    "NS_MOREFRAG",
    "NS_NO_LEARN",
    "NS_REPORT",
    "PktHdr",
    "PortClosedError",
    "PortNameError",
    "PortSpec",
    "Port",
    "PrivilegeError",
    "RefusedError",
    "RegMode",
    "ResourceError",
    "Ring",
    "RingError",
    "SLOT_DTYPE",
    "UnsupportedError",
    "VtnetError",
    "nm_dispatch",
    "nm_inject",
    "nm_nextpkt",
    "open_port",
    "parse_port_name",
]
