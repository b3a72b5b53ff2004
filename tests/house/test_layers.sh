#!/usr/bin/env bash
# The house's layering (ARCHITECTURE.md, "Layers of the house"): a file never
# includes a header of a layer above its own, and a folder's private header
# (*_int.h) is included only inside that folder. Levels, lowest first:
#   0 core/          status tensor log rng progress file clock sysmem ops device (interfaces)
#   1 offload/ data/ aio offload; data tokenizer
#   2 kernels/       blas ops_cuda (and the cpu/cuda devices and op tables)
#   3 comm/          comm
#   4 zero/ checkpoint/ tensor_parallel/ pipeline/   zero; ckpt safetensors; tp; pipeline
#   5 engine/        config engine
#   6 models/ monitor/   gpt2 llama model (the factory); monitor (TensorBoard, CSV)
#   7 tools/ launcher/
# Tests and benchmarks may look inside any module (white-box tests).
set -u
cd "$(dirname "$0")/../.."
fail=0
level_of_header() {
    case $1 in
        status|tensor|log|rng|progress|file|clock|sysmem|ops|device) echo 0 ;;
        aio|offload|data|tokenizer) echo 1 ;;
        blas|ops_cuda) echo 2 ;;
        comm) echo 3 ;;
        zero|ckpt|safetensors|tp|pipeline) echo 4 ;;
        config|engine) echo 5 ;;
        gpt2|llama|model|monitor) echo 6 ;;
        *) echo 99 ;;
    esac
}
level_of_dir() {
    case $1 in
        core) echo 0 ;; offload|data) echo 1 ;; kernels/cpu|kernels/cuda) echo 2 ;; comm) echo 3 ;;
        zero|checkpoint|tensor_parallel|pipeline) echo 4 ;; engine) echo 5 ;; models|monitor) echo 6 ;;
        tools|launcher) echo 7 ;; *) echo -1 ;;
    esac
}
n=0
for f in $(git ls-files --cached --others --exclude-standard -- '*.c' '*.h' '*.cu' | grep -v '^tests/\|^bench/'); do
    [ -f "$f" ] || continue
    dir=$(dirname "$f")
    [ "${dir%%/*}" = include ] && dir=include
    lv=$(level_of_dir "$dir")
    while IFS= read -r inc; do
        n=$((n+1))
        case $inc in
            zinc/*)
                h=${inc#zinc/}; h=${h%.h}
                hl=$(level_of_header "$h")
                if [ "$hl" = 99 ]; then
                    echo "FAIL: $f includes $inc, which this check does not place in a layer (add it)"; fail=1
                elif [ "$dir" != include ] && [ "$lv" -ge 0 ] && [ "$hl" -gt "$lv" ]; then
                    echo "FAIL: $f (layer $lv) includes $inc (layer $hl, above it)"; fail=1
                fi ;;
            *_int.h)
                # a private header: only from its own folder (a bare name, no path)
                if [[ $inc == */* ]] || [ ! -f "$dir/$inc" ]; then
                    echo "FAIL: $f includes $inc, another folder's private header"; fail=1
                fi ;;
        esac
    done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
done
# public headers: what each includes must be at or below its own layer
for f in include/zinc/*.h; do
    own=$(level_of_header "$(basename "$f" .h)")
    while IFS= read -r inc; do
        h=${inc#zinc/}; h=${h%.h}
        hl=$(level_of_header "$h")
        if [ "$hl" -gt "$own" ]; then echo "FAIL: $f (layer $own) includes $inc (layer $hl)"; fail=1; fi
    done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\(zinc\/[^"]*\)".*/\1/p' "$f")
done
[ $n -gt 100 ] || { echo "FAIL: only $n includes found: the check is not reading the tree"; fail=1; }
[ $fail -eq 0 ] && echo "layers: $n includes checked, none points up or into another folder's private header"
exit $fail
