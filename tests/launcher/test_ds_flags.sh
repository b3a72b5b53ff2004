#!/usr/bin/env bash
# test_ds_flags.sh - zinc-run takes the `deepspeed` launcher's flags: a table
# of command lines run through --dry-run, each with the exit status it must
# have and pieces its output must (and must not) hold; every error row must
# also print exactly one line, naming the flag, and nothing on stdout. A few
# real mpirun jobs after the table check that Open MPI takes what is built.
# Usage: BUILD=build bash tests/launcher/test_ds_flags.sh
. "$(dirname "$0")/helpers.sh"

NPROC=$(nproc)
printf 'a slots=4\nb slots=4\nc slots=2\n' >hosts
printf 'localhost slots=1\n' >one

# The " ;; "-separated pieces of $1, one a line (none for -).
pieces() { [ "$1" = - ] || awk -v RS=' ;; ' '{ sub(/\n$/, ""); print }' <<<"$1"; }

# check_row ENV RC ARGS OUT_HAS OUT_LACKS ERR_HAS: one row of the table.
# ENV: VAR=VALUE words for env(1), or -; ARGS: zinc-run's arguments as shell
# words (--dry-run is added); the piece lists are separated by " ;; " (-:
# none). RC 2 rows: ERR_HAS is the one line's pieces, OUT_* must be -.
check_row() {
    local envs=$1 want=$2 args=$3 out_has=$4 out_lacks=$5 err_has=$6 p
    local -a argv envv=()
    eval "argv=($args)"
    [ "$envs" = - ] || read -r -a envv <<<"$envs"
    run "$want" env "${envv[@]}" "$RUN" --dry-run "${argv[@]}" </dev/null
    while IFS= read -r p; do has "$OUT" "$p"; done < <(pieces "$out_has")
    while IFS= read -r p; do lacks "$OUT" "$p"; done < <(pieces "$out_lacks")
    while IFS= read -r p; do has "$ERR" "$p"; done < <(pieces "$err_has")
    checks=$((checks + 1))
    if [ "$want" = 2 ]; then
        if [ "$(wc -l <"$ERR")" != 1 ] || [ -s "$OUT" ] || ! grep -q '^zinc-run: ' "$ERR"; then
            fails=$((fails + 1))
            echo "FAIL: $args: not one 'zinc-run: ' line on stderr and nothing on stdout:"
            sed 's/^/    err: /' "$ERR" | head -5
        fi
    elif [ "$(wc -l <"$OUT")" != 1 ]; then
        fails=$((fails + 1))
        echo "FAIL: $args: the dry run is not one line"
    fi
}

