// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * vtnetmap: the stack's egress of an interface, and the host TX path back into it.
 *
 * vtnm_host_eg is the one egress program of an interface, shared by every process with
 * netmap rings on it (see vtnet_py/ebpf/egress.py): netmap's rule, that the stack's
 * frames go to the host RX ring while the NIC's TX rings are in netmap mode and to the
 * wire otherwise, decided per frame from liveness the kernel keeps itself:
 *
 *   NIC TX rings registered := some socket in `txs` (a port with NIC TX rings puts one of
 *                              its sockets there), or cfg[3] while the host RX ring is held
 *                              (the host holder's own TX-only ports, counted in its process)
 *   host RX ring held       := the host socket is in `alive`
 *
 *   not registered       -> TC_ACT_UNSPEC: on to the next program, then the wire
 *   registered, held     -> bpf_redirect to the near end of the helper pair:
 *       stack --TX on IF--> [vtnm_host_eg] --> near end --veth--> far end --> host RX ring
 *   registered, not held -> dropped and counted (C_EG_CUT), as netmap drops what no host
 *                           ring takes
 *
 * The kernel deletes a socket from every XSKMAP when the socket is closed, so a process
 * that dies (even by kill -9) stops cutting the stack off at once, also where the
 * attachment outlives it (a cls_bpf filter on kernels without tcx). TC_ACT_* codes are
 * shared with tcx (TCX_NEXT = TC_ACT_UNSPEC), so the same instructions serve a tcx link
 * (kernels >= 6.6) and a cls_bpf direct-action filter.
 *
 * vtnm_host_in, on the ingress of the near end, takes host TX frames back into IF. The way
 * is act_mirred, not bpf_redirect(BPF_F_INGRESS): mirred marks the skb as redirected, and
 * generic (SKB-mode) XDP skips redirected skbs, so IF's steering program does not steal
 * the frame back into a NIC RX ring (bpf_redirect does not mark it: seen on 6.18, the
 * frames looped into the NIC RX ring in generic mode). So vtnm_host_in only counts and
 * matches (classic cls_bpf: -1 = match, default class), and the filter's mirred action
 * does the redirect.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#define VTNM_TX_HOLDERS 16 /* egress.TX_HOLDERS; any_tx_holder() names each slot */
#ifndef VTNM_USERS
#define VTNM_USERS 32
#endif

/* cfg: [0] ifindex of the near end (egress target; 0: no host RX ring),
 *      [1] ifindex of IF, [2] largest non-GSO frame the host RX ring accepts (MTU +
 *      Ethernet + one VLAN), [3] 1 while the host holder's process has NIC TX rings
 *      open (only read while `alive` holds its socket), [4] IF's network namespace
 *      inode (to find the program again: a tcx link names the ifindex only) */
BPF_ARRAY(cfg, u32, 5);
BPF_XSKMAP(alive, 1);
BPF_XSKMAP(txs, VTNM_TX_HOLDERS);
/* the processes that use this program (pid, start time): read by user space only, to
 * tell whether a cls_bpf filter left on the interface still has a live user */
struct vtnm_user {
    u32 pid;
    u32 pad;
    u64 start;
};
BPF_ARRAY(users, struct vtnm_user, VTNM_USERS);
/* counters, per CPU: see egress.EGRESS_COUNTERS for the names */
BPF_PERCPU_ARRAY(counters, u64, 8);

#define C_EG_REDIRECT 0
#define C_EG_GSO 1
#define C_EG_OVERSIZE 2
#define C_EG_NO_OWNER 3
#define C_IN_REDIRECT 4
#define C_EG_CUT 5
#define C_IN_CSUM 6

static __always_inline void count(u32 which)
{
    u64 *c = counters.lookup(&which);
    if (c)
        *c += 1;
}

static __always_inline int txs_has(u32 slot)
{
    return txs.lookup(&slot) != 0;
}

/* some socket in txs: written out, so the verifier walks straight lookups, no loop */
static __always_inline int any_tx_holder(void)
{
    return txs_has(0) || txs_has(1) || txs_has(2) || txs_has(3) || txs_has(4) || txs_has(5) ||
           txs_has(6) || txs_has(7) || txs_has(8) || txs_has(9) || txs_has(10) || txs_has(11) ||
           txs_has(12) || txs_has(13) || txs_has(14) || txs_has(15);
}

int vtnm_host_eg(struct __sk_buff *skb)
{
    u32 k0 = 0, k2 = 2, k3 = 3;
    int held = alive.lookup(&k0) != 0;
    int registered = 0;
    u32 *divert = cfg.lookup(&k3);
    if (held && divert && *divert)
        registered = 1;
    if (!registered)
        registered = any_tx_holder();
    if (!registered) {
        if (divert && *divert)
            count(C_EG_NO_OWNER); /* the host holder's flag, its socket gone */
        return TC_ACT_UNSPEC;     /* netmap's rule: NIC TX rings not in netmap mode */
    }
    u32 *near = cfg.lookup(&k0);
    u32 *max_len = cfg.lookup(&k2);
    if (!held || !near || !max_len || *near == 0) {
        count(C_EG_CUT);
        return TC_ACT_SHOT;
    }
    if (skb->gso_size) {
        /* a GSO super-frame: the near end has segmentation and checksum offloads off,
         * so the kernel segments it (and completes checksums) on the way out */
        count(C_EG_GSO);
    } else if (skb->len > *max_len) {
        /* larger than the MTU and not segmentable: never hand it to the ring */
        count(C_EG_OVERSIZE);
        return TC_ACT_SHOT;
    }
    count(C_EG_REDIRECT);
    return bpf_redirect(*near, 0);
}

/* --- host TX: finish the L4 checksum a veth peer left to offload (csum.h) --------------
 * Frames from a NIC RX ring come complete (steer.c finishes them on the way in); the
 * application may still write or copy a frame with the pseudo-header sum only. */
#define VTNM_CSUM_CTX struct __sk_buff
#define VTNM_LOAD(ctx, off, buf, len) bpf_skb_load_bytes(ctx, off, buf, len)
#include "csum.h"

static __always_inline void complete_l4_csum(struct __sk_buff *skb)
{
    u16 c;
    u32 at = vtnm_partial_l4_csum(skb, skb->len, &c);
    if (at && bpf_skb_store_bytes(skb, at, &c, 2, BPF_F_RECOMPUTE_CSUM) == 0)
        count(C_IN_CSUM);
}

int vtnm_host_in(struct __sk_buff *skb)
{
    count(C_IN_REDIRECT);
    complete_l4_csum(skb);
    return -1; /* classic cls_bpf: match with the default class; mirred redirects */
}
