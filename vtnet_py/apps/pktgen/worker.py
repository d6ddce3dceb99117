"""pkt-gen's workers: one port each, moving packets and updating a shared counters row.

Worker is WorkerBase (the port, the counters, what the functions share) with the
function bodies of sender.py, receiver.py and pingpong.py.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass

from vtnet_py.apps.pktgen.config import F_ERR
from vtnet_py.apps.pktgen.pingpong import PingPong
from vtnet_py.apps.pktgen.receiver import Receiver
from vtnet_py.apps.pktgen.sender import Sender
from vtnet_py.apps.pktgen.workerbase import Pacer as Pacer  # -R pacing, public with the workers


@dataclass
class Worker(Sender, Receiver, PingPong):
    """One pkt-gen thread or process, for any of the six functions."""


def _child_main(w: Worker) -> None:
    """A -p worker process: SIGINT goes to the parent, which sets the shared stop word."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    w.run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if w.row[F_ERR] else 0)
