"""The latency baseline: the same ping/pong exchange over plain UDP sockets.

    python udp_pingpong.py server BIND_IP PORT SECONDS
    python udp_pingpong.py client SERVER_IP PORT COUNT

The server echoes datagrams until SECONDS pass without one.  The client sends
COUNT datagrams one at a time, each after the previous reply, and prints one
JSON object with the round-trip percentiles in ns (min, median, p99, max).
"""

from __future__ import annotations

import json
import socket
import sys
import time

import numpy as np


def server(ip: str, port: int, idle: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, port))
    s.settimeout(idle)
    n = 0
    try:
        while True:
            data, addr = s.recvfrom(2048)
            s.sendto(data, addr)
            n += 1
    except TimeoutError:
        pass
    print(json.dumps({"mode": "udp_pong", "replies": n}))


def client(ip: str, port: int, count: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((ip, port))
    s.settimeout(3.0)
    payload = b"x" * 18  # a 60-byte frame, as pkt-gen ping sends
    rtt = np.empty(count, np.int64)
    lost = 0
    clock = time.monotonic_ns
    for i in range(count):
        t = clock()
        s.send(payload)
        try:
            s.recv(2048)
        except TimeoutError:
            lost += 1
            rtt[i] = -1
            continue
        rtt[i] = clock() - t
    ok = rtt[rtt >= 0]
    q = np.percentile(ok, [50, 99])
    print(
        json.dumps(
            {
                "mode": "udp_ping",
                "sent": count,
                "received": int(ok.size),
                "lost": lost,
                "min": int(ok.min()),
                "median": float(q[0]),
                "p99": float(q[1]),
                "max": int(ok.max()),
                "avg": float(ok.mean()),
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
