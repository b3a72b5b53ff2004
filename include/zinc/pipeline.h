/* zinc/pipeline.h - pipeline schedules (pipeline/schedule.c): pure functions, no
 * communication, no memory but what they return.
 *
 * A pipeline of p stages (the ranks along the PP axis of one DP x TP position) runs m
 * micro-batches per optimizer step through p*v model chunks, v the virtual stages per
 * rank (Megatron's interleaving; 1 otherwise). Stage s holds chunks c = 0..v-1, which are
 * model chunks j = c*p + s of the layer stack: chunk c of stage s takes its input from
 * model chunk j-1 (stage s-1, or stage p-1's chunk c-1 when s = 0) and gives its output to
 * model chunk j+1. Model chunk 0 reads the tokens, model chunk p*v-1 computes the loss.
 *
 * A schedule is, for each stage, a list of instructions run in order. Sends are
 * asynchronous (the executor starts them and completes them before it reuses the buffer);
 * a receive waits at its place in the list. Every receive has exactly one matching send
 * (same kind, micro-batch and model chunk; the sender's peer is the receiver and back),
 * and a simulated run of all stages (zinc_pp_simulate) cannot deadlock. Between chunks
 * of one stage (p = 1) there is no send or receive: the output is handed on in place.
 *
 * Schedules (zinc_pp_kind):
 *   gpipe        all forwards, then all backwards; m activations in flight.
 *   1f1b         PipeDream-flush / DeepSpeed's: stage s runs min(p-s-1, m) forwards, then
 *                one forward and one backward in turn, then the remaining backwards; at
 *                most p-s activations in flight.
 *   interleaved  Megatron's interleaved 1F1B over v chunks per stage (m a multiple of p):
 *                bubble time divided by v, for (p-s-1)*2 + (v-1)*p + 1 chunk
 *                activations in flight at most.
 *   zero-bubble  ZB-H1 (Qi et al.): the backward split into the input gradient (B, on the
 *                critical path) and the weight gradient (W, deferred into what would be
 *                bubble); at most p-s micro-batches' activations held until their B as in
 *                1f1b; W's wait only during the last p forwards of a stage, at most p+1 at
 *                once (each keeps its layers' inputs and output gradients); v = 1.
 * Bubble fraction, idle time of a stage / step time, with uniform costs (forward F,
 * backward B + W = 2F, no communication time): (p-1)/(m+p-1) for gpipe and 1f1b,
 * (p-1)/(v*m+p-1) for interleaved, (p-1)/(3m+p-1) for zero-bubble when m >= p (fewer
 * micro-batches leave too few W's to fill the tail; zinc_pp_simulate gives the value)
 * (zinc_pp_bubble_theory; the tests hold zinc_pp_simulate to it).
 */
#ifndef ZINC_PIPELINE_H
#define ZINC_PIPELINE_H

#include <stddef.h>

#include "zinc/comm.h"
#include "zinc/status.h"
#include "zinc/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ZINC_PP_GPIPE,
    ZINC_PP_1F1B,
    ZINC_PP_INTERLEAVED,
    ZINC_PP_ZERO_BUBBLE,
} zinc_pp_kind;

typedef enum {
    ZINC_PP_LOAD,            /* the micro-batch's data this chunk needs: tokens (model chunk 0)
                              * and/or targets (the last model chunk) */
    ZINC_PP_RECV_ACT,        /* wait for the input activation of (mb, chunk) from peer */
    ZINC_PP_FORWARD,         /* forward of (mb, chunk); the last model chunk also the loss */
    ZINC_PP_SEND_ACT,        /* start sending (mb, chunk)'s output activation to peer */
    ZINC_PP_RECV_GRAD,       /* wait for the gradient of (mb, chunk)'s output from peer */
    ZINC_PP_BACKWARD,        /* input and weight gradients of (mb, chunk) */
    ZINC_PP_BACKWARD_INPUT,  /* zero-bubble: the input gradient of (mb, chunk) only */
    ZINC_PP_BACKWARD_WEIGHT, /* zero-bubble: the weight gradient of (mb, chunk), later */
    ZINC_PP_SEND_GRAD,       /* start sending the gradient of (mb, chunk)'s input to peer */
    ZINC_PP_REDUCE_GRADS,    /* the accumulation boundary: gradients reduced over DP (and the
                              * tied embedding's between the first and last stages) */
    ZINC_PP_OPTIMIZER_STEP,  /* once per step, after REDUCE_GRADS */
    ZINC_PP_N_OPS
} zinc_pp_op;

