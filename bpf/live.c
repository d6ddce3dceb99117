// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * vtnetmap pkt-gen --live: the XDP program run by BPF_PROG_TEST_RUN with
 * BPF_F_TEST_XDP_LIVE_FRAMES (see vtnet_py/pktgen/live.py).
 *
 * The kernel hands every invocation a page holding the template frame that user space
 * passed as data_in (packet 0 of pkt-gen's walk, checksums correct). The program
 * returns bpf_redirect(ifindex), so the frame leaves through that interface's
 * ndo_xdp_xmit at the end of each kernel batch. (XDP_TX would do the same in this
 * mode -- the kernel turns it into a redirect to the ingress interface -- but naming
 * the target keeps the program independent of the context's ingress_ifindex.)
 *
 * When the frames differ (-s/-d ranges, -z, -Z) the program computes frame k of the
 * walk from its own counter, exactly as frames.FrameGen does, rewrites addresses and
 * ports and recomputes both checksums from sums user space precomputed over the parts
 * that never change. Every varying byte is rewritten on every frame, because the
 * kernel recycles pages without restoring their contents.
 *
 * `state.count` is the number of frames redirected so far: user space reads it after
 * each call, so the count stays exact even when a signal cuts a call short (the
 * kernel checks for signals between batches only). One instance of the program (and
 * of its maps) belongs to one process, and a test run executes the invocations one
 * after the other on one CPU, so plain (non-atomic) updates are enough.
 */
#include <uapi/linux/bpf.h>

#define LIVE_WALK 1       /* rewrite addresses/ports and checksums per frame */
#define LIVE_RANDOM_SRC 2 /* -z: random source address and port on every frame */
#define LIVE_RANDOM_DST 4 /* -Z: random destination whenever the walk carries into it */

/* Layout shared with live.py (LiveConf / LiveState): keep the two in step. */
struct live_conf {
    u32 ifindex;
    u32 flags;
    u32 src_start, dst_start; /* host order */
    u64 src_n, dst_n;         /* addresses in each range (up to 2**32) */
    u32 sport0, sport_n;
    u32 dport0, dport_n;
    u64 ip_base;  /* unfolded IPv4 header sum without the checksum and the addresses */
    u64 udp_base; /* unfolded UDP sum (pseudo header, header, payload) without the
                     checksum, the addresses and the ports */
};

struct live_state {
    u64 count;     /* frames redirected: the next frame is frame `count` of the walk */
    u64 dst_carry; /* -Z: the carry count the current random destination belongs to */
    u32 dst_addr;  /* -Z: the current destination */
    u32 dst_port;
};

BPF_ARRAY(conf, struct live_conf, 1);
BPF_ARRAY(state, struct live_state, 1);

#define OFF_IP_SUM 24
#define OFF_IP_SRC 26
#define OFF_IP_DST 30
#define OFF_SPORT 34
#define OFF_DPORT 36
#define OFF_UDP_SUM 40
#define HDRS_LEN 42

static __always_inline u64 words32(u32 v)
{
    return (u64)(v >> 16) + (v & 0xffff);
}

static __always_inline u16 csum_final(u64 s)
{
    /* below 2**48: three folds reach 16 bits */
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (u16)~s;
}

static __always_inline void put16(unsigned char *p, u32 v)
{
    p[0] = v >> 8;
    p[1] = v;
}

static __always_inline void put32(unsigned char *p, u32 v)
{
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

int vtnm_live(struct xdp_md *ctx)
{
    u32 zero = 0;
    struct live_conf *c = conf.lookup(&zero);
    struct live_state *s = state.lookup(&zero);
    if (!c || !s)
        return XDP_ABORTED;
    u64 k = s->count;

    if (c->flags & LIVE_WALK) {
        unsigned char *p = (unsigned char *)(long)ctx->data;
        if ((void *)(p + HDRS_LEN) > (void *)(long)ctx->data_end)
            return XDP_ABORTED;
        u32 src, sport, dst, dport;
        u64 carries;
        /* the odometer, fastest digit first: source port, source address,
           destination port, destination address; frame 0 carries the range starts */
        if ((c->flags & LIVE_RANDOM_SRC) && k) {
            src = bpf_get_prandom_u32();
            sport = bpf_get_prandom_u32() & 0xffff;
            carries = k; /* every step of a random source carries */
        } else {
            sport = c->sport0 + (u32)(k % c->sport_n);
            u64 q = k / c->sport_n;
            src = c->src_start + (u32)(q % c->src_n);
            carries = q / c->src_n;
        }
        if (c->flags & LIVE_RANDOM_DST) {
            if (carries != s->dst_carry) {
                s->dst_carry = carries;
                s->dst_addr = bpf_get_prandom_u32();
                s->dst_port = bpf_get_prandom_u32() & 0xffff;
            }
            dst = s->dst_addr;
            dport = s->dst_port;
        } else {
            dport = c->dport0 + (u32)(carries % c->dport_n);
            dst = c->dst_start + (u32)((carries / c->dport_n) % c->dst_n);
        }
        u64 addrs = words32(src) + words32(dst);
        put32(p + OFF_IP_SRC, src);
        put32(p + OFF_IP_DST, dst);
        put16(p + OFF_IP_SUM, csum_final(c->ip_base + addrs));
        put16(p + OFF_SPORT, sport);
        put16(p + OFF_DPORT, dport);
        u16 usum = csum_final(c->udp_base + addrs + sport + dport);
        /* RFC 768: a computed zero goes out as all ones (zero means "no checksum") */
        put16(p + OFF_UDP_SUM, usum ? usum : 0xffff);
    }
    s->count = k + 1;
    return bpf_redirect(c->ifindex, 0);
}
