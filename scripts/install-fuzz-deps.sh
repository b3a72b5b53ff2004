#!/usr/bin/env bash
# Installs what `make fuzz` needs beyond scripts/install-deps.sh, only what is
# missing: clang, its runtime libraries (libFuzzer, ASan, UBSan) and libomp
# (clang's -fopenmp). Debian 12 (apt-get). Uses sudo when not root.
# Idempotent and quiet when everything is present.
set -euo pipefail
pkgs=(clang libclang-rt-dev libomp-dev)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "zinc: make fuzz needs ${missing[*]} and there is no apt-get to install them" >&2
    exit 1
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "zinc: installing ${missing[*]} for make fuzz" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