typedef struct zinc_pp_instr {
    zinc_pp_op op;
    int mb;    /* micro-batch 0..m-1 (-1 for REDUCE_GRADS and OPTIMIZER_STEP) */
    int chunk; /* this stage's chunk 0..v-1 (model chunk chunk*p + stage); -1 as mb */
    int peer;  /* the other stage of a send or receive; -1 otherwise */
} zinc_pp_instr;

/* The schedule's shape. */
typedef struct zinc_pp_plan {
    zinc_pp_kind kind;
    int stages;  /* p >= 1 */
    int micro;   /* m >= 1 micro-batches per step (gradient_accumulation_steps) */
    int virt;    /* v >= 1 chunks per stage; > 1 only for interleaved */
} zinc_pp_plan;

/* "gpipe", "1f1b", "interleaved", "zero-bubble"; NULL for a value out of range. */
const char *zinc_pp_kind_name(zinc_pp_kind k);
/* Parses a name above into *k: 0, or -1 for an unknown name. */
int zinc_pp_kind_parse(const char *s, zinc_pp_kind *k);
/* "forward", "recv_act", ... (the instruction names the tests and logs print). */
const char *zinc_pp_op_name(zinc_pp_op op);

/* ZINC_OK when plan is a schedule zinc can build, else ZINC_ERR_INVALID_ARG with one line
 * naming the numbers (stages, micro-batches or virtual stages below 1, virtual stages > 1
 * with another schedule than interleaved, interleaved with micro-batches not a multiple
 * of the stages). */
zinc_status zinc_pp_plan_check(const zinc_pp_plan *plan);

/* Stage `stage`'s instruction list for one step: *out (malloc'd, the caller frees) holds
 * *n instructions, ending REDUCE_GRADS, OPTIMIZER_STEP. ZINC_ERR_INVALID_ARG as
 * zinc_pp_plan_check, or for a stage outside 0..p-1; ZINC_ERR_NOMEM. */
zinc_status zinc_pp_schedule(const zinc_pp_plan *plan, int stage, zinc_pp_instr **out, int *n);

/* Relative costs of the compute instructions of one chunk (LOAD, sends and receives,
 * REDUCE_GRADS and OPTIMIZER_STEP cost nothing). */
typedef struct zinc_pp_cost {
    double forward, backward, backward_input, backward_weight;
} zinc_pp_cost;

/* What a simulated step of every stage gives. */
typedef struct zinc_pp_sim {
    int deadlock;           /* 1: no stage could go on (then the rest is unset) */
    double makespan;        /* the last stage's finish time */
    double bubble;          /* max over stages of (makespan - busy) / makespan */
    double bubble_min;      /* min over stages of the same */
    int max_inflight;       /* max over stages of chunk activations held at once (forward
                             * done, backward (its input part for zero-bubble) not yet) */
    int inflight[64];       /* the same per stage (stages <= 64) */
    int deferred[64];       /* zero-bubble: most weight backwards a stage had waiting at
                             * once (what they keep: the layer inputs and output gradients) */
} zinc_pp_sim;

/* Runs every stage's schedule against the others with the given costs: an instruction
 * starts when its stage is free and, for a receive, the matching send has happened.
 * ZINC_ERR_INVALID_ARG for a bad plan or more than 64 stages; ZINC_ERR_NOMEM. A schedule
 * whose receive has no matching send or whose sends are not all received is reported as
 * deadlock. */
zinc_status zinc_pp_simulate(const zinc_pp_plan *plan, const zinc_pp_cost *cost, zinc_pp_sim *out);

/* zinc_pp_simulate over the given lists (lists[s], n[s] instructions, for s in
 * 0..stages-1): how tests check a hand-made or broken schedule, and how an executor's
 * trace can be replayed. An instruction naming no (mb, chunk) of the plan stops its
 * stage (deadlock). */
zinc_status zinc_pp_simulate_lists(const zinc_pp_plan *plan, zinc_pp_instr *const *lists, const int *n,
                                   const zinc_pp_cost *cost, zinc_pp_sim *out);

/* The bubble fraction of the schedule with uniform costs (see the top): the value the
 * step line shows beside the measured one. */
