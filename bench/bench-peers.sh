#!/usr/bin/env bash
# zinc against PyTorch: the same GPT-2 trained in the same run by both, zinc's
# global tokens/s as a ratio of PyTorch's, per process layout.
#   model: GPT-2 L=6, C=384, 6 heads, vocab 50304, T=64, micro-batch 4 per rank,
#          fp32, tied LM head, AdamW lr 3e-4 wd 0, gradient clipping 1.0
#   layout 1: 1 process x 2 threads: zinc 1 rank (ZeRO 0) vs PyTorch, one process
#   layout 2: 2 processes x 1 thread: zinc 2 ranks, ZeRO 0/1/2/3 vs PyTorch DDP (gloo)
# tokens/s: median over the steps after the warm-up; data: zinc-data's byte
# tokens of this repository's sources, one shard read by both (bench/peers/train_gpt2.py
# is the PyTorch side). Never needed to build or test zinc.
# Usage: bench/bench-peers.sh [steps=40]
# Env:  BUILD=build          zinc build directory (zinc-run, zinc-train, zinc-data)
#       BENCH_STEPS=40       steps per run (the argument wins)
#       BENCH_WARMUP=5       steps left out of the median
#       BENCH_ROUNDS=1       runs per engine and layout, zinc and PyTorch alternating;
#                            the table shows the median of the runs' medians
#       BENCH_STAGES="0 1 2 3"  ZeRO stages for the 2-process layout
#       BENCH_LAYOUTS="1 2"  which layouts to run
#       BENCH_TORCH_ADAMW=foreach  torch.optim.AdamW implementation: foreach, fused, for-loop
#       BENCH_VENV=bench/peers/.venv  PyTorch's virtual environment, made on first use
#                            from bench/peers/requirements.txt (2.4 GB download)
#       PYTHON=python3       interpreter the venv is made from
#       BENCH_KEEP=1         keep the temp dir (configs, logs, per-step metrics) and say where
set -eu
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
steps=${1:-${BENCH_STEPS:-40}}
warmup=${BENCH_WARMUP:-5}
rounds=${BENCH_ROUNDS:-1}
stages=${BENCH_STAGES:-0 1 2 3}
layouts=${BENCH_LAYOUTS:-1 2}
adamw=${BENCH_TORCH_ADAMW:-foreach}
venv=${BENCH_VENV:-bench/peers/.venv}
python=${PYTHON:-python3}
req=bench/peers/requirements.txt

die() { echo "bench-peers: $*" >&2; exit 1; }
case $steps in '' | *[!0-9]*) die "steps must be a number, got '$steps'" ;; esac
case $warmup in '' | *[!0-9]*) die "BENCH_WARMUP must be a number, got '$warmup'" ;; esac
case $rounds in '' | *[!0-9]* | 0) die "BENCH_ROUNDS must be a number >= 1, got '$rounds'" ;; esac
[ "$steps" -gt "$warmup" ] || die "steps ($steps) must exceed the warm-up ($warmup)"
for l in $layouts; do case $l in 1 | 2) ;; *) die "BENCH_LAYOUTS: unknown layout '$l' (1 or 2)" ;; esac; done
for s in $stages; do case $s in [0-3]) ;; *) die "BENCH_STAGES: ZeRO stage '$s' is not 0-3" ;; esac; done
case $adamw in foreach | fused | for-loop) ;; *) die "BENCH_TORCH_ADAMW: '$adamw' is not foreach, fused or for-loop" ;; esac
for b in zinc-run zinc-train zinc-data; do
    [ -x "$BUILD/$b" ] || die "$BUILD/$b missing (run: make BUILD=$BUILD all)"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/zinc-bench-peers.XXXXXX")
