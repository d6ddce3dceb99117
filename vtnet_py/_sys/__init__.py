"""Kernel ABI: ctypes declarations, bpf(2), ethtool ioctls, namespaces, /proc."""