double zinc_pp_bubble_theory(const zinc_pp_plan *plan);

/* ---- partition.c: which layers each stage holds (DeepSpeed's partition_method) ---- */

/* One layer of the stack, as the partitioner sees it. */
typedef struct zinc_pp_layer_info {
    const char *type;  /* the layer's type name ("embedding", "block", "head", ...) */
    long long params;  /* its trainable parameter count (>= 0): the engine counts every parameter
                        * a layer uses, tied ones in each layer that uses them (as DeepSpeed) */
} zinc_pp_layer_info;

/* Splits layers [0, n) into `parts` contiguous non-empty runs: part k holds layers
 * [bounds[k], bounds[k+1]) (bounds has parts + 1 entries, bounds[0] = 0, bounds[parts] = n).
 * method, as DeepSpeed's pipeline.partition:
 *   "parameters"  balance the parameter counts: the largest part's count is the least any
 *                 split into non-empty runs allows (the default)
 *   "uniform"     balance the layer counts (the first n % parts parts get one more)
 *   "type:REGEX"  balance the number of layers whose type matches REGEX (POSIX extended,
 *                 case-insensitive, anywhere in the name, as DeepSpeed's re.search)
 * Among splits with the same largest part, earlier parts take as much as they can.
 * ZINC_ERR_INVALID_ARG, one line naming the key pipeline.partition and the numbers, for an
 * unknown method, a bad regex, a regex matching no layer, parts < 1 or parts > n. */
zinc_status zinc_pp_partition(const char *method, const zinc_pp_layer_info *layers, int n, int parts, int *bounds);

/* ---- executor.c: runs one stage's list (collective over the pipeline group) ---- */

/* What a stage computes, called by zinc_pp_execute in its list's order. Activations that
 * cross stages are act_elems elements of act_dtype per (micro-batch, chunk); the executor
 * owns those buffers (one per (mb, chunk) in flight) and moves them. Every callback
 * returns ZINC_OK or an error that ends the step. */
typedef struct zinc_pp_stage_ops {
    void *u;
    size_t act_elems;
    zinc_dtype act_dtype;
    /* the micro-batch's tokens (model chunk 0) and/or targets (the last model chunk) */
    zinc_status (*load)(void *u, int mb, int chunk);
    /* in: the chunk's input (NULL for model chunk 0, which reads its tokens); out: where
     * its output goes (NULL for the last model chunk, which computes the loss) */
    zinc_status (*forward)(void *u, int mb, int chunk, const void *in, void *out);
    /* part 0: input and weight gradients; 1: the input gradient only; 2: the weight
     * gradient only (after part 1, with the same in and grad_out). in: the chunk's input as
     * forward had it (NULL for model chunk 0); grad_out: the gradient of the output (NULL
     * for the last model chunk); grad_in: where the input's gradient goes (NULL for model
     * chunk 0, and for part 2) */
    zinc_status (*backward)(void *u, int mb, int chunk, const void *in, const void *grad_out, void *grad_in,
                            int part);
    zinc_status (*reduce_grads)(void *u);
    zinc_status (*optimizer_step)(void *u);
    /* optional: the memory of the activation and gradient buffers (device memory the
     * comm group takes); NULL: malloc and free */
    void *(*buf_alloc)(void *u, size_t bytes);
    void (*buf_free)(void *u, void *p);
} zinc_pp_stage_ops;

/* What one step of a stage measured. */
typedef struct zinc_pp_exec_stats {
    double step_ms;  /* the whole list */
    double wait_ms;  /* in receives and in completing sends: the stage's bubble */
    size_t peak_buffers; /* activation / gradient buffers held at once */
} zinc_pp_exec_stats;

/* Runs stage `stage` (its rank in pp) of plan for one step: the instructions of
 * zinc_pp_schedule, sends started as they come and completed before their buffer is
 * freed or the step ends, receives waited for in place (tag: kind, micro-batch and model
 * chunk). pp is the pipeline group (size plan->stages; with one stage it is not used and
 * may be NULL). Collective over pp. stats may be NULL. */
zinc_status zinc_pp_execute(const zinc_pp_plan *plan, zinc_comm *pp, int stage, const zinc_pp_stage_ops *ops,
                            zinc_pp_exec_stats *stats);

#ifdef __cplusplus
}
#endif

#endif
