#!/usr/bin/env bash
# Offload changes where state lives, never the math:
#  - offload_optimizer cpu / nvme (and offload_param nvme at ZeRO-3) give bitwise
#    the same losses as no offload at the same stage and DP size (fp32 and bf16),
#    with small sub-groups and every pipelining mode
#  - a checkpoint saved under NVMe offload resumes exactly
#  - a plan beyond the machine (swap files beyond nvme_path's free space, host memory
#    beyond what is available) is refused before allocation, naming the tier and the
#    shortfall; --estimate-memory prints the need per tier beside what the machine has
#  - offload_param cpu and nvme at ZeRO-3 on the strict device (the GPU path: shards off the
#    device, copied up before each gather): bitwise, fp32 and bf16, DP 1 and 2; resume exact
#  - offload_optimizer.delayed_update: threaded on CPU ranks = inline on the strict device,
#    bitwise; delayed from the first update with lr > 0; resume exact; refused without "cpu"
#  - offload_optimizer.ratio 0.3 and 0.7 on the strict device (stages 1 and 3, bf16): bitwise
#    the same losses, a resume under it exact; no effect on CPU ranks (a warning); a ratio
#    outside [0, 1] or below 1 with nvme: one line, exit 2
#  - faults: missing / not-a-directory / read-only nvme_path, a full disk mid-run,
#    a swap file removed under a running job: one clear error, and the last
#    committed checkpoint still verifies and loads
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")
NV="$TMP/nvme"; mkdir -p "$NV"
S3="--set zero_optimization.stage3_param_persistence_threshold=0 --set zero_optimization.stage3_max_reuse_distance=0"
opt() { echo "--set zero_optimization.offload_optimizer.device=$1 --set zero_optimization.offload_optimizer.nvme_path=${2:-$NV}"; }
par() { echo "--set zero_optimization.offload_param.device=$1 --set zero_optimization.offload_param.nvme_path=${2:-$NV}"; }
same() { cmp -s <(losses "$TMP/$1.jsonl") <(losses "$TMP/$2.jsonl") || fail "$2 differs from $1"; echo "$2: bitwise equal to $1"; }
SMALL="--set zero_optimization.sub_group_size=2048"

for prec in fp32 bf16; do
    P=""; [ $prec = bf16 ] && P="--set bf16.enabled=true"
    for stage in 1 2 3; do
        extra=""; [ $stage = 3 ] && extra=$S3
        base="${prec}_s${stage}"
        run "$base" 2 --set train.max_steps=20 --set zero_optimization.stage=$stage $extra $P
        run "${base}_cpu" 2 --set train.max_steps=20 --set zero_optimization.stage=$stage $extra $P $(opt cpu)
        same "$base" "${base}_cpu"
        run "${base}_nvme" 2 --set train.max_steps=20 --set zero_optimization.stage=$stage $extra $P $(opt nvme) $SMALL
        same "$base" "${base}_nvme"
        if [ $stage = 3 ]; then
            run "${base}_nvme_pr" 2 --set train.max_steps=20 --set zero_optimization.stage=3 $extra $P \
                $(opt nvme) $(par nvme) $SMALL --set zero_optimization.offload_optimizer.pipeline_read=true \
                --set zero_optimization.offload_optimizer.pipeline_write=true \
                --set zero_optimization.offload_optimizer.buffer_count=3
            same "$base" "${base}_nvme_pr"
        fi
    done
