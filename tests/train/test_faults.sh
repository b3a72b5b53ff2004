#!/usr/bin/env bash
# Bad input and failures end with one clear line and a non-zero status,
# never a crash or a hang: missing/malformed config, missing data, bad model
# shape, impossible batch, bad override, a killed rank, a hung rank, a rank
# that skips a collective.
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")
T="$BUILD/zinc-train"

expect() { # want_status pattern cmd...  (runs cmd with a 120 s limit)
    local want=$1 pat=$2; shift 2
    local out st
    out=$(timeout 120 "$@" 2>&1); st=$?
    [ "$st" -ne 124 ] || fail "hung: $*"
    if [ "$want" = nonzero ]; then [ "$st" -ne 0 ] || fail "expected failure: $*"
    else [ "$st" -eq "$want" ] || { echo "$out" >&2; fail "expected status $want, got $st: $*"; }; fi
    echo "$out" | grep -q -- "$pat" || { echo "$out" >&2; fail "output lacks '$pat': $*"; }
    echo "ok: $pat"
}

expect 2 "nope.json" "$T" "$TMP/nope.json"
printf '{\n  "train_batch_size": 8,\n  "model": {"n_layer": 2,}\n}\n' > "$TMP/bad.json"
expect 2 "bad.json:3:" "$T" "$TMP/bad.json"
expect 2 "missing.bin" "$T" "$cfg" --set 'data.train=["'"$TMP"'/missing.bin"]'
expect 2 "n_head" "$T" "$cfg" --set model.n_head=5
expect 2 "train_batch_size" "$T" "$cfg" --set train_micro_batch_size_per_gpu=5
expect 2 "optimizer.params.lr" "$T" "$cfg" --set optimizer.params.lr='"fast"'
expect 2 "model.n_layr" "$T" "$cfg" --set model.n_layr=3
expect 2 "usage" "$T"
head -c 1000 "$shard" > "$TMP/trunc.bin"
expect 2 "trunc.bin" "$T" "$cfg" --set 'data.train=["'"$TMP"'/trunc.bin"]'
# inconsistent batch only at this DP size: 24 sequences cannot split over 5 ranks
expect 2 "train_batch_size" $MPIRUN 5 "$T" "$cfg"
# a rank killed mid-run takes the job down, and mpirun names it
expect nonzero "rank 1" env ZINC_FAULT_KILL=1:3 $MPIRUN 2 "$T" "$cfg" --set train.max_steps=50
# a hung rank: the others time out and end the job with a message naming the op
# and, since the hung rank answers nobody, names it as silent
expect nonzero "did not complete within 3 s: every rank that answered entered it; no answer from rank 1 (dead, or busy outside communication)" \
    env ZINC_FAULT_HANG=1:3 $MPIRUN 2 "$T" "$cfg" --set train.max_steps=50 --set comm_timeout_s=3
# a rank that skips a collective (world's #30, a step's stop-signal
# agreement): the timeout names it, what it waits in, and where the rings
# of the ranks first disagree
skip=(env ZINC_FAULT_SKIP_COLL=1:world:30 $MPIRUN 2 "$T" "$cfg" --set train.max_steps=50 --set comm_timeout_s=3)
expect nonzero "all_reduce #30 on group world (2 ranks) did not complete within 3 s: rank 1 (waiting in all_reduce #[0-9]* on group dp for [0-9.]* s) never entered it" "${skip[@]}"
expect nonzero "ranks first disagree at #30 on group world (rank 0: all_reduce 4 B; rank 1: none)" "${skip[@]}"
expect nonzero "rank 1, group dp, last collectives: .*(in flight" "${skip[@]}"
echo "all fault cases ended cleanly"
