"""The netmap data path: AF_XDP sockets, rings, memory, ports, host rings."""
