/* args.c - zinc-run's command line: its own flags and the `deepspeed`
 * launcher's, read from one table (what each DeepSpeed flag does in zinc,
 * and why, is in zinc_run.c's header comment; the table below holds the
 * words zinc-run says for the ones it ignores or refuses).
 *
 * Flags come before PROGRAM, as "--flag V" or "--flag=V"; the first word
 * that is not a flag (or the one after "--") is PROGRAM, and everything after
 * it is PROGRAM's. DeepSpeed's flags keep DeepSpeed's underscore spellings
 * (its argparse takes no other), zinc-run's own keep theirs; an unknown flag
 * is named, with the nearest known one when it is close (--num-gpus gets
 * --num_gpus). Every error is one line and exit status 2; "no PROGRAM given"
 * adds the usage. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "launcher_int.h"

/* DeepSpeed's hostfile path when none is given (DLTS_HOSTFILE in its
 * runner.py), used when it is a regular file; ZINC_DEFAULT_HOSTFILE names
 * another (the tests' way to reach this branch; empty: none). */
#define DEFAULT_HOSTFILE "/job/hostfile"

static const char *usage_text =
    "usage: zinc-run [-n N] [--hostfile F] [--include SPEC | --exclude SPEC]\n"
    "                [--launcher openmpi|mpich|slurm] [--max-restarts N [--elastic]]\n"
    "                [--allow-env-loader-vars] [--dry-run] [DeepSpeed flags]\n"
    "                [--] PROGRAM ARGS...\n"
    "  -n N              ranks, 1 to 65536 (default: all hostfile slots, else 1)\n"
    "  --hostfile F      lines `host slots=N` (N <= 4096); # starts a comment\n"
    "                    (default: /job/hostfile when it exists, as DeepSpeed)\n"
    "  --include SPEC    use only these hosts/slots, e.g. \"host1:0,2@host2\"\n"
    "  --exclude SPEC    use all but these hosts/slots\n"
    "  --launcher L      openmpi (mpirun, the default), mpich (mpiexec.hydra) or\n"
    "                    slurm (srun); any case\n"
    "  --max-restarts N  relaunch a failed job up to N times (<= 1000); zinc-train then\n"
    "                    resumes from the latest checkpoint of train.save_dir\n"
    "  --elastic         with --max-restarts: relaunch without the hosts whose ranks died,\n"
    "                    on the ranks left (zinc-train: as many as its elasticity allows)\n"
    "  --allow-env-loader-vars\n"
    "                    take LD_*, PATH, BASH_ENV, PYTHONPATH, ... from .zinc_env files\n"
    "                    (refused by default: they choose what code every rank runs)\n"
    "  --dry-run         print the command instead of running it\n"
    " DeepSpeed's launcher flags:\n"
    "  --num_gpus N, --num_accelerators N\n"
    "                    ranks per node: without a hostfile the same as -n N, with one\n"
    "                    at most N of each host's slots\n"
    "  --num_nodes N     the first N hosts of the hostfile (after --include/--exclude)\n"
    "  --master_addr A, --master_port P\n"
    "                    exported to every rank as MASTER_ADDR / MASTER_PORT\n"
    "  --bind_cores_to_rank\n"
    "                    bind each rank to its share of a node's cores\n"
    "  --comment S, --account S\n"
    "                    srun's --comment / --account (--launcher slurm)\n"
    "  --no_ssh_check, --no_python, --no_local_rank, --force_multi\n"
    "                    accepted, no effect (zinc-run says why)\n"
    "  the others (--launcher_args, --module, --autotuning, ...) are refused with the\n"
    "  reason and what to do instead\n"
    "  Exports ZINC_*, NCCL_*, OMP_*, OPENBLAS_* variables and the KEY=VALUE lines of\n"
    "  ./.zinc_env and ~/.zinc_env to every rank. Limits: 65536 ranks, 4096 slots a host.\n";

typedef enum flag_id {
    F_HELP,
    F_DRY_RUN,
    F_NP,
    F_HOSTFILE,
    F_INCLUDE,
    F_EXCLUDE,
    F_LAUNCHER,
    F_MAX_RESTARTS,
    F_ELASTIC,
    F_ALLOW_LOADER,
    F_NUM_GPUS,
    F_NUM_NODES,
    F_MASTER_ADDR,
    F_MASTER_PORT,
    F_BIND_CORES,
    F_COMMENT,
    F_ACCOUNT,
    F_IGNORED, /* accepted, no effect: `why` is the note */
    F_REFUSED, /* exit 2: `why` is the reason and what to do instead */
} flag_id;