bg_pids=""
cleanup() {
    for p in $bg_pids; do kill "$p" 2>/dev/null || true; done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "bench-peers: kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- PyTorch venv
# Made on first use; remade when the pins in requirements.txt changed (a copy
# is kept in the venv; comments do not count). Debian's python3 needs
# python3-venv for `-m venv` (ensurepip).
pins() { grep -v '^[[:space:]]*\(#\|$\)' "$1" 2>/dev/null; }
ensure_venv() {
    if [ -x "$venv/bin/python" ] && [ "$(pins "$req")" = "$(pins "$venv/zinc-requirements.txt")" ] &&
        "$venv/bin/python" -c 'import torch, numpy' 2>/dev/null; then
        return 0
    fi
    command -v "$python" >/dev/null || die "$python not found (install python3, or set PYTHON)"
    if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
        command -v apt-get >/dev/null || die "$python cannot make a venv (no ensurepip) and there is no apt-get to install python3-venv"
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo=sudo
        echo "bench-peers: installing python3-venv" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv >&2 ||
            die "apt-get install python3-venv failed"
    fi
    echo "bench-peers: making $venv with PyTorch from $req (first use: 2.4 GB download, 4.1 GB on disk)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv" || die "$python -m venv $venv failed"
    local t0=$SECONDS
    "$venv/bin/python" -m pip install -q --no-cache-dir --no-deps -r "$req" >&2 ||
        { rm -rf "$venv"; die "pip install -r $req failed (PyPI reachable? 4.1 GB of disk free?)"; }
    "$venv/bin/python" -c 'import torch, numpy' ||
        { rm -rf "$venv"; die "the new venv cannot import torch (see above)"; }
    cp "$req" "$venv/zinc-requirements.txt"
    echo "bench-peers: venv ready in $((SECONDS - t0)) s, $(du -sh "$venv" | cut -f1)" >&2
}
ensure_venv
py=$venv/bin/python

# ---------------------------------------------------------------- data, config
"$BUILD/zinc-data" --ext .c,.h,.md -o "$tmp/corpus.bin" core kernels engine models include tools \
    > "$tmp/data.log" 2>&1 || { cat "$tmp/data.log" >&2; die "zinc-data failed"; }

# zinc_config THREADS STAGE METRICS
zinc_config() {
    cat <<JSON
{
  "train_micro_batch_size_per_gpu": 4,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "weight_decay": 0.0}},
  "gradient_clipping": 1.0,
  "zero_optimization": {"stage": $2},
  "steps_per_print": 10,
  "model": {"type": "gpt2", "n_layer": 6, "n_embd": 384, "n_head": 6, "vocab_size": 50304, "block_size": 64},
  "data": {"train": ["$tmp/corpus.bin"]},
  "train": {"max_steps": $steps, "metrics_file": "$3", "threads": $1},
  "device": "cpu"
}
JSON
}

# summary METRICS -> "median_tokens_per_s first_loss last_loss" (JSON lines with
# tokens_per_s and loss, one per step, as both trainers write them)
summary() {
    "$py" - "$1" "$warmup" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
w = int(sys.argv[2])
if len(rows) <= w:
    sys.exit(f"{sys.argv[1]}: {len(rows)} steps logged, need more than the warm-up {w}")
print("%.1f %.4f %.4f" % (statistics.median(r["tokens_per_s"] for r in rows[w:]),
                          rows[0]["loss"], rows[-1]["loss"]))
PY
}

# median of the numbers on stdin (the mean of the middle two for an even count)
median() { sort -g | awk '{a[NR] = $1} END {if (NR) print (a[int((NR + 1) / 2)] + a[int(NR / 2) + 1]) / 2}'; }

# run_zinc TAG RANKS THREADS STAGE ROUND -> appends "TAG tok l0 l1" to $tmp/results
run_zinc() {
    local tag=$1 n=$2 th=$3 stage=$4 log=$tmp/$1.$5.log m=$tmp/$1.$5.jsonl
    zinc_config "$th" "$stage" "$m" > "$tmp/$tag.json"
    OMP_NUM_THREADS=$th "$BUILD/zinc-run" -n "$n" "$BUILD/zinc-train" "$tmp/$tag.json" > "$log" 2>&1 ||
        { tail -n 30 "$log" >&2; die "zinc ($tag) failed; log above"; }
    [ -f "$tmp/banner.$tag" ] || grep -m1 'params |' "$log" | sed 's/.*info: //' > "$tmp/banner.$tag"
    if [ "$n" -eq 1 ] && [ ! -f "$tmp/zinc_params" ]; then # fp32 parameter bytes of the one rank
        sed -n '1s/.*"mem": {"params": \([0-9]*\),.*/\1/p' "$m" > "$tmp/zinc_params"
    fi
    local sm
    sm=$(summary "$m") || die "zinc ($tag): bad metrics file $m"
    echo "$tag $sm" >> "$tmp/results"
}

# run_torch TAG PROCS THREADS ROUND -> appends "TAG tok l0 l1" to $tmp/results
run_torch() {
    local tag=$1 n=$2 th=$3 m=$tmp/$1.$4.jsonl port r pids="" rc=0
    local args=(bench/peers/train_gpt2.py --data "$tmp/corpus.bin" --metrics "$m" --steps "$steps"
        --threads "$th" --adamw "$adamw")
    if [ "$n" -eq 1 ]; then
        OMP_NUM_THREADS=$th MKL_NUM_THREADS=$th "$py" "${args[@]}" > "$tmp/$tag.$4.log" 2>&1 ||
            { tail -n 30 "$tmp/$tag.$4.log" >&2; die "PyTorch ($tag) failed; log above"; }
    else
        port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        for ((r = 0; r < n; r++)); do
            MASTER_ADDR=127.0.0.1 MASTER_PORT=$port WORLD_SIZE=$n RANK=$r LOCAL_RANK=$r \
                OMP_NUM_THREADS=$th MKL_NUM_THREADS=$th "$py" "${args[@]}" > "$tmp/$tag.$4.log.$r" 2>&1 &
            pids="$pids $!"
        done
        bg_pids=$pids
        # the first rank to fail takes the others down (they would wait in a collective)
        for ((r = 0; r < n; r++)); do
            if ! wait -n; then rc=1; for p in $pids; do kill "$p" 2>/dev/null || true; done; break; fi
        done
        wait 2>/dev/null || true
        bg_pids=""
        if [ $rc -ne 0 ]; then
            for ((r = 0; r < n; r++)); do echo "--- rank $r" >&2; tail -n 20 "$tmp/$tag.$4.log.$r" >&2; done
            die "PyTorch DDP ($tag) failed; logs above"
        fi
        cp "$tmp/$tag.$4.log.0" "$tmp/$tag.$4.log"
    fi
    [ -f "$tmp/banner.$tag" ] || head -n 1 "$tmp/$tag.$4.log" > "$tmp/banner.$tag"
    local sm
    sm=$(summary "$m") || die "PyTorch ($tag): bad metrics file $m"
    echo "$tag $sm" >> "$tmp/results"
}

