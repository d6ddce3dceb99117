/* Over 500 lines: txsync and rxsync with every check netmap makes, kept in one file so
 * that it reads side by side with its reference model, ring.py's PyRing. */
/* The netmap sync of one ring over one AF_XDP socket, compiled: what netmap does in the
 * kernel for txsync/rxsync, over the memory the Python Ring already owns (its slot table,
 * BufferPool's owner/where arrays, the socket's four rings).
 *
 * ring.py's Ring is the reference model of every rule here; tests/unit/test_ringcore_diff.py
 * runs both on the same operations and requires the same state after each. A refusal is
 * raised as Refused(reason, slot, buf_idx, detail): Python turns it into the RingError
 * with its message (and repairs a copied slot, which needs every ring of the memory).
 *
 * Checks are netmap's: only what the application could have changed. ``shadow`` keeps the
 * buf_idx we last wrote into each slot; a slot still holding it holds a buffer that is
 * ours, in that slot (owner APP, where == the slot), so only slots whose buf_idx differs
 * get the full check, whether or not the application set NS_BUF_CHANGED.
 *
 * Shared ring words follow libxdp (xsk.h): the kernel's index is read with acquire only
 * when the cached view is short of what the sync wants; our index is published with
 * release after the descriptors are written (or read).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define NS_BUF_CHANGED 0x0001
#define NS_REPORT 0x0002
#define NS_MOREFRAG 0x0020
#define NR_TIMESTAMP 0x0002
#define XDP_RING_NEED_WAKEUP 1
#define XDP_PKT_CONTD 1
#define XDP_PACKET_HEADROOM 256
#define VIRTIO_NET_HDR_F_NEEDS_CSUM 1
#define OWNER_FREE 0
#define OWNER_APP 1

/* refusal priorities at one slot, as the reference checks them */
enum { P_RANGE, P_OWNER, P_TWICE, P_COPIED, P_NONE };
static const char *const P_NAMES[] = {"range", "owner", "twice", "copied"};

struct nm_slot {
    uint32_t buf_idx;
    uint16_t len;
    uint16_t flags;
    uint64_t ptr;
};

struct xdp_desc {
    uint64_t addr;
    uint32_t len;
    uint32_t options;
};

typedef struct {
    uint32_t *producer, *consumer, *flags;
    void *desc;
    uint32_t size, mask;
    uint32_t cached; /* our index: producer of FILL/TX, consumer of RX/COMPLETION */
    uint32_t peer;   /* the kernel's index as last read */
    int present;
} kring;

static PyObject *Refused;
static PyObject *InvariantError;

typedef struct {
    PyObject_HEAD
    PyObject *refs; /* everything whose memory we point into */
    PyObject *xsk;
    PyObject *what;
    struct nm_slot *gslots, *slot;
    uint32_t *shadow, *tmp, *local_done;
    int32_t *owner;
    int64_t *where;
    uint64_t *stamp;
    uint8_t *chunks;
    uint32_t gen, nchunks, n, first_buf, kid, shift, hdr, buf_off, nr_buf_size, max_frags,
        chunk_size, n_local;
    int is_tx, frags, zerocopy, fd, closed;
    kring fill, comp, rx, tx;
    unsigned int hwcur, tail, inflight, kernel_rx;
    double ts; /* netmap_ring.ts: wall clock of the last rxsync asked for by NR_TIMESTAMP */
    unsigned long long st[8];
} Core;

enum { S_FRAMES, S_BYTES, S_SYNCS, S_KICKS, S_KICK_RETRY, S_REFUSED, S_HDR_REFUSED, S_TX_DROPPED };

