/* launcher_int.h - what zinc-run's files share: error and allocation
 * helpers (util.c), the files it reads, the hostfile and .zinc_env
 * (inputs.c), its command line (args.c) and --elastic (elastic.c). Not
 * installed; zinc-run is one program. */
#ifndef ZINC_LAUNCHER_INT_H
#define ZINC_LAUNCHER_INT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

/* Most ranks one job may have (-n, and the hostfile's slots added up), and
 * most slots one host may have: far past any cluster zinc runs on, small
 * enough that counts and the --host list stay well inside an int. */
#define RUN_MAX_RANKS 65536
#define RUN_MAX_SLOTS 4096
/* Most restarts --max-restarts allows. */
#define RUN_MAX_RESTARTS 1000
/* Longest hostfile line: a 253-byte host name, its slots and a comment. */
#define HOSTFILE_MAX_LINE 4096
/* Longest .zinc_env line: Linux refuses an argv string (-x KEY=VALUE) past
 * 128 KiB (MAX_ARG_STRLEN), and the whole argv past a few MiB. */
#define ENV_FILE_MAX_LINE 65536
#define ENV_FILE_MAX_BYTES (1L << 20)

/* ---------------------------------------------------------- util.c --- */

/* Prints "zinc-run: <detail>" to stderr; returns 2 for the caller to exit with. */
int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vfail(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
/* Allocation that exits 1 with "zinc-run: out of memory" on failure. */
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A growable NULL-terminated string vector; it owns its strings. */
typedef struct run_vec {
    char **v;
    int n, cap;
} run_vec;

void vec_push_take(run_vec *a, char *s); /* takes s */
void vec_push(run_vec *a, const char *s);  /* copies s */
void vec_free(run_vec *a);

/* Parses a whole decimal int in [lo, hi]; false otherwise. */
bool parse_int(const char *s, long lo, long hi, int *out);
/* Whether s[0..n) is a shell variable name. */
bool valid_env_name(const char *s, size_t n);

/* -------------------------------------------------------- inputs.c --- */

typedef struct run_host {
    char *name;
    int slots;     /* from the hostfile */
    bool *use;     /* (slots,) selected by --include/--exclude */
    int n_use;     /* how many are selected */
} run_host;

typedef struct run_hosts {
    run_host *h;
    int n;
} run_hosts;

void hosts_free(run_hosts *hs);
/* Why s (n bytes) cannot be a host name in mpirun's --host list, or NULL if
 * it can (the rules are in zinc_run.c's header comment). */
const char *host_name_problem(const char *s, size_t n);
/* Reads a DeepSpeed hostfile. Returns 0, or 2 after printing the error. */
int hostfile_read(const char *path, run_hosts *hs);
/* Applies an --include (include=true) or --exclude SPEC "h1:0,2@h2" to hosts
 * read from hostfile. Returns 0, or 2 after printing the error. */
int hosts_select(run_hosts *hs, const char *spec, bool include, const char *hostfile);
/* --num_nodes: keeps the first n_nodes hosts of hs. Returns 0, or 2 after
 * printing the error when hs has fewer. */
int hosts_keep_first(run_hosts *hs, int n_nodes, const char *hostfile);
/* --num_gpus: keeps at most per_host of each host's selected slots, the
 * lowest, warning for a host that has fewer. */
void hosts_cap_slots(run_hosts *hs, int per_host);

typedef struct run_env {
    run_vec keys, vals;
} run_env;

/* Index of key in e, or -1. */
int env_find(const run_env *e, const char *key);
/* Reads ~/.zinc_env then ./.zinc_env into e (see zinc_run.c's header for
 * what is refused). Returns 0, or 2 after printing the error. */
int env_files_read(run_env *e, bool allow_loader);
void env_free(run_env *e);

/* ---------------------------------------------------------- args.c --- */

typedef enum run_launcher {
    RUN_OPENMPI, /* mpirun */
    RUN_MPICH,   /* mpiexec.hydra */
    RUN_SLURM,   /* srun */
} run_launcher;

/* zinc-run's flags; strings point into argv (or the environment). */
typedef struct run_opts {
    int n;                /* -n; 0: not given */
    int num_gpus;         /* --num_gpus: ranks per node; 0: not given */
    int num_nodes;        /* --num_nodes: the first N hosts; 0: not given */
    const char *hostfile; /* --hostfile, else the default one when present; NULL: none */
    const char *include, *exclude;
    run_launcher launcher;
    const char *master_addr; /* --master_addr; NULL: not given */
    int master_port;         /* --master_port; 0: not given */
    const char *comment, *account; /* srun's --comment, --account; NULL: not given */
    bool bind_cores;   /* --bind_cores_to_rank */
    bool dry_run;      /* --dry-run */
    bool allow_loader; /* --allow-env-loader-vars */
    int max_restarts;  /* --max-restarts */
    bool elastic;      /* --elastic */
    int prog;          /* argv index of PROGRAM */
} run_opts;

/* Reads argv into o (borrowing its strings). Returns -1 to go on, else the
 * status to exit with: 0 after --help, 2 after printing the error. */
int args_parse(int argc, char **argv, run_opts *o);

/* ------------------------------------------------------- elastic.c --- */

/* Notes in failed the hosts a launcher's stderr line says lost their ranks. */
void elastic_scan_line(const char *line, run_vec *failed);
/* Removes the hosts named in failed from hs (printing each); returns how many. */
int elastic_drop(run_hosts *hs, const run_vec *failed);
/* Ranks for the next run with available slots: the largest count
 * <= available that PROGRAM's elasticity section allows (zinc-train's
 * config), else available; 0 when none. */
int elastic_ranks(int argc, char **argv, int prog, int available);

#endif
