#!/usr/bin/env bash
# test_launcher.sh - zinc-run's argv (through --dry-run), its errors and exit
# statuses with real mpirun jobs, and the zinc-data command line. DeepSpeed's
# launcher flags are test_ds_flags.sh's. Helpers: helpers.sh.
# Usage: BUILD=build bash tests/launcher/test_launcher.sh
. "$(dirname "$0")/helpers.sh"
DATA=$BUILD/zinc-data
[ -x "$DATA" ] || { echo "FAIL: $DATA not built"; exit 1; }

NPROC=$(nproc)

# --- the mpirun argv --------------------------------------------------------
run 0 "$RUN" --dry-run -n 1 ./prog --flag 'two words' "it's"
has "$OUT" "mpirun -n 1 --bind-to none "
has "$OUT" "--mca btl_vader_single_copy_mechanism none"
has "$OUT" "-x OMP_NUM_THREADS=$NPROC -x ZINC_THREADS=$NPROC"
has "$OUT" "./prog --flag 'two words' 'it'\\''s'"
lacks "$OUT" "--oversubscribe"
[ "$(wc -l <"$OUT")" -eq 1 ] || { fails=$((fails + 1)); echo "FAIL: dry run is not one line"; }
if [ "$(id -u)" = 0 ]; then has "$OUT" "--allow-run-as-root"; else lacks "$OUT" "--allow-run-as-root"; fi

# More ranks than cores: oversubscribe, one thread each.
run 0 "$RUN" --dry-run -n $((NPROC + 1)) prog
has "$OUT" "-n $((NPROC + 1)) --bind-to none --oversubscribe"
has "$OUT" "-x OMP_NUM_THREADS=1 "

# Forwarded variables; a user's OMP_NUM_THREADS is kept, not overridden.
run 0 env ZINC_FOO=1 NCCL_DEBUG=INFO OMP_NUM_THREADS=3 OPENBLAS_CORETYPE=Haswell "$RUN" --dry-run -n 1 prog
has "$OUT" "-x ZINC_FOO"
has "$OUT" "-x OPENBLAS_CORETYPE"   # a user's BLAS core reaches remote ranks
has "$OUT" "-x NCCL_DEBUG"
has "$OUT" "-x OMP_NUM_THREADS "
lacks "$OUT" "OMP_NUM_THREADS="
lacks "$OUT" "ZINC_THREADS="

# .zinc_env: pairs exported literally; the environment wins over the file.
printf '# comment\n\nMY_KEY=hello world\nexport OTHER=1\nZINC_BAR=file\n' >.zinc_env
printf 'HOME_KEY=h\nMY_KEY=from-home\n' >"$HOME/.zinc_env"
run 0 env ZINC_BAR=env "$RUN" --dry-run prog
has "$OUT" "-x 'MY_KEY=hello world' -x OTHER=1"
has "$OUT" "-x HOME_KEY=h"
has "$OUT" "-x ZINC_BAR"
lacks "$OUT" "ZINC_BAR=file"
lacks "$OUT" "from-home"
printf 'GOOD=1\nthis is not a pair\n' >.zinc_env
run 2 "$RUN" --dry-run prog
has "$ERR" ".zinc_env:2: expected KEY=VALUE"
rm -f .zinc_env "$HOME/.zinc_env"

# Variables that choose what code ranks run: refused from either env file
# (./.zinc_env came with the directory) unless --allow-env-loader-vars.
for v in LD_PRELOAD LD_LIBRARY_PATH LD_AUDIT LD_BIND_NOW GLIBC_TUNABLES GCONV_PATH \
    BASH_ENV ENV PS4 PYTHONSTARTUP PYTHONPATH PERL5OPT RUBYOPT NODE_OPTIONS \
    JAVA_TOOL_OPTIONS LUA_INIT_5_4 CUDA_INJECTION64_PATH NCCL_NET_PLUGIN; do
    printf 'OK=1\nexport %s=/tmp/evil\n' "$v" >.zinc_env
    run 2 "$RUN" --dry-run prog
    has "$ERR" ".zinc_env:2: $v chooses what code every rank loads or runs"
    has "$ERR" "--allow-env-loader-vars"
