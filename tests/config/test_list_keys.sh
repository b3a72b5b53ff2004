#!/usr/bin/env bash
# zinc-train --list-keys, the key reference generated from the config table
# (engine/config.c), against three things it must agree with:
#   - the table itself: one row per descriptor row of its keydesc tables,
#     counted in the source (a walker that skipped a kind of row, a section
#     or a hook would list fewer), and known keys of every section;
#   - the parser: every honoured key given its listed default is accepted by
#     zinc-train --check and recorded with an effect (never "no effect");
#     every key listed without effect, given a value, is recorded as
#     "no effect" with the listed reason; every "only V" key accepts V;
#   - README.md: its config reference is the program's output
#     (scripts/config-reference.sh --check), and a tampered copy is caught.
# (tests/config/test_config.c checks that every listed path is one the
# parser knows, and that unknown paths fail that check.)
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
T="$BUILD/zinc-train"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/zinc-test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -x "$T" ] || fail "$T not built (make BUILD=$BUILD $T)"

# 1. alone, without a config: the table on stdout, nothing on stderr, exit 0
"$T" --list-keys > "$TMP/keys.md" 2> "$TMP/keys.err" || fail "zinc-train --list-keys exited $?"
[ -s "$TMP/keys.err" ] && { cat "$TMP/keys.err" >&2; fail "--list-keys wrote to stderr"; }
head -2 "$TMP/keys.md" | tr '\n' '#' | grep -qxF '| key | type | default | accepts | effect in zinc | from |#|---|---|---|---|---|---|#' \
    || fail "--list-keys: no markdown header: $(head -2 "$TMP/keys.md")"
"$T" --help | grep -q -- '--list-keys' || fail "usage does not mention --list-keys"
echo "ok: --list-keys without a config"

# rows: path, type, default, accepts, effect, from (tab-separated, backticks kept on the default)
awk -F' [|] ' '/^\| `/ {
    p = $1; sub(/^\| `/, "", p); sub(/`$/, "", p); f = $6; sub(/ \|$/, "", f)
    printf "%s\t%s\t%s\t%s\t%s\t%s\n", p, $2, $3, $4, $5, f }' "$TMP/keys.md" > "$TMP/rows"
n_rows=$(wc -l < "$TMP/rows")
[ "$(grep -c '^| `' "$TMP/keys.md")" -eq "$n_rows" ] || fail "rows that do not split into 6 cells"
awk -F'\t' 'NF != 6 { print; bad = 1 } END { exit bad }' "$TMP/rows" || fail "rows without 6 cells"
dups=$(cut -f1 "$TMP/rows" | sort | uniq -d)
[ -z "$dups" ] || fail "keys listed twice: $dups"

