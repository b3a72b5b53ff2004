/* comm_diag.c - what every rank remembers of its collectives, and how ranks
 * compare notes when one of them times out.
 *
 * The ring. Every group numbers the collectives started on it (c->seq, from
 * 1; the same numbers on every rank of a correct program, since collectives
 * are started in the same order everywhere) and keeps the last COMM_RING of
 * them: op, payload bytes, root, start and end time. Point-to-point ops have
 * no global order and are not numbered.
 *
 * The side channel. A wait that is about to time out (comm.c, at
 * timeout - diag_window) asks every other rank of the group, over a
 * communicator of its own (a dup of MPI_COMM_WORLD made at world init, so no
 * group's traffic can match it), for that rank's ring of the group and what
 * it is doing now: waiting in which op of which group for how long, or
 * outside communication since when. A rank answers while it is inside a wait
 * (comm_diag_poll, from comm.c's wait loop, including the asking rank's own:
 * two ranks timing out together answer each other). At the timeout the
 * asking rank compares what came back: the ranks whose last collective on
 * the group is older than the one that timed out never entered it; the
 * first sequence number at which two ranks' rings hold different ops (or one
 * holds none) is where they first disagree; a rank that did not answer is
 * dead or busy outside communication. That goes into the timeout's error
 * line; the rank's own ring goes to the log. Everything here is bounded by
 * the timeout: no call blocks.
 *
 * Both backends run over MPI (nccl keeps MPI for host buffers and
 * bootstrap), so the side channel is plain MPI whatever the backend.
 *
 * Fault hook for tests: ZINC_FAULT_SKIP_COLL="RANK:GROUP:SEQ" makes world
 * rank RANK skip collective number SEQ on its group named GROUP (the op
 * returns ZINC_OK without running and without a number), as a rank with a
 * wrong branch would. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_int.h"
#include "zinc/log.h"

#define DIAG_TAG_QUERY 1
#define DIAG_TAG_REPLY0 16    /* replies: DIAG_TAG_REPLY0 + query number mod 16384 */
#define DIAG_SHOW_RANKS 6     /* ranks described one by one in the error line */
#define DIAG_LOG_RECS 8       /* ring entries a timed-out rank logs */
#define DIAG_POLL_S 1e-3      /* a waiting rank looks for questions this often */

typedef struct diag_entry {
    uint64_t seq, bytes;
    int32_t op, root;
} diag_entry;

typedef struct diag_query_msg {
    int32_t reply_tag;
    char group[COMM_NAME_MAX];
} diag_query_msg;

/* One rank's answer: its ring of the group asked about and what it does now. */
typedef struct diag_reply {
    int32_t world_rank;
    int32_t has_group;     /* it holds a group of that name with the asker in it */
    uint64_t last_seq;     /* collectives started on the group */
    int32_t in_wait, wait_op;
    uint64_t wait_seq;     /* 0: a point-to-point op */
    char wait_group[COMM_NAME_MAX];
    double wait_s;         /* in that wait for this long */
    double idle_s;         /* not in a wait: since the last one ended */
    int32_t n, pad;
    diag_entry e[COMM_RING];
} diag_reply;

/* A reply on its way out (MPI_Isend); freed once sent. */
typedef struct diag_out {
    MPI_Request req;
    struct diag_out *next;
    diag_reply msg;
} diag_out;

struct comm_diag_query {
    zinc_comm *c;
    uint64_t seq;
    int n;                 /* c->size */
    MPI_Request *recv, *send;
    diag_reply *replies;   /* by group rank */
    int *got;
    diag_query_msg q;
};

static struct {
    int refs;              /* live worlds */
    MPI_Comm comm;         /* the side channel */
    zinc_comm *groups;     /* every live group of this process */
    diag_out *out;
    unsigned n_queries;
    /* the wait in progress */
    const zinc_comm *wait_c;
    uint64_t wait_seq;
    int wait_op;
    double wait_t0, last_end;
    /* ZINC_FAULT_SKIP_COLL */
    int skip_rank;
    uint64_t skip_seq;
    char skip_group[COMM_NAME_MAX];
} g_diag = {.comm = MPI_COMM_NULL, .skip_rank = -1};

/* ---- registry and world ---------------------------------------------------- */