done
# PATH: refused when zinc-run has none; its own PATH wins over the file's.
printf 'PATH=/tmp/evil\n' >.zinc_env
run 2 env -u PATH "$RUN" --dry-run prog
has "$ERR" ".zinc_env:1: PATH chooses what code"
run 0 "$RUN" --dry-run prog
has "$OUT" "-x PATH prog"
lacks "$OUT" "/tmp/evil"
printf 'LD_PRELOAD=/tmp/evil.so\n' >"$HOME/.zinc_env"
rm -f .zinc_env
run 2 "$RUN" --dry-run prog
has "$ERR" "$HOME/.zinc_env:1: LD_PRELOAD chooses"
run 0 "$RUN" --dry-run --allow-env-loader-vars prog
has "$OUT" "-x LD_PRELOAD=/tmp/evil.so"
rm -f "$HOME/.zinc_env"
printf 'LD_LIBRARY_PATH=/opt/x/lib\nLDFLAGS=-g\nMY_PATH=/p\nPYTHONUNBUFFERED=1\n' >.zinc_env
run 0 "$RUN" --dry-run --allow-env-loader-vars prog
has "$OUT" "-x LD_LIBRARY_PATH=/opt/x/lib"
run 2 "$RUN" --dry-run prog
# Names that only look alike are not loader variables.
printf 'LDFLAGS=-g\nMY_PATH=/p\nPYTHONUNBUFFERED=1\nNCCL_DEBUG=INFO\n' >.zinc_env
run 0 env -u LDFLAGS -u MY_PATH -u PYTHONUNBUFFERED -u NCCL_DEBUG "$RUN" --dry-run prog
has "$OUT" "-x LDFLAGS=-g -x MY_PATH=/p -x PYTHONUNBUFFERED=1 -x NCCL_DEBUG=INFO"
# Already in zinc-run's environment: the user's own, forwarded by name.
printf 'LD_BIND_NOW=from-file\n' >.zinc_env
run 0 env LD_BIND_NOW=1 "$RUN" --dry-run prog
has "$OUT" "-x LD_BIND_NOW prog"
lacks "$OUT" "from-file"
rm -f .zinc_env

# --- hostfile, --include, --exclude ------------------------------------------
printf '# cluster\nnode1 slots=4\n\nnode2 slots=2   # two GPUs\n' >hosts
run 0 "$RUN" --dry-run --hostfile hosts prog
has "$OUT" "mpirun -n 6 "
has "$OUT" "--host node1:4,node2:2"
lacks "$OUT" "--oversubscribe"
run 0 "$RUN" --dry-run --hostfile hosts --include 'node1:0,1@node2' prog
has "$OUT" "-n 4 "
has "$OUT" "--host node1:2,node2:2"
run 0 "$RUN" --dry-run --hostfile hosts --exclude node1 prog
has "$OUT" "--host node2:2"
lacks "$OUT" "node1"
run 0 "$RUN" --dry-run --hostfile hosts --exclude 'node1:3' -n 2 prog
has "$OUT" "-n 2 "
has "$OUT" "--host node1:3,node2:2"
run 2 "$RUN" --dry-run --hostfile hosts --include 'node9' prog
has "$ERR" "host node9 is not in hostfile hosts"
run 2 "$RUN" --dry-run --hostfile hosts --include 'node2:2' prog
has "$ERR" "slot 2 of node2 is out of range"
run 2 "$RUN" --dry-run --hostfile hosts --include 'node1:x' prog
has "$ERR" "bad slot 'x'"
run 2 "$RUN" --dry-run --hostfile hosts --exclude 'node1@node2' prog
has "$ERR" "leaves no slots"
run 2 "$RUN" --dry-run --hostfile hosts -n 7 prog
has "$ERR" "-n 7 exceeds the 6 slots"
# One host: more ranks than slots oversubscribes it.
printf 'localhost slots=1\n' >one
run 0 "$RUN" --dry-run --hostfile one -n 3 prog
has "$OUT" "--oversubscribe"
has "$OUT" "--host localhost:1"