done
grep -q '"nvme": [1-9]' "$TMP/fp32_s3_nvme_pr.jsonl" || fail "metrics do not report the bytes on NVMe"
ls "$NV"/rank0/*.swp >/dev/null 2>&1 && fail "swap files left behind after a clean exit"

# --- partial optimizer offload (offload_optimizer.ratio) on the strict device, whose memory the
# host reaches only through copies (the GPU's path): part of the state stepped on the host,
# the rest on the device, bitwise the run without offload; a resume under it is exact ---
RA() { echo "--set zero_optimization.offload_optimizer.device=cpu --set zero_optimization.offload_optimizer.ratio=$1"; }
for stage in 1 3; do
    extra=""; [ $stage = 3 ] && extra=$S3
    ZINC_STRICT_DEVICE=1 run "st_s$stage" 2 --set train.max_steps=12 --set zero_optimization.stage=$stage $extra --set bf16.enabled=true
    for r in 0.3 0.7; do
        ZINC_STRICT_DEVICE=1 run "st_s${stage}_r$r" 2 --set train.max_steps=12 --set zero_optimization.stage=$stage $extra \
            --set bf16.enabled=true $(RA $r)
        grep -q "ratio $r: the optimizer state of [1-9]" "$TMP/st_s${stage}_r$r.log" || fail "ratio $r: no split line"
        same "st_s$stage" "st_s${stage}_r$r"
    done
done
ZINC_STRICT_DEVICE=1 run ra_a 2 --set train.max_steps=6 --set zero_optimization.stage=1 $(RA 0.3) --set bf16.enabled=true --set train.save_dir="$TMP/ckr" --set train.save_every=6
ZINC_STRICT_DEVICE=1 run ra_b 2 --set train.max_steps=12 --set zero_optimization.stage=1 $(RA 0.3) --set bf16.enabled=true --set train.save_dir="$TMP/ckr" --set train.resume=auto
cmp -s <(losses "$TMP/st_s1.jsonl" | tail -n 6) <(losses "$TMP/ra_b.jsonl") || fail "resume under ratio 0.3 differs"
echo "resume under offload_optimizer.ratio 0.3: bitwise identical"
run ra_cpu 1 --set train.max_steps=2 --set zero_optimization.stage=1 $(RA 0.5)
grep -q "ratio 0.5 has no effect on cpu ranks" "$TMP/ra_cpu.log" || fail "ratio on CPU ranks: no warning"
bad "ratio: expected a number in \[0, 1\], found 1.5" 1 $(RA 1.5)
bad "0.5 with \"nvme\" is not supported yet" 1 --set zero_optimization.stage=1 $(opt nvme) --set zero_optimization.offload_optimizer.ratio=0.5

# --- parameter offload on the strict device (the GPU's path): ZeRO-3 shards in host memory
# ("cpu") or in a swap file ("nvme"), copied up before each all-gather, written by the host
# optimizer; bitwise the run that keeps them on the device, at DP 2 and DP 1, fp32 and bf16;
# a resume under it is exact; without the optimizer offloaded it is refused ---
for prec in fp32 bf16; do
    P=""; [ $prec = bf16 ] && P="--set bf16.enabled=true"
    for n in 1 2; do
        b="pg_${prec}_$n"
        ZINC_STRICT_DEVICE=1 run "$b" $n --set train.max_steps=8 --set zero_optimization.stage=3 $S3 $P $(opt cpu)
        ZINC_STRICT_DEVICE=1 run "${b}_pc" $n --set train.max_steps=8 --set zero_optimization.stage=3 $S3 $P $(opt cpu) $(par cpu)
        same "$b" "${b}_pc"
        ZINC_STRICT_DEVICE=1 run "${b}_pn" $n --set train.max_steps=8 --set zero_optimization.stage=3 $S3 $P $(opt nvme) $(par nvme)
        same "$b" "${b}_pn"
    done
done
PO="--set zero_optimization.stage=3 $S3 --set bf16.enabled=true $(opt cpu) $(par cpu)"
ZINC_STRICT_DEVICE=1 run pr_a 2 --set train.max_steps=4 $PO --set train.save_dir="$TMP/ckp" --set train.save_every=4
ZINC_STRICT_DEVICE=1 run pr_b 2 --set train.max_steps=8 $PO --set train.save_dir="$TMP/ckp" --set train.resume=auto
cmp -s <(losses "$TMP/pg_bf16_2.jsonl" | tail -n 4) <(losses "$TMP/pr_b.jsonl") || fail "resume under offload_param cpu differs"
echo "resume under offload_param cpu on the strict device: bitwise identical"
out=$(ZINC_STRICT_DEVICE=1 $MPIRUN 1 "$BUILD/zinc-train" "$cfg" --set train.max_steps=1 --set zero_optimization.stage=3 $(par cpu) 2>&1)
[ $? -eq 2 ] && echo "$out" | grep -q 'offload_param.device "cpu" on strict needs zero_optimization.offload_optimizer.device' \
    || { echo "$out"; fail "offload_param without the optimizer offloaded on a GPU-like device: not refused"; }
echo "refused: $(echo "$out" | grep -m1 'needs zero_optimization')"

# --- offload_optimizer.delayed_update (ZeRO-Offload's one-step delayed parameter update): the
# update of step t runs on a host thread during step t+1, whose forward and backward use the
# params of before it. On CPU ranks it runs on a thread, on the strict device inline: the
# same losses bit for bit (the reference). The first update of the tiny config's warmup has
# lr 0, so steps 1 and 2 match the undelayed run and the delay shows from step 3 on. Saving
# lands the update in flight; the uninterrupted run, saving at the same step, and a run
# resumed from that checkpoint agree bitwise ---
DU="$(opt cpu) --set zero_optimization.offload_optimizer.delayed_update=true"
for stage in 1 3; do
    extra=""; [ $stage = 3 ] && extra=$S3
    run "du_base_s$stage" 2 --set train.max_steps=10 --set zero_optimization.stage=$stage $extra --set bf16.enabled=true $(opt cpu)
    run "du_s$stage" 2 --set train.max_steps=10 --set zero_optimization.stage=$stage $extra --set bf16.enabled=true $DU
    ZINC_STRICT_DEVICE=1 run "du_st_s$stage" 2 --set train.max_steps=10 --set zero_optimization.stage=$stage $extra \
        --set bf16.enabled=true $DU
    same "du_s$stage" "du_st_s$stage"
    cmp -s <(losses "$TMP/du_base_s$stage.jsonl" | head -2) <(losses "$TMP/du_s$stage.jsonl" | head -2) \
        || fail "delayed update, stage $stage: steps 1-2 differ from the undelayed run (first update at lr 0)"
    cmp -s <(losses "$TMP/du_base_s$stage.jsonl" | sed -n 3p) <(losses "$TMP/du_s$stage.jsonl" | sed -n 3p) \
        && fail "delayed update, stage $stage: step 3 equals the undelayed run's (no delay?)"
    echo "delayed update, stage $stage: threaded (cpu) = inline (strict device); delayed from step 3"
done
run du_full 2 --set train.max_steps=10 --set zero_optimization.stage=1 --set bf16.enabled=true $DU \
    --set train.save_dir="$TMP/ckdu" --set train.save_every=5
run du_res 2 --set train.max_steps=10 --set zero_optimization.stage=1 --set bf16.enabled=true $DU \
    --set train.save_dir="$TMP/ckdu" --set train.resume=global_step5
cmp -s <(losses "$TMP/du_full.jsonl" | tail -n 5) <(losses "$TMP/du_res.jsonl") || fail "resume under delayed update differs"
echo "resume under delayed update: bitwise identical"
bad "delayed_update needs offload_optimizer.device \"cpu\" with ratio 1" 1 --set zero_optimization.stage=1 \
    --set zero_optimization.offload_optimizer.delayed_update=true

# --- the plan checked against the machine before anything is allocated (train.check_memory) ---
HUGE="--set model.n_embd=8192 --set model.n_head=64 --set model.n_layer=512 --set bf16.enabled=true"
bad "zero_optimization.offload_optimizer.nvme_path: $NV has .* free; the planned swap files need" 2 $HUGE \
    --set zero_optimization.stage=3 $(opt nvme) $(par nvme)
bad "host memory: this node's 1 rank needs .* GiB short" 1 $HUGE
"$BUILD/zinc-train" "$cfg" --estimate-memory -n 2 --set zero_optimization.stage=3 $(opt nvme) > "$TMP/est.txt" 2>&1 \
    || fail "estimate with nvme"
grep -q "per rank at ZeRO stage 3, by tier (MiB): (no gpu) 0.0 | host .* | nvme .*; this machine has .* $NV .* MiB free" \
    "$TMP/est.txt" || { cat "$TMP/est.txt"; fail "estimate: no tier line"; }
echo "estimate by tier: $(grep 'by tier' "$TMP/est.txt")"

# --- checkpoint under NVMe offload resumes exactly ---
OFF="--set zero_optimization.stage=3 $S3 $(opt nvme) $(par nvme)"
run off_full 2 --set train.max_steps=12 $OFF
run off_a 2 --set train.max_steps=6 $OFF --set train.save_dir="$TMP/ck" --set train.save_every=6
run off_b 2 --set train.max_steps=12 $OFF --set train.save_dir="$TMP/ck" --set train.resume=auto
cmp -s <(losses "$TMP/off_full.jsonl") <(cat <(losses "$TMP/off_a.jsonl") <(losses "$TMP/off_b.jsonl")) \
    || fail "resume under NVMe offload is not exact"
echo "resume under NVMe offload: bitwise identical"
# model.init_from straight into NVMe-offloaded state gives the same model
"$BUILD/zinc-ckpt" export "$TMP/ck/global_step6" --format safetensors "$TMP/w.safetensors" >/dev/null \
    || fail "export failed"
ev() { local n=$1; shift; $MPIRUN "$n" "$BUILD/zinc-train" "$cfg" --eval-loss --set model.init_from="$TMP/w.safetensors" "$@" 2>"$TMP/ev.err" | sed -n 's/^eval loss //p'; }
l1=$(ev 1); l2=$(ev 2 $OFF)
awk -v a="$l1" -v b="$l2" 'BEGIN { d = (a - b) / a; if (d < 0) d = -d; exit !(a != "" && d < 1e-6) }' \
    || { cat "$TMP/ev.err"; fail "init_from under NVMe offload: loss $l2 vs $l1"; }
echo "init_from under NVMe offload: loss $l2 (no offload $l1)"

# --- faults ---
T="$BUILD/zinc-train"
expect_fail() { # pattern cmd... (must fail within 120 s, output must contain pattern)
    local pat=$1; shift
    local out st
    out=$(timeout 120 "$@" 2>&1); st=$?
    [ $st -ne 124 ] || fail "hung: $*"
    [ $st -ne 0 ] || fail "expected a failure: $*"
    echo "$out" | grep -q -- "$pat" || { echo "$out" | tail -5 >&2; fail "output lacks '$pat'"; }
    echo "ok ($pat): $(echo "$out" | grep -m1 -- "$pat")"
}
ckpt_ok() { "$BUILD/zinc-ckpt" verify "$TMP/ck" >/dev/null || fail "last checkpoint no longer verifies"; }
expect_fail "$TMP/absent" $MPIRUN 2 "$T" "$cfg" --set zero_optimization.stage=1 $(opt nvme "$TMP/absent")
touch "$TMP/afile"
expect_fail "not a directory" $MPIRUN 2 "$T" "$cfg" --set zero_optimization.stage=1 $(opt nvme "$TMP/afile")
# one rank alone cannot create its swap file: the job ends at once, naming it (no rank waits)
mkdir -p "$TMP/half"; touch "$TMP/half/rank1"
expect_fail "rank1/optimizer.swp: Not a directory" env ZINC_COMM_TIMEOUT_S=60 $MPIRUN 2 "$T" "$cfg" \
    --set zero_optimization.stage=1 $(opt nvme "$TMP/half")
# two jobs on one nvme_path: the second is refused instead of truncating the first one's state
mkdir -p "$TMP/shared"
$MPIRUN 1 "$T" "$cfg" --set train.max_steps=100000 --set zero_optimization.stage=1 $(opt nvme "$TMP/shared") \
    > "$TMP/first.log" 2>&1 &
first=$!
for _ in $(seq 100); do [ -f "$TMP/shared/rank0/optimizer.swp" ] && break; sleep 0.1; done
expect_fail "in use by another job" $MPIRUN 1 "$T" "$cfg" --set zero_optimization.stage=1 $(opt nvme "$TMP/shared")
kill $first 2>/dev/null; wait $first 2>/dev/null
mkdir -p "$TMP/ro"
if mount -t tmpfs -o ro,size=1m zinc-ro "$TMP/ro" 2>/dev/null; then
    expect_fail "$TMP/ro" $MPIRUN 2 "$T" "$cfg" --set zero_optimization.stage=1 $(opt nvme "$TMP/ro")
    umount "$TMP/ro"
else
    echo "SKIP read-only nvme_path: this machine does not allow mounting a read-only tmpfs"
fi
# full disk mid-run (fault injection: writes beyond 600 kB of this job's swap I/O fail),
# resuming from the committed checkpoint, which must stay intact
expect_fail "No space left on device" env ZINC_AIO_FAULT=enospc:600000 $MPIRUN 2 "$T" "$cfg" \
    --set train.max_steps=40 $OFF --set train.save_dir="$TMP/ck" --set train.resume=auto
ckpt_ok
mkdir -p "$TMP/small"
if mount -t tmpfs -o size=160k zinc-small "$TMP/small" 2>/dev/null; then
    # a disk too small for the swap files: refused before training, naming need and free space
    expect_fail "the planned swap files need" $MPIRUN 2 "$T" "$cfg" --set train.max_steps=40 \
        --set zero_optimization.stage=2 $(opt nvme "$TMP/small")
    umount "$TMP/small"
else
    echo "SKIP small tmpfs: this machine does not allow mounting (the huge plan above covers the room check)"
fi
# a swap file removed under a running job (once it trains: a file the
# aborted runs above left behind must not be the one removed)
rm -rf "$NV"/rank*
$MPIRUN 2 "$T" "$cfg" --set train.max_steps=100000 $OFF --set train.save_dir="$TMP/ck" \
    --set train.resume=auto > "$TMP/rm.log" 2>&1 &
job=$!
for _ in $(seq 600); do grep -q '^step' "$TMP/rm.log" && [ -f "$NV/rank1/optimizer.swp" ] && break; sleep 0.1; done
rm -f "$NV/rank1/optimizer.swp"
for _ in $(seq 600); do kill -0 $job 2>/dev/null || break; sleep 0.1; done
kill -0 $job 2>/dev/null && { kill $job; fail "job kept running after its swap file was removed"; }
wait $job && fail "job succeeded after its swap file was removed"
grep -q "optimizer.swp.*removed" "$TMP/rm.log" || { tail -5 "$TMP/rm.log"; fail "no clear message for the removed swap file"; }
echo "ok (removed swap file): $(grep -m1 'removed' "$TMP/rm.log")"
ckpt_ok
run after 2 --set train.max_steps=8 $OFF --set train.save_dir="$TMP/ck" --set train.resume=auto
echo "offload agrees with no offload; faults end cleanly; checkpoint intact"
