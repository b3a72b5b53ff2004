/* zero_int.h - private to zero/: memory helpers and the unit operations the
 * hooks (policy.c), grads.c and optimizer.c share. */
#ifndef ZINC_ZERO_INT_H
#define ZINC_ZERO_INT_H

#include "zinc/zero.h"

/* Model-state memory lives on the rank's device (z->dev). On the cpu
 * device large blocks are page aligned so checkpoint and offload I/O can go
 * straight to and from them with O_DIRECT. xalloc_raw leaves the contents
 * undefined (for buffers that are fully overwritten); xalloc zeroes them. */
static inline void *xalloc_raw(const zero_state *z, size_t bytes)
{
    return z->dev->alloc_raw ? z->dev->alloc_raw(bytes) : z->dev->alloc(bytes);
}
static inline void *xalloc(const zero_state *z, size_t bytes) { return z->dev->alloc(bytes); }
static inline void xfree(const zero_state *z, void *p) { z->dev->free(p); }

/* Unit u's optimizer state (master, m, v): device memory, or pinned host memory when
 * the optimizer is offloaded to the CPU on a GPU (u->opt_host). */
static inline void *opt_alloc(const zero_state *z, const zero_unit *u, size_t bytes)
{
    return u->opt_host ? z->dev->host_alloc(bytes) : z->dev->alloc(bytes);
}
static inline void opt_free(const zero_state *z, const zero_unit *u, void *p)
{
    if (u->opt_host)
        z->dev->host_free(p);
    else
        z->dev->free(p);
}

/* Device-memory conversions through the op table. */
static inline void zero_to_f32(const zero_state *z, float *dst, const void *src, zinc_dtype dt,
                               size_t n)
{
    z->ops->convert(dst, ZINC_DTYPE_F32, src, dt, n);
}
static inline void zero_from_f32(const zero_state *z, void *dst, const float *src, zinc_dtype dt,
                                 size_t n)
{
    z->ops->convert(dst, dt, src, ZINC_DTYPE_F32, n);
}

static inline char *at(void *base, size_t elem, size_t psz) { return (char *)base + elem * psz; }
static inline int unit_id(const zero_state *z, const zero_unit *u) { return (int)(u - z->units); }

/* This rank's reduced grads over its opt range. */
static inline void *grad_opt(const zero_state *z, const zero_unit *u)
{
    return z->plan.stage >= 2 ? u->g : at(u->g, u->opt_lo, z->plan.psz);
}

/* ---- params.c ---- */
/* Drops a unit copied up ahead of use and not consumed (after an error: a later step must
 * not take the parameters of before an update). */
void zero_unit_drop_ready(zero_state *z, int u);
/* fp32 working params of unit u (gathers / converts as needed). */
zinc_status zero_unit_materialize(zero_state *z, int u);
/* 1 if making unit u whole takes a gather: sharded over several ranks, or
 * its shard on NVMe (a shard over one rank in memory is the whole unit). */
int zero_unit_gathers(const zero_state *z, int u);
/* Starts gathering unit u's params ahead of use (units that gather only). */
zinc_status zero_unit_prefetch(zero_state *z, int u);
/* Drops unit u's working params if they are a copy. */
void zero_unit_release(zero_state *z, int u);
/* 1 if releasing u would free memory (its working params are a copy). */
int zero_unit_releasable(const zero_state *z, int u);

/* ---- grads.c ---- */
/* Opens unit u's fp32 working grads for this micro-batch. */
zinc_status zero_grad_open(zero_state *z, int u);
/* Folds the finished working grads of u into its gradient storage (stage
 * 0/1) or starts their reduce-scatter into the owner's shard (stage >= 2). */
zinc_status zero_grad_close(zero_state *z, int u);
/* Completes reduce-scatters in flight (all, or until under the bucket). */
zinc_status zero_wait_pending(zero_state *z, int all);

#endif