typedef struct run_flag {
    const char *name;
    bool value; /* takes a value, "--flag V" or "--flag=V" */
    flag_id id;
    const char *why;
} run_flag;

static const run_flag flags[] = {
    {"-h", false, F_HELP, NULL},
    {"--help", false, F_HELP, NULL},
    {"--dry-run", false, F_DRY_RUN, NULL},
    {"-n", true, F_NP, NULL},
    {"-np", true, F_NP, NULL},
    {"--np", true, F_NP, NULL},
    {"--hostfile", true, F_HOSTFILE, NULL},
    {"-H", true, F_HOSTFILE, NULL},
    {"--include", true, F_INCLUDE, NULL},
    {"-i", true, F_INCLUDE, NULL},
    {"--exclude", true, F_EXCLUDE, NULL},
    {"-e", true, F_EXCLUDE, NULL},
    {"--launcher", true, F_LAUNCHER, NULL},
    {"--max-restarts", true, F_MAX_RESTARTS, NULL},
    {"--elastic", false, F_ELASTIC, NULL},
    {"--allow-env-loader-vars", false, F_ALLOW_LOADER, NULL},
    /* DeepSpeed's (deepspeed/launcher/runner.py) */
    {"--num_gpus", true, F_NUM_GPUS, NULL},
    {"--num_accelerators", true, F_NUM_GPUS, NULL},
    {"--num_nodes", true, F_NUM_NODES, NULL},
    {"--master_addr", true, F_MASTER_ADDR, NULL},
    {"--master_port", true, F_MASTER_PORT, NULL},
    {"--bind_cores_to_rank", false, F_BIND_CORES, NULL},
    {"--comment", true, F_COMMENT, NULL},
    {"--account", true, F_ACCOUNT, NULL},
    {"--no_ssh_check", false, F_IGNORED,
     "zinc-run runs no ssh check of its own (the launcher reaches the hosts itself)"},
    {"--no_python", false, F_IGNORED, "zinc-run always runs PROGRAM itself, never through python"},
    {"--no_local_rank", false, F_IGNORED,
     "zinc-run never adds --local_rank to PROGRAM's arguments (a rank takes its place from MPI)"},
    {"--force_multi", false, F_IGNORED,
     "zinc-run always starts the ranks through the launcher, on one host or many"},
    {"--launcher_args", true, F_REFUSED,
     "zinc-run adds no launcher flags of yours; set them in the launcher's environment "
     "(OMPI_MCA_* for mpirun, HYDRA_* for mpiexec.hydra, SLURM_* for srun)"},
    {"--module", false, F_REFUSED, "zinc's ranks run a program, not a Python module: give PROGRAM"},
    {"--autotuning", true, F_REFUSED,
     "zinc has no autotuner: set the batch and ZeRO keys in the config "
     "(zinc-train CONFIG --check prints what they resolve to)"},
    {"--elastic_training", false, F_REFUSED,
     "zinc-run's elastic restarts are --max-restarts N --elastic (the config's elasticity "
     "section picks the rank count)"},
    {"--min_elastic_nodes", true, F_REFUSED,
     "zinc-run --max-restarts N --elastic runs on the hosts left; the config's elasticity "
     "section (min_gpus, max_gpus) bounds the ranks"},
    {"--max_elastic_nodes", true, F_REFUSED,
     "zinc-run --max-restarts N --elastic runs on the hosts left; the config's elasticity "
     "section (min_gpus, max_gpus) bounds the ranks"},
    {"--no_ssh", false, F_REFUSED,
     "zinc-run starts every node's ranks from one node through the launcher: run it once, "
     "not on each node"},
    {"--node_rank", true, F_REFUSED,
     "zinc-run starts every node's ranks from one node through the launcher: run it once, "
     "not on each node"},
    {"--save_pid", false, F_REFUSED,
     "zinc-run writes no pid file; its own pid is the job's (a signal to it reaches every rank)"},
    {"--enable_each_rank_log", true, F_REFUSED,
     "zinc-run writes no per-rank log files; the ranks' output comes through zinc-run's stdout "
     "and stderr"},
    {"--ssh_port", true, F_REFUSED,
     "zinc-run runs no ssh itself; give the hosts' port in ~/.ssh/config (Host NAME, Port N), "
     "which the launcher's ssh reads"},
    {"--venv_script", true, F_REFUSED,
     "the ranks inherit zinc-run's environment: activate the environment before zinc-run "
     "(or put its variables in .zinc_env)"},
    {"--bind_core_list", true, F_REFUSED,
     "zinc-run binds ranks only to equal shares of a node's cores (--bind_cores_to_rank); "
     "limit the cores through the scheduler"},
};
#define N_FLAGS (sizeof flags / sizeof *flags)