printf 'node1 slots=4\nnode2 4\n' >bad1
run 2 "$RUN" --dry-run --hostfile bad1 prog
has "$ERR" "hostfile bad1:2:"
printf 'node1 slots=4\n# x\nnode1 slots=2\n' >bad2
run 2 "$RUN" --dry-run --hostfile bad2 prog
has "$ERR" "hostfile bad2:3: duplicate host node1"
printf 'node1 slots=0\n' >bad3
run 2 "$RUN" --dry-run --hostfile bad3 prog
has "$ERR" "hostfile bad3:1: slots must be an integer >= 1"
run 2 "$RUN" --dry-run --hostfile missing prog
has "$ERR" "missing: cannot open hostfile: No such file"

# --- rank and slot counts are bounded: 65536 ranks, 4096 slots per host ---------
run 0 "$RUN" --dry-run -n 65536 prog
has "$OUT" "mpirun -n 65536 "
for bad in 65537 1048576 99999999999999999999 -1 0 1x ' 1' '1 ' 0x10 ''; do
    run 2 "$RUN" --dry-run -n "$bad" prog
    has "$ERR" "-n: expected a rank count from 1 to 65536, got '$bad'"
    [ "$(wc -l <"$ERR")" -eq 1 ] || { fails=$((fails + 1)); echo "FAIL: -n '$bad': not one line"; }
done
run 2 "$RUN" --dry-run -n1x prog
has "$ERR" "got '1x'"
run 2 "$RUN" --dry-run --np=2147483648 prog
has "$ERR" "got '2147483648'"
printf 'node1 slots=4096\n' >max1
run 0 "$RUN" --dry-run --hostfile max1 prog
has "$OUT" "--host node1:4096"
printf 'node1 slots=4097\n' >big1
run 2 "$RUN" --dry-run --hostfile big1 prog
has "$ERR" "hostfile big1:1: slots must be an integer >= 1 and <= 4096, got '4097'"
printf 'node1 slots=1048576\nnode2 slots=1048576\n' >big2
run 2 "$RUN" --dry-run --hostfile big2 prog
has "$ERR" "hostfile big2:1: slots must be an integer"
for i in $(seq 17); do printf 'node%d slots=4096\n' "$i"; done >big3
run 2 "$RUN" --dry-run --hostfile big3 prog
has "$ERR" "hostfile big3:17: slots add up to more than 65536, the most ranks zinc-run starts"
head -16 big3 >max16
run 0 "$RUN" --dry-run --hostfile max16 prog
has "$OUT" "mpirun -n 65536 "

# --- what a hostfile, .zinc_env or SPEC may hold -------------------------------
# A NUL byte ended the line early and the rest vanished unseen.
printf 'node1 slots=2\0 node2 slots=2\n' >nul
run 2 "$RUN" --dry-run --hostfile nul prog
has "$ERR" "hostfile nul:1: holds a NUL byte (column 14)"
printf '# x\nnode\033]0;pwned\007 slots=1\n' >ctl
run 2 "$RUN" --dry-run --hostfile ctl prog
has "$ERR" "hostfile ctl:2: holds control character 0x1b (column 5)"
lacks "$ERR" "pwned"
printf 'node1 slots=1\r\nnode2\tslots=1\r\n' >crlf   # CRLF and tabs are fine
run 0 "$RUN" --dry-run --hostfile crlf prog
has "$OUT" "--host node1:1,node2:1"
printf 'node1 slots=1\rnode2 slots=1\n' >cr    # a CR inside a line is not
run 2 "$RUN" --dry-run --hostfile cr prog
has "$ERR" "hostfile cr:1: holds control character 0x0d"
{ head -c 5000 /dev/zero | tr '\0' a; printf ' slots=1\n'; } >longline
run 2 "$RUN" --dry-run --hostfile longline prog
has "$ERR" "hostfile longline:1: line is longer than 4096 bytes"
{ head -c 254 /dev/zero | tr '\0' a; printf ' slots=1\n'; } >longname
run 2 "$RUN" --dry-run --hostfile longname prog
has "$ERR" "is longer than 253 bytes"
printf '.node1 slots=1\n' >dot
run 2 "$RUN" --dry-run --hostfile dot prog
has "$ERR" "hostfile dot:1: bad host name '.node1': it starts with '-' or '.'"
printf 'fe80::1 slots=2\n' >ipv6
run 2 "$RUN" --dry-run --hostfile ipv6 prog
has "$ERR" "(an IPv6 literal?)"
printf '10.0.0.1 slots=2\nnode_a.example.com slots=1\n' >ipv4
run 0 "$RUN" --dry-run --hostfile ipv4 prog
has "$OUT" "--host 10.0.0.1:2,node_a.example.com:1"
run 2 "$RUN" --dry-run --hostfile hosts --include "$(printf 'node1\033[2J')" prog
has "$ERR" "--include: SPEC holds byte 0x1b (column 6)"
run 2 "$RUN" --dry-run --hostfile hosts --exclude 'node1, node2' prog
has "$ERR" "--exclude: SPEC holds byte 0x20 (column 7)"
# A named pipe or a device as the hostfile: refused, not read (it hung, or
# read /dev/zero until memory ran out).
mkfifo fifo
run 2 timeout 10 "$RUN" --dry-run --hostfile fifo prog
has "$ERR" "fifo: hostfile is a named pipe, not a regular file"
run 2 timeout 10 "$RUN" --dry-run --hostfile /dev/zero prog
has "$ERR" "/dev/zero: hostfile is a character device"
run 2 "$RUN" --dry-run --hostfile . prog
has "$ERR" ".: hostfile is a directory"

