// SPDX-License-Identifier: BSD-2-Clause
/*
 * XDP programs for the vtnetmap benchmarks (compiled with clang -target bpf
 * by benchmarks/run.py; loaded by xsk_bench with libbpf).
 *
 *   xsk_redirect   hand each frame to the AF_XDP socket bound to its RX
 *                  queue (xsks_map); frames with no socket go to the stack.
 *   drop_count     count and drop: the in-kernel ceiling of a veth RX path
 *                  (xdp-bench drop from xdp-tools 1.3.1 does not load on this
 *                  kernel: its tracepoint programs name BTF types it lacks).
 *   redirect_out   for the BPF_PROG_TEST_RUN live-frames generator: send the
 *                  frame out of the interface whose index is in target[0].
 *
 * Every program counts the frames it saw in a per-CPU counter so the
 * benchmark can tell what reached XDP from what an application consumed.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} target SEC(".maps");

static __always_inline void count(void)
{
	__u32 k = 0;
	__u64 *c = bpf_map_lookup_elem(&seen, &k);

	if (c)
		(*c)++;
}

SEC("xdp")
int xsk_redirect(struct xdp_md *ctx)
{
	count();
	/* XDP_PASS as the flags argument: frames of queues without a socket
	 * reach the stack instead of being dropped. */
	return bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_PASS);
}

SEC("xdp")
int drop_count(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	volatile __u8 first;

	count();
	/* Read one byte of the frame, as any real consumer would. */
	if (data + 1 <= end)
		first = *(__u8 *)data;
	(void)first;
	return XDP_DROP;
}

SEC("xdp")
int redirect_out(struct xdp_md *ctx)
{
	__u32 k = 0;
	__u32 *ifindex = bpf_map_lookup_elem(&target, &k);

	count();
	if (!ifindex)
		return XDP_ABORTED;
	return bpf_redirect(*ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
