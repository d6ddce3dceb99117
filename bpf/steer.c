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

int vtnm_steer(struct xdp_md *ctx)
{
    int queue = ctx->rx_queue_index;
    if (xsks.lookup(&queue) == 0)
        return XDP_PASS; /* the kernel's queue */
    u16 c;
    u32 at = vtnm_partial_l4_csum(ctx, (u32)bpf_xdp_get_buff_len(ctx), &c);
    if (at)
        bpf_xdp_store_bytes(ctx, at, &c, 2);
    return xsks.redirect_map(queue, XDP_PASS);
}
