// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * vtnetmap steering program: netmap XOR kernel, per receive queue.
 *
 * A queue whose AF_XDP socket sits in `xsks` belongs to a netmap port: every frame of
 * that queue goes to the socket (if its RX ring is full the kernel drops the frame and
 * counts it, as a NIC ring overflow would). A queue with no socket belongs to the kernel:
 * bpf_redirect_map() returns the low bits of its flags argument, XDP_PASS, when the slot
 * is empty. A socket removes itself from the map when it is closed, so a process that
 * dies hands its queues back to the kernel without any help.
 *
 * Frames for a socket first get the TCP/UDP checksum a veth peer left to offload
 * (csum.h): what reaches a NIC RX ring is what a wire would carry, so a frame forwarded
 * from it (to another NIC's TX ring, or up through the host TX ring) is one the far
 * stack accepts. Frames for the kernel are left as they came.
 *
 * `owners` holds the pid of the process that owns each queue; it is only read from user
 * space (status and busy messages), and bound to the program so it can be found from it.
 */
#include <uapi/linux/bpf.h>

#ifndef VTNM_MAX_QUEUES
#define VTNM_MAX_QUEUES 256
#endif

BPF_XSKMAP(xsks, VTNM_MAX_QUEUES);
BPF_ARRAY(owners, u32, VTNM_MAX_QUEUES);

#define VTNM_CSUM_CTX struct xdp_md
#define VTNM_LOAD(ctx, off, buf, len) bpf_xdp_load_bytes(ctx, off, buf, len)
#include "csum.h"

/* Whether a frame may hold a partial checksum, read straight from the packet: 0 for a
 * frame that cannot (not TCP/UDP; an IPv4 TCP/UDP frame without options, or an IPv6 one,
 * whose checksum field is not its pseudo-header sum), 1 for one that may, or that this
 * quick look cannot tell (IP options, a short linear part): csum.h decides those. Most
 * frames end here, with no helper call. */
static __always_inline int maybe_partial(struct xdp_md *ctx)
{
    u8 *d = (u8 *)(long)ctx->data;
    u8 *end = (u8 *)(long)ctx->data_end;
    u8 *ip = d + VTNM_ETH_HLEN;
    if (ip + 20 > end)
        return 1;
    u16 proto = *(u16 *)(d + 12);
    u64 pseudo = 0;
    u32 l4len;
    u8 l4proto;
    u8 *l4;
    if (proto == bpf_htons(0x0800)) {
        if (ip[0] != 0x45)
            return 1; /* options (or not IPv4): the full look */
        l4proto = ip[9];
        l4len = ((((u32)ip[2] << 8) | ip[3]) - 20) & 0xffff;
        pseudo = words32(*(u32 *)(ip + 12)) + words32(*(u32 *)(ip + 16));
        l4 = ip + 20;
    } else if (proto == bpf_htons(0x86DD)) {
        if (ip + 40 > end)
            return 1;
        l4proto = ip[6];
        l4len = ((u32)ip[4] << 8) | ip[5];
#pragma unroll
        for (int i = 8; i < 40; i += 4)
            pseudo += words32(*(u32 *)(ip + i));
        l4 = ip + 40;
    } else {
        return 0;
    }
    u16 field;
    if (l4proto == 6) {
        if (l4 + 18 > end)
            return 1;
        field = *(u16 *)(l4 + 16);
    } else if (l4proto == 17) {
        if (l4 + 8 > end)
            return 1;
        field = *(u16 *)(l4 + 6);
    } else {
        return 0;
    }
    pseudo += bpf_htons((u16)l4proto) + bpf_htons((u16)l4len);
    return field == fold(pseudo);
}

int vtnm_steer(struct xdp_md *ctx)
{
    int queue = ctx->rx_queue_index;
    if (xsks.lookup(&queue) == 0)
        return XDP_PASS; /* the kernel's queue */
    if (maybe_partial(ctx)) {
        u16 c;
        u32 at = vtnm_partial_l4_csum(ctx, (u32)bpf_xdp_get_buff_len(ctx), &c);
        if (at)
            bpf_xdp_store_bytes(ctx, at, &c, 2);
    }
    return xsks.redirect_map(queue, XDP_PASS);
}
