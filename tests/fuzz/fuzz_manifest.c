/* fuzz_manifest.c - fuzz target: the checkpoint manifest parser
 * (ckpt_manifest_parse, checkpoint/ckpt_int.h), which every load, `zinc-ckpt
 * info` and `zinc-ckpt verify` runs on dir/manifest.json before any rank file
 * is touched.
 *
 * Input: the manifest text, passed as the reader passes it (the bytes with a
 * NUL after them). No file is written: the parser takes text.
 *
 * Properties checked on a manifest that parses (what the reader relies on
 * without checking again): every chunk names a listed file and lies within
 * its bytes, holds n * dtype-size bytes with one crc per 4 KiB block, and a
 * tensor's chunks, sorted by first element, tile [0, numel) exactly; the
 * chunk count adds up; meta is JSON. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

#include "../../checkpoint/ckpt_int.h"
#include "fuzz.h"
#include "zinc/log.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    zinc_log_set_level(ZINC_LOG_ERROR);
    return 0;
}

static void check_manifest(const ckpt_manifest *m)
{
    int n_chunks = 0;
    fuzz_require(m->n_files >= 0 && m->n_tensors >= 0, "negative counts");
    for (int i = 0; i < m->n_tensors; i++) {
        const ckpt_mtensor *t = &m->tensors[i];
        size_t esz = zinc_dtype_size(t->t.dtype);
        int64_t next = 0;
        fuzz_require(t->numel >= 0 && t->n_chunks >= 0, "tensor %d: numel %lld", i,
                     (long long)t->numel);
        for (int j = 0; j < t->n_chunks; j++) {
            const ckpt_chunk *c = &t->chunks[j];
            fuzz_require(c->file >= 0 && c->file < m->n_files, "tensor %s chunk %d: file %d",
                         t->t.name, j, c->file);
            const ckpt_file *f = &m->files[c->file];
            fuzz_require(c->off <= f->bytes && c->bytes <= f->bytes - c->off,
                         "tensor %s chunk %d outside %s", t->t.name, j, f->name);
            fuzz_require(c->eo == next && c->n > 0 && c->n <= t->numel - c->eo,
                         "tensor %s chunk %d: elements [%lld, +%lld) after %lld", t->t.name, j,
                         (long long)c->eo, (long long)c->n, (long long)next);
            fuzz_require(c->bytes == (uint64_t)c->n * esz, "tensor %s chunk %d: bytes",
                         t->t.name, j);
            fuzz_require(c->n_crcs == (c->bytes + CKPT_BLOCK - 1) / CKPT_BLOCK,
                         "tensor %s chunk %d: %zu crcs", t->t.name, j, c->n_crcs);
            next += c->n;
        }
        fuzz_require(next == t->numel, "tensor %s: chunks cover %lld of %lld", t->t.name,
                     (long long)next, (long long)t->numel);
        n_chunks += t->n_chunks;
    }
    fuzz_require(n_chunks == m->n_chunks, "n_chunks %d, counted %d", m->n_chunks, n_chunks);
    fuzz_require(m->meta != NULL, "no meta");
    json_t *j = json_loads(m->meta, JSON_DECODE_ANY, NULL);
    fuzz_require(j != NULL, "meta is not JSON: %s", m->meta);
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_strndup(data, size); /* read_small_file's buffer: NUL after the bytes */
    ckpt_manifest m;
    zinc_status st = ckpt_manifest_parse("/ckpt/step-1", text, size, &m);
    if (st == ZINC_OK) {
        check_manifest(&m);
        ckpt_manifest_free(&m);
    } else {
        fuzz_require(m.files == NULL && m.tensors == NULL && m.meta == NULL,
                     "failed parse left memory in the manifest");
        fuzz_require(zinc_last_error()[0] != '\0', "failed parse without a detail");
    }
    free(text);
    return 0;
}
