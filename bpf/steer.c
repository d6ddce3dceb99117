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
 * `owners` holds the pid of the process that owns each queue; it is only read from user
 * space (status and busy messages), and bound to the program so it can be found from it.
 */
#include <uapi/linux/bpf.h>

#ifndef VTNM_MAX_QUEUES
#define VTNM_MAX_QUEUES 256
#endif

BPF_XSKMAP(xsks, VTNM_MAX_QUEUES);
BPF_ARRAY(owners, u32, VTNM_MAX_QUEUES);

int vtnm_steer(struct xdp_md *ctx)
{
    return xsks.redirect_map(ctx->rx_queue_index, XDP_PASS);
}
