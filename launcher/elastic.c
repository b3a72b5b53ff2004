/* elastic.c - zinc-run --elastic: which hosts a failed run lost, and how many
 * ranks the next run gets on the hosts that are left.
 *
 * The launcher names the host whose ranks died; zinc-run reads the
 * launcher's stderr (passing it through unchanged) and looks for
 *   Open MPI: "... process rank 2 with PID 123 on node HOST exited on signal 9"
 *             "Remote daemon: [[...],1] on node HOST"   (a lost node daemon)
 *   Slurm:    "srun: error: HOST: task 1: Killed"        (and "tasks 0-3: ...")
 * A host so named is dropped from the next run's host list. The next run
 * gets as many ranks as are left, at most the first run's; when PROGRAM is
 * zinc-train with an elasticity section, the largest rank count at most that
 * which its global batch can run (zinc_elastic_ranks), so that the batch and
 * the loss curve carry on unchanged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launcher_int.h"
#include "zinc/config.h"
#include "zinc/log.h"
#include "zinc/status.h"

/* Appends the host name at s (up to a space, newline or end) once. */
static void note_host(const char *s, size_t len, run_vec *failed)
{
    while (len && (s[len - 1] == '.' || s[len - 1] == ':' || s[len - 1] == ',')) len--;
    if (!len || len > 253) return;
    char *h = xrealloc(NULL, len + 1);
    memcpy(h, s, len);
    h[len] = '\0';
    for (int i = 0; i < failed->n; i++)
        if (!strcmp(failed->v[i], h)) {
            free(h);
            return;
        }
    vec_push_take(failed, h);
}

static size_t word_len(const char *s) { return strcspn(s, " \t\r\n"); }

void elastic_scan_line(const char *line, run_vec *failed)
{
    const char *p;
    if ((p = strstr(line, " on node ")) &&
        (strstr(p, " exited on signal") || strstr(line, "Remote daemon"))) {
        p += strlen(" on node ");
        note_host(p, word_len(p), failed);
    } else if ((p = strstr(line, "srun: error: ")) && strstr(line, ": task")) {
        p += strlen("srun: error: ");
        note_host(p, strcspn(p, ": \t\r\n"), failed);
    }
}

/* Whether hostfile name h and launcher-reported name r are the same host
 * (the launcher may print a short name for a full one, or the reverse). */
static bool same_host(const char *h, const char *r)
{
    if (!strcmp(h, r)) return true;
    size_t hn = strcspn(h, "."), rn = strcspn(r, ".");
    return hn == rn && !strncmp(h, r, hn) && (!h[hn] || !r[rn]);
}

int elastic_drop(run_hosts *hs, const run_vec *failed)
{
    int dropped = 0;
    for (int i = 0; i < hs->n;) {
        bool gone = false;
        for (int k = 0; k < failed->n && !gone; k++) gone = same_host(hs->h[i].name, failed->v[k]);
        if (!gone) {
            i++;
            continue;
        }
        fprintf(stderr, "zinc-run: --elastic: dropping host %s (its ranks died)\n", hs->h[i].name);
        free(hs->h[i].name);
        free(hs->h[i].use);
        memmove(&hs->h[i], &hs->h[i + 1], sizeof *hs->h * (size_t)(hs->n - i - 1));
        hs->n--;
        dropped++;
    }
    return dropped;
}

int elastic_ranks(int argc, char **argv, int prog, int available)
{
    const char *base = strrchr(argv[prog], '/');
    base = base ? base + 1 : argv[prog];
    if (strcmp(base, "zinc-train") || prog + 1 >= argc || argv[prog + 1][0] == '-')
        return available;
    run_vec ovr = {0};
    for (int i = prog + 2; i < argc; i++) {
        if (!strcmp(argv[i], "--set") && i + 1 < argc) vec_push(&ovr, argv[++i]);
        else if (!strncmp(argv[i], "--set=", 6)) vec_push(&ovr, argv[i] + 6);
    }
    zinc_config c;
    zinc_log_level lvl = zinc_log_get_level();
    zinc_log_set_level(ZINC_LOG_ERROR); /* the ranks print the config's warnings */
    zinc_status st = zinc_config_load(argv[prog + 1], (const char *const *)ovr.v, ovr.n, &c);
    zinc_log_set_level(lvl);
    vec_free(&ovr);
    if (st != ZINC_OK) return available; /* the ranks will say what is wrong with it */
    int n = zinc_elastic_ranks(&c, available);
    if (c.elasticity.enabled && n > 0 && n < available)
        fprintf(stderr, "zinc-run: --elastic: %d ranks, the most of the %d left that the "
                        "elasticity section's train batch of %lld can run\n",
                n, available, (long long)zinc_elastic_batch(&c));
    return n;
}
