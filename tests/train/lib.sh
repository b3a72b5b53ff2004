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
