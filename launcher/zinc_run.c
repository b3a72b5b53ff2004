/* zinc_run.c - `zinc-run`: starts N ranks of a program through OpenMPI's
 * mpirun (or MPICH's mpiexec.hydra, or Slurm's srun) and returns the job's
 * exit status. It takes the `deepspeed` launcher's flags too (table below).
 *
 *   zinc-run [-n N] [--hostfile F] [--include SPEC | --exclude SPEC]
 *            [--launcher openmpi|mpich|slurm] [--max-restarts N [--elastic]]
 *            [--allow-env-loader-vars] [--dry-run] [DeepSpeed's flags] [--] PROGRAM ARGS...
 *
 * It only builds an argv: no host name, path, variable or argument is ever
 * seen by a shell. The argv is run in a child (fork + execvp + waitpid); the
 * child's exit status is returned (128 + signal if it was killed). Signals
 * sent to zinc-run by another process (kill, a scheduler) are passed on to
 * the child; terminal signals (^C) already reach it through the process group.
 *
 * What goes into the mpirun argv, and why:
 *   -n N                  ranks
 *   --bind-to none        OpenMPI binds each rank to one core by default, which
 *                         would starve ranks that run K OpenMP threads
 *   --oversubscribe       when N exceeds this node's cores (no hostfile) or the
 *                         slots of a one-host hostfile
 *   --allow-run-as-root   when euid is 0 (containers, CI)
 *   --mca btl_vader_single_copy_mechanism none
 *                         CMA/XPMEM single copy is blocked in most containers
 *   --host h1:N1,h2:N2    from the hostfile after --include/--exclude,
 *                         --num_nodes and --num_gpus
 *   -x OMP_NUM_THREADS=K -x ZINC_THREADS=K
 *                         K = max(1, cores of a node / ranks on that node),
 *                         unless OMP_NUM_THREADS is already set (then it is
 *                         forwarded as is). Remote nodes are assumed to have
 *                         as many cores as this one.
 *   -x NAME               every variable named ZINC_*, NCCL_*, OMP_*, OPENBLAS_*
 *   -x KEY=VALUE          every line of $HOME/.zinc_env, then ./.zinc_env (a
 *                         later file overrides an earlier one; a variable
 *                         already set in the environment wins over both and
 *                         is forwarded by name). Values are taken literally.
 *   -x MASTER_ADDR=A -x MASTER_PORT=P
 *                         from --master_addr / --master_port (they win over
 *                         .zinc_env lines of the same names)
 *   --map-by slot:PE=K --bind-to core
 *                         instead of --bind-to none with --bind_cores_to_rank:
 *                         K = physical cores of a node / ranks on that node
 * mpiexec.hydra (--launcher mpich) gets -n N, -hosts h1:N1,h2:N2, -bind-to
 * core:K (--bind_cores_to_rank), -genvall (Hydra's default: the whole
 * environment, so variables forwarded by name need nothing more) and -genv
 * KEY VALUE for what zinc-run sets; it binds nothing unless asked and needs
 * no flag to oversubscribe or to run as root. It is named mpiexec.hydra, not
 * mpiexec, because where Open MPI and MPICH are both installed `mpiexec` is
 * usually Open MPI's. The ranks must be built against MPICH: a program built
 * against Open MPI (as this zinc is, by default) that Hydra starts runs as N
 * separate one-rank jobs, so zinc-run warns when it is itself an Open MPI
 * build. srun gets -n N, --cpus-per-task=K, --cpu-bind=cores
 * (--bind_cores_to_rank), --nodelist, --comment / --account, and
 * --export=ALL,KEY=VALUE,...
 *
 * DeepSpeed's launcher flags (deepspeed/launcher/runner.py), parsed in
 * args.c; only its underscore spellings, as its argparse, and zinc-run's
 * own flags keep theirs. An unknown flag is one line naming it (and the
 * nearest known flag), exit 2.
 *   --num_gpus N, --num_accelerators N
 *                  ranks per node. Without a hostfile: N ranks here, the same
 *                  as -n N (both given: they must be equal). With one: at
 *                  most N of each host's selected slots, the lowest (a host
 *                  with fewer runs what it has, with a warning; DeepSpeed
 *                  would start N there regardless), and -n, if given, may
 *                  not pass the slots that leaves.
 *   --num_nodes N  the first N hosts of the hostfile after --include/--exclude
 *                  (fewer hosts left: an error; DeepSpeed would run on fewer).
 *                  Without a hostfile only N = 1 (this node) is accepted.
 *   --hostfile F, -H F
 *                  as zinc-run's; when none is given, /job/hostfile is read if
 *                  it is a regular file (DeepSpeed's default; a one-line note
 *                  says so; ZINC_DEFAULT_HOSTFILE names another path, empty:
 *                  none, and is forwarded like every ZINC_* variable). A
 *                  given hostfile that cannot be read is an error.
 *   --include SPEC, -i, --exclude SPEC, -e
 *                  zinc-run's. Unlike DeepSpeed, they combine with
 *                  --num_nodes / --num_gpus, which apply after them.
 *   --master_addr A, --master_port P
 *                  zinc's ranks find each other through MPI, not through a
 *                  rendezvous address, so zinc reads neither; they are
 *                  exported to every rank as MASTER_ADDR / MASTER_PORT (for
 *                  code of the user's that does) and so show in --dry-run.
 *                  A is a host name or IPv4 literal by the hostfile's rules,
 *                  or an IPv6 literal; P is 1..65535. Not given: not set
 *                  (DeepSpeed sets 29500 and the first host's address).
 *   --launcher openmpi|mpich|slurm (any case); pdsh, mvapich, impi, jsrun are
 *                  refused (pdsh starts ranks without MPI; the others' commands
 *                  zinc-run does not build).
 *   --bind_cores_to_rank
 *                  each rank bound to its share of a node's physical cores
 *                  (remote nodes taken to have this node's); more ranks on a
 *                  node than cores is an error.
 *   --comment S, --account S
 *                  srun's --comment / --account; an error with another launcher.
 *   --no_ssh_check, --no_python, --no_local_rank, --force_multi
 *                  accepted with a one-line note, no effect: zinc-run runs no
 *                  ssh check, always runs PROGRAM itself (never python), never
 *                  adds --local_rank, and always goes through the launcher.
 *   refused (exit 2, one line with the reason and what to do instead):
 *                  --launcher_args (set OMPI_MCA_* / HYDRA_* / SLURM_* in the
 *                  environment), --module, --autotuning, --elastic_training,
 *                  --min_elastic_nodes, --max_elastic_nodes (--max-restarts N
 *                  --elastic and the config's elasticity section), --no_ssh,
 *                  --node_rank (zinc-run starts every node from one), --save_pid,
 *                  --enable_each_rank_log, --ssh_port (~/.ssh/config),
 *                  --venv_script, --bind_core_list.
 *
 * Hostfile: DeepSpeed's format, `host slots=N` lines with # comments. The
 * --include/--exclude SPEC is DeepSpeed's "host1:0,2@host2" (slot indices per
 * host; a bare host means all its slots). Ranks fill a host's slots in order
 * (GPU = local rank), so a selection such as host1:1,3 yields 2 ranks there
 * using local ranks 0 and 1; zinc-run warns when that differs.
 *
 * Variables that choose what code runs are refused from .zinc_env files:
 * ./.zinc_env comes with whatever directory zinc-run is started in (a cloned
 * repository), and a line there would reach every rank of the job. Refused,
 * unless --allow-env-loader-vars is given or the variable is already in
 * zinc-run's environment (then it is the user's own and is forwarded by
 * name as before), are the variables that make a program load or run code
 * from a path or string that the program itself did not name:
 *   the dynamic loader   LD_* (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, ...),
 *                        GLIBC_TUNABLES, GCONV_PATH (glibc dlopens converters)
 *   program lookup       PATH (which file a command name runs)
 *   shells               BASH_ENV, ENV (run by non-interactive bash and sh),
 *                        SHELLOPTS, BASHOPTS, PS4 (expanded under xtrace), ZDOTDIR
 *   interpreters         PYTHONSTARTUP, PYTHONPATH, PYTHONHOME, PYTHONUSERBASE,
 *                        PYTHONBREAKPOINT, PERL5OPT, PERL5LIB, PERLLIB, PERL5DB,
 *                        RUBYOPT, RUBYLIB, NODE_OPTIONS, NODE_PATH,
 *                        JAVA_TOOL_OPTIONS, _JAVA_OPTIONS, JDK_JAVA_OPTIONS,
 *                        LUA_INIT*, LUA_PATH*, LUA_CPATH*
 *   libraries ranks load CUDA_INJECTION64_PATH, CUDA_INJECTION32_PATH,
 *                        NCCL_NET_PLUGIN, NCCL_TUNER_PLUGIN, NCCL_PROFILER_PLUGIN,
 *                        OPAL_PREFIX, OMPI_MCA_mca_base_component_path
 * The list names mechanisms, not every program's; a variable a rank's own
 * program reads to load code is the program's to check.
 *
 * Input checks: the hostfile and both .zinc_env files are opened with the
 * file-type check first (zinc_fopen_regular: a named pipe or device is
 * refused, not read) and read line by line with each line's true length; a
 * line holding a NUL byte or another control character (tab, and one CR
 * before the newline, excepted), a hostfile line past 4096 bytes or a
 * .zinc_env line past 64 KiB (a file past 1 MiB) is refused, naming the file
 * and line. Host names are letters, digits, '-', '.', '_' (an IPv4 literal
 * fits), at most 253 bytes, not starting with '-' or '.'; an IPv6 literal is
 * refused, since ':' separates slots in --host and in SPEC. SPEC is printable
 * ASCII without spaces. The finished command is checked against Linux's exec
 * limits (128 KiB an argument, ARG_MAX in all) before it is run or printed;
 * --dry-run writes control characters in ARGS as $'\xHH'.
 *
 * Limits: at most 65536 ranks (-n, and the hostfile's slots added up) and
 * 4096 slots per host.
 *
 * Restarts: with --max-restarts N a job that fails (any exit status but 0,
 * 2 - bad input, which would fail again - and a stop that was asked for) is
 * started again, up to N times, with ZINC_RESTART=k in every rank's
 * environment; zinc-train then resumes from the latest checkpoint of its
 * train.save_dir even when train.resume is not set. With --elastic the
 * launcher's stderr is read on its way through for the hosts whose ranks
 * died (elastic.c); those are dropped from the next run, which gets the
 * ranks the other hosts' slots hold (at most the first run's), and for
 * zinc-train with an elasticity section the most of those its global batch
 * can run, so the batch stays the same.
 *
 * Exit status: the job's (its last run's); 2 for bad flags, a bad hostfile, .zinc_env or
 * selection; 127 when mpirun/mpiexec.hydra/srun is not on PATH; 1 if fork fails.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mpi.h> /* OPEN_MPI: which MPI this zinc is built against */

