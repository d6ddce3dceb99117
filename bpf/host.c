// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * vtnetmap host rings: the TC programs that connect an interface's network stack to a
 * netmap port's host rings through a helper veth pair (see vtnet_py/hostrings.py).
 *
 *   stack --TX on IF--> [vtnm_host_eg, egress of IF] --redirect--> near end of the pair
 *       --veth--> far end --XDP steering--> AF_XDP socket = host RX ring
 *   host TX ring = the same socket's TX --veth--> near end
 *       --> [vtnm_host_in + act_mirred "ingress redirect", ingress of the near end] --> IF
 *
 * vtnm_host_eg returns TC_ACT_* codes, which tcx (TCX_PASS/DROP/REDIRECT) shares, so the
 * same instructions serve a tcx link (kernels >= 6.6) and a cls_bpf direct-action filter.
 *
 * The way back into IF is act_mirred, not bpf_redirect(BPF_F_INGRESS): mirred marks the
 * skb as redirected, and generic (SKB-mode) XDP skips redirected skbs, so IF's steering
 * program does not steal the frame back into a NIC RX ring. bpf_redirect does not mark
 * it (seen on 6.18: in generic mode the frames looped into the NIC RX ring). So
 * vtnm_host_in only counts and matches (classic cls_bpf: -1 = match, default class), and
 * the filter's mirred action does the redirect.
 *
 * `alive` holds the host-ring socket. The kernel deletes a socket from every XSKMAP when
 * it is closed, so once the owning process is gone (even after kill -9) the egress
 * program lets the stack's frames go to the wire again, even where the attachment itself
 * outlives the process (a cls_bpf filter on kernels without tcx).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

/* cfg: [0] ifindex of the near end (egress target), [1] ifindex of IF (informational),
 *      [2] largest non-GSO frame the host RX ring accepts (MTU + Ethernet + one VLAN),
 *      [3] 1 while NIC TX rings of IF are in netmap mode: divert the stack's frames */
BPF_ARRAY(cfg, u32, 4);
BPF_XSKMAP(alive, 1);
/* counters, per CPU: see hostrings.HOST_COUNTERS for the names */
BPF_PERCPU_ARRAY(counters, u64, 8);

#define C_EG_REDIRECT 0
#define C_EG_GSO 1
#define C_EG_OVERSIZE 2
#define C_EG_NO_OWNER 3
#define C_IN_REDIRECT 4

static __always_inline void count(u32 which)
{
    u64 *c = counters.lookup(&which);
    if (c)
        *c += 1;
}

int vtnm_host_eg(struct __sk_buff *skb)
{
    u32 k0 = 0, k2 = 2, k3 = 3;
    u32 *divert = cfg.lookup(&k3);
    if (!divert || !*divert)
        return TC_ACT_OK; /* netmap's rule: NIC TX rings not in netmap mode */
    if (!alive.lookup(&k0)) {
        count(C_EG_NO_OWNER);
        return TC_ACT_OK;
    }
    u32 *near = cfg.lookup(&k0);
    u32 *max_len = cfg.lookup(&k2);
    if (!near || !max_len || *near == 0)
        return TC_ACT_OK;
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

int vtnm_host_in(struct __sk_buff *skb)
{
    count(C_IN_REDIRECT);
    return -1; /* classic cls_bpf: match with the default class; mirred redirects */
}