# The table. Columns: env | exit | arguments | stdout has | stdout lacks | stderr has
TABLE=$(cat <<EOF
# --num_gpus / --num_accelerators without a hostfile: ranks on this node, as -n
-|0|--num_gpus 2 prog|mpirun -n 2 ;; -x OMP_NUM_THREADS=$(( NPROC / 2 > 0 ? NPROC / 2 : 1 ))|--host|-
-|0|--num_accelerators 3 prog|mpirun -n 3 |--host|-
-|0|-n 2 --num_gpus 2 prog|mpirun -n 2 |-|-
-|0|--num_nodes 1 --num_gpus 2 prog|mpirun -n 2 |--host|-
-|0|--num_gpus=1 prog --num_gpus 9|mpirun -n 1 ;; prog --num_gpus 9|-|-
# a hostfile: all its slots; --num_nodes the first N hosts; --num_gpus at most N a host
-|0|--hostfile hosts prog|mpirun -n 10  ;; --host a:4,b:4,c:2 |-|-
-|0|--hostfile hosts --num_nodes 1 prog|mpirun -n 4  ;; --host a:4 |b:4 ;; c:2|-
-|0|--hostfile hosts --num_nodes=2 prog|mpirun -n 8  ;; --host a:4,b:4 |c:2|-
-|0|--hostfile hosts --num_gpus 2 prog|mpirun -n 6  ;; --host a:2,b:2,c:2 |-|-
-|0|--hostfile hosts --num_gpus 3 prog|mpirun -n 8  ;; --host a:3,b:3,c:2 |-|warning: --num_gpus 3: host c has 2 slots to run on; it runs 2 ranks
-|0|--hostfile hosts --num_nodes 2 --num_gpus 1 prog|mpirun -n 2  ;; --host a:1,b:1 |c:|-
-|0|--hostfile hosts -n 5 --num_gpus 2 prog|mpirun -n 5  ;; --host a:2,b:2,c:2 |-|-
-|0|--hostfile hosts --exclude a --num_nodes 1 prog|mpirun -n 4  ;; --host b:4 |a:4 ;; c:2|-
-|0|--hostfile hosts --include 'a:2,3' --num_gpus 1 prog|mpirun -n 1  ;; --host a:1 |b: ;; c:|-
# --include / --exclude: DeepSpeed's host:slot,slot@host
-|0|--hostfile hosts --include 'a:0,1@b' prog|mpirun -n 6  ;; --host a:2,b:4 |c:2|-
-|0|-H hosts -i c prog|mpirun -n 2  ;; --host c:2 |a: ;; b:|-
-|0|--hostfile=hosts --include=b:1,3 prog|--host b:2 |-|warning: b: 2 slots selected
-|0|--hostfile hosts -e 'a:0@c' prog|mpirun -n 7  ;; --host a:3,b:4 |c:|-
# --hostfile's default: /job/hostfile when present (ZINC_DEFAULT_HOSTFILE here)
ZINC_DEFAULT_HOSTFILE=hosts|0|--num_nodes 1 prog|mpirun -n 4  ;; --host a:4 |-|note: hostfile hosts (DeepSpeed's default, present here)
ZINC_DEFAULT_HOSTFILE=hosts|0|--include c prog|--host c:2 |-|-
ZINC_DEFAULT_HOSTFILE=hosts|0|--hostfile one prog|--host localhost:1 |a:4|-
ZINC_DEFAULT_HOSTFILE=nothere|0|-n 2 prog|mpirun -n 2 |--host|-
ZINC_DEFAULT_HOSTFILE=.|0|-n 2 prog|mpirun -n 2 |--host|-
# --launcher, any case
-|0|--launcher slurm -n 2 prog a|srun -n 2 --cpus-per-task= ;; --export=ALL ;;  prog a|mpirun|-
-|0|--launcher SLURM --hostfile hosts --num_nodes 2 prog|srun -n 8  ;; --nodelist=a,b |a,b,c|-
-|0|--launcher OpenMPI -n 2 prog|mpirun -n 2 |-|-
-|0|--launcher mpich -n 2 prog a|mpiexec.hydra -n 2 -genvall -genv OMP_NUM_THREADS  ;;  prog a|mpirun ;; --mca ;; --allow-run-as-root ;; -x |built against Open MPI
-|0|--launcher MpIcH --hostfile hosts --include 'a@b:0' prog|mpiexec.hydra -n 5 -hosts a:4,b:1 |c:|-
# --master_addr / --master_port: exported to every rank
-|0|--master_port 29600 prog|-x MASTER_PORT=29600 |MASTER_ADDR|-
-|0|--master_addr node-0.example --master_port=1 prog|-x MASTER_ADDR=node-0.example -x MASTER_PORT=1 |-|-
-|0|--master_addr 10.0.0.1 prog|-x MASTER_ADDR=10.0.0.1 |MASTER_PORT|-
-|0|--master_addr fe80::1 prog|-x MASTER_ADDR=fe80::1 |-|-
-|0|--launcher slurm --master_addr a --master_port 65535 prog|,MASTER_ADDR=a,MASTER_PORT=65535 |-|-
-|0|--launcher mpich --master_addr 10.0.0.1 --master_port 29600 prog|-genv MASTER_ADDR 10.0.0.1 -genv MASTER_PORT 29600 |-|-
# --bind_cores_to_rank
-|0|--bind_cores_to_rank -n 1 prog|mpirun -n 1 --map-by slot:PE= ;;  --bind-to core |--bind-to none|-
-|0|--bind_cores_to_rank --launcher slurm -n 2 prog|--cpus-per-task= ;;  --cpu-bind=cores |-|-
-|0|--bind_cores_to_rank --launcher mpich -n 1 prog| -bind-to core:|-|-
# srun's --comment / --account
-|0|--launcher slurm --comment 'run 7' --account proj prog| '--comment=run 7' --account=proj |-|-
# accepted, no effect, one note each
-|0|--no_ssh_check prog|mpirun -n 1 |-|note: --no_ssh_check: zinc-run runs no ssh check of its own
-|0|--no_python --no_local_rank --force_multi prog|mpirun -n 1 |-|note: --no_python: ;; note: --no_local_rank: ;; note: --force_multi:
# errors: exit 2, one line naming the flag
-|2|--hostfile hosts --include 'a:x' prog|-|-|--include 'a:x': bad slot 'x' for a
-|2|--hostfile hosts --include 'a:' prog|-|-|--include 'a:': no slots after a:
-|2|--hostfile hosts --include 'a:0,' prog|-|-|--include 'a:0,': bad slot list for a
-|2|--hostfile hosts --include '@a' prog|-|-|--include '@a': empty host name
-|2|--hostfile hosts --include '' prog|-|-|--include: empty SPEC
-|2|--hostfile hosts --include 'a b' prog|-|-|--include: SPEC holds byte 0x20
-|2|--hostfile hosts --exclude z prog|-|-|--exclude: host z is not in hostfile hosts
-|2|--hostfile hosts --exclude 'c:2' prog|-|-|--exclude: slot 2 of c is out of range
-|2|--hostfile hosts --exclude 'a@b@c' prog|-|-|--exclude 'a@b@c' leaves no slots to run on
-|2|--hostfile hosts --include a --exclude b prog|-|-|--include and --exclude are exclusive
-|2|--include a prog|-|-|--include selects from a hostfile: give --hostfile F
-|2|--exclude a prog|-|-|--exclude selects from a hostfile: give --hostfile F
-|2|-n 3 --num_gpus 2 prog|-|-|-n 3 and --num_gpus 2 disagree: without a hostfile both are the ranks on this node
-|2|--num_accelerators 2 -n 1 prog|-|-|-n 1 and --num_gpus 2 disagree
-|2|--hostfile hosts -n 7 --num_gpus 2 prog|-|-|-n 7 and --num_gpus 2 disagree: hostfile hosts holds 6 ranks at 2 a host
-|2|--num_gpus 0 prog|-|-|--num_gpus: expected ranks per node from 1 to 4096, got '0'
-|2|--num_accelerators x prog|-|-|--num_accelerators: expected ranks per node from 1 to 4096, got 'x'
-|2|--num_gpus|-|-|--num_gpus needs a value
-|2|--num_nodes 2 prog|-|-|--num_nodes 2: without a hostfile zinc-run runs on this node only
-|2|--num_nodes 0 prog|-|-|--num_nodes: expected a node count from 1 to 65536, got '0'
-|2|--hostfile hosts --num_nodes 4 prog|-|-|--num_nodes 4: hostfile hosts leaves 3 hosts to run on
-|2|--hostfile hosts --exclude a --num_nodes 3 prog|-|-|--num_nodes 3: hostfile hosts leaves 2 hosts to run on
-|2|--hostfile missing prog|-|-|missing: cannot open hostfile: No such file
ZINC_DEFAULT_HOSTFILE=hosts|2|--hostfile missing prog|-|-|missing: cannot open hostfile: No such file
-|2|--master_port 0 prog|-|-|--master_port: expected a port from 1 to 65535, got '0'
-|2|--master_port 65536 prog|-|-|--master_port: expected a port from 1 to 65535, got '65536'
-|2|--master_port=http prog|-|-|--master_port: expected a port from 1 to 65535, got 'http'
-|2|--master_addr 'a b' prog|-|-|--master_addr 'a b': it holds a character other than
-|2|--master_addr -x prog|-|-|--master_addr '-x': it starts with '-' or '.'
-|2|--master_addr '' prog|-|-|--master_addr '': it is empty
-|2|--master_addr fe80::g prog|-|-|--master_addr 'fe80::g': it holds ':' but is not an IPv6 address
-|2|--launcher pdsh prog|-|-|--launcher pdsh: pdsh starts the ranks without an MPI launcher
-|2|--launcher mvapich prog|-|-|--launcher: expected openmpi, mpich or slurm (any case), got 'mvapich'
-|2|--launcher impi prog|-|-|--launcher: expected openmpi, mpich or slurm (any case), got 'impi'
-|2|--launcher jsrun prog|-|-|--launcher: expected openmpi, mpich or slurm (any case), got 'jsrun'
-|2|--comment x prog|-|-|--comment is passed to srun: it needs --launcher slurm
-|2|--launcher mpich --account x prog|-|-|--account is passed to srun: it needs --launcher slurm
-|2|--bind_cores_to_rank -n 65536 prog|-|-|--bind_cores_to_rank: 65536 ranks on a node cannot each have a core
-|2|--bogus prog|-|-|unknown option --bogus (zinc-run --help lists the flags)
-|2|--num-gpus 2 prog|-|-|unknown option --num-gpus (did you mean --num_gpus?)
-|2|--master-port=1 prog|-|-|unknown option --master-port=1 (did you mean --master_port?)
-|2|--max_restarts 1 prog|-|-|unknown option --max_restarts (did you mean --max-restarts?)
-|2|--dry-run=yes prog|-|-|--dry-run takes no value
-|2|--bind_cores_to_rank=1 prog|-|-|--bind_cores_to_rank takes no value
# DeepSpeed's flags that do not apply: refused, saying what to do instead
-|2|--launcher_args '--mca btl tcp' prog|-|-|--launcher_args is DeepSpeed's and does not apply: ;; OMPI_MCA_*
-|2|--module prog|-|-|--module is DeepSpeed's and does not apply: ;; give PROGRAM
-|2|--autotuning tune prog|-|-|--autotuning is DeepSpeed's and does not apply: zinc has no autotuner
-|2|--elastic_training prog|-|-|--elastic_training is DeepSpeed's and does not apply: ;; --max-restarts N --elastic
-|2|--min_elastic_nodes 1 prog|-|-|--min_elastic_nodes is DeepSpeed's and does not apply:
-|2|--max_elastic_nodes=2 prog|-|-|--max_elastic_nodes is DeepSpeed's and does not apply:
-|2|--no_ssh prog|-|-|--no_ssh is DeepSpeed's and does not apply: ;; run it once
-|2|--node_rank 0 prog|-|-|--node_rank is DeepSpeed's and does not apply:
-|2|--save_pid prog|-|-|--save_pid is DeepSpeed's and does not apply: zinc-run writes no pid file
-|2|--enable_each_rank_log logs prog|-|-|--enable_each_rank_log is DeepSpeed's and does not apply:
-|2|--ssh_port 2222 prog|-|-|--ssh_port is DeepSpeed's and does not apply: ;; ~/.ssh/config
-|2|--venv_script env/bin/activate prog|-|-|--venv_script is DeepSpeed's and does not apply: ;; activate
-|2|--bind_core_list 0-3 prog|-|-|--bind_core_list is DeepSpeed's and does not apply: ;; --bind_cores_to_rank
EOF
)

rows=0
while IFS='|' read -r -u 3 envs want args out_has out_lacks err_has; do
    case $envs in '#'* | '') continue ;; esac
    rows=$((rows + 1))
    check_row "$envs" "$want" "$args" "$out_has" "$out_lacks" "$err_has"
