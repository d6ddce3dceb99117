"""Applications on the netmap API: bridge, pkt-gen, the demo sandbox."""
