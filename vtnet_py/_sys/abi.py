"""Kernel ABI declarations: constants, ctypes structures and raw syscall entry points.

No logic lives here (bcc's libbcc.py is the model): every number the kernel defines is
named once, with the header it comes from, so the rest of the library never carries a
magic number. Layouts are x86-64 / little endian, as the project's machines are.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# --- libc -------------------------------------------------------------------------------
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.bind.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
libc.bind.restype = ctypes.c_int
libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
libc.setns.restype = ctypes.c_int
libc.unshare.argtypes = (ctypes.c_int,)
libc.unshare.restype = ctypes.c_int

SYS_bpf = 321  # arch/x86/entry/syscalls/syscall_64.tbl
CLONE_NEWNET = 0x40000000  # include/uapi/linux/sched.h
# asm-generic/socket.h: a network namespace's 64-bit cookie (5.14+); unlike its inode
# number, which the kernel hands to the next namespace made, a cookie is never reused
SO_NETNS_COOKIE = 71
# include/uapi/asm-generic/socket.h: busy polling of a socket's queue
SO_BUSY_POLL = 46
SO_PREFER_BUSY_POLL = 69
SO_BUSY_POLL_BUDGET = 70

# --- AF_XDP: include/uapi/linux/if_xdp.h, include/linux/socket.h ------------------------
AF_XDP = 44
SOL_XDP = 283

XDP_MMAP_OFFSETS = 1
XDP_RX_RING = 2
XDP_TX_RING = 3
XDP_UMEM_REG = 4
XDP_UMEM_FILL_RING = 5
XDP_UMEM_COMPLETION_RING = 6
XDP_STATISTICS = 7
XDP_OPTIONS = 8
# Linux 6.17+: descriptors one copy-mode sendto() may send (default 32, TX_BATCH_SIZE).
# net/xdp/xsk.c refuses with EACCES unless the socket already has a TX ring and the
# value is in [32, TX ring entries]; no capability, and before or after bind alike.
XDP_MAX_TX_SKB_BUDGET = 9
XDP_TX_BATCH_SIZE = 32

# sockaddr_xdp.sxdp_flags
XDP_SHARED_UMEM = 1 << 0
XDP_COPY = 1 << 1
XDP_ZEROCOPY = 1 << 2
XDP_USE_NEED_WAKEUP = 1 << 3
XDP_USE_SG = 1 << 4

XDP_OPTIONS_ZEROCOPY = 1 << 0
XDP_RING_NEED_WAKEUP = 1 << 0  # ring flags word
XDP_PKT_CONTD = 1 << 0  # xdp_desc.options: more fragments of this packet follow

XDP_PGOFF_RX_RING = 0
XDP_PGOFF_TX_RING = 0x80000000
XDP_UMEM_PGOFF_FILL_RING = 0x100000000
XDP_UMEM_PGOFF_COMPLETION_RING = 0x180000000

XDP_PACKET_HEADROOM = 256  # include/uapi/linux/bpf.h: where copy-mode RX places data


class xdp_umem_reg(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("chunk_size", ctypes.c_uint32),
        ("headroom", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("tx_metadata_len", ctypes.c_uint32),  # 6.8+; the padding word on older kernels
    ]


class sockaddr_xdp(ctypes.Structure):
    _fields_ = [
        ("sxdp_family", ctypes.c_uint16),
        ("sxdp_flags", ctypes.c_uint16),
        ("sxdp_ifindex", ctypes.c_uint32),
        ("sxdp_queue_id", ctypes.c_uint32),
        ("sxdp_shared_umem_fd", ctypes.c_uint32),
    ]


class xdp_ring_offset(ctypes.Structure):
    _fields_ = [
        ("producer", ctypes.c_uint64),
        ("consumer", ctypes.c_uint64),
        ("desc", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class xdp_mmap_offsets(ctypes.Structure):
    _fields_ = [
        ("rx", xdp_ring_offset),
        ("tx", xdp_ring_offset),
        ("fr", xdp_ring_offset),
        ("cr", xdp_ring_offset),
    ]


class xdp_statistics(ctypes.Structure):
    _fields_ = [
        ("rx_dropped", ctypes.c_uint64),
        ("rx_invalid_descs", ctypes.c_uint64),
        ("tx_invalid_descs", ctypes.c_uint64),
        ("rx_ring_full", ctypes.c_uint64),
        ("rx_fill_ring_empty_descs", ctypes.c_uint64),
        ("tx_ring_empty_descs", ctypes.c_uint64),
    ]


class xdp_options(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32)]


# struct xdp_desc {u64 addr; u32 len; u32 options}, as a numpy dtype spec
XDP_DESC_FIELDS = [("addr", "<u8"), ("len", "<u4"), ("options", "<u4")]

# --- bpf(2): include/uapi/linux/bpf.h ----------------------------------------------------
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_NEXT_ID = 11
BPF_MAP_GET_NEXT_ID = 12
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_LINK_CREATE = 28
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_GET_NEXT_ID = 31
BPF_LINK_DETACH = 34
BPF_PROG_BIND_MAP = 35

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_XSKMAP = 17

BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_XDP = 6

BPF_XDP = 37  # enum bpf_attach_type
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47

BPF_LINK_TYPE_XDP = 6  # enum bpf_link_type
BPF_LINK_TYPE_TCX = 11

BPF_F_XDP_HAS_FRAGS = 1 << 5  # prog_flags: the program understands multi-buffer frames
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1  # PROG_TEST_RUN flags

BPF_ANY = 0
BPF_NOEXIST = 1  # map_update: only if the key has no entry yet (EEXIST otherwise)
BPF_PSEUDO_MAP_FD = 1  # src_reg of a ld_imm64 that loads a map by fd
BPF_LD_IMM64_OPCODE = 0x18

BPF_OBJ_NAME_LEN = 16

# include/uapi/linux/if_link.h: XDP attach flags
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4

# include/uapi/linux/bpf.h: enum xdp_action
XDP_ABORTED = 0
XDP_DROP = 1
XDP_PASS = 2
XDP_TX = 3
XDP_REDIRECT = 4


class bpf_attr_map_create(ctypes.Structure):
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class bpf_attr_map_elem(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class bpf_attr_prog_load(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class bpf_attr_obj(ctypes.Structure):  # BPF_OBJ_PIN / BPF_OBJ_GET
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


class bpf_attr_get_id(ctypes.Structure):  # *_GET_NEXT_ID / *_GET_FD_BY_ID
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    ]


class bpf_attr_info(ctypes.Structure):  # BPF_OBJ_GET_INFO_BY_FD
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class bpf_attr_link_create(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("relative_fd", ctypes.c_uint32),  # tcx
        ("_pad", ctypes.c_uint32),
        ("expected_revision", ctypes.c_uint64),
    ]


class bpf_attr_link_detach(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32)]


class bpf_attr_prog_bind_map(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


class bpf_attr_test_run(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class bpf_prog_info(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("flags_gpl", ctypes.c_uint32),
    ]


class bpf_map_info(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class bpf_link_info(ctypes.Structure):
    # the union after prog_id is 8-byte aligned; xdp.ifindex and tcx.ifindex start it
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),  # tcx only
        ("_rest", ctypes.c_uint64 * 4),
    ]


# --- tc: include/uapi/linux/pkt_sched.h ------------------------------------------------
# TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / TC_H_MIN_EGRESS): the clsact filter parents
TC_H_CLSACT_INGRESS = 0xFFFFFFF2
TC_H_CLSACT_EGRESS = 0xFFFFFFF3

# --- ethtool ioctl: include/uapi/linux/ethtool.h, sockios.h -------------------------------
SIOCETHTOOL = 0x8946
SIOCGIFMTU = 0x8921
IFNAMSIZ = 16
SIOCGIFHWADDR = 0x8927
ETHTOOL_GDRVINFO = 0x00000003

# --- generic netlink: include/uapi/linux/netlink.h, genetlink.h -------------------------
NETLINK_GENERIC = 16
NLM_F_REQUEST = 0x01
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR = 0x02
NLMSG_DONE = 0x03
NLA_ALIGNTO = 4
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
GENL_ID_CTRL = 0x10  # the "nlctrl" family, which resolves family names to ids
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2


class nlmsghdr(ctypes.Structure):
    _fields_ = [
        ("nlmsg_len", ctypes.c_uint32),
        ("nlmsg_type", ctypes.c_uint16),
        ("nlmsg_flags", ctypes.c_uint16),
        ("nlmsg_seq", ctypes.c_uint32),
        ("nlmsg_pid", ctypes.c_uint32),
    ]


class genlmsghdr(ctypes.Structure):
    _fields_ = [("cmd", ctypes.c_uint8), ("version", ctypes.c_uint8), ("reserved", ctypes.c_uint16)]


class nlattr(ctypes.Structure):
    _fields_ = [("nla_len", ctypes.c_uint16), ("nla_type", ctypes.c_uint16)]


class nlmsgerr_head(ctypes.Structure):  # struct nlmsgerr without the echoed request
    _fields_ = [("error", ctypes.c_int32)]


# --- the "netdev" generic netlink family (Linux 6.3+): include/uapi/linux/netdev.h ---------
NETDEV_FAMILY_NAME = b"netdev"
NETDEV_CMD_DEV_GET = 1
NETDEV_A_DEV_IFINDEX = 1
NETDEV_A_DEV_XDP_FEATURES = 3  # u64, enum netdev_xdp_act
NETDEV_A_DEV_XDP_ZC_MAX_SEGS = 4  # u32: fragments one zero-copy AF_XDP TX frame may span
NETDEV_A_DEV_XSK_FEATURES = 6  # u64, enum netdev_xsk_flags (6.8+)

# enum netdev_xdp_act, as the kernel's YAML spec (Documentation/netlink/specs/netdev.yaml)
# and `ynl` name them
NETDEV_XDP_ACT_XSK_ZEROCOPY = 1 << 3
NETDEV_XDP_ACT_NAMES = {
    1 << 0: "basic",
    1 << 1: "redirect",
    1 << 2: "ndo-xmit",
    NETDEV_XDP_ACT_XSK_ZEROCOPY: "xsk-zerocopy",
    1 << 4: "hw-offload",
    1 << 5: "rx-sg",
    1 << 6: "ndo-xmit-sg",
}
# enum netdev_xsk_flags
NETDEV_XSK_FLAGS_NAMES = {
    1 << 0: "tx-timestamp",
    1 << 1: "tx-checksum",
    1 << 2: "tx-launch-time-fifo",
}

# --- errno values the kernel uses internally but that reach user space -----------------
# include/linux/errno.h: ENOTSUPP (524) is not in errno.h; some drivers and the BPF test
# runner return it for "operation not supported".
ENOTSUPP = 524

# --- Ethernet framing: include/uapi/linux/if_ether.h, if_vlan.h ------------------------
ETH_HLEN = 14  # destination, source, EtherType
VLAN_HLEN = 4  # one 802.1Q tag
ETH_FCS_LEN = 4
# Ethernet header, one VLAN tag, FCS room: what a frame needs beyond the MTU
ETH_OVERHEAD = ETH_HLEN + VLAN_HLEN + ETH_FCS_LEN

# --- include/uapi/linux/if.h, rtnetlink.h, if_link.h ------------------------------------
IFF_UP = 0x1
IFF_RUNNING = 0x40
RTN_UNICAST = 1  # route type of a plain unicast route
# IFLA_XDP_ATTACHED values, and the names pyroute2 decodes them to
XDP_ATTACHED_MODES: dict[object, str] = {
    1: "native",
    2: "generic",
    3: "offload",
    4: "multi",
    "xdp": "native",
    "xdpgeneric": "generic",
    "xdpoffload": "offload",
    "xdpmulti": "multi",
}

# --- include/uapi/linux/virtio_net.h ----------------------------------------------------
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
# struct virtio_net_hdr lengths: none; legacy header; with num_buffers (mergeable / v1)
VNET_HDR_LENS = (0, 10, 12)
