"""pkt-gen over the netmap API: frames, pkt-gen's report lines, and the TX/RX loops."""