zinc_status comm_diag_world_init(zinc_comm *world)
{
    world->world_rank = world->rank;
    if (g_diag.refs++ == 0) {
        if (MPI_Comm_dup(MPI_COMM_WORLD, &g_diag.comm) != MPI_SUCCESS ||
            MPI_Comm_set_errhandler(g_diag.comm, MPI_ERRORS_RETURN) != MPI_SUCCESS) {
            g_diag.comm = MPI_COMM_NULL; /* diagnostics off; the ops still work */
            ZINC_WARN("comm: no side channel for hang diagnostics (MPI_Comm_dup failed)");
        }
    }
    {
        const char *f = getenv("ZINC_FAULT_SKIP_COLL");
        int r, used = 0;
        unsigned long long s;
        char name[COMM_NAME_MAX];
        if (f && sscanf(f, "%d:%31[^:]:%llu%n", &r, name, &s, &used) == 3 && !f[used] &&
            s > 0) {
            g_diag.skip_rank = r;
            g_diag.skip_seq = s;
            snprintf(g_diag.skip_group, sizeof g_diag.skip_group, "%s", name);
        } else if (f) {
            ZINC_WARN("comm: ZINC_FAULT_SKIP_COLL=%s ignored (expected RANK:GROUP:SEQ)", f);
        }
    }
    comm_diag_register(world); /* comm_diag_unregister undoes all of this */
    world->members = malloc(sizeof *world->members * (size_t)world->size);
    if (!world->members) return zinc_error(ZINC_ERR_NOMEM, "comm init: out of memory");
    for (int i = 0; i < world->size; i++) world->members[i] = i;
    return ZINC_OK;
}

void comm_diag_register(zinc_comm *c)
{
    c->diag_next = g_diag.groups;
    g_diag.groups = c;
}

/* Sends still in flight at the end are cancelled (their asker is gone). */
static void diag_reap_out(int cancel)
{
    diag_out **pp = &g_diag.out;
    while (*pp) {
        diag_out *o = *pp;
        int done = 0;
        if (cancel) MPI_Cancel(&o->req);
        if (MPI_Test(&o->req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || done || cancel) {
            if (!done && o->req != MPI_REQUEST_NULL) MPI_Request_free(&o->req);
            *pp = o->next;
            free(o);
        } else {
            pp = &o->next;
        }
    }
}

void comm_diag_unregister(zinc_comm *c)
{
    for (zinc_comm **pp = &g_diag.groups; *pp; pp = &(*pp)->diag_next)
        if (*pp == c) {
            *pp = c->diag_next;
            break;
        }
    if (g_diag.wait_c == c) g_diag.wait_c = NULL;
    free(c->members);
    c->members = NULL;
    if (!c->is_world || --g_diag.refs > 0) return;
    diag_reap_out(1);
    if (g_diag.comm != MPI_COMM_NULL) MPI_Comm_free(&g_diag.comm);
    g_diag.skip_rank = -1;
}

/* ---- the ring --------------------------------------------------------------- */

int comm_diag_skip(const zinc_comm *c, const char *op)
{
    if (g_diag.skip_rank != c->world_rank || c->seq + 1 != g_diag.skip_seq ||
        strcmp(c->name, g_diag.skip_group))
        return 0;
    ZINC_WARN("fault: rank %d skips %s #%llu on group %s", c->world_rank, op,
              (unsigned long long)g_diag.skip_seq, c->name);
    g_diag.skip_rank = -1; /* once */
    return 1;
}

void comm_diag_started(zinc_comm *c, zinc_comm_handle *h, double now)
{
    if (h->p2p) return;
    h->seq = ++c->seq;
    comm_rec *r = &c->ring[(h->seq - 1) % COMM_RING];
    r->seq = h->seq;
    r->bytes = h->payload;
    r->op = h->kind;
    r->root = h->root;
    r->t_start = now;
    r->t_end = 0;
}

void comm_diag_wait_begin(zinc_comm_handle *h, double now)
{
    g_diag.wait_c = h->comm;
    g_diag.wait_seq = h->seq;
    g_diag.wait_op = h->kind;
    g_diag.wait_t0 = now;
}

void comm_diag_wait_end(zinc_comm_handle *h, int done, double now)
{
    g_diag.wait_c = NULL;
    g_diag.last_end = now;
    if (!done || !h->seq) return;
    comm_rec *r = &h->comm->ring[(h->seq - 1) % COMM_RING];
    if (r->seq == h->seq) r->t_end = now;
}

static const char *op_name(int op) { return zinc_comm_op_name((zinc_comm_op)op); }

/* "4 B", "1.5 KiB", ... */
static void fmt_bytes(char *b, size_t cap, uint64_t n)
{
    static const char *const u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)n;
    int k = 0;
    while (v >= 1024 && k < 4) {
        v /= 1024;
        k++;
    }
    if (k == 0)
        snprintf(b, cap, "%llu B", (unsigned long long)n);
    else
        snprintf(b, cap, "%.1f %s", v, u[k]);
}