# 2. every descriptor row of the source's keydesc tables (each table is
# reached once from config_root_keys), against the rows listed
n_src=$(awk '
    /^(static )?const keydesc [a-z_0-9]+\[\] = \{/ { intab = 1; next }
    intab && /^ *END\};/ { intab = 0; next }
    intab && /^ *([A-Z][A-Z0-9_]*\(|\{\.name = )/ { n++ }
    END { print n + 0 }' engine/config.c)
[ "$n_src" -ge 200 ] || fail "counted only $n_src descriptor rows in engine/config.c (has the table's layout changed?)"
[ "$n_rows" -eq "$n_src" ] || fail "--list-keys lists $n_rows keys, engine/config.c's tables have $n_src rows"
echo "ok: $n_rows keys listed, $n_src rows in the table"

row() { awk -F'\t' -v p="$1" '$1 == p' "$TMP/rows"; }
has() { # path fragment: the key is listed and its row contains fragment
    local r; r=$(row "$1")
    [ -n "$r" ] || fail "not listed: $1"
    [[ "$r" == *"$2"* ]] || fail "$1: row lacks '$2': $r"
}
has train_batch_size $'\tinteger\tnone\t'
has zero_optimization.stage $'\t`0`\tan integer in 0..3\thonoured\tDeepSpeed'
has zero_optimization.offload_optimizer.device '"none", "cpu", "nvme"'
has zero_optimization.stage3_prefetch_bucket_size 'honoured at ZeRO stage 3'
has zero_optimization.round_robin_gradients 'no effect: zinc reduces gradients per layer unit'
has zero_optimization.zero_hpz_partition_size 'only `1`: ZeRO++'
has zero_optimization.cpu_offload 'deprecated: true means `zero_optimization.offload_optimizer.device` "cpu"'
has zero_optimization.prefetch_bucket_size 'alias of `zero_optimization.stage3_prefetch_bucket_size`'
has scheduler.params.warmup_num_steps 'honoured by WarmupLR, WarmupDecayLR, WarmupCosineLR'
has optimizer.params.betas '`[0.9, 0.999]`'
has optimizer.params.max_grad_norm 'error: not supported in optimizer params'
has model.rope_scaling.factor $'\tzinc'
has model.rope_scaling.factor 'honoured for model.type "llama"'
has train.max_steps $'\t`100`\t'
has data.chat_template $'\tzinc'
has elasticity.micro_batch_sizes $'\t[integer]\t`[2, 4, 6]`\t'
has bfloat16 'deprecated alias of `bf16`'
has pipeline.stages $'\tDeepSpeed'
has pipeline.schedule $'\tzinc'
has tensor_parallel.autotp_size $'\tDeepSpeed'
has aio.thread_count 'deprecated alias of `aio.intra_op_parallelism`'
has amp 'error unless empty or "enabled": false'
has activation_checkpointing.partition_activations $'\thonoured\tDeepSpeed'
has activation_checkpointing.profile 'no effect: zinc does not time checkpointed layers'
has checkpoint.tag_validation 'no effect'
has data_types.grad_accum_dtype 'only the values listed'
has comm_timeout_s $'\t`300`\t'
echo "ok: known keys of every section"

# 3. the parser agrees with the listing, through zinc-train --check
cat > "$TMP/base.json" <<'JSON'
{"train_batch_size": 8, "optimizer": {"type": "Adam"}, "data": {"train": ["x.bin"]}}
JSON
check_sets() { # tag file-of-"path<TAB>value": zinc-train --check with each --set, 60 at a time; effects to $TMP/tag.eff
    local tag=$1 list=$2; shift 2
    : > "$TMP/$tag.eff"
    local args=() n=0 p v
    flush() {
        [ $n -gt 0 ] || return 0
        "$T" "$TMP/base.json" "$@" "${args[@]}" --check > /dev/null 2> "$TMP/$tag.err" \
            || { cat "$TMP/$tag.err" >&2; fail "$tag: zinc-train --check refused ${args[*]}"; }
        cat "$TMP/$tag.err" >> "$TMP/$tag.eff"
        args=(); n=0
    }
    while IFS=$'\t' read -r p v; do
        args+=(--set "$p=$v"); n=$((n + 1))
        [ $n -lt 60 ] || flush "$@"
    done < "$list"
    flush "$@"
}
effect_of() { grep -F "  $2 = " "$TMP/$1.eff" | head -1; } # tag path

# honoured keys at their listed defaults: accepted, and recorded with an effect
# other than "no effect (...)" (the start-up list of keys without effect);
# scheduler.params keys with each scheduler type that takes them
n_def=0
for sched in WarmupLR WarmupDecayLR WarmupCosineLR; do
    awk -F'\t' -v s="$sched" -v first=$([ $sched = WarmupLR ] && echo 1 || echo 0) '
        $5 ~ /^honoured/ && $3 ~ /^`/ {
            if ($1 ~ /^scheduler\.params\./ ? index($5, s) : first) {
                v = $3; gsub(/^`|`$/, "", v); printf "%s\t%s\n", $1, v } }' "$TMP/rows" > "$TMP/def.$sched"
    extra=(--set scheduler.type=$sched)
    [ $sched = WarmupLR ] || extra+=(--set scheduler.params.total_num_steps=2000)
    check_sets "def.$sched" "$TMP/def.$sched" "${extra[@]}"
    while IFS=$'\t' read -r p v; do
        e=$(effect_of "def.$sched" "$p")
        [ -n "$e" ] || fail "$p = $v: --check records no effect for it"
        [[ "$e" != *": no effect ("* && "$e" != *"ignored"* && "$e" != *"the only value zinc supports"* ]] \
            || fail "listed as honoured, but --check says: $e"
        n_def=$((n_def + 1))
    done < "$TMP/def.$sched"
done
[ "$n_def" -ge 100 ] || fail "only $n_def honoured keys with a default checked"
echo "ok: $n_def honoured keys accepted at their listed defaults"

# keys listed as "no effect: WHY" (bools and any-value keys): --check gives
# the same reason
awk -F'\t' '$5 ~ /^no effect: / && ($2 == "bool" || $2 == "any") {
    printf "%s\t%s\n", $1, $2 == "bool" ? "true" : "{}" }' "$TMP/rows" > "$TMP/noeff"
check_sets noeff "$TMP/noeff"
n_noeff=0
while IFS=$'\t' read -r p v; do
    why=$(row "$p" | cut -f5); why=${why#no effect: }
    e=$(effect_of noeff "$p")
    [[ "$e" == *": no effect ($why)" ]] || fail "$p listed as 'no effect: $why', --check says: ${e:-nothing}"
    n_noeff=$((n_noeff + 1))
done < "$TMP/noeff"
[ "$n_noeff" -ge 40 ] || fail "only $n_noeff keys without effect checked"
echo "ok: $n_noeff keys without effect give the listed reason"

# keys listed as "only V": V is accepted, as the only value zinc supports
awk -F'\t' '$5 ~ /^only `/ { v = $5; sub(/^only `/, "", v); sub(/`.*/, "", v); printf "%s\t%s\n", $1, v }' \
    "$TMP/rows" > "$TMP/only"
check_sets only "$TMP/only"
n_only=0
while IFS=$'\t' read -r p v; do
    e=$(effect_of only "$p")
    [[ "$e" == *": applied (the only value zinc supports)" ]] || fail "$p = $v: --check says: ${e:-nothing}"
    n_only=$((n_only + 1))
done < "$TMP/only"
[ "$n_only" -ge 15 ] || fail "only $n_only 'only V' keys checked"
echo "ok: $n_only keys take the one value listed"

# 4. README.md's reference is the program's output; a stale copy is caught
scripts/config-reference.sh --check "$BUILD" > "$TMP/readme.diff" 2>&1 \
    || { head -40 "$TMP/readme.diff" >&2; fail "README.md's config reference is stale"; }
sed '/^| `zero_optimization.stage` /s/honoured/no effect/' README.md > "$TMP/README.md"
cmp -s README.md "$TMP/README.md" && fail "README.md has no zero_optimization.stage row to tamper with"
README="$TMP/README.md" scripts/config-reference.sh --check "$BUILD" > "$TMP/stale.out" 2>&1 \
    && fail "config-reference.sh --check accepted a tampered README"
grep -q "scripts/config-reference.sh $BUILD" "$TMP/stale.out" || fail "--check does not say how to regenerate"
README="$TMP/README.md" scripts/config-reference.sh "$BUILD" > /dev/null || fail "config-reference.sh could not rewrite"
cmp -s README.md "$TMP/README.md" || fail "regenerating the tampered copy does not give README.md back"
echo "ok: README.md's config reference matches zinc-train --list-keys"
echo "PASS"
