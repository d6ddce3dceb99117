// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * vtnetmap: finish the L4 checksum a veth peer left to offload. Included by steer.c
 * (XDP, NIC RX) and host.c (TC, host TX); the includer defines VTNM_CSUM_CTX, the
 * program's context type, and VTNM_LOAD(ctx, offset, buf, len), its load-bytes helper.
 *
 * A veth whose peer has tx checksumming on (every container's default) hands over TCP
 * and UDP frames with CHECKSUM_PARTIAL: the checksum field holds only the folded
 * pseudo-header sum, to be completed by whoever transmits. XDP, and so AF_XDP, sees the
 * bytes without that state. A wire never carries such frames, and a stack that receives
 * one (from an AF_XDP TX ring, or from the host TX ring) drops it as corrupt. So a
 * TCP/UDP frame over IPv4 or IPv6 whose checksum field equals its pseudo-header sum gets
 * the full checksum. Since the field then adds the pseudo header into a sum over the L4
 * bytes as they are, the checksum is the complement of that sum. A frame with a correct
 * checksum that happens to equal its pseudo-header sum gets the same value back, so
 * correct frames never change.
 */
#ifndef VTNM_CSUM_H
#define VTNM_CSUM_H

#define VTNM_ETH_HLEN 14
#define CSUM_CHUNK 256
#define CSUM_CHUNKS 40 /* 10240 bytes of L4 data: any MTU a helper pair is made with */

static __always_inline u32 fold(u64 s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (u32)s;
}

static __always_inline u64 words32(u32 v)
{
    return (u64)(v >> 16) + (v & 0xffff);
}

/* The offset of the checksum field of a frame `frame_len` bytes long whose TCP/UDP
 * checksum was left to offload, with the full checksum in *out; 0 for any other frame
 * (not TCP/UDP over IPv4/IPv6 without extension headers, an IPv4 fragment, L4 data
 * beyond CSUM_CHUNKS chunks, or a checksum field that is not the pseudo-header sum). */
static __always_inline u32 vtnm_partial_l4_csum(VTNM_CSUM_CTX *ctx, u32 frame_len, u16 *out)
{
    u16 proto;
    if (VTNM_LOAD(ctx, 12, &proto, 2) < 0)
        return 0;
    u32 l4off, l4len;
    u8 l4proto;
    u64 pseudo = 0;
    if (proto == bpf_htons(0x0800)) {
        u8 ip[20];
        if (VTNM_LOAD(ctx, VTNM_ETH_HLEN, ip, 20) < 0)
            return 0;
        u32 ihl = (ip[0] & 0xf) * 4;
        if ((ip[0] >> 4) != 4 || ihl < 20)
            return 0;
        if (((ip[6] & 0x3f) | ip[7]) != 0)
            return 0; /* a fragment: its checksum covers the whole datagram */
        u32 tot = ((u32)ip[2] << 8) | ip[3];
        if (tot < ihl)
            return 0;
        l4proto = ip[9];
        l4off = VTNM_ETH_HLEN + ihl;
        l4len = tot - ihl;
        u32 a, b;
        __builtin_memcpy(&a, &ip[12], 4);
        __builtin_memcpy(&b, &ip[16], 4);
        pseudo = words32(a) + words32(b);
    } else if (proto == bpf_htons(0x86DD)) {
        u32 ip6[10];
        if (VTNM_LOAD(ctx, VTNM_ETH_HLEN, ip6, 40) < 0)
            return 0;
        u8 *h = (u8 *)ip6;
        l4proto = h[6]; /* next header: TCP/UDP right after the fixed header only */
        l4off = VTNM_ETH_HLEN + 40;
        l4len = ((u32)h[4] << 8) | h[5];
#pragma unroll
        for (int i = 2; i < 10; i++)
            pseudo += words32(ip6[i]);
    } else {
        return 0;
    }
    u32 csum_off;
    if (l4proto == 6)
        csum_off = 16;
    else if (l4proto == 17)
        csum_off = 6;
    else
        return 0;
    if (l4len < csum_off + 2 || l4len > CSUM_CHUNK * CSUM_CHUNKS)
        return 0;
    if (l4off + l4len > frame_len)
        return 0;
    pseudo += bpf_htons((u16)l4proto) + bpf_htons((u16)l4len);
    u16 field;
    if (VTNM_LOAD(ctx, l4off + csum_off, &field, 2) < 0)
        return 0;
    if (field != fold(pseudo) || (l4proto == 17 && field == 0))
        return 0;
    /* whole chunks through bpf_csum_diff, then the tail (below one chunk) in one load;
     * one loop only: a second loop after it would multiply the verifier's paths */
    u8 buf[CSUM_CHUNK];
    s64 sum = 0;
    u32 chunks = l4len / CSUM_CHUNK;
    for (u32 i = 0; i < CSUM_CHUNKS; i++) {
        if (i >= chunks)
            break;
        if (VTNM_LOAD(ctx, l4off + i * CSUM_CHUNK, buf, CSUM_CHUNK) < 0)
            return 0;
        sum = bpf_csum_diff(0, 0, (void *)buf, CSUM_CHUNK, (u32)sum);
        if (sum < 0)
            return 0;
    }
    u32 left = l4len - chunks * CSUM_CHUNK;
    if (left) {
        __builtin_memset(buf, 0, CSUM_CHUNK); /* the checksum pads with zeros */
        u32 m = left - 1;
        /* the mask, as an instruction the compiler keeps, bounds the sizes for the
         * verifier: a load of 1..CSUM_CHUNK bytes, a sum over 4..CSUM_CHUNK */
        asm volatile("%0 &= 0xff" : "+r"(m));
        if (VTNM_LOAD(ctx, l4off + chunks * CSUM_CHUNK, buf, m + 1) < 0)
            return 0;
        sum = bpf_csum_diff(0, 0, (void *)buf, ((m >> 2) + 1) << 2, (u32)sum);
        if (sum < 0)
            return 0;
    }
    u16 c = (u16)~fold((u64)(u32)sum);
    if (l4proto == 17 && c == 0)
        c = 0xffff; /* RFC 768: zero means "no checksum" */
    *out = c;
    return l4off + csum_off;
}

#endif
