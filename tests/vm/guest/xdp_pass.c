/* The smallest XDP program: pass every frame to the stack. The guest scenarios attach
 * it in native (driver) mode with iproute2 to hit virtio_net's XDP checks for real;
 * built with `clang -O2 -target bpf -c` (no headers: only the UAPI return code). */
#define XDP_PASS 2
#define SEC(name) __attribute__((section(name), used))

struct xdp_md;

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	(void)ctx;
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
