#!/usr/bin/env bash
# DeepSpeed's monitors: tensorboard and csv_monitor sections make rank 0 write event files
# and CSV files under OUTPUT_PATH/JOB_NAME. An independent reader (monitor_check.py: the
# TFRecord framing and both crc32c, the Event protobufs decoded by hand, SessionLog purges)
# finds DeepSpeed's tags and zinc's with the steps (global samples) and values of
# train.metrics_file: for a run at DP 2 with fp16 and validation, for a run killed and
# resumed (the resumed file purges the steps past the checkpoint; the CSV rows past it are
# dropped), and the files hold whole records of every step while training runs. Bad folders are
# one line, exit 2.
set -u
cd "$(dirname "$0")/../.."
. tests/train/lib.sh
shard=$(make_shard)
cfg=$(tiny_config "$shard")
PY=$(./scripts/pyref.sh "$BUILD/pyref") || fail "no Python for the reader (scripts/pyref.sh)"
mon() { # DIR: both monitors into DIR/tb/job and DIR/csv/job
    echo --set tensorboard.enabled=true --set tensorboard.output_path="$1/tb" --set tensorboard.job_name=job \
         --set csv_monitor.enabled=true --set csv_monitor.output_path="$1/csv" --set csv_monitor.job_name=job
}
check() { # DIR METRICS [flags]
    local d=$1 m=$2; shift 2
    "$PY" tests/train/monitor_check.py "$d/tb/job" "$d/csv/job" "$m" "$@" || fail "monitors of $m"
}

# DP 2, fp16 (loss_scale), validation every 3 steps
run a 2 $(mon "$TMP/a") --set train.max_steps=6 --set fp16.enabled=true --set data.valid="$shard" \
    --set train.eval_every=3 --set train.eval_batches=1
check "$TMP/a" "$TMP/a.jsonl" --fp16 --eval
grep -q "tensorboard: $TMP/a/tb/job/events.out.tfevents." "$TMP/a.log" || fail "no start-up line naming the event file"
head -1 "$TMP/a/csv/job/Train_Samples_train_loss.csv" | grep -qx "step,train_loss" || fail "csv header"

# killed in step 7 (steps 1-6 logged, the checkpoint of step 4 saved), resumed from step 4:
# steps 5-6 are written twice, the reader must see each once with the resumed run's values
run b 1 $(mon "$TMP/b") --set train.max_steps=8 --set train.save_dir="$TMP/ck" --set train.save_every=4
rm -rf "$TMP/ck"
args="$(mon "$TMP/c") --set train.max_steps=8 --set train.save_dir=$TMP/ck --set train.save_every=4"
ZINC_FAULT_KILL=0:7 $MPIRUN 1 "$BUILD/zinc-train" "$cfg" --set train.metrics_file="$TMP/c.jsonl" $args \
    > "$TMP/c1.log" 2>&1 && fail "the killed run exited 0"
# flushed at each log step: the killed run's file holds whole records of all 6 steps
"$PY" - "$TMP/c/tb/job" <<'PY' || fail "the event file of the killed run"
import glob, struct, sys
raw = open(glob.glob(sys.argv[1] + "/events.out.tfevents.*")[0], "rb").read()
i = n = 0
while i < len(raw):
    (k,) = struct.unpack("<Q", raw[i:i + 8]); i += 16 + k; n += 1
assert i == len(raw), "a torn record"
assert n >= 1 + 6 * 10, "%d records after 6 steps" % n
PY
cp "$TMP/c.jsonl" "$TMP/c_killed.jsonl"
# a tag the resumed run does not write again loses its rows past step 4 too; a .csv that
# is not a monitor file is left alone
sed '1s/.*/step,stale/' "$TMP/c/csv/job/Train_Samples_train_loss.csv" > "$TMP/c/csv/job/Train_Samples_stale.csv"
[ "$(wc -l < "$TMP/c/csv/job/Train_Samples_stale.csv")" -eq 7 ] || fail "the killed run's csv rows"
printf 'a,b\n9,9\n' > "$TMP/c/csv/job/notes.csv"
$MPIRUN 1 "$BUILD/zinc-train" "$cfg" --set train.metrics_file="$TMP/c.jsonl" $args --set train.resume=auto \
    > "$TMP/c2.log" 2>&1 || { cat "$TMP/c2.log"; fail "resume"; }
[ "$(ls "$TMP/c/tb/job"/events.out.tfevents.* | wc -l)" -eq 2 ] || fail "the resumed run did not start a second event file"
[ "$(wc -l < "$TMP/c/csv/job/Train_Samples_stale.csv")" -eq 5 ] || fail "stale csv rows: $(cat "$TMP/c/csv/job/Train_Samples_stale.csv")"
[ "$(cat "$TMP/c/csv/job/notes.csv")" = "$(printf 'a,b\n9,9')" ] || fail "a csv file the monitor does not own was changed"
rm "$TMP/c/csv/job/notes.csv"
check "$TMP/c" "$TMP/c.jsonl"
cmp -s <(losses "$TMP/b.jsonl") <(losses "$TMP/c.jsonl") || fail "resumed losses differ from the uninterrupted run"
[ "$(wc -l < "$TMP/c/csv/job/Train_Samples_train_loss.csv")" -eq 9 ] || fail "csv rows: $(cat "$TMP/c/csv/job/Train_Samples_train_loss.csv")"
echo "killed after step 6, resumed from step 4: one value per step in both monitors"

# a fresh run over the same folder starts the CSV files again
run d 1 $(mon "$TMP/c") --set train.max_steps=2
[ "$(wc -l < "$TMP/c/csv/job/Train_Samples_train_loss.csv")" -eq 3 ] || fail "a fresh run appended to the old csv"
[ "$(cat "$TMP/c/csv/job/Train_Samples_stale.csv")" = "step,stale" ] || fail "a fresh run kept an old tag's rows"

# bad folders
touch "$TMP/file"
bad "tensorboard: $TMP/file" 1 --set tensorboard.enabled=true --set tensorboard.output_path="$TMP/file"
bad "csv_monitor: $TMP/file" 2 --set csv_monitor.enabled=true --set csv_monitor.output_path="$TMP/file"
bad "csv_monitor: $TMP/file" 1 --set csv_monitor.enabled=true --set csv_monitor.output_path="$TMP/file" \
    --set tensorboard.enabled=true --set tensorboard.output_path="$TMP/e"
[ "$(find "$TMP/e" -type f | wc -l)" -eq 0 ] || fail "a run that did not start left an event file: $(find "$TMP/e" -type f)"
bad "tensorboard.enabled" 1 --set tensorboard.enabled=3
echo "OK"