/* --- the shared rings (libxdp's xsk_prod_nb_free / xsk_cons_nb_avail) --------------- */
static inline uint32_t load_acquire(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_release(uint32_t *p, uint32_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static inline uint32_t cons_avail(kring *r, uint32_t want) {
    uint32_t a = r->peer - r->cached;
    if (a < want) {
        r->peer = load_acquire(r->producer);
        a = r->peer - r->cached;
    }
    return a < want ? a : want;
}

static inline void prod_submit(kring *r, uint32_t k) {
    r->cached += k;
    store_release(r->producer, r->cached);
}

static inline void cons_release(kring *r, uint32_t k) {
    r->cached += k;
    store_release(r->consumer, r->cached);
}

static inline int needs_wakeup(kring *r) {
    return __atomic_load_n(r->flags, __ATOMIC_RELAXED) & XDP_RING_NEED_WAKEUP;
}

static inline uint64_t *addr_desc(kring *r, uint32_t i) {
    return (uint64_t *)r->desc + (i & r->mask);
}

static inline struct xdp_desc *xdp_desc(kring *r, uint32_t i) {
    return (struct xdp_desc *)r->desc + (i & r->mask);
}

/* --- errors ---------------------------------------------------------------------------- */
static PyObject *refuse(Core *c, const char *reason, long slot, long long buf, long long detail) {
    c->st[S_REFUSED]++;
    PyObject *s = slot < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(slot);
    PyObject *b = buf < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(buf);
    PyObject *args = Py_BuildValue("(sNNL)", reason, s, b, detail);
    if (args != NULL) {
        PyErr_SetObject(Refused, args);
        Py_DECREF(args);
    }
    return NULL;
}

static void describe(int32_t code, char *out, size_t len) {
    if (code == OWNER_FREE)
        snprintf(out, len, "free");
    else if (code == OWNER_APP)
        snprintf(out, len, "in a ring slot");
    else
        snprintf(out, len, "with the kernel for %s on socket %d", (code - 2) % 2 ? "TX" : "RX",
                 (code - 2) / 2);
}

static PyObject *invariant(Core *c, const char *where, uint32_t b, int32_t expect) {
    char want[64], got[64];
    describe(expect, want, sizeof want);
    if (b >= c->nchunks)
        snprintf(got, sizeof got, "outside the UMEM");
    else
        describe(c->owner[b], got, sizeof got);
    PyErr_Format(InvariantError, "%U %s: buf_idx %u is not %s but %s", c->what, where, b, want,
                 got);
    return NULL;
}

/* --- head/cur (netmap's nm_txsync_prologue / nm_rxsync_prologue) ----------------------- */
static int as_index(PyObject *o, long long *out) {
    if (!PyLong_Check(o)) {
        if (PyFloat_Check(o) || !PyIndex_Check(o))
            return 0;
    }
    PyObject *i = PyNumber_Index(o);
    if (i == NULL) {
        PyErr_Clear();
        return 0;
    }
    int overflow = 0;
    *out = PyLong_AsLongLongAndOverflow(i, &overflow);
    Py_DECREF(i);
    if (overflow || (*out == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static inline long long mod(long long a, long long n) { return ((a % n) + n) % n; }

static int prologue(Core *c, PyObject *ho, PyObject *co, uint32_t *head) {
    long long h, cu, n = c->n, hw = c->hwcur, t = c->tail;
    if (as_index(ho, &h) && as_index(co, &cu) && h >= 0 && h < n && cu >= 0 && cu < n &&
        mod(h - hw, n) <= mod(t - hw, n) && mod(cu - h, n) <= mod(t - h, n)) {
        *head = (uint32_t)h;
        return 0;
    }
    refuse(c, "head_cur", -1, -1, 0);
    return -1;
}

/* --- the ownership check of user slots ------------------------------------------------- */
typedef struct {
    uint32_t pos; /* batch position of the first refusal (count: none) */
    int prio;
    uint32_t buf;
    long long detail;
} verdict;

static inline void note(verdict *v, uint32_t pos, int prio, uint32_t buf, long long detail) {
    if (pos < v->pos || (pos == v->pos && prio < v->prio)) {
        v->pos = pos;
        v->prio = prio;
        v->buf = buf;
        v->detail = detail;
    }
}

static uint32_t next_gen(Core *c) {
    if (++c->gen == 0) {
        memset(c->stamp, 0, sizeof(uint64_t) * c->nchunks);
        c->gen = 1;
    }
    return c->gen;
}

/* Slot i at batch position k of the batch [hw, hw+count): out of range, not ours, in the
 * batch twice, or copied from a slot that still holds it. A duplicate of a slot we do not
 * check is found from the checked side (where[] names the unchecked one). */
static inline void check_slot(Core *c, verdict *v, uint32_t k, uint32_t i, uint32_t hw,
                              uint32_t count, uint64_t gen) {
    uint32_t b = c->slot[i].buf_idx;
    /* unchanged since the core last wrote or checked it, and the buffer still recorded
     * here: a value written back after the buffer moved elsewhere is checked in full */
    if (b == c->shadow[i] && c->where[b] == (int64_t)c->first_buf + i)
        return;
    if (b >= c->nchunks) {
        note(v, k, P_RANGE, b, 0);
        return;
    }
    if (c->owner[b] != OWNER_APP)
        note(v, k, P_OWNER, b, c->owner[b]);
    if ((c->stamp[b] >> 32) == gen)
        note(v, (uint32_t)c->stamp[b], P_TWICE, b, 0);
    else
        c->stamp[b] = (gen << 32) | k;
    int64_t rec = c->where[b];
    int64_t g = (int64_t)c->first_buf + i;
    if (rec != g && c->gslots[rec].buf_idx == b) {
        int64_t local = rec - (int64_t)c->first_buf;
        uint32_t p = local >= 0 && local < c->n ? (uint32_t)mod(local - hw, c->n) : count;
        if (p < count)
            note(v, p < k ? p : k, P_TWICE, b, 0);
        else
            note(v, k, P_COPIED, b, rec);
    }
}

static PyObject *refuse_verdict(Core *c, verdict *v, uint32_t hw) {
    return refuse(c, P_NAMES[v->prio], (long)((hw + v->pos) % c->n), v->buf, v->detail);
}

/* --- kicks ------------------------------------------------------------------------------ */
/* 0, a transient errno (EAGAIN, ENOBUFS, EBUSY), or -1 with an exception set */
static int kick_tx(Core *c) {
    if (c->fd < 0) {
        PyObject *r = PyObject_CallMethod(c->xsk, "kick_tx", NULL);
        if (r == NULL)
            return -1;
        long e = PyLong_AsLong(r);
        Py_DECREF(r);
        return (int)e;
    }
    ssize_t r;
    int e = 0;
    Py_BEGIN_ALLOW_THREADS r = sendto(c->fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
    e = errno;
    Py_END_ALLOW_THREADS if (r >= 0) return 0;
    if (e == EAGAIN || e == ENOBUFS || e == EBUSY)
        return e;
    PyObject *x = PyObject_CallMethod(c->xsk, "raise_kick_error", "iO", e, Py_True);
    Py_XDECREF(x);
    if (!PyErr_Occurred())
        PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

static int wake_rx(Core *c) {
    if (c->fd < 0) {
        PyObject *r = PyObject_CallMethod(c->xsk, "wake_rx", NULL);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    ssize_t r;
    int e = 0;
    Py_BEGIN_ALLOW_THREADS r = recvfrom(c->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
    e = errno;
    Py_END_ALLOW_THREADS if (r >= 0 || e == EAGAIN || e == ENOBUFS || e == EBUSY) return 0;
    PyObject *x = PyObject_CallMethod(c->xsk, "raise_kick_error", "iO", e, Py_False);
    Py_XDECREF(x);
    if (!PyErr_Occurred())
        PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

/* --- txsync ----------------------------------------------------------------------------- */
static int tx_submit(Core *c, uint32_t hw, uint32_t count, int *report) {
    uint32_t n = c->n, run = 0, run_start = 0, m = 0;
    long frag_bad = -1, len_bad = -1;
    int any_more = 0;
    uint64_t gen = next_gen(c);
    verdict v = {count, P_NONE, 0, 0};
    for (uint32_t k = 0; k < count; k++) {
        uint32_t i = (hw + k) % n;
        struct nm_slot *s = &c->slot[i];
        if (s->flags & NS_MOREFRAG) {
            if (!run)
                run_start = k;
            run++;
            any_more = 1;
        } else {
            if (run + 1 > c->max_frags && frag_bad < 0)
                frag_bad = run_start;
            run = 0;
        }
        *report |= s->flags & NS_REPORT;
        if (len_bad < 0 && (s->len <= c->hdr || s->len > c->nr_buf_size))
            len_bad = k;
        check_slot(c, &v, k, i, hw, count, gen);
    }
    if (any_more && !c->frags) {
        refuse(c, "morefrag", hw, -1, 0);
        return -1;
    }
    if (frag_bad >= 0) {
        refuse(c, "frags", (hw + frag_bad) % n, -1, c->max_frags);
        return -1;
    }
    if (len_bad >= 0) {
        uint32_t i = (hw + len_bad) % n;
        refuse(c, "len", i, -1, c->slot[i].len);
        return -1;
    }
    if (v.pos < count) {
        refuse_verdict(c, &v, hw);
        return -1;
    }
    int32_t mine = 3 + 2 * (int32_t)c->kid;
    kring *tx = &c->tx;
    for (uint32_t k = 0; k < count; k++) {
        uint32_t i = (hw + k) % n;
        struct nm_slot *s = &c->slot[i];
        uint32_t b = s->buf_idx;
        c->owner[b] = mine;
        c->shadow[i] = b;
        s->flags &= ~NS_BUF_CHANGED;
        if (c->hdr) {
            /* offloads are off: a header asking for a checksum or segmentation would go
             * out corrupt, so the slot is refused alone and completes at the next reap */
            uint8_t *h = c->chunks + (size_t)b * c->chunk_size + c->buf_off;
            if ((h[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM) || h[1] != 0) {
                c->local_done[c->n_local++] = b;
                c->st[S_HDR_REFUSED]++;
                continue;
            }
        }
        struct xdp_desc *d = xdp_desc(tx, tx->cached + m);
        d->addr = ((uint64_t)b << c->shift) + XDP_PACKET_HEADROOM;
        d->len = s->len - c->hdr;
        d->options = (s->flags & NS_MOREFRAG) ? XDP_PKT_CONTD : 0;
        c->st[S_BYTES] += d->len;
        m++;
    }
    prod_submit(tx, m);
    c->st[S_FRAMES] += m;
    c->hwcur = (hw + count) % n;
    c->inflight += count;
    return 0;
}

/* Copy mode sends at most a few dozen frames per sendto(), so kick while it makes progress;
 * a transient refusal is counted and retried at the next sync. */
static int tx_push(Core *c, int report) {
    kring *tx = &c->tx;
    for (;;) {
        uint32_t before = load_acquire(tx->consumer);
        if (tx->cached == before || !(report || needs_wakeup(tx)))
            return 0;
        int err = kick_tx(c);
        if (err < 0)
            return -1;
        c->st[S_KICKS]++;
        if (err == EBUSY && !c->zerocopy)
            c->st[S_TX_DROPPED]++; /* copy mode: the device dropped it (NET_XMIT_DROP) */
        if (load_acquire(tx->consumer) == before) {
            if (err)
                c->st[S_KICK_RETRY]++;
            return 0;
        }
    }
}

static int tx_reap(Core *c) {
    kring *comp = &c->comp;
    uint32_t n = c->n, kgot = cons_avail(comp, c->inflight);
    int32_t mine = 3 + 2 * (int32_t)c->kid;
    if (!kgot && !c->n_local)
        return 0;
    uint32_t first = (c->tail + 1) % n;
    if (kgot == 1 && !c->n_local) {
        uint32_t b = (uint32_t)(*addr_desc(comp, comp->cached) >> c->shift);
        if (c->slot[first].buf_idx == b && b < c->nchunks && c->owner[b] == mine) {
            c->owner[b] = OWNER_APP; /* in order, as expected */
            c->where[b] = (int64_t)c->first_buf + first;
            c->shadow[first] = b;
            cons_release(comp, 1);
            c->inflight--;
            c->tail = first;
            return 0;
        }
    }
    uint32_t got = kgot + c->n_local, *bufs = c->tmp;
    if (got > c->inflight) {
        PyErr_Format(InvariantError, "%U COMPLETION ring: %u buffers back, %u in flight",
                     c->what, got, c->inflight);
        return -1;
    }
    for (uint32_t j = 0; j < kgot; j++)
        bufs[j] = (uint32_t)(*addr_desc(comp, comp->cached + j) >> c->shift);
    memcpy(bufs + kgot, c->local_done, sizeof(uint32_t) * c->n_local);
    c->n_local = 0;
    for (uint32_t j = 0; j < got; j++)
        if (bufs[j] >= c->nchunks || c->owner[bufs[j]] != mine) {
            invariant(c, "COMPLETION ring", bufs[j], mine);
            return -1;
        }
    for (uint32_t j = 0; j < got; j++)
        c->owner[bufs[j]] = OWNER_APP;
    cons_release(comp, kgot);
    int in_order = 1;
    for (uint32_t j = 0; j < got && in_order; j++)
        in_order = c->slot[(first + j) % n].buf_idx == bufs[j];
    if (!in_order) {
        /* completions out of submission order: the completed buffers fill the first
         * slots, the still-in-flight ones keep their order behind them */
        uint64_t gen = next_gen(c);
        for (uint32_t j = 0; j < got; j++)
            c->stamp[bufs[j]] = gen << 32;
        uint32_t w = got, *rest = c->local_done; /* empty now: scratch */
        for (uint32_t j = 0; j < c->inflight; j++) {
            uint32_t b = c->slot[(first + j) % n].buf_idx;
            if (b >= c->nchunks || (c->stamp[b] >> 32) != gen) {
                if (w >= c->inflight) {
                    PyErr_Format(InvariantError, "%U: in-flight slots do not match completions",
                                 c->what);
                    return -1;
                }
                rest[w++ - got] = b;
            }
        }
        if (w != c->inflight) {
            PyErr_Format(InvariantError, "%U: in-flight slots do not match completions",
                         c->what);
            return -1;
        }
        for (uint32_t j = 0; j < c->inflight; j++) {
            uint32_t s = (first + j) % n;
            c->slot[s].buf_idx = j < got ? bufs[j] : rest[j - got];
            c->shadow[s] = c->slot[s].buf_idx;
        }
    }
    for (uint32_t j = 0; j < got; j++) {
        uint32_t s = (first + j) % n;
        c->where[c->slot[s].buf_idx] = (int64_t)c->first_buf + s;
        c->shadow[s] = c->slot[s].buf_idx;
    }
    c->inflight -= got;
    c->tail = (c->tail + got) % n;
    return 0;
}

static int check_open(Core *c) {
    if (c->closed) {
        PyErr_Format(PyExc_ValueError, "%U: the ring core was closed with its port", c->what);
        return -1;
    }
    return 0;
}

static PyObject *core_txsync(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t head;
    if (check_open(c) < 0)
        return NULL;
    if (nargs != 2 || !c->is_tx) {
        PyErr_SetString(PyExc_TypeError, "txsync(head, cur) on a TX ring");
        return NULL;
    }
    if (prologue(c, args[0], args[1], &head) < 0)
        return NULL;
    c->st[S_SYNCS]++;
    uint32_t n = c->n, hw = c->hwcur, new = (head + n - hw) % n, count = new, sent = 0;
    int report = 0;
    if (new) {
        if (c->slot[(hw + new - 1) % n].flags & NS_MOREFRAG) {
            if (!c->frags)
                return refuse(c, "morefrag", hw, -1, 0);
            /* an unfinished fragment chain waits for its last slot */
            count = 0;
            for (uint32_t k = new; k > 0; k--)
                if (!(c->slot[(hw + k - 1) % n].flags & NS_MOREFRAG)) {
                    count = k;
                    break;
                }
            if (new - count >= c->max_frags)
                return refuse(c, "never_ends", hw, -1, new - count);
        }
        if (count) {
            if (tx_submit(c, hw, count, &report) < 0)
                return NULL;
            sent = count;
        }
    }
    if (tx_push(c, report) < 0 || tx_reap(c) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(sent);
}

/* --- rxsync ----------------------------------------------------------------------------- */
static PyObject *core_rxsync(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t head;
    if (check_open(c) < 0)
        return NULL;
    long flags = 0;
    if (nargs < 2 || nargs > 3 || c->is_tx) {
        PyErr_SetString(PyExc_TypeError, "rxsync(head, cur[, ring_flags]) on an RX ring");
        return NULL;
    }
    if (nargs == 3 && (flags = PyLong_AsLong(args[2])) == -1 && PyErr_Occurred())
        return NULL;
    if (prologue(c, args[0], args[1], &head) < 0)
        return NULL;
    c->st[S_SYNCS]++;
    uint32_t n = c->n, hw = c->hwcur, released = (head + n - hw) % n;
    int32_t mine = 2 + 2 * (int32_t)c->kid;
    if (released) {
        uint64_t gen = next_gen(c);
        verdict v = {released, P_NONE, 0, 0};
        for (uint32_t k = 0; k < released; k++)
            check_slot(c, &v, k, (hw + k) % n, hw, released, gen);
        if (v.pos < released)
            return refuse_verdict(c, &v, hw);
        kring *fill = &c->fill;
        for (uint32_t k = 0; k < released; k++) {
            uint32_t b = c->slot[(hw + k) % n].buf_idx;
            /* checked: the slot's buf_idx is known again (as txsync records it); a stale
             * shadow would let the application write that old value back unchecked */
            c->shadow[(hw + k) % n] = b;
            c->owner[b] = mine;
            *addr_desc(fill, fill->cached + k) = (uint64_t)b << c->shift;
        }
        prod_submit(fill, released);
        c->kernel_rx += released;
        c->hwcur = head;
        if (needs_wakeup(fill) && wake_rx(c) < 0)
            return NULL;
    }
    if (flags & NR_TIMESTAMP) {
        /* netmap.c's ring_timestamp_set: microtime() at every rxsync the ring asks for */
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        c->ts = (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
    }
    kring *rx = &c->rx;
    uint32_t busy = (c->tail + n - head) % n;
    uint32_t got = cons_avail(rx, n - 1 - busy);
    if (!got)
        return PyLong_FromLong(0);
    for (uint32_t j = 0; j < got; j++) {
        struct xdp_desc *d = xdp_desc(rx, rx->cached + j);
        if ((d->addr & (c->chunk_size - 1)) != XDP_PACKET_HEADROOM) {
            PyErr_Format(InvariantError,
                         "%U: the kernel placed a frame at an offset other than %d in its "
                         "buffer",
                         c->what, XDP_PACKET_HEADROOM);
            return NULL;
        }
    }
    for (uint32_t j = 0; j < got; j++) {
        uint32_t b = (uint32_t)(xdp_desc(rx, rx->cached + j)->addr >> c->shift);
        if (b >= c->nchunks || c->owner[b] != mine)
            return invariant(c, "RX ring", b, mine);
    }
    uint32_t t = c->tail;
    for (uint32_t j = 0; j < got; j++) {
        struct xdp_desc *d = xdp_desc(rx, rx->cached + j);
        uint32_t b = (uint32_t)(d->addr >> c->shift), s = (t + j) % n;
        struct nm_slot *sl = &c->slot[s];
        c->owner[b] = OWNER_APP;
        sl->buf_idx = b;
        c->shadow[s] = b;
        c->where[b] = (int64_t)c->first_buf + s;
        if (c->hdr)
            memset(c->chunks + (size_t)b * c->chunk_size + c->buf_off, 0, c->hdr);
        sl->len = (uint16_t)(d->len + c->hdr);
        sl->flags = c->frags && (d->options & XDP_PKT_CONTD) ? NS_MOREFRAG : 0;
        c->st[S_BYTES] += sl->len;
    }
    cons_release(rx, got);
    c->kernel_rx -= got;
    c->tail = (t + got) % n;
    c->st[S_FRAMES] += got;
    return PyLong_FromUnsignedLong(got);
}

static PyObject *core_prologue(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t head;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "prologue(head, cur)");
        return NULL;
    }
    if (prologue(c, args[0], args[1], &head) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *core_counters(Core *c, PyObject *unused) {
    return Py_BuildValue("(KKKKKKKK)", c->st[0], c->st[1], c->st[2], c->st[3], c->st[4],
                         c->st[5], c->st[6], c->st[7]);
}

static PyObject *core_close(Core *c, PyObject *unused) {
    /* the rings' and the UMEM's mappings must go with the port even when the
     * application keeps its Ring objects: drop every reference into them */
    c->closed = 1;
    memset(&c->fill, 0, sizeof c->fill);
    memset(&c->comp, 0, sizeof c->comp);
    memset(&c->rx, 0, sizeof c->rx);
    memset(&c->tx, 0, sizeof c->tx);
    c->chunks = NULL;
    Py_CLEAR(c->refs);
    Py_CLEAR(c->xsk);
    Py_RETURN_NONE;
}

static PyObject *core_waiting(Core *c, PyObject *unused) {
    if (c->closed)
        return PyLong_FromLong(0);
    kring *r = c->is_tx ? &c->comp : &c->rx;
    return PyLong_FromUnsignedLong(load_acquire(r->producer) - r->cached);
}

/* --- construction ----------------------------------------------------------------------- */
static int parse_kring(PyObject *t, kring *r) {
    unsigned long long p, cns, fl, d;
    unsigned int size, cached, peer;
    memset(r, 0, sizeof *r);
    if (t == Py_None)
        return 0;
    if (!PyArg_ParseTuple(t, "KKKKIII", &p, &cns, &fl, &d, &size, &cached, &peer))
        return -1;
    r->producer = (uint32_t *)(uintptr_t)p;
    r->consumer = (uint32_t *)(uintptr_t)cns;
    r->flags = (uint32_t *)(uintptr_t)fl;
    r->desc = (void *)(uintptr_t)d;
    r->size = size;
    r->mask = size - 1;
    r->cached = cached;
    r->peer = peer;
    r->present = 1;
    return 0;
}

static int core_init(Core *c, PyObject *args, PyObject *kw) {
    static char *names[] = {"refs", "xsk", "what", "gslots", "owner", "where", "chunks",
                            "nchunks", "chunk_size", "first_buf", "num_slots", "is_tx",
                            "kid", "hdr", "nr_buf_size", "frags", "max_frags", "zerocopy",
                            "fd", "fill", "comp", "rx", "tx", "tail", "kernel_rx", NULL};
    PyObject *refs, *xsk, *what, *fill, *comp, *rx, *tx;
    unsigned long long gslots, owner, where, chunks;
    unsigned int tail, kernel_rx;
    if (!PyArg_ParseTupleAndKeywords(
            args, kw, "OOUKKKKIIIIpIIIpIpiOOOOII", names, &refs, &xsk, &what, &gslots, &owner,
            &where, &chunks, &c->nchunks, &c->chunk_size, &c->first_buf, &c->n, &c->is_tx,
            &c->kid, &c->hdr, &c->nr_buf_size, &c->frags, &c->max_frags, &c->zerocopy, &c->fd,
            &fill, &comp, &rx, &tx, &tail, &kernel_rx))
        return -1;
    if (c->n == 0 || c->chunk_size == 0 || (c->chunk_size & (c->chunk_size - 1)) ||
        (uint64_t)c->first_buf + c->n > c->nchunks) {
        PyErr_SetString(PyExc_ValueError, "ring does not fit its buffer pool");
        return -1;
    }
    if (parse_kring(fill, &c->fill) < 0 || parse_kring(comp, &c->comp) < 0 ||
        parse_kring(rx, &c->rx) < 0 || parse_kring(tx, &c->tx) < 0)
        return -1;
    if (c->is_tx ? !(c->tx.present && c->comp.present) : !(c->rx.present && c->fill.present)) {
        PyErr_SetString(PyExc_ValueError, "the socket lacks the rings of this ring's direction");
        return -1;
    }
    Py_XSETREF(c->refs, Py_NewRef(refs));
    Py_XSETREF(c->xsk, Py_NewRef(xsk));
    Py_XSETREF(c->what, Py_NewRef(what));
    c->gslots = (struct nm_slot *)(uintptr_t)gslots;
    c->slot = c->gslots + c->first_buf;
    c->owner = (int32_t *)(uintptr_t)owner;
    c->where = (int64_t *)(uintptr_t)where;
    c->chunks = (uint8_t *)(uintptr_t)chunks;
    c->shift = 0;
    while ((1u << c->shift) < c->chunk_size)
        c->shift++;
    c->buf_off = XDP_PACKET_HEADROOM - c->hdr;
    c->hwcur = 0;
    c->tail = tail;
    c->kernel_rx = kernel_rx;
    c->inflight = 0;
    c->n_local = 0;
    c->gen = 0;
    c->closed = 0;
    c->ts = 0.0;
    memset(c->st, 0, sizeof c->st);
    PyMem_Free(c->shadow);
    PyMem_Free(c->tmp);
    PyMem_Free(c->local_done);
    PyMem_Free(c->stamp);
    c->shadow = PyMem_Calloc(c->n, sizeof(uint32_t));
    c->tmp = PyMem_Calloc(c->n, sizeof(uint32_t));
    c->local_done = PyMem_Calloc(c->n, sizeof(uint32_t));
    c->stamp = PyMem_Calloc(c->nchunks, sizeof(uint64_t));
    if (!c->shadow || !c->tmp || !c->local_done || !c->stamp) {
        PyErr_NoMemory();
        return -1;
    }
    for (uint32_t i = 0; i < c->n; i++)
        c->shadow[i] = c->slot[i].buf_idx;
    return 0;
}

static void core_dealloc(Core *c) {
    Py_CLEAR(c->refs);
    Py_CLEAR(c->xsk);
    Py_CLEAR(c->what);
    PyMem_Free(c->shadow);
    PyMem_Free(c->tmp);
    PyMem_Free(c->local_done);
    PyMem_Free(c->stamp);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyMethodDef core_methods[] = {
    {"txsync", (PyCFunction)(void (*)(void))core_txsync, METH_FASTCALL,
     "txsync(head, cur) -> slots submitted"},
    {"rxsync", (PyCFunction)(void (*)(void))core_rxsync, METH_FASTCALL,
     "rxsync(head, cur[, ring_flags]) -> new frames (NR_TIMESTAMP in ring_flags sets ts)"},
    {"prologue", (PyCFunction)(void (*)(void))core_prologue, METH_FASTCALL,
     "prologue(head, cur): the head/cur check alone"},
    {"close", (PyCFunction)core_close, METH_NOARGS,
     "drop every reference into the socket's rings and the UMEM (idempotent)"},
    {"counters", (PyCFunction)core_counters, METH_NOARGS,
     "(frames, bytes, syncs, kicks, kick_retry, refused, hdr_refused, tx_dropped)"},
    {"waiting", (PyCFunction)core_waiting, METH_NOARGS,
     "entries the kernel handed back that no sync has taken yet"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef core_members[] = {
    {"hwcur", T_UINT, offsetof(Core, hwcur), READONLY, NULL},
    {"tail", T_UINT, offsetof(Core, tail), READONLY, NULL},
    {"inflight", T_UINT, offsetof(Core, inflight), READONLY, NULL},
    {"kernel_rx", T_UINT, offsetof(Core, kernel_rx), READONLY, NULL},
    {"ts", T_DOUBLE, offsetof(Core, ts), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "vtnet_py.netmap._ringcore.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The sync of one netmap ring over one AF_XDP socket.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)core_init,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_methods = core_methods,
    .tp_members = core_members,
};

/* --- bridge.c's rings_move ------------------------------------------------------------- */
/* move(rx_core, rx_head, tx_core, tx_head, limit, zerocopy) -> (frames, bytes): the frames
 * of rx from rx_head go to the TX slots of tx from tx_head, at most limit, as many as both
 * sides have ([head, tail) on each). Zero copy swaps buf_idx (both rings must use one
 * buffer pool) and marks both slots NS_BUF_CHANGED; otherwise each frame's bytes are
 * copied. NS_MOREFRAG follows the frame. Heads are not moved: the caller advances both
 * by the frames returned. The swapped buf_idx values are checked by the next syncs, as
 * any the application writes. ring.py's rings_move_py is the reference model. */
static PyObject *ring_move(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyObject_TypeCheck(args[0], &CoreType) ||
        !PyObject_TypeCheck(args[2], &CoreType)) {
        PyErr_SetString(PyExc_TypeError,
                        "move(rx_core, rx_head, tx_core, tx_head, limit, zerocopy)");
        return NULL;
    }
    Core *r = (Core *)args[0], *t = (Core *)args[2];
    long long rh, th, limit;
    int zc = PyObject_IsTrue(args[5]);
    if (zc < 0 || check_open(r) < 0 || check_open(t) < 0)
        return NULL;
    if (r->is_tx || !t->is_tx) {
        PyErr_SetString(PyExc_ValueError, "move: the source must be an RX ring, the "
                                          "destination a TX ring");
        return NULL;
    }
    if (!as_index(args[1], &rh) || rh < 0 || rh >= r->n ||
        mod(rh - r->hwcur, r->n) > mod((long long)r->tail - r->hwcur, r->n)) {
        PyErr_Format(PyExc_ValueError, "%U: head outside [hwcur, tail]", r->what);
        return NULL;
    }
    if (!as_index(args[3], &th) || th < 0 || th >= t->n ||
        mod(th - t->hwcur, t->n) > mod((long long)t->tail - t->hwcur, t->n)) {
        PyErr_Format(PyExc_ValueError, "%U: head outside [hwcur, tail]", t->what);
        return NULL;
    }
    if (!as_index(args[4], &limit) || limit < 0) {
        PyErr_SetString(PyExc_ValueError, "move: limit must be an integer >= 0");
        return NULL;
    }
    if (zc && (r->gslots != t->gslots || r->owner != t->owner)) {
        PyErr_Format(PyExc_ValueError, "%U -> %U: zero copy needs one buffer pool", r->what,
                     t->what);
        return NULL;
    }
    if (!zc && (r->chunks == NULL || t->chunks == NULL)) {
        PyErr_Format(PyExc_ValueError, "%U -> %U: copying needs both rings' buffers", r->what,
                     t->what);
        return NULL;
    }
    uint32_t rn = r->n, tn = t->n;
    uint32_t ravail = (r->tail + rn - (uint32_t)rh) % rn;
    uint32_t tavail = (t->tail + tn - (uint32_t)th) % tn;
    uint32_t m = ravail < tavail ? ravail : tavail;
    if ((long long)m > limit)
        m = (uint32_t)limit;
    for (uint32_t k = 0; !zc && k < m; k++) { /* nothing is moved unless all can be */
        uint32_t ri = (uint32_t)((rh + k) % rn), ti = (uint32_t)((th + k) % tn);
        struct nm_slot *rs = &r->slot[ri], *ts = &t->slot[ti];
        if (rs->buf_idx >= r->nchunks || ts->buf_idx >= t->nchunks ||
            rs->len > r->nr_buf_size || rs->len > t->nr_buf_size) {
            PyErr_Format(PyExc_ValueError,
                         "%U slot %u -> %U slot %u: buf_idx or len out of range", r->what, ri,
                         t->what, ti);
            return NULL;
        }
    }
    unsigned long long bytes = 0;
    for (uint32_t k = 0; k < m; k++) {
        struct nm_slot *rs = &r->slot[(rh + k) % rn], *ts = &t->slot[(th + k) % tn];
        uint16_t more = rs->flags & NS_MOREFRAG;
        ts->len = rs->len;
        bytes += rs->len;
        if (zc) {
            uint32_t b = rs->buf_idx;
            rs->buf_idx = ts->buf_idx;
            ts->buf_idx = b;
            rs->flags |= NS_BUF_CHANGED;
            ts->flags = (uint16_t)((ts->flags & ~NS_MOREFRAG) | NS_BUF_CHANGED | more);
        } else {
            uint32_t rb = rs->buf_idx, tb = ts->buf_idx;
            memmove(t->chunks + (size_t)tb * t->chunk_size + t->buf_off,
                   r->chunks + (size_t)rb * r->chunk_size + r->buf_off, rs->len);
            ts->flags = (uint16_t)((ts->flags & ~NS_MOREFRAG) | more);
        }
    }
    return Py_BuildValue("(IK)", m, bytes);
}


/* --- Port.poll's loop ------------------------------------------------------------------ */
/* poll(tx_rings, rx_rings, push, pull, want, socket_fds, timeout_ms, watch_fds[, busy]) ->
 * (revents, wakeups): Port._poll's loop, compiled, for rings whose syncs need nothing of
 * Python (ring.py's CRing without a readiness eventfd, and without NR_FORWARD where an
 * NS_FORWARD hook is set). txsync every TX ring (push), rxsync every RX ring (pull), and
 * while no ring is ready sleep in poll(2) on the sockets (POLLIN when want & POLLIN) and
 * the link-event fds for at most timeout_ms (-1: no limit; 0: no sleep), then sync again.
 * poll(2), not an epoll: the sockets' wait queues have an entry only while we sleep, so
 * TX completions (sock_wfree) wake nobody the rest of the time. head, cur and flags are
 * read from the Ring objects, as their txsync()/rxsync() pass them. revents: POLLIN when
 * an RX ring has frames between cur and tail (want & POLLIN), POLLOUT when a TX ring has
 * room there (want & POLLOUT); 0 once a sleep timed out; -1 when a ring is not for this
 * path (found before any sync), so Port._poll's Python loop runs instead; -3 when a
 * round found nothing ready and TX completions are awaited (no socket event announces
 * them: Python's loop backs off, without another round first); -2 for an event Python
 * handles (a link message on a watch fd, an error on a socket). A refused sync raises
 * the RingError the ring's own sync would (Ring._refusal).
 *
 * busy (open_port(busy_poll=True)): spin instead of sleeping, as Port._poll's Python loop
 * does: between rounds a recvfrom(MSG_DONTWAIT) on each RX ring's socket (the kernel
 * busy-polls the queue there, SO_BUSY_POLL). After BUSY_SLICE_MS (or timeout_ms, if
 * shorter) the call returns 0, or -2 for a link message, so Python's rate-limited device
 * check runs between slices. */
static PyObject *s_core, *s_head, *s_cur, *s_flags, *s_ready, *s_forward;

#define NR_FORWARD 0x0004
#define MAX_POLL_RINGS 64
#define BUSY_SLICE_MS 20

typedef struct {
    Core *core;
    PyObject *ring;
} pring;

/* attribute `name` of `ring`, borrowed (the ring keeps it); NULL, no error set, if absent */
static PyObject *borrowed_attr(PyObject *ring, PyObject *name) {
    PyObject *v = PyObject_GetAttr(ring, name);
    if (v == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Py_DECREF(v);
    return v;
}

/* the ring's core, or NULL (no error set) when the ring needs Python's sync */
static Core *fast_core(PyObject *ring) {
    PyObject *core = borrowed_attr(ring, s_core);
    if (core == NULL || !PyObject_TypeCheck(core, &CoreType))
        return NULL;
    PyObject *ready = borrowed_attr(ring, s_ready);
    if (ready != Py_None) /* absent, or a readiness eventfd */
        return NULL;
    PyObject *fwd = borrowed_attr(ring, s_forward);
    if (fwd == NULL)
        return NULL;
    if (fwd != Py_None) { /* the NS_FORWARD hook (Python's) runs under NR_FORWARD only */
        PyObject *flags = PyObject_GetAttr(ring, s_flags);
        long f = flags ? PyLong_AsLong(flags) : -1;
        Py_XDECREF(flags);
        if (f == -1 || (f & NR_FORWARD)) {
            PyErr_Clear();
            return NULL;
        }
    }
    return (Core *)core;
}

/* Refused -> the ring's RingError (Ring._refusal: the message, and head = cur = hwcur) */
static void raise_refusal(pring *r) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *args = value ? PyObject_GetAttrString(value, "args") : NULL;
    PyObject *err = NULL;
    if (args && PyTuple_Check(args) && PyTuple_GET_SIZE(args) == 4)
        err = PyObject_CallMethod(r->ring, "_refusal", "OOOOs", PyTuple_GET_ITEM(args, 0),
                                  PyTuple_GET_ITEM(args, 1), PyTuple_GET_ITEM(args, 2),
                                  PyTuple_GET_ITEM(args, 3),
                                  r->core->is_tx ? "sent" : "released");
    Py_XDECREF(args);
    if (err == NULL) {
        if (!PyErr_Occurred())
            PyErr_Restore(type, value, tb);
        else {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
        }
        return;
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    PyErr_SetObject((PyObject *)Py_TYPE(err), err);
    Py_DECREF(err);
}

static int ring_sync(pring *r) {
    PyObject *args[3] = {NULL, NULL, NULL};
    PyObject *res = NULL;
    int n = r->core->is_tx ? 2 : 3;
    args[0] = PyObject_GetAttr(r->ring, s_head);
    args[1] = args[0] ? PyObject_GetAttr(r->ring, s_cur) : NULL;
    if (n == 3)
        args[2] = args[1] ? PyObject_GetAttr(r->ring, s_flags) : NULL;
    if (args[n - 1] != NULL)
        res = r->core->is_tx ? core_txsync(r->core, args, 2) : core_rxsync(r->core, args, 3);
    for (int i = 0; i < n; i++)
        Py_XDECREF(args[i]);
    if (res == NULL) {
        if (PyErr_ExceptionMatches(Refused)) /* the RingError the ring's own sync raises */
            raise_refusal(r);
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

/* cur != tail for some ring of the list (the ring's cur as Python holds it) */
static int any_ready(pring *rs, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *cur = PyObject_GetAttr(rs[i].ring, s_cur);
        if (cur == NULL)
            return -1;
        long v = PyLong_AsLong(cur);
        Py_DECREF(cur);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if ((unsigned long)v != rs[i].core->tail)
            return 1;
    }
    return 0;
}

/* nm_tx_pending: frames handed to the kernel and not completed yet */
static int tx_pending(pring *r) {
    PyObject *head = PyObject_GetAttr(r->ring, s_head);
    if (head == NULL)
        return -1;
    long h = PyLong_AsLong(head);
    Py_DECREF(head);
    if (h == -1 && PyErr_Occurred())
        return -1;
    return (r->core->tail + 1) % r->core->n != (unsigned long)h;
}

static PyObject *port_poll(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if ((nargs != 8 && nargs != 9) || !PyTuple_Check(args[0]) || !PyTuple_Check(args[1]) ||
        !PyTuple_Check(args[5]) || !PyTuple_Check(args[7])) {
        PyErr_SetString(PyExc_TypeError, "poll(tx_rings, rx_rings, push, pull, want, "
                                         "socket_fds, timeout_ms, watch_fds[, busy]): tuples of "
                                         "rings and fds");
        return NULL;
    }
    pring tx[MAX_POLL_RINGS], rx[MAX_POLL_RINGS];
    Py_ssize_t ntx = PyTuple_GET_SIZE(args[0]), nrx = PyTuple_GET_SIZE(args[1]);
    Py_ssize_t nwatch = PyTuple_GET_SIZE(args[7]);
    int push = PyObject_IsTrue(args[2]), pull = PyObject_IsTrue(args[3]);
    int busy = nargs == 9 ? PyObject_IsTrue(args[8]) : 0;
    long want = PyLong_AsLong(args[4]), ms = PyLong_AsLong(args[6]);
    Py_ssize_t nsock = PyTuple_GET_SIZE(args[5]), nfds = nsock + nwatch;
    if (push < 0 || pull < 0 || busy < 0 || PyErr_Occurred())
        return NULL;
    if (ntx > MAX_POLL_RINGS || nrx > MAX_POLL_RINGS || nfds > 2 * MAX_POLL_RINGS)
        return Py_BuildValue("(ii)", -1, 0);
    struct pollfd pfd[2 * MAX_POLL_RINGS];
    for (Py_ssize_t i = 0; i < nfds; i++) {
        PyObject *fd =
            i < nsock ? PyTuple_GET_ITEM(args[5], i) : PyTuple_GET_ITEM(args[7], i - nsock);
        pfd[i].fd = (int)PyLong_AsLong(fd);
        pfd[i].events = i >= nsock || (want & POLLIN) ? POLLIN : 0;
        pfd[i].revents = 0;
    }
    if (PyErr_Occurred())
        return NULL;
    for (Py_ssize_t i = 0; i < ntx + nrx; i++) {
        PyObject *ring = i < ntx ? PyTuple_GET_ITEM(args[0], i) : PyTuple_GET_ITEM(args[1], i - ntx);
        pring *p = i < ntx ? &tx[i] : &rx[i - ntx];
        p->ring = ring;
        p->core = fast_core(ring);
        if (p->core == NULL || p->core->is_tx != (i < ntx))
            return Py_BuildValue("(ii)", -1, 0);
    }
    int wakeups = 0, timed_out = 0;
    long slice_ms = ms < 0 || ms > BUSY_SLICE_MS ? BUSY_SLICE_MS : ms;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        for (Py_ssize_t i = 0; push && i < ntx; i++)
            if (ring_sync(&tx[i]) < 0)
                return NULL;
        for (Py_ssize_t i = 0; pull && i < nrx; i++)
            if (ring_sync(&rx[i]) < 0)
                return NULL;
        long revents = 0;
        int r;
        if (want & POLLIN) {
            if ((r = any_ready(rx, nrx)) < 0)
                return NULL;
            if (r)
                revents |= POLLIN;
        }
        if (want & POLLOUT) {
            if ((r = any_ready(tx, ntx)) < 0)
                return NULL;
            if (r)
                revents |= POLLOUT;
        }
        if (revents || timed_out || ms == 0)
            return Py_BuildValue("(li)", revents, wakeups);
        if (busy) {
            struct timespec t;
            clock_gettime(CLOCK_MONOTONIC, &t);
            if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 >= slice_ms) {
                /* the slice is over: a link message for Python, else 0 (it re-checks the
                 * device and the deadline, and calls again) */
                int got = nwatch ? poll(pfd + nsock, (nfds_t)nwatch, 0) : 0;
                return Py_BuildValue("(ii)", got > 0 ? -2 : 0, wakeups);
            }
            for (Py_ssize_t i = 0; (want & POLLIN) && i < nrx; i++)
                if (wake_rx(rx[i].core) < 0)
                    return NULL;
            if (PyErr_CheckSignals() < 0)
                return NULL;
            continue;
        }
        for (Py_ssize_t i = 0; (want & POLLOUT) && i < ntx; i++) {
            if ((r = tx_pending(&tx[i])) < 0)
                return NULL;
            if (r)
                return Py_BuildValue("(ii)", -3, wakeups);
        }
        int got;
        Py_BEGIN_ALLOW_THREADS
        got = poll(pfd, (nfds_t)nfds, (int)ms);
        Py_END_ALLOW_THREADS
        wakeups++;
        if (got < 0) {
            if (errno != EINTR)
                return PyErr_SetFromErrno(PyExc_OSError);
            if (PyErr_CheckSignals() < 0)
                return NULL;
            continue;
        }
        if (got == 0)
            timed_out = 1; /* one more sync, then 0 */
        for (Py_ssize_t k = 0; k < nfds; k++) {
            if ((pfd[k].revents & (POLLERR | POLLHUP | POLLNVAL)) ||
                (k >= nsock && pfd[k].revents))
                return Py_BuildValue("(ii)", -2, wakeups);
        }
    }
}

static PyMethodDef module_methods[] = {
    {"poll", (PyCFunction)(void (*)(void))port_poll, METH_FASTCALL,
     "poll(tx_rings, rx_rings, push, pull, want, socket_fds, timeout_ms, watch_fds[, busy]) -> "
     "(revents, wakeups)"},
    {"move", (PyCFunction)(void (*)(void))ring_move, METH_FASTCALL,
     "move(rx_core, rx_head, tx_core, tx_head, limit, zerocopy) -> (frames, bytes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ringcore_module = {
    PyModuleDef_HEAD_INIT, "_ringcore", "Compiled netmap ring sync (see ring.py).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__ringcore(void) {
    PyObject *errors = PyImport_ImportModule("vtnet_py.errors");
    if (errors == NULL)
        return NULL;
    InvariantError = PyObject_GetAttrString(errors, "InvariantError");
    Py_DECREF(errors);
    if (InvariantError == NULL)
        return NULL;
    if (PyType_Ready(&CoreType) < 0)
        return NULL;
    if (!(s_core = PyUnicode_InternFromString("_core")) ||
        !(s_head = PyUnicode_InternFromString("head")) ||
        !(s_cur = PyUnicode_InternFromString("_cur")) ||
        !(s_flags = PyUnicode_InternFromString("flags")) ||
        !(s_ready = PyUnicode_InternFromString("_ready")) ||
        !(s_forward = PyUnicode_InternFromString("_forward")))
        return NULL;
    PyObject *m = PyModule_Create(&ringcore_module);
    if (m == NULL)
        return NULL;
    Refused = PyErr_NewExceptionWithDoc("vtnet_py.netmap._ringcore.Refused",
                                        "(reason, slot, buf_idx, detail) of a refused sync",
                                        NULL, NULL);
    if (Refused == NULL || PyModule_AddObjectRef(m, "Refused", Refused) < 0 ||
        PyModule_AddObjectRef(m, "Core", (PyObject *)&CoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
