// SPDX-License-Identifier: BSD-2-Clause
/*
 * xsk_bench: the minimal C references of the vtnetmap benchmark suite.
 *
 *   xsk_bench rx   -i IF [-q NQ] [-t SECS] [-b BATCH] [-s SLOTS] [--busy]
 *       AF_XDP receive loop, one socket and one thread per queue (queues
 *       0..NQ-1), copy mode, native XDP program xsk_redirect; counts frames
 *       and bytes like pkt-gen -f rx (no payload access), returns them to the
 *       fill ring, and poll()s when the RX ring is empty (unless --busy).
 *       The clock runs from the first frame to the last; the run ends after
 *       SECS of traffic or half a second of silence.
 *   xsk_bench tx   -i IF [-q NQ] [-t SECS] [-b BATCH] [-l LEN] [-s SLOTS]
 *       AF_XDP transmit loop, one socket and one thread per queue: the UMEM
 *       is filled once with a valid UDP frame, then the loop only writes
 *       descriptors, kicks with sendto() and reaps completions.
 *   xsk_bench drop -i IF [-t SECS]
 *       attach drop_count (native) and count: the in-kernel ceiling.  The
 *       rate is over the span in which frames arrived; the run ends half a
 *       second after they stop, or after SECS.
 *   xsk_bench fwd  -i IN -O OUT [-t SECS] [-b BATCH] [-s SLOTS] [-k BUDGET]
 *       a plain AF_XDP forwarder: frames received on IN (queue 0, native
 *       xsk_redirect) go out of OUT (queue 0) in the same UMEM buffer (the
 *       OUT socket shares the UMEM with its own FILL/COMPLETION rings), and
 *       completed buffers go back to IN's fill ring.  Prints READY once both
 *       sockets are bound; the clock runs from the first frame forwarded to
 *       the last, ending after SECS of traffic or half a second of silence.
 *   xsk_bench pong -i IF [-t SECS] [--busy]
 *   xsk_bench ping -i IF -n COUNT [--busy]
 *       the latency reference: one socket on queue 0 with RX and TX rings,
 *       native xsk_redirect. pong sends every frame back in the buffer it came
 *       in (MAC addresses swapped), prints READY once bound and ends after SECS
 *       of silence; ping sends one frame, waits for it (poll(), or spinning on
 *       the RX ring with --busy), COUNT times, and prints the round-trip
 *       percentiles in ns like udp_pingpong.py.
 *   xsk_bench gen  -i IF [-t SECS] [-l LEN] [-r PPS]
 *       kernel generator: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES
 *       on redirect_out, which sends every frame out of IF.
 *
 * Common: -o OBJ (the compiled xdp_progs.bpf.o).  Each run prints one JSON
 * object on stdout with what it counted.  XDP programs it attached are
 * detached before it exits (also on SIGINT/SIGTERM); if the process is
 * killed hard, the attachment goes with the interface.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <xdp/xsk.h>

#define FRAME_SIZE XSK_UMEM__DEFAULT_FRAME_SIZE
#define MAX_QUEUES 16
#define IDLE_END 0.5	/* rx: the run ends after this much silence */

static volatile sig_atomic_t stop_flag;
/* rx: when any queue last saw a frame (0: none yet); a racy double is fine,
 * it only decides when idle queues give up. */
static volatile double rx_last_any;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }
static void usage(void);

struct cfg {
	const char *mode, *ifname, *obj, *out_ifname;
	int ifindex, nq, batch, len, busy;
	uint32_t ring;		/* slots per ring; the UMEM has twice as many frames */
	int tx_budget;		/* XDP_MAX_TX_SKB_BUDGET (kernel >= 6.17), 0: kernel default */
	double secs;
	uint64_t rate;
	uint64_t count;		/* ping: round trips */
};