# .zinc_env: the same line checks, in either file; a pipe or directory there
# is refused (a pipe hung zinc-run, a directory was skipped unseen).
printf 'A=1\0LD_PRELOAD=/tmp/x.so\n' >.zinc_env
run 2 "$RUN" --dry-run prog
has "$ERR" ".zinc_env:1: holds a NUL byte (column 4)"
printf 'A=1\nB=x\033[31my\n' >"$HOME/.zinc_env"
rm -f .zinc_env
run 2 "$RUN" --dry-run prog
has "$ERR" "$HOME/.zinc_env:2: holds control character 0x1b (column 4)"
rm -f "$HOME/.zinc_env"
{ printf 'BIG='; head -c 70000 /dev/zero | tr '\0' v; printf '\n'; } >.zinc_env
run 2 "$RUN" --dry-run prog
has "$ERR" ".zinc_env:1: line is longer than 65536 bytes"
for i in $(seq 20); do printf 'K%d=' "$i"; head -c 60000 /dev/zero | tr '\0' v; printf '\n'; done >.zinc_env
run 2 "$RUN" --dry-run prog
has "$ERR" ".zinc_env:18: env file is larger than 1048576 bytes"
rm -f .zinc_env
mkfifo .zinc_env
run 2 timeout 10 "$RUN" --dry-run prog
has "$ERR" ".zinc_env: env file is a named pipe, not a regular file"
rm -f .zinc_env
mkdir .zinc_env
run 2 "$RUN" --dry-run prog
has "$ERR" ".zinc_env: env file is a directory"
rmdir .zinc_env

# --- the command Linux can exec ---------------------------------------------------
# An argument past 128 KiB (600 long host names in --host) failed in execvp as
# "cannot run mpirun: Argument list too long" (exit 127); --dry-run printed it.
long=$(head -c 247 /dev/zero | tr '\0' a)
for i in $(seq 600); do printf '%s%03d slots=1\n' "$long" "$i"; done >manyhosts
run 2 "$RUN" --dry-run --hostfile manyhosts prog
has "$ERR" "zinc-run: the command's argument '${long:0:24}...' is 151799 bytes; Linux passes at most 131071"
run 2 "$RUN" --dry-run --launcher slurm --hostfile manyhosts prog
has "$ERR" "the command's argument '--nodelist="
head -400 manyhosts >somehosts
run 0 "$RUN" --dry-run --hostfile somehosts prog
# argv and environment past ARG_MAX (a quarter of the stack limit).
for i in $(seq 5); do printf 'K%d=' "$i"; head -c 60000 /dev/zero | tr '\0' v; printf '\n'; done >.zinc_env
run 2 bash -c 'ulimit -s 1024 && exec "$0" "$@"' "$RUN" --dry-run prog
has "$ERR" "this system runs at most 262144 (ARG_MAX"
run 0 "$RUN" --dry-run prog
rm -f .zinc_env
# --dry-run writes control characters in PROGRAM ARGS as $'\xHH', not raw,
# and the line reads back as the same argv.
run 0 "$RUN" --dry-run prog "$(printf 'a\033[2Jb\177')" "it's"
has "$OUT" "prog 'a'\$'\\x1b''[2Jb'\$'\\x7f''' 'it'\\''s'"
checks=$((checks + 1))
if grep -q "$(printf '\033')" "$OUT"; then fails=$((fails + 1)); echo "FAIL: raw ESC in dry run"; fi
checks=$((checks + 1))
eval "set -- $(sed 's/^.* prog //' "$OUT")"
[ "$1" = "$(printf 'a\033[2Jb\177')" ] && [ "$2" = "it's" ] ||
    { fails=$((fails + 1)); echo "FAIL: dry run does not read back as the same argv"; }