void comm_diag_log_ring(const zinc_comm *c, double now)
{
    char line[1024];
    size_t len = 0;
    uint64_t lo = c->seq > DIAG_LOG_RECS ? c->seq - DIAG_LOG_RECS + 1 : 1;
    for (uint64_t s = lo; s <= c->seq && len < sizeof line - 96; s++) {
        const comm_rec *r = &c->ring[(s - 1) % COMM_RING];
        char b[32];
        fmt_bytes(b, sizeof b, r->bytes);
        if (r->t_end > 0)
            len += (size_t)snprintf(line + len, sizeof line - len, "%s#%llu %s %s (%.3g s)",
                                    len ? ", " : "", (unsigned long long)s, op_name(r->op), b,
                                    r->t_end - r->t_start);
        else
            len += (size_t)snprintf(line + len, sizeof line - len,
                                    "%s#%llu %s %s (in flight %.3g s)", len ? ", " : "",
                                    (unsigned long long)s, op_name(r->op), b, now - r->t_start);
    }
    ZINC_WARN("comm: rank %d, group %s, last collectives: %s", c->world_rank, c->name,
              len ? line : "none");
}

/* ---- answering ---------------------------------------------------------------- */

static const zinc_comm *diag_find(const char *name, int world_rank)
{
    for (const zinc_comm *g = g_diag.groups; g; g = g->diag_next) {
        if (strcmp(g->name, name) || !g->members) continue;
        for (int i = 0; i < g->size; i++)
            if (g->members[i] == world_rank) return g;
    }
    return NULL;
}

static void diag_fill(diag_reply *m, const char *group, int asker, double now)
{
    memset(m, 0, sizeof *m);
    const zinc_comm *g = diag_find(group, asker);
    const zinc_comm *w = g_diag.wait_c;
    m->world_rank = g ? g->world_rank : (g_diag.groups ? g_diag.groups->world_rank : -1);
    if (g) {
        m->has_group = 1;
        m->last_seq = g->seq;
        uint64_t lo = g->seq > COMM_RING ? g->seq - COMM_RING + 1 : 1;
        for (uint64_t s = lo; s <= g->seq; s++) {
            const comm_rec *r = &g->ring[(s - 1) % COMM_RING];
            m->e[m->n++] = (diag_entry){.seq = s, .bytes = r->bytes, .op = r->op, .root = r->root};
        }
    }
    if (w) {
        m->in_wait = 1;
        m->wait_op = g_diag.wait_op;
        m->wait_seq = g_diag.wait_seq;
        snprintf(m->wait_group, sizeof m->wait_group, "%s", w->name);
        m->wait_s = now - g_diag.wait_t0;
    } else {
        m->idle_s = g_diag.last_end > 0 ? now - g_diag.last_end : -1;
    }
}

