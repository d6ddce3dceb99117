"""What a Python user would otherwise write to send raw frames: an AF_PACKET socket.

    python afpacket_tx.py IFNAME SECONDS [LEN]

Sends the same valid UDP frame (built by vtnet_py.apps.pktgen.frames) in a plain
``send()`` loop with PACKET_QDISC_BYPASS for SECONDS and prints one JSON object
(pkts, seconds, pps).  The loop checks the clock every 1024 frames.
"""

from __future__ import annotations

import json
import socket
import sys
import time

from vtnet_py.apps.pktgen.addresses import IPRange
from vtnet_py.apps.pktgen.frames import FrameGen, FrameSpec

SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20


def main() -> None:
    ifname, secs = sys.argv[1], float(sys.argv[2])
    length = int(sys.argv[3]) if len(sys.argv) > 3 else 60
    spec = FrameSpec(
        src=IPRange.parse("203.0.113.1"), dst=IPRange.parse("203.0.113.2:9"), length=length
    )
    arr, _, _ = FrameGen(spec).frames(1)
    frame = bytes(arr[0])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    s.bind((ifname, 0))
    send = s.send
    n = 0
    t0 = time.monotonic()
    end = t0 + secs
    while True:
        for _ in range(1024):
            send(frame)
        n += 1024
        if time.monotonic() >= end:
            break
    dt = time.monotonic() - t0
    s.close()
    print(json.dumps({"mode": "afpacket_tx", "pkts": n, "seconds": dt, "pps": n / dt}))


if __name__ == "__main__":
    main()