#include "launcher_int.h"

extern char **environ;


/* ------------------------------------------------------------ helpers --- */

/* Writes s to f, single-quoted if it holds anything a shell would interpret.
 * A control character other than tab and newline is written as $'\xHH' (bash,
 * zsh, ksh and POSIX.1-2024 sh read it back) so that a --dry-run line never
 * sends raw escape sequences to the terminal. */
static void shell_quote(FILE *f, const char *s)
{
    bool plain = *s != '\0';
    for (const char *p = s; *p; p++)
        if (!(isalnum((unsigned char)*p) || strchr("_@%+=:,./-", *p))) plain = false;
    if (plain) {
        fputs(s, f);
        return;
    }
    fputc('\'', f);
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\'') fputs("'\\''", f);
        else if ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7f) fprintf(f, "'$'\\x%02x''", c);
        else fputc(c, f);
    }
    fputc('\'', f);
}

/* Linux refuses an exec whose single argument passes MAX_ARG_STRLEN (32
 * pages) or whose argv and environment together pass ARG_MAX (a quarter of
 * the stack limit); execvp would fail with "Argument list too long" after
 * the work of building the command. Returns 0, or 2 after naming the part. */
static int argv_check(char **argv)
{
    const size_t max_arg = 32 * 4096;
    long arg_max = sysconf(_SC_ARG_MAX);
    size_t total = 0;
    for (char **a = argv; *a; a++) {
        size_t n = strlen(*a) + 1;
        if (n > max_arg)
            return fail("the command's argument '%.24s...' is %zu bytes; Linux passes at most %zu "
                        "in one argument (fewer hosts, or shorter .zinc_env values)",
                        *a, n - 1, max_arg - 1);
        total += n + sizeof *a;
    }
    for (char **e = environ; *e; e++) total += strlen(*e) + 1 + sizeof *e;
    if (arg_max > 0 && total > (size_t)arg_max)
        return fail("the command and environment are %zu bytes; this system runs at most %ld "
                    "(ARG_MAX, a quarter of `ulimit -s`): shorten .zinc_env or the host list",
                    total, arg_max);
    return 0;
}