void comm_diag_poll(double now)
{
    static double last;
    if (g_diag.comm == MPI_COMM_NULL || now - last < DIAG_POLL_S) return;
    last = now;
    if (g_diag.out) diag_reap_out(0);
    for (;;) {
        int flag = 0;
        MPI_Status s;
        if (MPI_Iprobe(MPI_ANY_SOURCE, DIAG_TAG_QUERY, g_diag.comm, &flag, &s) != MPI_SUCCESS ||
            !flag)
            return;
        diag_query_msg q;
        if (MPI_Recv(&q, (int)sizeof q, MPI_BYTE, s.MPI_SOURCE, DIAG_TAG_QUERY, g_diag.comm,
                     MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return;
        q.group[COMM_NAME_MAX - 1] = '\0';
        diag_out *o = malloc(sizeof *o);
        if (!o) return;
        diag_fill(&o->msg, q.group, s.MPI_SOURCE, now);
        if (MPI_Isend(&o->msg, (int)sizeof o->msg, MPI_BYTE, s.MPI_SOURCE, q.reply_tag,
                      g_diag.comm, &o->req) != MPI_SUCCESS) {
            free(o);
            return;
        }
        o->next = g_diag.out;
        g_diag.out = o;
    }
}

/* ---- asking ------------------------------------------------------------------- */

void comm_diag_query_free(comm_diag_query *q)
{
    if (!q) return;
    for (int i = 0; i < q->n; i++) {
        if (q->recv && q->recv[i] != MPI_REQUEST_NULL) {
            MPI_Cancel(&q->recv[i]);
            MPI_Request_free(&q->recv[i]);
        }
        if (q->send && q->send[i] != MPI_REQUEST_NULL) {
            MPI_Cancel(&q->send[i]);
            MPI_Request_free(&q->send[i]);
        }
    }
    free(q->recv);
    free(q->send);
    free(q->replies);
    free(q->got);
    free(q);
}

comm_diag_query *comm_diag_start(zinc_comm *c, zinc_comm_handle *h)
{
    if (g_diag.comm == MPI_COMM_NULL || c->size < 2 || !c->members || !h->seq) return NULL;
    comm_diag_query *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    int n = q->n = c->size;
    q->c = c;
    q->seq = h->seq;
    q->recv = malloc(sizeof *q->recv * (size_t)n);
    q->send = malloc(sizeof *q->send * (size_t)n);
    q->replies = calloc((size_t)n, sizeof *q->replies);
    q->got = calloc((size_t)n, sizeof *q->got);
    if (!q->recv || !q->send || !q->replies || !q->got) {
        q->n = 0;
        comm_diag_query_free(q);
        return NULL;
    }
    for (int i = 0; i < n; i++) q->recv[i] = q->send[i] = MPI_REQUEST_NULL;
    q->q.reply_tag = DIAG_TAG_REPLY0 + (int32_t)(g_diag.n_queries++ % 16384);
    snprintf(q->q.group, sizeof q->q.group, "%s", c->name);
    for (int i = 0; i < n; i++) {
        if (i == c->rank) continue;
        if (MPI_Irecv(&q->replies[i], (int)sizeof q->replies[i], MPI_BYTE, c->members[i],
                      q->q.reply_tag, g_diag.comm, &q->recv[i]) != MPI_SUCCESS ||
            MPI_Isend(&q->q, (int)sizeof q->q, MPI_BYTE, c->members[i], DIAG_TAG_QUERY,
                      g_diag.comm, &q->send[i]) != MPI_SUCCESS) {
            comm_diag_query_free(q);
            return NULL;
        }
    }
    return q;
}

void comm_diag_progress(comm_diag_query *q)
{
    if (!q) return;
    for (int i = 0; i < q->n; i++) {
        int done = 0;
        if (q->send[i] != MPI_REQUEST_NULL) MPI_Test(&q->send[i], &done, MPI_STATUS_IGNORE);
        if (q->recv[i] == MPI_REQUEST_NULL) continue;
        done = 0;
        if (MPI_Test(&q->recv[i], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
            q->recv[i] = MPI_REQUEST_NULL; /* a dead peer: no answer */
        } else if (done) {
            q->got[i] = 1;
        }
    }
}

/* What rank i of q's group is doing, for the error line. */
static void diag_doing(const diag_reply *m, char *b, size_t cap)
{
    if (m->in_wait && m->wait_seq)
        snprintf(b, cap, "waiting in %s #%llu on group %s for %.3g s", op_name(m->wait_op),
                 (unsigned long long)m->wait_seq, m->wait_group, m->wait_s);
    else if (m->in_wait)
        snprintf(b, cap, "waiting in %s on group %s for %.3g s", op_name(m->wait_op),
                 m->wait_group, m->wait_s);
    else
        snprintf(b, cap, "between communication calls");
}

/* Rank i's ring entry for seq s: 1 and *e when known, 0 when it holds none
 * (it has not started s), -1 when s is older than its ring. */
static int diag_entry_at(const diag_reply *m, uint64_t s, diag_entry *e)
{
    if (s > m->last_seq) return 0;
    for (int k = 0; k < m->n; k++)
        if (m->e[k].seq == s) {
            *e = m->e[k];
            return 1;
        }
    return -1;
}

#define APPEND(...)                                                                   \
    do {                                                                              \
        if (len < cap) len += (size_t)snprintf(note + len, cap - len, __VA_ARGS__);   \
    } while (0)

void comm_diag_finish(comm_diag_query *q, double now, char *note, size_t cap)
{
    size_t len = 0;
    note[0] = '\0';
    if (!q) return;
    comm_diag_progress(q);
    zinc_comm *c = q->c;
    diag_fill(&q->replies[c->rank], c->name, c->world_rank, now);
    q->got[c->rank] = 1;
    int n_never = 0, n_silent = 0, shown = 0;
    for (int i = 0; i < q->n; i++)
        if (!q->got[i])
            n_silent++;
        else if (q->replies[i].has_group && q->replies[i].last_seq < q->seq)
            n_never++;
    if (n_never) {
        APPEND(": ");
        for (int i = 0, k = 0; i < q->n; i++) {
            const diag_reply *m = &q->replies[i];
            if (!q->got[i] || !m->has_group || m->last_seq >= q->seq) continue;
            if (k++ >= DIAG_SHOW_RANKS) continue;
            char b[160];
            diag_doing(m, b, sizeof b);
            APPEND("%srank %d (%s)", shown++ ? ", " : "", m->world_rank, b);
        }
        if (n_never > DIAG_SHOW_RANKS) APPEND(" and %d more", n_never - DIAG_SHOW_RANKS);
        APPEND(" never entered it");
    } else {
        APPEND(": every rank that answered entered it");
    }
    if (n_silent) {
        APPEND("; no answer from ");
        for (int i = 0, k = 0; i < q->n; i++) {
            if (q->got[i]) continue;
            if (k++ < DIAG_SHOW_RANKS) APPEND("%srank %d", k > 1 ? ", " : "", c->members[i]);
        }
        if (n_silent > DIAG_SHOW_RANKS) APPEND(" and %d more", n_silent - DIAG_SHOW_RANKS);
        APPEND(" (dead, or busy outside communication)");
    }
    /* the first number at which two ranks that answered hold different ops */
    uint64_t lo = q->seq;
    for (int i = 0; i < q->n; i++)
        if (q->got[i] && q->replies[i].n && q->replies[i].e[0].seq < lo)
            lo = q->replies[i].e[0].seq;
    for (uint64_t s = lo; s <= q->seq; s++) {
        diag_entry e0 = {0}, e;
        int have = -1, differ = 0;
        for (int i = 0; i < q->n && !differ; i++) {
            if (!q->got[i] || !q->replies[i].has_group) continue;
            int k = diag_entry_at(&q->replies[i], s, &e);
            if (k < 0) continue;
            if (have < 0) {
                have = k;
                e0 = e;
            } else if (k != have || (k && (e.op != e0.op || e.bytes != e0.bytes ||
                                           e.root != e0.root))) {
                differ = 1;
            }
        }
        if (!differ) continue;
        APPEND("; ranks first disagree at #%llu on group %s (", (unsigned long long)s, c->name);
        /* one rank per distinct value */
        int n_shown = 0;
        diag_entry seen[4];
        int seen_k[4];
        for (int i = 0; i < q->n && n_shown < 4; i++) {
            if (!q->got[i] || !q->replies[i].has_group) continue;
            int k = diag_entry_at(&q->replies[i], s, &e);
            if (k < 0) continue;
            int dup = 0;
            for (int j = 0; j < n_shown; j++)
                dup |= seen_k[j] == k && (!k || (seen[j].op == e.op && seen[j].bytes == e.bytes &&
                                                 seen[j].root == e.root));
            if (dup) continue;
            seen[n_shown] = e;
            seen_k[n_shown++] = k;
            char b[32];
            fmt_bytes(b, sizeof b, e.bytes);
            if (!k)
                APPEND("%srank %d: none", n_shown > 1 ? "; " : "", q->replies[i].world_rank);
            else if (e.op == ZINC_COMM_OP_BROADCAST)
                APPEND("%srank %d: %s %s from %d", n_shown > 1 ? "; " : "",
                       q->replies[i].world_rank, op_name(e.op), b, e.root);
            else
                APPEND("%srank %d: %s %s", n_shown > 1 ? "; " : "", q->replies[i].world_rank,
                       op_name(e.op), b);
        }
        APPEND(")");
        break;
    }
    if (len >= cap && cap > 4) memcpy(note + cap - 4, "...", 4);
}
