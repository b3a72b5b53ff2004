#!/usr/bin/env bash
# Installs the system packages zinc builds against, only those missing.
#
#   scripts/install-deps.sh          what `make`, `make test` and `make run` need
#   scripts/install-deps.sh fuzz     what `make fuzz` needs besides: clang, its runtime
#                                    libraries (libFuzzer, ASan, UBSan) and libomp
#   scripts/install-deps.sh pyref    python3 with venv, for the test-only Python references
#                                    (scripts/pyref.sh)
#
# Debian 12 (apt-get). Uses sudo when not root. Idempotent and quiet when
# everything is present.
set -euo pipefail
case "${1:-build}" in
    build) what="zinc"
           # g++ and pkg-config: the install test builds C++ and the example against zinc.pc
           pkgs=(gcc g++ make pkg-config libopenmpi-dev openmpi-bin libjansson-dev liburing-dev libcunit1-dev
                 libopenblas-dev libopenblas0-openmp libpcre2-dev) ;;
    fuzz)  what="make fuzz"
           pkgs=(clang libclang-rt-dev libomp-dev) ;;
    pyref) what="the tests' Python references"
           pkgs=(python3 python3-venv python3-pip) ;;
    *) echo "install-deps.sh: unknown package set '$1' (build, fuzz or pyref)" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "zinc: $what needs ${missing[*]} and there is no apt-get to install them" >&2
    exit 1
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "zinc: installing ${missing[*]} for $what" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