# --- slurm -------------------------------------------------------------------
run 0 "$RUN" --dry-run --launcher slurm -n 2 prog a
has "$OUT" "srun -n 2 --cpus-per-task="
has "$OUT" "--export=ALL"
has "$OUT" " prog a"
lacks "$OUT" "mpirun"

# --- bad usage and a missing mpirun -------------------------------------------
run 2 "$RUN" --dry-run -n 2
has "$ERR" "no PROGRAM given"
has "$ERR" "usage: zinc-run"
run 2 "$RUN" --bogus prog
has "$ERR" "unknown option --bogus"
run 2 "$RUN" -n 0 prog
run 2 "$RUN" --launcher pdsh prog
run 2 "$RUN" --include node1 prog
run 127 env PATH="$TMP/empty" "$RUN" -n 2 true
has "$ERR" "zinc-run: mpirun not found on PATH; install openmpi-bin (or run \`make deps\`)"

# --- real jobs: the job's exit status comes back -------------------------------
run 0 "$RUN" -n 2 true
run 3 "$RUN" -n 2 sh -c 'exit 3'
printf 'MY_KEY=from file\n' >.zinc_env
run 0 env ZINC_FOO=bar "$RUN" -n 2 sh -c \
    'test "$ZINC_FOO" = bar && test "$MY_KEY" = "from file" && test -n "$OMP_NUM_THREADS"'
rm -f .zinc_env

# --- zinc-data -----------------------------------------------------------------
mkdir -p src/sub src/.hidden src/build
printf 'int a;\n' >src/a.c
printf 'x' >src/sub/b.h
printf 'skip' >src/notes.txt
printf 'skip' >src/.hidden/c.c
printf 'skip' >src/build/d.c
run 0 "$DATA" --ext .c,.h -o tok.bin src
has "$OUT" "wrote 8 tokens to tok.bin"
[ "$(stat -c %s tok.bin)" -eq $((1024 + 16)) ] || { fails=$((fails + 1)); echo "FAIL: tok.bin size"; }
run 0 "$DATA" info tok.bin
has "$OUT" "tok.bin: 8 tokens"
has "$OUT" "header ok"
run 0 "$DATA" -o all.bin src
has "$OUT" "wrote 12 tokens to all.bin"
head -c 1030 all.bin >cut.bin
run 1 "$DATA" info cut.bin
has "$ERR" "zinc-data: cut.bin is 1030 bytes"
has "$ERR" "truncated"
run 1 "$DATA" -o x.bin missing-dir
has "$ERR" "zinc-data: cannot open missing-dir"
run 2 "$DATA" -o x.bin
has "$ERR" "usage: zinc-data"
run 2 "$DATA" src
run 2 "$DATA" --frobnicate -o x.bin src
run 2 "$DATA" info

# --- --max-restarts: bounds, a job failing once, one that keeps failing, bad input ---
for bad in -1 1001 x ''; do
    run 2 "$RUN" --max-restarts "$bad" --dry-run prog
    has "$ERR" "--max-restarts"