done 3<<<"$TABLE"
[ "$rows" -ge 90 ] || { fails=$((fails + 1)); echo "FAIL: only $rows table rows were read"; }

# The table's checks can fail: a wrong piece, a piece that must be absent, a
# wrong status, an error line without the piece, and an error of two lines
# (a note, then the error) each fail their row.
bad_row() {
    local f0=$fails c0=$checks
    check_row "$@" >/dev/null
    checks=$((c0 + 1))
    if [ "$fails" -eq "$f0" ]; then
        fails=$((f0 + 1))
        echo "FAIL: a wrong row passed: $*"
    else
        fails=$f0
    fi
}
checks=$((checks + 1))
[ "$(pieces 'x ;; y z ;;  w' | tr '\n' '|')" = "x|y z| w|" ] ||
    { fails=$((fails + 1)); echo "FAIL: pieces does not split on ' ;; '"; }
bad_row - 0 "--num_gpus 2 prog" "mpirun -n 3 " - -
bad_row - 0 "--hostfile hosts prog" - "b:4 ;; c:2" -
bad_row - 0 "--num_gpus 2 prog" - "mpirun -n 2 " -
bad_row - 2 "--num_gpus 2 prog" - - -
bad_row - 2 "--num_gpus 0 prog" - - "--num_nodes"
bad_row - 2 "--no_ssh_check --bogus prog" - - "--bogus"

# --help lists DeepSpeed's flags too.
run 0 "$RUN" --help
has "$OUT" "--num_gpus N, --num_accelerators N"
has "$OUT" "--launcher L      openmpi (mpirun, the default), mpich (mpiexec.hydra) or"

# --- real jobs: Open MPI takes the command zinc-run builds ---------------------
run 0 "$RUN" --num_gpus 2 --master_addr 127.0.0.1 --master_port 29600 sh -c \
    'test "$MASTER_ADDR" = 127.0.0.1 && test "$MASTER_PORT" = 29600 && test "$OMPI_COMM_WORLD_SIZE" = 2'
run 0 "$RUN" -n 1 --bind_cores_to_rank sh -c 'test "$OMPI_COMM_WORLD_SIZE" = 1'
run 0 "$RUN" --hostfile one --num_nodes 1 --num_gpus 1 --no_ssh_check true
has "$ERR" "note: --no_ssh_check"

finish