/* Edit distance of a[0..na) and b (at most 63 bytes each), for suggestions. */
static int edit_distance(const char *a, size_t na, const char *b)
{
    size_t nb = strlen(b);
    int row[64];
    if (na >= 64 || nb >= 64) return 64;
    for (size_t j = 0; j <= nb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= na; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= nb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[nb];
}

/* The known long flag nearest to a (its part before '='), or NULL when none
 * is close: at most 1 edit in 4 letters, and 3 in all. */
static const char *nearest_flag(const char *a)
{
    size_t na = strcspn(a, "=");
    const char *best = NULL;
    int best_d = 4;
    for (size_t i = 0; i < N_FLAGS; i++) {
        if (flags[i].name[1] != '-') continue;
        int d = edit_distance(a, na, flags[i].name);
        if (d < best_d && (size_t)d * 4 <= na) {
            best_d = d;
            best = flags[i].name;
        }
    }
    return best;
}

/* The table's entry for argv word a ("--flag" or "--flag=V"), or NULL. */
static const run_flag *flag_find(const char *a)
{
    for (size_t i = 0; i < N_FLAGS; i++) {
        size_t n = strlen(flags[i].name);
        if (!strncmp(a, flags[i].name, n) && (a[n] == '\0' || a[n] == '=')) return &flags[i];
    }
    return NULL;
}

/* Why s cannot be MASTER_ADDR, or NULL: a host name or IPv4 literal by the
 * hostfile's rules, or an IPv6 literal (hex digits, ':' and '.'), which
 * MASTER_ADDR may hold since no --host list reads it. */
static const char *master_addr_problem(const char *s)
{
    if (!strchr(s, ':')) return host_name_problem(s, strlen(s));
    if (strlen(s) > 45) return "is longer than an IPv6 address";
    for (const char *p = s; *p; p++)
        if (!(isxdigit((unsigned char)*p) || *p == ':' || *p == '.'))
            return "holds ':' but is not an IPv6 address (hex digits, ':' and '.')";
    return NULL;
}

/* --launcher's value into o. Returns 0, or 2 after printing the error. */
static int launcher_parse(const char *v, run_opts *o)
{
    if (!strcasecmp(v, "openmpi")) o->launcher = RUN_OPENMPI;
    else if (!strcasecmp(v, "mpich")) o->launcher = RUN_MPICH;
    else if (!strcasecmp(v, "slurm")) o->launcher = RUN_SLURM;
    else if (!strcasecmp(v, "pdsh"))
        return fail("--launcher pdsh: pdsh starts the ranks without an MPI launcher, and zinc's "
                    "ranks find each other through MPI; use openmpi (the default), mpich or slurm");
    else
        return fail("--launcher: expected openmpi, mpich or slurm (any case), got '%.64s'", v);
    return 0;
}

/* The checks that need every flag: combinations, and the default hostfile.
 * Returns -1 to go on, else 2 after printing the error. */
static int args_check(run_opts *o)
{
    if (o->include && o->exclude)
        return fail("--include and --exclude are exclusive: give one of them");
    if (o->elastic && o->max_restarts < 1)
        return fail("--elastic relaunches a failed job: give --max-restarts N too");
    if ((o->comment || o->account) && o->launcher != RUN_SLURM)
        return fail("%s is passed to srun: it needs --launcher slurm",
                    o->comment ? "--comment" : "--account");
    if (!o->hostfile) {
        const char *def = getenv("ZINC_DEFAULT_HOSTFILE");
        if (!def) def = DEFAULT_HOSTFILE;
        struct stat sb;
        if (*def && stat(def, &sb) == 0 && S_ISREG(sb.st_mode)) {
            o->hostfile = def;
            fprintf(stderr, "zinc-run: note: hostfile %s (DeepSpeed's default, present here); "
                            "--hostfile F chooses another\n", def);
        }
    }
    if ((o->include || o->exclude) && !o->hostfile)
        return fail("%s selects from a hostfile: give --hostfile F",
                    o->include ? "--include" : "--exclude");
    if (o->num_nodes > 1 && !o->hostfile)
        return fail("--num_nodes %d: without a hostfile zinc-run runs on this node only; give "
                    "--hostfile F", o->num_nodes);
    return -1;
}

int args_parse(int argc, char **argv, run_opts *o)
{
    memset(o, 0, sizeof *o);
    o->launcher = RUN_OPENMPI;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--")) {
            i++;
            break;
        }
        if (a[0] != '-' || a[1] == '\0') break;
        const run_flag *f = flag_find(a);
        if (!f && a[1] == 'n' && isdigit((unsigned char)a[2])) { /* -n4, as mpirun takes */
            f = flag_find("-n");
            v = a + 2;
        }
        if (!f) {
            const char *near = nearest_flag(a);
            if (near) return fail("unknown option %.64s (did you mean %s?)", a, near);
            return fail("unknown option %.64s (zinc-run --help lists the flags)", a);
        }
        size_t n = strlen(f->name);
        if (!v && f->value) {
            if (a[n] == '=') v = a + n + 1;
            else if (i + 1 < argc) v = argv[++i];
            else return fail("%s needs a value", f->name);
        } else if (!v && a[n] == '=') {
            return fail("%s takes no value (got '%.64s')", f->name, a);
        }
        switch (f->id) {
        case F_HELP:
            fputs(usage_text, stdout);
            return 0;
        case F_DRY_RUN: o->dry_run = true; break;
        case F_ELASTIC: o->elastic = true; break;
        case F_ALLOW_LOADER: o->allow_loader = true; break;
        case F_BIND_CORES: o->bind_cores = true; break;
        case F_HOSTFILE: o->hostfile = v; break;
        case F_INCLUDE: o->include = v; break;
        case F_EXCLUDE: o->exclude = v; break;
        case F_COMMENT: o->comment = *v ? v : NULL; break;
        case F_ACCOUNT: o->account = *v ? v : NULL; break;
        case F_LAUNCHER:
            if (launcher_parse(v, o)) return 2;
            break;
        case F_MAX_RESTARTS:
            if (!parse_int(v, 0, RUN_MAX_RESTARTS, &o->max_restarts))
                return fail("--max-restarts: expected a count from 0 to %d, got '%.64s'",
                            RUN_MAX_RESTARTS, v);
            break;
        case F_NP:
            if (!parse_int(v, 1, RUN_MAX_RANKS, &o->n))
                return fail("-n: expected a rank count from 1 to %d, got '%.64s'", RUN_MAX_RANKS,
                            v);
            break;
        case F_NUM_GPUS:
            if (!parse_int(v, 1, RUN_MAX_SLOTS, &o->num_gpus))
                return fail("%s: expected ranks per node from 1 to %d, got '%.64s'", f->name,
                            RUN_MAX_SLOTS, v);
            break;
        case F_NUM_NODES:
            if (!parse_int(v, 1, RUN_MAX_RANKS, &o->num_nodes))
                return fail("--num_nodes: expected a node count from 1 to %d, got '%.64s'",
                            RUN_MAX_RANKS, v);
            break;
        case F_MASTER_PORT:
            if (!parse_int(v, 1, 65535, &o->master_port))
                return fail("--master_port: expected a port from 1 to 65535, got '%.64s'", v);
            break;
        case F_MASTER_ADDR: {
            const char *why = master_addr_problem(v);
            if (why)
                return fail("--master_addr '%.64s%s': it %s", v, strlen(v) > 64 ? "..." : "",
                            why);
            o->master_addr = v;
            break;
        }
        case F_IGNORED:
            fprintf(stderr, "zinc-run: note: %s: %s; ignored\n", f->name, f->why);
            break;
        case F_REFUSED:
            return fail("%s is DeepSpeed's and does not apply: %s", f->name, f->why);
        }
    }
    if (i >= argc) {
        fprintf(stderr, "zinc-run: no PROGRAM given\n");
        fputs(usage_text, stderr);
        return 2;
    }
    if (argv[i][0] == '-') return fail("PROGRAM may not start with '-' (%.64s)", argv[i]);
    o->prog = i;
    return args_check(o);
}