/* Full path of an executable name as execvp would find it, or NULL. */
static char *find_in_path(const char *name)
{
    if (strchr(name, '/')) return access(name, X_OK) == 0 ? xstrdup(name) : NULL;
    const char *path = getenv("PATH");
    if (!path) path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *p = path;;) {
        const char *e = strchr(p, ':');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char *cand = len ? xprintf("%.*s/%s", (int)len, p, name) : xprintf("./%s", name);
        struct stat sb;
        if (stat(cand, &sb) == 0 && S_ISREG(sb.st_mode) && access(cand, X_OK) == 0) return cand;
        free(cand);
        if (!e) return NULL;
        p = e + 1;
    }
}

/* ----------------------------------------------------------- CPU counts --- */

/* CPUs this process may run on (what nproc prints). */
static int logical_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static bool read_int_file(const char *path, int *out)
{
    FILE *f = fopen(path, "r");
    if (!f) return false;
    bool ok = fscanf(f, "%d", out) == 1;
    fclose(f);
    return ok;
}

/* Physical cores among this process's CPUs: OpenMPI's default slot count on
 * a node without a hostfile. Falls back to the logical count. */
static int physical_cores(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return logical_cpus();
    int n_ids = 0, cap = CPU_COUNT(&set);
    long *ids = xrealloc(NULL, (size_t)(cap > 0 ? cap : 1) * sizeof *ids);
    for (int c = 0; c < CPU_SETSIZE && n_ids < cap; c++) {
        if (!CPU_ISSET(c, &set)) continue;
        char p1[96], p2[96];
        int pkg, core;
        snprintf(p1, sizeof p1, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", c);
        snprintf(p2, sizeof p2, "/sys/devices/system/cpu/cpu%d/topology/core_id", c);
        if (!read_int_file(p1, &pkg) || !read_int_file(p2, &core)) {
            free(ids);
            return logical_cpus();
        }
        long id = (long)pkg * 1000000L + core;
        bool seen = false;
        for (int i = 0; i < n_ids; i++) seen |= ids[i] == id;
        if (!seen) ids[n_ids++] = id;
    }
    free(ids);
    return n_ids > 0 ? n_ids : logical_cpus();
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Names of the environment variables forwarded by prefix, sorted. */
static void env_forwarded_names(run_vec *names)
{
    static const char *prefixes[] = {"ZINC_", "NCCL_", "OMP_", "OPENBLAS_"};
    for (char **ep = environ; *ep; ep++) {
        const char *eq = strchr(*ep, '=');
        if (!eq) continue;
        size_t n = (size_t)(eq - *ep);
        if (!valid_env_name(*ep, n)) continue;
        for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
            if (n > strlen(prefixes[i]) && !strncmp(*ep, prefixes[i], strlen(prefixes[i]))) {
                vec_push_take(names, xprintf("%.*s", (int)n, *ep));
                break;
            }
    }
    if (names->n > 1) qsort(names->v, (size_t)names->n, sizeof *names->v, cmp_str);
}

/* --------------------------------------------------------------- run --- */

static volatile sig_atomic_t g_child = 0;

static volatile sig_atomic_t g_stops = 0; /* stop signals passed on so far */

/* Passes signals sent by other processes on to the job. Signals from the
 * terminal (si_code SI_KERNEL) reach the job through the process group
 * already; forwarding those too would make mpirun abort hard on the second.
 * A stop request (SIGTERM, SIGINT, SIGUSR1: a scheduler's preemption) goes on
 * as SIGUSR1, which mpirun and srun pass to every rank, where it means "save
 * and stop at the next step" (mpirun itself would kill the ranks on SIGTERM,
 * losing the step); a second stop request goes on as SIGTERM, which ends the
 * job at once. zinc-run returns only after the launcher has exited, and the
 * launcher only after its ranks have. */
static void forward_signal(int sig, siginfo_t *info, void *uctx)
{
    (void)uctx;
    pid_t c = (pid_t)g_child;
    if (c <= 0 || (info && info->si_code > 0)) return;
    if (sig == SIGTERM || sig == SIGINT || sig == SIGUSR1) {
        static const char m1[] = "zinc-run: stop requested: the ranks save at the next step "
                                 "and exit (a second signal ends them now)\n";
        static const char m2[] = "zinc-run: second stop request: ending the job now\n";
        bool first = g_stops++ == 0;
        ssize_t w = first ? write(2, m1, sizeof m1 - 1) : write(2, m2, sizeof m2 - 1);
        (void)w;
        kill(c, first ? SIGUSR1 : SIGTERM);
        return;
    }
    kill(c, sig);
}

/* Passes the child's stderr (read end fd) through to ours, line by line,
 * noting in failed the hosts that the lines say were lost. Returns false at
 * end of file or when nothing is there to read now. */
static bool pass_stderr(int fd, char *line, size_t cap, size_t *len, run_vec *failed)
{
    char buf[4096];
    ssize_t got = read(fd, buf, sizeof buf);
    if (got <= 0) return false;
    ssize_t w = write(2, buf, (size_t)got);
    (void)w;
    for (ssize_t i = 0; i < got; i++) {
        if (buf[i] == '\n' || *len == cap - 1) {
            line[*len] = '\0';
            elastic_scan_line(line, failed);
            *len = 0;
        }
        if (buf[i] != '\n') line[(*len)++] = buf[i];
    }
    return true;
}

/* Runs argv in a child and returns its exit status (128+sig if killed).
 * With failed, the child's stderr goes through a pipe and is scanned for
 * lost hosts (elastic.c) on its way to ours. */
static int run_child(char **argv, run_vec *failed)
{
    int pfd[2] = {-1, -1};
    if (failed && pipe(pfd) != 0) {
        fprintf(stderr, "zinc-run: pipe: %s; --elastic cannot tell which host failed\n",
                strerror(errno));
        failed = NULL;
    }
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = forward_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "zinc-run: fork failed: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        if (failed) {
            dup2(pfd[1], 2);
            close(pfd[0]);
            close(pfd[1]);
        }
        execvp(argv[0], argv);
        fprintf(stderr, "zinc-run: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    g_child = pid;
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) sigaction(sigs[i], &sa, NULL);
    int status = 0;
    if (failed) {
        close(pfd[1]);
        fcntl(pfd[0], F_SETFL, fcntl(pfd[0], F_GETFL) | O_NONBLOCK);
        char line[1024];
        size_t len = 0;
        for (;;) {
            struct pollfd pf = {.fd = pfd[0], .events = POLLIN};
            if (poll(&pf, 1, 100) > 0) pass_stderr(pfd[0], line, sizeof line, &len, failed);
            pid_t r = waitpid(pid, &status, WNOHANG);
            if (r == pid) break;
            if (r < 0 && errno != EINTR) {
                fprintf(stderr, "zinc-run: waitpid: %s\n", strerror(errno));
                close(pfd[0]);
                return 1;
            }
        }
        /* what is left, without waiting for holders of the pipe that outlive it */
        while (pass_stderr(pfd[0], line, sizeof line, &len, failed)) {}
        if (len) {
            line[len] = '\0';
            elastic_scan_line(line, failed);
        }
        close(pfd[0]);
    } else {
        while (waitpid(pid, &status, 0) < 0) {
            if (errno != EINTR) {
                fprintf(stderr, "zinc-run: waitpid: %s\n", strerror(errno));
                return 1;
            }
        }
    }
    g_child = 0;
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 1;
}

/* ------------------------------------------------------------ command --- */

/* The hosts as "h1:n1,h2:n2" (counts) or "h1,h2"; the caller frees it. */
static char *host_list(const run_hosts *hs, bool counts)
{
    size_t len = 1;
    for (int i = 0; i < hs->n; i++) len += strlen(hs->h[i].name) + 16;
    char *hl = xrealloc(NULL, len), *p = hl;
    *p = '\0';
    for (int i = 0; i < hs->n; i++) {
        p += sprintf(p, "%s%s", i ? "," : "", hs->h[i].name);
        if (counts) p += sprintf(p, ":%d", hs->h[i].n_use);
    }
    return hl;
}

/* The variables every rank gets, in command-line order, into items:
 * "KEY=VALUE" to set, "KEY" to pass on zinc-run's own value (the launcher
 * says how). Threads per rank unless the user chose them, MASTER_ADDR and
 * MASTER_PORT from their flags (which win over a .zinc_env line), the
 * variables forwarded by prefix, then the .zinc_env lines. */
static void env_items(const run_opts *o, const run_env *ef, int threads, run_vec *items)
{
    bool user_omp = getenv("OMP_NUM_THREADS") || env_find(ef, "OMP_NUM_THREADS") >= 0;
    bool user_zt = getenv("ZINC_THREADS") || env_find(ef, "ZINC_THREADS") >= 0;
    if (!user_omp) {
        vec_push_take(items, xprintf("OMP_NUM_THREADS=%d", threads));
        if (!user_zt) vec_push_take(items, xprintf("ZINC_THREADS=%d", threads));
    }
    if (o->master_addr) vec_push_take(items, xprintf("MASTER_ADDR=%s", o->master_addr));
    if (o->master_port) vec_push_take(items, xprintf("MASTER_PORT=%d", o->master_port));
    run_vec names = {0};
    env_forwarded_names(&names);
    for (int i = 0; i < names.n; i++) vec_push(items, names.v[i]);
    for (int i = 0; i < ef->keys.n; i++) {
        const char *k = ef->keys.v[i];
        if ((o->master_addr && !strcmp(k, "MASTER_ADDR")) ||
            (o->master_port && !strcmp(k, "MASTER_PORT")))
            continue;
        if (getenv(k)) { /* the environment wins: forward it by name, once */
            bool listed = false;
            for (int j = 0; j < names.n; j++) listed |= !strcmp(names.v[j], k);
            if (!listed) vec_push(items, k);
        } else {
            vec_push_take(items, xprintf("%s=%s", k, ef->vals.v[i]));
        }
    }
    vec_free(&names);
}

/* The launcher command for n ranks on hosts hs (none: this node) into cmd:
 * oversubscription, threads per rank, binding, forwarded variables, PROGRAM
 * ARGS. Returns 0, or 2 after printing the error. */
static int build_command(const run_opts *o, int argc, char **argv, const run_hosts *hs,
                         const run_env *ef, int n, run_vec *cmd)
{
    /* Ranks, oversubscription and the most ranks any node runs. */
    int total = 0, rc = 0;
    for (int i = 0; i < hs->n; i++) total += hs->h[i].n_use;
    bool oversub = false;
    int per_node = n;
    int cores = logical_cpus();
    if (hs->n) {
        if (n > total) {
            if (hs->n > 1)
                return fail("-n %d exceeds the %d slots of hostfile %s (%d hosts); lower -n or add "
                            "slots",
                            n, total, o->hostfile, hs->n);
            oversub = true; /* one node: run more ranks than slots */
        } else {
            per_node = 0;
            for (int i = 0, left = n; i < hs->n && left > 0; i++) {
                int here = hs->h[i].n_use < left ? hs->h[i].n_use : left;
                per_node = here > per_node ? here : per_node;
                left -= here;
            }
        }
    } else {
        oversub = n > physical_cores();
    }
    if (o->launcher == RUN_SLURM) {
        int sc, nodes;
        if (parse_int(getenv("SLURM_CPUS_ON_NODE"), 1, 1 << 20, &sc)) cores = sc;
        if (!hs->n && parse_int(getenv("SLURM_JOB_NUM_NODES"), 1, 1 << 20, &nodes))
            per_node = (n + nodes - 1) / nodes;
    }
    int threads = cores / (per_node > 0 ? per_node : 1);
    if (threads < 1) threads = 1;
    /* --bind_cores_to_rank: each rank gets its share of the physical cores
     * (mpirun and Hydra count those), as DeepSpeed's numactl binding does. */
    int bind_k = 0;
    if (o->bind_cores && o->launcher != RUN_SLURM) {
        int phys = physical_cores();
        if (per_node > phys)
            return fail("--bind_cores_to_rank: %d ranks on a node cannot each have a core of its "
                        "own on %d cores (zinc-run takes every node to have this node's); lower "
                        "the ranks or drop the flag",
                        per_node, phys);
        bind_k = phys / (per_node > 0 ? per_node : 1);
    }

    run_vec items = {0};
    env_items(o, ef, threads, &items);
    if (o->launcher == RUN_OPENMPI) {
        vec_push(cmd, "mpirun");
        vec_push(cmd, "-n");
        vec_push_take(cmd, xprintf("%d", n));
        if (bind_k) {
            vec_push(cmd, "--map-by");
            vec_push_take(cmd, xprintf("slot:PE=%d", bind_k));
            vec_push(cmd, "--bind-to");
            vec_push(cmd, "core");
        } else {
            vec_push(cmd, "--bind-to");
            vec_push(cmd, "none");
        }
        if (oversub) vec_push(cmd, "--oversubscribe");
        if (geteuid() == 0) vec_push(cmd, "--allow-run-as-root");
        vec_push(cmd, "--mca");
        vec_push(cmd, "btl_vader_single_copy_mechanism");
        vec_push(cmd, "none");
        if (hs->n) {
            vec_push(cmd, "--host");
            vec_push_take(cmd, host_list(hs, true));
        }
        for (int i = 0; i < items.n; i++) {
            vec_push(cmd, "-x");
            vec_push(cmd, items.v[i]);
        }
    } else if (o->launcher == RUN_MPICH) {
        /* Hydra binds nothing unless asked, oversubscribes without a flag
         * and passes the whole environment (-genvall, said here anyway);
         * what zinc-run sets goes in -genv NAME VALUE. */
        vec_push(cmd, "mpiexec.hydra");
        vec_push(cmd, "-n");
        vec_push_take(cmd, xprintf("%d", n));
        if (hs->n) {
            vec_push(cmd, "-hosts");
            vec_push_take(cmd, host_list(hs, true));
        }
        if (bind_k) {
            vec_push(cmd, "-bind-to");
            vec_push_take(cmd, xprintf("core:%d", bind_k));
        }
        vec_push(cmd, "-genvall");
        for (int i = 0; i < items.n; i++) {
            const char *eq = strchr(items.v[i], '=');
            if (!eq) continue; /* zinc-run's own value: in -genvall */
            vec_push(cmd, "-genv");
            vec_push_take(cmd, xprintf("%.*s", (int)(eq - items.v[i]), items.v[i]));
            vec_push(cmd, eq + 1);
        }
    } else {
        /* srun passes the whole environment (--export=ALL); what zinc-run sets
         * rides in the same flag, which splits on commas. */
        vec_push(cmd, "srun");
        vec_push(cmd, "-n");
        vec_push_take(cmd, xprintf("%d", n));
        vec_push_take(cmd, xprintf("--cpus-per-task=%d", threads));
        if (o->bind_cores) vec_push(cmd, "--cpu-bind=cores");
        if (hs->n) {
            char *nl = host_list(hs, false);
            vec_push_take(cmd, xprintf("--nodelist=%s", nl));
            free(nl);
        }
        if (o->comment) vec_push_take(cmd, xprintf("--comment=%s", o->comment));
        if (o->account) vec_push_take(cmd, xprintf("--account=%s", o->account));
        char *exp = xstrdup("--export=ALL");
        for (int i = 0; i < items.n; i++) {
            const char *eq = strchr(items.v[i], '=');
            if (!eq) continue; /* already in ALL */
            if (strchr(eq + 1, ',')) {
                free(exp);
                rc = fail(".zinc_env: %.*s's value holds a comma, which srun --export cannot "
                          "pass; set it in the environment instead",
                          (int)(eq - items.v[i]), items.v[i]);
                goto out;
            }
            char *t = xprintf("%s,%s", exp, items.v[i]);
            free(exp);
            exp = t;
        }
        vec_push_take(cmd, exp);
    }
    for (int i = o->prog; i < argc; i++) vec_push(cmd, argv[i]);
    rc = argv_check(cmd->v);
out:
    vec_free(&items);
    return rc;
}

/* --elastic, after a failed run: drops the hosts it lost and rebuilds the
 * command for the ranks the rest can hold (elastic.c). Returns 0 to relaunch,
 * else the status to give up with. */
static int elastic_next(const run_opts *o, int argc, char **argv, run_hosts *hs,
                        const run_env *ef, run_vec *failed, int *n, run_vec *cmd)
{
    if (!hs->n) return 0; /* one node: the same ranks again */
    int dropped = elastic_drop(hs, failed);
    vec_free(failed);
    if (!dropped) return 0;
    int left = 0;
    for (int i = 0; i < hs->n; i++) left += hs->h[i].n_use;
    if (!left) {
        fprintf(stderr, "zinc-run: --elastic: no hosts are left; giving up\n");
        return 1;
    }
    int want = elastic_ranks(argc, argv, o->prog, left < *n ? left : *n);
    if (want < 1) {
        fprintf(stderr, "zinc-run: --elastic: no rank count of at most %d fits the elasticity "
                        "section of %s; giving up\n", left < *n ? left : *n, argv[o->prog + 1]);
        return 2;
    }
    *n = want;
    fprintf(stderr, "zinc-run: --elastic: relaunching on %d rank%s over %d host%s\n", *n,
            *n == 1 ? "" : "s", hs->n, hs->n == 1 ? "" : "s");
    vec_free(cmd);
    return build_command(o, argc, argv, hs, ef, *n, cmd);
}

/* Ranks of the first run: -n, else --num_gpus without a hostfile, else the
 * hosts' selected slots (1 without a hostfile). -n and --num_gpus together
 * must agree: without a hostfile both are the ranks on this node; with one,
 * -n is the job's ranks and may not pass what --num_gpus leaves. Returns 0,
 * or 2 after printing the error. */
static int rank_count(const run_opts *o, const run_hosts *hs, int *n)
{
    int total = 0;
    for (int i = 0; i < hs->n; i++) total += hs->h[i].n_use;
    if (!hs->n) {
        if (o->n && o->num_gpus && o->n != o->num_gpus)
            return fail("-n %d and --num_gpus %d disagree: without a hostfile both are the ranks "
                        "on this node; give one",
                        o->n, o->num_gpus);
        *n = o->n ? o->n : o->num_gpus ? o->num_gpus : 1;
        return 0;
    }
    if (o->n && o->num_gpus && o->n > total)
        return fail("-n %d and --num_gpus %d disagree: hostfile %s holds %d rank%s at %d a host",
                    o->n, o->num_gpus, o->hostfile, total, total == 1 ? "" : "s", o->num_gpus);
    *n = o->n ? o->n : total;
    return 0;
}

int main(int argc, char **argv)
{
    run_opts o;
    int rc = args_parse(argc, argv, &o);
    if (rc >= 0) return rc;
#ifdef OPEN_MPI
    if (o.launcher == RUN_MPICH)
        fprintf(stderr, "zinc-run: warning: --launcher mpich: this zinc is built against Open MPI; "
                        "its programs started by MPICH's mpiexec.hydra each run as a job of one "
                        "rank (build zinc with MPICH's mpicc for this launcher)\n");
#endif

    run_hosts hs = {0};
    run_env ef = {0};
    run_vec cmd = {0};
    rc = 0;
    if (o.hostfile) {
        if ((rc = hostfile_read(o.hostfile, &hs))) goto done;
        if (o.include && (rc = hosts_select(&hs, o.include, true, o.hostfile))) goto done;
        if (o.exclude && (rc = hosts_select(&hs, o.exclude, false, o.hostfile))) goto done;
        if (o.num_nodes && (rc = hosts_keep_first(&hs, o.num_nodes, o.hostfile))) goto done;
        if (o.num_gpus) hosts_cap_slots(&hs, o.num_gpus);
    }
    if ((rc = env_files_read(&ef, o.allow_loader))) goto done;

    int n = 0;
    if ((rc = rank_count(&o, &hs, &n))) goto done;
    if (o.max_restarts > 0) setenv("ZINC_RESTART", "0", 1); /* forwarded by name; a restart sets it */
    if ((rc = build_command(&o, argc, argv, &hs, &ef, n, &cmd))) goto done;

    if (o.dry_run) {
        for (int i = 0; i < cmd.n; i++) {
            if (i) putchar(' ');
            shell_quote(stdout, cmd.v[i]);
        }
        putchar('\n');
        rc = fflush(stdout) == 0 ? 0 : 1;
        goto done;
    }
    char *found = find_in_path(cmd.v[0]);
    if (!found) {
        if (o.launcher == RUN_SLURM)
            fprintf(stderr, "zinc-run: srun not found on PATH; --launcher slurm needs Slurm "
                            "(or use --launcher openmpi)\n");
        else if (o.launcher == RUN_MPICH)
            fprintf(stderr, "zinc-run: mpiexec.hydra not found on PATH; --launcher mpich needs "
                            "MPICH (or use --launcher openmpi)\n");
        else
            fprintf(stderr, "zinc-run: mpirun not found on PATH; install openmpi-bin "
                            "(or run `make deps`)\n");
        rc = 127;
        goto done;
    }
    free(found);
    run_vec failed = {0};
    for (int restart = 0;; restart++) {
        rc = run_child(cmd.v, o.elastic ? &failed : NULL);
        /* Not restarted: success, bad input (it would fail again), a stop the
         * user or scheduler asked for, or no restarts left. */
        if (rc == 0 || rc == 2 || g_stops || restart >= o.max_restarts) {
            if (rc != 0 && restart > 0 && !g_stops && rc != 2)
                fprintf(stderr, "zinc-run: job failed (exit %d) after %d restart%s; giving up\n",
                        rc, restart, restart == 1 ? "" : "s");
            break;
        }
        fprintf(stderr, "zinc-run: job failed (exit %d); restart %d of %d (ZINC_RESTART=%d: "
                        "zinc-train resumes from the latest checkpoint of train.save_dir)\n",
                rc, restart + 1, o.max_restarts, restart + 1);
        char num[16];
        snprintf(num, sizeof num, "%d", restart + 1);
        setenv("ZINC_RESTART", num, 1);
        if (o.elastic && (rc = elastic_next(&o, argc, argv, &hs, &ef, &failed, &n, &cmd))) break;
    }
    vec_free(&failed);
done:
    hosts_free(&hs);
    env_free(&ef);
    vec_free(&cmd);
    return rc;
}
