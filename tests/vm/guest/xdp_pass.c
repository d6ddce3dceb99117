/* The smallest XDP programs: pass every frame to the stack. The guest scenarios attach
 * them in native (driver) mode with iproute2 to hit virtio_net's XDP checks for real;
 * built with `clang -O2 -target bpf -c` (no headers: only the UAPI return code).
 * Section "xdp" is a single-buffer program; "xdp.frags" the same program marked
 * multi-buffer aware (libbpf loads it with BPF_F_XDP_HAS_FRAGS), which virtio_net 6.3+
 * accepts at an MTU too large for one buffer. */
#define XDP_PASS 2
#define SEC(name) __attribute__((section(name), used))

struct xdp_md;

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	(void)ctx;
	return XDP_PASS;
}

SEC("xdp.frags")
int xdp_pass_frags(struct xdp_md *ctx)
{
	(void)ctx;
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