done
run 2 "$RUN" --max-restarts
printf '#!/bin/sh\necho "restart=${ZINC_RESTART:-unset}"\n[ "${ZINC_RESTART:-0}" -ge 1 ]\n' > once.sh
printf '#!/bin/sh\nexit 2\n' > bad.sh
chmod +x once.sh bad.sh
run 0 "$RUN" -n 1 --max-restarts 3 ./once.sh
has "$OUT" "restart=0"
has "$OUT" "restart=1"
lacks "$OUT" "restart=2"
has "$ERR" "zinc-run: job failed (exit 1); restart 1 of 3"
run 1 "$RUN" -n 1 --max-restarts 2 false
has "$ERR" "restart 2 of 2"
has "$ERR" "job failed (exit 1) after 2 restarts; giving up"
run 2 "$RUN" -n 1 --max-restarts 2 ./bad.sh
lacks "$ERR" "restart 1"
run 1 "$RUN" -n 1 false
lacks "$ERR" "restart"

# --- --elastic: a fake mpirun reports lost hosts the way Open MPI and srun do ---
run 2 "$RUN" --elastic -n 2 --dry-run prog
has "$ERR" "--elastic relaunches a failed job: give --max-restarts N too"
mkdir -p fakebin
cat > fakebin/mpirun <<'SH'
#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$ZINC_RESTART" in
0) echo "some output of the ranks" >&2
   echo "mpirun noticed that process rank 2 with PID 4242 on node nodeb exited on signal 9 (Killed)." >&2
   exit 137 ;;
1) echo "srun: error: nodec.cluster: task 1: Killed" >&2; exit 1 ;;
*) exit 0 ;;
esac
SH
chmod +x fakebin/mpirun
printf 'nodea slots=2\nnodeb slots=2\nnodec slots=1\n' > el_hosts
export FAKE_LOG=$TMP/fake.log
: > "$FAKE_LOG"
run 0 env PATH="$TMP/fakebin:$PATH" "$RUN" --hostfile el_hosts -n 4 --max-restarts 3 --elastic prog
has "$ERR" "rank 2 with PID 4242 on node nodeb exited on signal 9"  # passed through
has "$ERR" "zinc-run: --elastic: dropping host nodeb (its ranks died)"
has "$ERR" "zinc-run: --elastic: relaunching on 3 ranks over 2 hosts"
has "$ERR" "zinc-run: --elastic: dropping host nodec (its ranks died)"
has "$ERR" "zinc-run: --elastic: relaunching on 2 ranks over 1 host"
hasre "$FAKE_LOG" "-n 4 .*--host nodea:2,nodeb:2,nodec:1"
hasre "$FAKE_LOG" "-n 3 .*--host nodea:2,nodec:1"
hasre "$FAKE_LOG" "-n 2 .*--host nodea:2 "
# zinc-train's elasticity section chooses the count: batch 24 runs on 1, 2,
# 3, 4, 6 or 8 ranks, so 5 slots left give 4 ranks
cat > el.json <<'JSON'
{"elasticity": {"enabled": true, "max_train_batch_size": 30, "micro_batch_sizes": [2, 3], "max_gpus": 8}}
JSON
printf 'nodea slots=5\nnodeb slots=1\n' > el_hosts2
: > "$FAKE_LOG"
run 0 env PATH="$TMP/fakebin:$PATH" "$RUN" --hostfile el_hosts2 --max-restarts 2 --elastic /x/zinc-train el.json --set train.max_steps=3
has "$ERR" "zinc-run: --elastic: 4 ranks, the most of the 5 left that the elasticity section's train batch of 24 can run"
hasre "$FAKE_LOG" "-n 6 .*--host nodea:5,nodeb:1"
hasre "$FAKE_LOG" "-n 4 .*--host nodea:5 .*/x/zinc-train el.json --set train.max_steps=3"
# without a hostfile nothing is dropped: the same ranks again
: > "$FAKE_LOG"
run 0 env PATH="$TMP/fakebin:$PATH" "$RUN" -n 2 --max-restarts 2 --elastic prog
lacks "$ERR" "dropping host"
[ "$(grep -c -- '-n 2 ' "$FAKE_LOG")" = 3 ] || { fails=$((fails + 1)); echo "FAIL: expected 3 runs of 2 ranks"; cat "$FAKE_LOG"; }
# every host lost
printf 'nodeb slots=2\n' > el_hosts3
run 1 env PATH="$TMP/fakebin:$PATH" "$RUN" --hostfile el_hosts3 --max-restarts 2 --elastic prog
has "$ERR" "zinc-run: --elastic: no hosts are left; giving up"

finish
