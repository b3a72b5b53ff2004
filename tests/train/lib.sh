# Shared helpers for the training shell tests (sourced).
BUILD=${BUILD:-build}
MPIRUN=./scripts/mpirun.sh
TMP=$(mktemp -d "${TMPDIR:-/tmp}/zinc-test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# A token shard made from this repository's C sources (deterministic).
make_shard() {
    [ -f "$TMP/src.bin" ] || "$BUILD/zinc-data" --ext .c,.h -o "$TMP/src.bin" core kernels engine models include >/dev/null \
        || fail "zinc-data could not build the test shard"
    echo "$TMP/src.bin"
}

# Tiny GPT config on the shard; extra --set flags come from the caller.
tiny_config() {
    local shard=$1
    cat > "$TMP/tiny.json" <<JSON
{
  "train_batch_size": 24,
  "gradient_clipping": 1.0,
  "steps_per_print": 1000,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.1}},
  "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 5, "warmup_max_lr": 3e-3, "warmup_type": "linear"}},
  "model": {"type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 256, "block_size": 16},
  "data": {"train": ["$shard"]},
  "train": {"max_steps": 10},
  "device": "cpu"
}
JSON
    echo "$TMP/tiny.json"
}

# losses FILE: the loss column of a metrics.jsonl, one per line.
losses() { sed -n 's/.*"loss": \([^,]*\),.*/\1/p' "$1"; }

# max_rel_diff A B: largest |a-b|/max(|a|,1e-12) over paired loss lines.
max_rel_diff() {
    paste <(losses "$1") <(losses "$2") | awk '
        { n++; d = $1 - $2; if (d < 0) d = -d; a = $1 < 0 ? -$1 : $1; if (a < 1e-12) a = 1e-12;
          r = d / a; if (r > m) m = r }
        END { if (n == 0) { print "nan"; exit } printf "%.3g\n", m }'
}

# run NAME RANKS EXTRA...: zinc-train on $cfg with metrics in $TMP/NAME.jsonl, log in $TMP/NAME.log.
run() {
    local name=$1 n=$2; shift 2
    $MPIRUN "$n" "$BUILD/zinc-train" "$cfg" --set train.metrics_file="$TMP/$name.jsonl" "$@" \
        > "$TMP/$name.log" 2>&1 || { cat "$TMP/$name.log" >&2; fail "run $name failed"; }
}

# --- comparisons of runs made with run (the parallel layout tests) ---

# check_close NAME REF TOL: NAME's losses within TOL (relative) of REF's, step for step.
check_close() {
    local d; d=$(max_rel_diff "$TMP/$2.jsonl" "$TMP/$1.jsonl")
    [ "$(losses "$TMP/$1.jsonl" | wc -l)" -eq "$(losses "$TMP/$2.jsonl" | wc -l)" ] || fail "$1: step count differs from $2"
    awk -v d="$d" -v t="$3" 'BEGIN { exit !(d != "nan" && d <= t) }' || fail "$1 differs from $2: $d"
    echo "$1: max rel diff $d"
}
# same REF NAME: NAME's losses bitwise equal to REF's.
same() { cmp -s <(losses "$TMP/$1.jsonl") <(losses "$TMP/$2.jsonl") || fail "$2 differs from $1"; echo "$2: bitwise equal to $1"; }
# field NAME KEY: the last value of a number KEY in NAME's metrics.
field() { sed -n "s/.*\"$2\": \([0-9.e+-]*\).*/\1/p" "$TMP/$1.jsonl" | tail -1; }
# close_tail FILE-A FILE-B LABEL: two loss columns within 1e-5 (relative), line for line.
close_tail() {
    local d
    d=$(paste "$1" "$2" | awk '{ n++; d = $1 - $2; if (d < 0) d = -d; a = $1 < 0 ? -$1 : $1; r = d / a; if (r > m) m = r }
                               END { if (n == 0) print "nan"; else printf "%.3g\n", m }')
    awk -v d="$d" 'BEGIN { exit !(d != "nan" && d <= 1e-5) }' || fail "$3: differs ($d)"
    echo "$3: max rel diff $d"
}
# bad TEXT RANKS SETS...: zinc-train on $cfg exits 2 with a line containing TEXT.
bad() {
    local want=$1 n=$2; shift 2
    local out rc
    out=$($MPIRUN "$n" "$BUILD/zinc-train" "$cfg" --set train.max_steps=2 "$@" 2>&1); rc=$?
    [ $rc -eq 2 ] || { echo "$out"; fail "$* on $n ranks: exit $rc, not 2"; }
    echo "$out" | grep -q "$want" || { echo "$out"; fail "$*: no line saying '$want'"; }
    echo "refused ($n ranks, $*): $(echo "$out" | grep -m1 "$want")"
}