# ---------------------------------------------------------------- runs
: > "$tmp/results"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((round = 1; round <= rounds; round++)); do
    for layout in $layouts; do
        case $layout in
        1)
            echo "bench-peers: round $round/$rounds, 1 process x 2 threads" >&2
            run_zinc z1 1 2 0 "$round"
            run_torch t1 1 2 "$round"
            ;;
        2)
            echo "bench-peers: round $round/$rounds, 2 processes x 1 thread" >&2
            for s in $stages; do run_zinc "z2s$s" 2 1 "$s" "$round"; done
            run_torch t2 2 1 "$round"
            ;;
        *) die "BENCH_LAYOUTS: unknown layout '$layout' (1 or 2)" ;;
        esac
    done
done

# ---------------------------------------------------------------- report
# col TAG FIELD -> median over rounds (field 2 tokens/s; 3, 4 losses of the first round)
col() {
    case $2 in
    2) awk -v t="$1" '$1 == t {print $2}' "$tmp/results" | median ;;
    *) awk -v t="$1" -v f="$2" '$1 == t {print $f; exit}' "$tmp/results" ;;
    esac
}
tver=$("$py" -c 'import torch; print(torch.__version__)')
tparams=$(sed -n 's/.* | \([0-9]*\) params | .*/\1/p' "$tmp"/banner.t* | head -n 1)
zparams_m=$(sed -n 's/.*: \([0-9.]*\)M params.*/\1/p' "$tmp"/banner.z* | head -n 1)
zparams=""
[ -s "$tmp/zinc_params" ] && zparams=$(( $(cat "$tmp/zinc_params") / 4 ))
echo "model GPT-2 L=6 C=384 H=6 V=50304 T=64, micro-batch 4 per rank, fp32; $steps steps, median after $warmup warm-up, median of $rounds round(s)"
echo "torch $tver (AdamW $adamw, F.scaled_dot_product_attention, eager); $(nproc) cores, load average $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after"
for f in "$tmp"/banner.*; do echo "  ${f##*banner.}: $(cat "$f")"; done
match="?"
[ -n "$zparams" ] && [ -n "$tparams" ] && { [ "$zparams" = "$tparams" ] && match="equal" || match="DIFFERENT"; }
echo "parameters: zinc ${zparams_m}M (banner), ${zparams:-?} (1-rank params bytes / 4); PyTorch ${tparams:-?}: $match"
echo
printf '%-24s %-10s %10s %-14s %10s %8s   %-17s %-17s\n' layout zinc "tok/s" PyTorch "tok/s" zinc/pt "zinc loss" "PyTorch loss"
row() { # LAYOUT ZTAG ZNAME TTAG TNAME
    local zt tt
    zt=$(col "$2" 2); tt=$(col "$4" 2)
    [ -n "$zt" ] || return 0
    printf '%-24s %-10s %10.0f %-14s %10.0f %8.3f   %-17s %-17s\n' "$1" "$3" "$zt" "$5" "$tt" \
        "$(awk -v a="$zt" -v b="$tt" 'BEGIN {print a / b}')" \
        "$(col "$2" 3) -> $(col "$2" 4)" "$(col "$4" 3) -> $(col "$4" 4)"
}
for layout in $layouts; do
    case $layout in
    1) row "1 proc x 2 threads" z1 "ZeRO 0" t1 "torch" ;;
    2) for s in $stages; do row "2 procs x 1 thread" "z2s$s" "ZeRO $s" t2 "DDP gloo"; done ;;
    esac
done
if [ "$rounds" -gt 1 ]; then
    echo "tokens/s of each run, in round order:"
    awk '{v[$1] = v[$1] sprintf(" %.0f", $2)} !seen[$1]++ {o[++n] = $1} END {for (i = 1; i <= n; i++) print "  " o[i] ":" v[o[i]]}' "$tmp/results"
fi