struct worker {
	struct cfg *cfg;
	int queue;
	void *area;
	struct xsk_umem *umem;
	struct xsk_socket *xsk;
	struct xsk_ring_prod fq, tx;
	struct xsk_ring_cons cq, rx;
	uint64_t pkts, bytes, events, kicks;
	double t_first, t_last;	/* rx: first and last frame seen; tx: start, end */
	struct xdp_statistics st;
	pthread_t thr;
	int err;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what, int err)
{
	fprintf(stderr, "xsk_bench: %s: %s\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

/* ---- a valid Ethernet/IPv4/UDP frame (RFC 1071 checksums) ---- */

static uint32_t sum16(const uint8_t *p, size_t n, uint32_t s)
{
	size_t i;

	for (i = 0; i + 1 < n; i += 2)
		s += (uint32_t)p[i] << 8 | p[i + 1];
	if (n & 1)
		s += (uint32_t)p[n - 1] << 8;
	return s;
}

static uint16_t fold(uint32_t s)
{
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

static void build_frame(uint8_t *f, int len)
{
	uint8_t *ip = f + 14, *udp = f + 34;
	int iplen = len - 14, ulen = len - 34, i;
	uint32_t s;
	uint16_t c;

	memset(f, 0, len);
	memset(f, 0xff, 6);                     /* broadcast destination */
	memcpy(f + 6, "\x02\x00\x00\x00\x00\x01", 6);
	f[12] = 0x08;
	ip[0] = 0x45;
	ip[2] = iplen >> 8; ip[3] = iplen & 0xff;
	ip[6] = 0x40;                           /* DF */
	ip[8] = 64; ip[9] = 17;
	memcpy(ip + 12, "\xcb\x00\x71\x01", 4); /* 203.0.113.1 */
	memcpy(ip + 16, "\xcb\x00\x71\x02", 4); /* 203.0.113.2 */
	c = fold(sum16(ip, 20, 0));
	ip[10] = c >> 8; ip[11] = c & 0xff;
	udp[0] = 1234 >> 8; udp[1] = 1234 & 0xff;
	udp[2] = 9 >> 8; udp[3] = 9;            /* discard port */
	udp[4] = ulen >> 8; udp[5] = ulen & 0xff;
	for (i = 8; i < ulen; i++)
		udp[i] = 'a' + i % 26;
	s = sum16(ip + 12, 8, 17 + ulen);       /* pseudo header */
	c = fold(sum16(udp, ulen, s));
	if (c == 0)
		c = 0xffff;
	udp[6] = c >> 8; udp[7] = c & 0xff;
}

/* ---- XDP attach ---- */

static struct bpf_object *obj;
static int attached_ifindex;

static void detach(void)
{
	if (attached_ifindex) {
		bpf_xdp_detach(attached_ifindex, XDP_FLAGS_DRV_MODE, NULL);
		attached_ifindex = 0;
	}
	if (obj) {
		bpf_object__close(obj);
		obj = NULL;
	}
}

static int load_prog(struct cfg *c, const char *name, int attach)
{
	struct bpf_program *p;
	int fd, err;

	obj = bpf_object__open_file(c->obj, NULL);
	if (!obj)
		die("open BPF object", errno);
	err = bpf_object__load(obj);
	if (err)
		die("load BPF object", err);
	p = bpf_object__find_program_by_name(obj, name);
	if (!p)
		die(name, ENOENT);
	fd = bpf_program__fd(p);
	if (attach) {
		err = bpf_xdp_attach(c->ifindex, fd, XDP_FLAGS_DRV_MODE, NULL);
		if (err)
			die("attach XDP (native)", err);
		attached_ifindex = c->ifindex;
	}
	return fd;
}

static int map_fd(const char *name)
{
	struct bpf_map *m = bpf_object__find_map_by_name(obj, name);

	if (!m)
		die(name, ENOENT);
	return bpf_map__fd(m);
}

static uint64_t read_seen(void)
{
	int ncpu = libbpf_num_possible_cpus(), i;
	uint64_t *v = calloc(ncpu, sizeof(*v)), total = 0;
	uint32_t k = 0;

	if (v && bpf_map_lookup_elem(map_fd("seen"), &k, v) == 0)
		for (i = 0; i < ncpu; i++)
			total += v[i];
	free(v);
	return total;
}

/* ---- AF_XDP sockets ---- */

static void xsk_open(struct worker *w, int rx)
{
	struct xsk_umem_config uc = {
		.fill_size = w->cfg->ring, .comp_size = w->cfg->ring,
		.frame_size = FRAME_SIZE, .frame_headroom = 0,
	};
	struct xsk_socket_config sc = {
		.rx_size = rx ? w->cfg->ring : 0,
		.tx_size = rx ? 0 : w->cfg->ring,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
		.xdp_flags = XDP_FLAGS_DRV_MODE,
		.bind_flags = XDP_COPY | XDP_USE_NEED_WAKEUP,
	};
	size_t sz = (size_t)2 * w->cfg->ring * FRAME_SIZE;
	int err, tries;

	w->area = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (w->area == MAP_FAILED)
		die("mmap UMEM", errno);
	err = xsk_umem__create(&w->umem, w->area, sz, &w->fq, &w->cq, &uc);
	if (err)
		die("xsk_umem__create", err);
	/* A socket closed just before (the previous run) releases its queue
	 * from a deferred work item: retry EBUSY for a while. */
	for (tries = 0; tries < 200; tries++) {
		err = xsk_socket__create(&w->xsk, w->cfg->ifname, w->queue, w->umem,
					 rx ? &w->rx : NULL, rx ? NULL : &w->tx, &sc);
		if (err != -EBUSY)
			break;
		usleep(10000);
	}
	if (err)
		die("xsk_socket__create", err);
	if (!rx && w->cfg->tx_budget) {
		/* frames a copy-mode sendto() may send (default 32) */
		int b = w->cfg->tx_budget;

		/* ENOPROTOOPT: a kernel before 6.17, which sends 32 per call */
		if (setsockopt(xsk_socket__fd(w->xsk), SOL_XDP, 9 /* XDP_MAX_TX_SKB_BUDGET */,
			       &b, sizeof(b)) && errno != ENOPROTOOPT)
			die("setsockopt XDP_MAX_TX_SKB_BUDGET", errno);
	}
}

static void xsk_close(struct worker *w)
{
	socklen_t l = sizeof(w->st);

	getsockopt(xsk_socket__fd(w->xsk), SOL_XDP, XDP_STATISTICS, &w->st, &l);
	xsk_socket__delete(w->xsk);
	xsk_umem__delete(w->umem);
	munmap(w->area, (size_t)2 * w->cfg->ring * FRAME_SIZE);
}

static void *rx_loop(void *arg)
{
	struct worker *w = arg;
	struct pollfd pfd = { .fd = xsk_socket__fd(w->xsk), .events = POLLIN };
	uint32_t idx, i, n, ring = w->cfg->ring;
	double start = now_s(), t;

	/* Give half the frames to the kernel for RX. */
	n = xsk_ring_prod__reserve(&w->fq, ring, &idx);
	for (i = 0; i < n; i++)
		*xsk_ring_prod__fill_addr(&w->fq, idx + i) = (uint64_t)i * FRAME_SIZE;
	xsk_ring_prod__submit(&w->fq, n);

	/* Like pkt-gen -f rx: the clock starts at the first frame and the run
	 * ends after -t seconds of traffic or IDLE_END seconds of silence. */
	while (!stop_flag) {
		uint32_t ridx, fidx;

		n = xsk_ring_cons__peek(&w->rx, w->cfg->batch, &ridx);
		if (n == 0) {
			t = now_s();
			if (w->pkts == 0 ? (rx_last_any ? t - rx_last_any >= IDLE_END
							: t - start >= w->cfg->secs + 5)
					 : t - w->t_last >= IDLE_END || t - w->t_first >= w->cfg->secs)
				break;
			if (!w->cfg->busy)
				poll(&pfd, 1, 100);
			continue;
		}
		/* The fill ring has room: it holds at most what RX gave back. */
		while (xsk_ring_prod__reserve(&w->fq, n, &fidx) != n)
			;
		for (i = 0; i < n; i++) {
			const struct xdp_desc *d = xsk_ring_cons__rx_desc(&w->rx, ridx + i);

			w->bytes += d->len;
			*xsk_ring_prod__fill_addr(&w->fq, fidx + i) = d->addr;
		}
		xsk_ring_prod__submit(&w->fq, n);
		xsk_ring_cons__release(&w->rx, n);
		/* clock_gettime is a vDSO call: cheap enough once a batch. */
		w->t_last = now_s();
		rx_last_any = w->t_last;
		if (w->pkts == 0)
			w->t_first = w->t_last;
		w->pkts += n;
		w->events++;
		if (w->t_last - w->t_first >= w->cfg->secs)
			break;
	}
	return NULL;
}

static void *tx_loop(void *arg)
{
	struct worker *w = arg;
	int fd = xsk_socket__fd(w->xsk);
	uint32_t i, idx, n, inflight = 0, next = 0, ring = w->cfg->ring;
	double end;

	for (i = 0; i < 2 * ring; i++)
		build_frame((uint8_t *)w->area + (size_t)i * FRAME_SIZE, w->cfg->len);
	w->t_first = now_s();
	end = w->t_first + w->cfg->secs;

	while (!stop_flag) {
		uint32_t room;

		/* Reap completions: every frame holds the same bytes, so a
		 * completed address only matters as a count. */
		n = xsk_ring_cons__peek(&w->cq, ring, &idx);
		if (n) {
			xsk_ring_cons__release(&w->cq, n);
			inflight -= n;
			w->pkts += n;
		}
		room = ring - inflight;
		if (room > (uint32_t)w->cfg->batch)
			room = w->cfg->batch;
		if (room) {
			n = xsk_ring_prod__reserve(&w->tx, room, &idx);
			for (i = 0; i < n; i++) {
				struct xdp_desc *d = xsk_ring_prod__tx_desc(&w->tx, idx + i);

				d->addr = (uint64_t)next * FRAME_SIZE;
				d->len = w->cfg->len;
				next = (next + 1) % (2 * ring);
			}
			if (n) {
				xsk_ring_prod__submit(&w->tx, n);
				inflight += n;
				w->events++;
			}
		}
		if (xsk_ring_prod__needs_wakeup(&w->tx)) {
			w->kicks++;
			if (sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 &&
			    errno != EAGAIN && errno != EBUSY && errno != ENOBUFS &&
			    errno != ENETDOWN) {
				w->err = errno;
				break;
			}
		}
		if ((w->kicks & 255) == 0 && now_s() >= end)
			break;
	}
	/* Let what is queued finish so the count is of frames sent. */
	for (i = 0; inflight && i < 1000; i++) {
		sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
		n = xsk_ring_cons__peek(&w->cq, ring, &idx);
		xsk_ring_cons__release(&w->cq, n);
		inflight -= n;
		w->pkts += n;
	}
	w->t_last = now_s();
	w->bytes = w->pkts * w->cfg->len;
	return NULL;
}

static void print_result(struct cfg *c, struct worker *ws, double secs, uint64_t seen)
{
	uint64_t pkts = 0, bytes = 0, events = 0, drop = 0, full = 0, fill_empty = 0;
	double first = 0, last = 0;
	int q;

	/* The span from the first worker's first frame to the last one's last
	 * frame, when the workers timed themselves. */
	for (q = 0; q < c->nq; q++) {
		if (ws[q].pkts == 0 || ws[q].t_first == 0)
			continue;
		if (first == 0 || ws[q].t_first < first)
			first = ws[q].t_first;
		if (ws[q].t_last > last)
			last = ws[q].t_last;
	}
	if (first > 0 && last > first)
		secs = last - first;
	for (q = 0; q < c->nq; q++) {
		pkts += ws[q].pkts;
		bytes += ws[q].bytes;
		events += ws[q].events;
		drop += ws[q].st.rx_dropped;
		full += ws[q].st.rx_ring_full;
		fill_empty += ws[q].st.rx_fill_ring_empty_descs;
	}
	printf("{\"mode\": \"%s\", \"queues\": %d, \"pkts\": %llu, \"bytes\": %llu, "
	       "\"events\": %llu, \"seconds\": %.6f, \"pps\": %.1f, \"xdp_seen\": %llu, "
	       "\"rx_dropped\": %llu, \"rx_ring_full\": %llu, \"fill_empty\": %llu}\n",
	       c->mode, c->nq, (unsigned long long)pkts, (unsigned long long)bytes,
	       (unsigned long long)events, secs, secs > 0 ? pkts / secs : 0.0, (unsigned long long)seen,
	       (unsigned long long)drop, (unsigned long long)full,
	       (unsigned long long)fill_empty);
}

static int run_xsk(struct cfg *c, int rx)
{
	struct worker ws[MAX_QUEUES];
	double t0, t1;
	uint64_t seen0 = 0;
	int q, xmap = -1;

	memset(ws, 0, sizeof(ws));
	if (rx) {
		load_prog(c, "xsk_redirect", 1);
		xmap = map_fd("xsks_map");
	}
	for (q = 0; q < c->nq; q++) {
		ws[q].cfg = c;
		ws[q].queue = q;
		xsk_open(&ws[q], rx);
		if (rx) {
			int fd = xsk_socket__fd(ws[q].xsk);
			uint32_t k = q;

			if (bpf_map_update_elem(xmap, &k, &fd, 0))
				die("xsks_map update", errno);
		}
	}
	if (rx)
		seen0 = read_seen();
	t0 = now_s();
	for (q = 0; q < c->nq; q++)
		pthread_create(&ws[q].thr, NULL, rx ? rx_loop : tx_loop, &ws[q]);
	for (q = 0; q < c->nq; q++)
		pthread_join(ws[q].thr, NULL);
	t1 = now_s();
	for (q = 0; q < c->nq; q++) {
		if (ws[q].err)
			fprintf(stderr, "xsk_bench: queue %d: %s\n", q, strerror(ws[q].err));
		xsk_close(&ws[q]);
	}
	print_result(c, ws, t1 - t0, rx ? read_seen() - seen0 : 0);
	detach();
	return 0;
}

static int run_fwd(struct cfg *c)
{
	struct xsk_umem_config uc = {
		.fill_size = c->ring, .comp_size = c->ring,
		.frame_size = FRAME_SIZE, .frame_headroom = 0,
	};
	struct xsk_socket_config sc = {
		.rx_size = c->ring, .tx_size = c->ring,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
		.xdp_flags = XDP_FLAGS_DRV_MODE,
		.bind_flags = XDP_COPY | XDP_USE_NEED_WAKEUP,
	};
	struct xsk_ring_prod fq, fq2, tx;
	struct xsk_ring_cons cq, cq2, rx;
	struct xsk_socket *in, *out;
	struct xsk_umem *umem;
	size_t sz = (size_t)2 * c->ring * FRAME_SIZE;
	uint64_t pkts = 0, kicks = 0, outstanding = 0;
	double t_first = 0, t_last = 0, start;
	uint32_t i, idx = 0, n, k = 0;
	void *area;
	int err, fd, xmap;

	if (!c->out_ifname)
		usage();
	/* The previous forwarder's sockets on these queues are released by deferred
	 * work in the kernel, and libxdp does not recover cleanly from a bind that
	 * races with it (seen: a refused bind, or a fresh fill ring whose cached
	 * producer is off by one): set everything up again until it comes up clean. */
	for (int attempt = 0;; attempt++) {
		usleep(attempt ? 200000 : 500000);
		area = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (area == MAP_FAILED)
			die("mmap UMEM", errno);
		in = out = NULL;
		err = xsk_umem__create(&umem, area, sz, &fq, &cq, &uc);
		if (err)
			die("xsk_umem__create", err);
		err = xsk_socket__create_shared(&in, c->ifname, 0, umem, &rx, NULL, &fq, &cq, &sc);
		if (!err)
			err = xsk_socket__create_shared(&out, c->out_ifname, 0, umem, NULL, &tx,
							&fq2, &cq2, &sc);
		/* every frame of IN's fill ring: the UMEM's first half. Seen after a previous
		 * forwarder: libxdp's cached producer of the fresh ring one ahead of the
		 * kernel's word (0); start from the kernel's words instead. */
		if (!err && fq.cached_prod != *fq.producer) {
			fq.cached_prod = *fq.producer;
			fq.cached_cons = *fq.consumer + fq.size;
		}
		n = err ? 0 : xsk_ring_prod__reserve(&fq, c->ring, &idx);
		if (!err && n == c->ring)
			break;
		if (attempt == 25)
			die(err ? "xsk_socket__create_shared" : "filling the fill ring",
			    err ? err : ENOSPC);
		if (out)
			xsk_socket__delete(out);
		if (in)
			xsk_socket__delete(in);
		xsk_umem__delete(umem);
		munmap(area, sz);
	}
	fd = xsk_socket__fd(out);
	if (c->tx_budget && setsockopt(fd, SOL_XDP, 9 /* XDP_MAX_TX_SKB_BUDGET */, &c->tx_budget,
				       sizeof(c->tx_budget)) && errno != ENOPROTOOPT)
		die("setsockopt XDP_MAX_TX_SKB_BUDGET", errno);
	load_prog(c, "xsk_redirect", 1);
	xmap = map_fd("xsks_map");
	i = xsk_socket__fd(in);
	if (bpf_map_update_elem(xmap, &k, &i, 0))
		die("xsks_map update", errno);
	for (i = 0; i < n; i++)
		*xsk_ring_prod__fill_addr(&fq, idx + i) = (uint64_t)i * FRAME_SIZE;
	xsk_ring_prod__submit(&fq, n);
	printf("READY\n");
	fflush(stdout);

	struct pollfd pfd = { .fd = xsk_socket__fd(in), .events = POLLIN };
	start = now_s();
	while (!stop_flag) {
		uint32_t ridx, tidx, cidx, fidx, m;
		double t;

		/* completions first: their buffers refill IN */
		m = xsk_ring_cons__peek(&cq2, c->ring, &cidx);
		if (m && xsk_ring_prod__reserve(&fq, m, &fidx) != m) {
			xsk_ring_cons__cancel(&cq2, m); /* IN's fill ring is full: later */
			m = 0;
		}
		if (m) {
			for (i = 0; i < m; i++)
				*xsk_ring_prod__fill_addr(&fq, fidx + i) =
					*xsk_ring_cons__comp_addr(&cq2, cidx + i);
			xsk_ring_prod__submit(&fq, m);
			xsk_ring_cons__release(&cq2, m);
			outstanding -= m;
		}
		n = xsk_ring_cons__peek(&rx, c->batch, &ridx);
		if (n && xsk_ring_prod__reserve(&tx, n, &tidx) != n) {
			xsk_ring_cons__cancel(&rx, n); /* OUT's TX ring is full: kick and retry */
			n = 0;
		}
		if (n == 0) {
			if (outstanding) { /* copy mode: completions come from sendto() */
				sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
				kicks++;
			}
			t = now_s();
			if (pkts ? t - t_last >= IDLE_END || t - t_first >= c->secs
				 : t - start >= c->secs + 30)
				break;
			if (!outstanding)
				poll(&pfd, 1, 1);
			continue;
		}
		for (i = 0; i < n; i++) {
			const struct xdp_desc *d = xsk_ring_cons__rx_desc(&rx, ridx + i);
			struct xdp_desc *o = xsk_ring_prod__tx_desc(&tx, tidx + i);

			o->addr = d->addr;
			o->len = d->len;
			o->options = 0;
		}
		xsk_ring_prod__submit(&tx, n);
		xsk_ring_cons__release(&rx, n);
		outstanding += n;
		sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
		kicks++;
		t_last = now_s();
		if (pkts == 0)
			t_first = t_last;
		pkts += n;
		if (t_last - t_first >= c->secs)
			break;
	}
	printf("{\"pkts\": %llu, \"seconds\": %.6f, \"pps\": %.1f, \"kicks\": %llu}\n",
	       (unsigned long long)pkts, t_last - t_first,
	       t_last > t_first ? pkts / (t_last - t_first) : 0.0, (unsigned long long)kicks);
	detach();
	xsk_socket__delete(out);
	xsk_socket__delete(in);
	xsk_umem__delete(umem);
	munmap(area, sz);
	return 0;
}

/* ---- ping / pong: the latency reference ---- */

static void pp_open(struct worker *w)
{
	struct xsk_umem_config uc = {
		.fill_size = w->cfg->ring, .comp_size = w->cfg->ring,
		.frame_size = FRAME_SIZE, .frame_headroom = 0,
	};
	struct xsk_socket_config sc = {
		.rx_size = w->cfg->ring, .tx_size = w->cfg->ring,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
		.xdp_flags = XDP_FLAGS_DRV_MODE,
		.bind_flags = XDP_COPY | XDP_USE_NEED_WAKEUP,
	};
	size_t sz = (size_t)2 * w->cfg->ring * FRAME_SIZE;
	uint32_t idx, i, n;
	int err, tries;

	w->area = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (w->area == MAP_FAILED)
		die("mmap UMEM", errno);
	err = xsk_umem__create(&w->umem, w->area, sz, &w->fq, &w->cq, &uc);
	if (err)
		die("xsk_umem__create", err);
	for (tries = 0; tries < 200; tries++) {
		err = xsk_socket__create(&w->xsk, w->cfg->ifname, 0, w->umem, &w->rx, &w->tx, &sc);
		if (err != -EBUSY)
			break;
		usleep(10000);
	}
	if (err)
		die("xsk_socket__create", err);
	/* the first half of the UMEM for RX, the second for ping's frames */
	n = xsk_ring_prod__reserve(&w->fq, w->cfg->ring, &idx);
	for (i = 0; i < n; i++)
		*xsk_ring_prod__fill_addr(&w->fq, idx + i) = (uint64_t)i * FRAME_SIZE;
	xsk_ring_prod__submit(&w->fq, n);
}

static void pp_reap(struct worker *w, int to_fill)
{
	uint32_t cidx, fidx, m, i;

	m = xsk_ring_cons__peek(&w->cq, w->cfg->ring, &cidx);
	if (!m)
		return;
	if (to_fill) { /* pong: the reply's buffer was an RX buffer: back to the fill ring */
		while (xsk_ring_prod__reserve(&w->fq, m, &fidx) != m)
			;
		for (i = 0; i < m; i++)
			*xsk_ring_prod__fill_addr(&w->fq, fidx + i) =
				*xsk_ring_cons__comp_addr(&w->cq, cidx + i);
		xsk_ring_prod__submit(&w->fq, m);
	}
	xsk_ring_cons__release(&w->cq, m);
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

static int run_pingpong(struct cfg *c, int ping)
{
	struct worker w;
	struct pollfd pfd;
	uint32_t ridx, tidx, fidx, k = 0, i;
	uint64_t replies = 0, lost = 0, sent = 0;
	int64_t *rtt = NULL;
	double last;
	int xmap, fd;

	memset(&w, 0, sizeof(w));
	w.cfg = c;
	load_prog(c, "xsk_redirect", 1);
	xmap = map_fd("xsks_map");
	pp_open(&w);
	fd = xsk_socket__fd(w.xsk);
	if (bpf_map_update_elem(xmap, &k, &fd, 0))
		die("xsks_map update", errno);
	pfd.fd = fd;
	pfd.events = POLLIN;
	if (!ping) {
		printf("READY\n");
		fflush(stdout);
		last = now_s();
		while (!stop_flag && now_s() - last < c->secs) {
			uint32_t n = xsk_ring_cons__peek(&w.rx, c->batch, &ridx);

			pp_reap(&w, 1);
			if (!n) {
				if (!c->busy)
					poll(&pfd, 1, 100);
				continue;
			}
			while (xsk_ring_prod__reserve(&w.tx, n, &tidx) != n)
				pp_reap(&w, 1);
			for (i = 0; i < n; i++) {
				const struct xdp_desc *d = xsk_ring_cons__rx_desc(&w.rx, ridx + i);
				struct xdp_desc *o = xsk_ring_prod__tx_desc(&w.tx, tidx + i);
				uint8_t *f = xsk_umem__get_data(w.area, d->addr), mac[6];

				memcpy(mac, f, 6);
				memcpy(f, f + 6, 6);
				memcpy(f + 6, mac, 6);
				o->addr = d->addr;
				o->len = d->len;
				o->options = 0;
			}
			xsk_ring_prod__submit(&w.tx, n);
			xsk_ring_cons__release(&w.rx, n);
			sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
			replies += n;
			last = now_s();
		}
		printf("{\"mode\": \"pong\", \"replies\": %llu}\n", (unsigned long long)replies);
		xsk_close(&w);
		detach();
		return 0;
	}
	rtt = calloc(c->count, sizeof(*rtt));
	if (!rtt)
		die("calloc", ENOMEM);
	{
		uint64_t base = (uint64_t)c->ring * FRAME_SIZE; /* the TX half */

		build_frame(xsk_umem__get_data(w.area, base), c->len);
		for (sent = 0; sent < c->count && !stop_flag; sent++) {
			struct timespec t0, t1;
			double deadline;
			uint32_t n = 0;

			pp_reap(&w, 0);
			if (xsk_ring_prod__reserve(&w.tx, 1, &tidx) != 1)
				die("ping: TX ring full", ENOSPC);
			xsk_ring_prod__tx_desc(&w.tx, tidx)->addr = base;
			xsk_ring_prod__tx_desc(&w.tx, tidx)->len = c->len;
			xsk_ring_prod__tx_desc(&w.tx, tidx)->options = 0;
			clock_gettime(CLOCK_MONOTONIC, &t0);
			xsk_ring_prod__submit(&w.tx, 1);
			sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
			deadline = now_s() + 1.0;
			while (!stop_flag && !(n = xsk_ring_cons__peek(&w.rx, c->batch, &ridx))) {
				if (now_s() > deadline)
					break;
				if (!c->busy)
					poll(&pfd, 1, 1000);
			}
			clock_gettime(CLOCK_MONOTONIC, &t1);
			if (!n) {
				rtt[sent] = -1;
				lost++;
				continue;
			}
			rtt[sent] = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000 +
				    (t1.tv_nsec - t0.tv_nsec);
			replies++;
			while (xsk_ring_prod__reserve(&w.fq, n, &fidx) != n)
				;
			for (i = 0; i < n; i++)
				*xsk_ring_prod__fill_addr(&w.fq, fidx + i) =
					xsk_ring_cons__rx_desc(&w.rx, ridx + i)->addr;
			xsk_ring_prod__submit(&w.fq, n);
			xsk_ring_cons__release(&w.rx, n);
		}
	}
	{
		uint64_t m = 0, j;

		for (j = 0; j < sent; j++)
			if (rtt[j] >= 0)
				rtt[m++] = rtt[j];
		qsort(rtt, m, sizeof(*rtt), cmp_i64);
		printf("{\"mode\": \"ping\", \"sent\": %llu, \"received\": %llu, \"lost\": %llu, "
		       "\"min\": %lld, \"median\": %lld, \"p99\": %lld, \"max\": %lld}\n",
		       (unsigned long long)sent, (unsigned long long)replies,
		       (unsigned long long)lost, m ? (long long)rtt[0] : -1,
		       m ? (long long)rtt[m / 2] : -1, m ? (long long)rtt[(m * 99) / 100] : -1,
		       m ? (long long)rtt[m - 1] : -1);
	}
	free(rtt);
	xsk_close(&w);
	detach();
	return 0;
}

static int run_drop(struct cfg *c)
{
	struct worker w;
	uint64_t s0, v, last = 0;
	double t0, t, t_first = 0, t_last = 0;

	memset(&w, 0, sizeof(w));
	load_prog(c, "drop_count", 1);
	s0 = read_seen();
	t0 = now_s();
	/* Sample every 5 ms; the rate is over the span in which the count grew,
	 * and the run ends IDLE_END after traffic stops (or after -t seconds). */
	while (!stop_flag) {
		usleep(5000);
		t = now_s();
		v = read_seen() - s0;
		if (v != last) {
			if (last == 0)
				t_first = t;
			t_last = t;
			last = v;
		} else if (last && t - t_last >= IDLE_END) {
			break;
		}
		if (t - t0 >= c->secs)
			break;
	}
	w.pkts = read_seen() - s0;
	w.t_first = t_first;
	w.t_last = t_last;
	print_result(c, &w, t_last > t_first ? t_last - t_first : now_s() - t0, w.pkts);
	detach();
	return 0;
}

static int run_gen(struct cfg *c)
{
	uint8_t frame[2048];
	struct xdp_md ctx = { .data_end = c->len, .ingress_ifindex = c->ifindex };
	uint32_t k = 0, repeat = 1 << 16;
	uint64_t sent = 0, calls = 0;
	double t0, t1, next;
	int fd, err;
	struct worker w;

	build_frame(frame, c->len);
	fd = load_prog(c, "redirect_out", 0);
	if (bpf_map_update_elem(map_fd("target"), &k, &c->ifindex, 0))
		die("target map", errno);
	if (c->rate) {
		/* a call's worth every 10 ms */
		repeat = c->rate / 100 ? c->rate / 100 : 1;
	}
	t0 = next = now_s();
	while (!stop_flag && now_s() - t0 < c->secs) {
		LIBBPF_OPTS(bpf_test_run_opts, o,
			    .data_in = frame, .data_size_in = c->len,
			    .ctx_in = &ctx, .ctx_size_in = sizeof(ctx),
			    .repeat = repeat, .flags = BPF_F_TEST_XDP_LIVE_FRAMES,
			    .batch_size = 64);
		err = bpf_prog_test_run_opts(fd, &o);
		if (err)
			die("BPF_PROG_TEST_RUN live frames", err);
		sent += repeat;
		calls++;
		if (c->rate) {
			next += 0.01;
			while (now_s() < next && !stop_flag)
				usleep(1000);
		}
	}
	t1 = now_s();
	memset(&w, 0, sizeof(w));
	w.pkts = sent;
	w.bytes = sent * c->len;
	w.events = calls;
	print_result(c, &w, t1 - t0, read_seen());
	detach();
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: xsk_bench rx|tx|fwd|drop|gen|ping|pong -i IF [-O OUT_IF] -o OBJ [-q NQ] [-t SECS] "
			"[-b BATCH] [-l LEN] [-r PPS] [-s RING_SLOTS] [-n COUNT] [--busy]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = { { "busy", no_argument, NULL, 'B' }, { 0 } };
	struct cfg c = { .nq = 1, .batch = 64, .len = 60, .secs = 5, .ring = 2048,
			 .obj = "xdp_progs.bpf.o" };
	struct sigaction sa = { .sa_handler = on_signal };
	int ch;

	if (argc < 2)
		usage();
	c.mode = argv[1];
	optind = 2;
	while ((ch = getopt_long(argc, argv, "i:o:O:q:t:b:l:r:s:k:n:", lo, NULL)) != -1) {
		switch (ch) {
		case 'i': c.ifname = optarg; break;
		case 'o': c.obj = optarg; break;
		case 'O': c.out_ifname = optarg; break;
		case 'q': c.nq = atoi(optarg); break;
		case 't': c.secs = atof(optarg); break;
		case 'b': c.batch = atoi(optarg); break;
		case 'l': c.len = atoi(optarg); break;
		case 'r': c.rate = strtoull(optarg, NULL, 0); break;
		case 's': c.ring = strtoul(optarg, NULL, 0); break;
		case 'k': c.tx_budget = atoi(optarg); break;
		case 'n': c.count = strtoull(optarg, NULL, 0); break;
		case 'B': c.busy = 1; break;
		default: usage();
		}
	}
	if (!c.ifname || c.nq < 1 || c.nq > MAX_QUEUES || c.batch < 1 ||
	    c.len < 60 || c.len > 1514 || c.ring < 64 || c.ring > 16384 ||
	    (c.ring & (c.ring - 1)))
		usage();
	c.ifindex = if_nametoindex(c.ifname);
	if (!c.ifindex)
		die(c.ifname, errno);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	atexit(detach);
	libbpf_set_print(NULL);
	if (!strcmp(c.mode, "rx"))
		return run_xsk(&c, 1);
	if (!strcmp(c.mode, "tx"))
		return run_xsk(&c, 0);
	if (!strcmp(c.mode, "fwd"))
		return run_fwd(&c);
	if (!strcmp(c.mode, "drop"))
		return run_drop(&c);
	if (!strcmp(c.mode, "gen"))
		return run_gen(&c);
	if (!strcmp(c.mode, "ping") && c.count)
		return run_pingpong(&c, 1);
	if (!strcmp(c.mode, "pong"))
		return run_pingpong(&c, 0);
	usage();
	return 2;
}
