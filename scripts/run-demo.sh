#!/usr/bin/env bash
# `make run`: trains the demo GPT on this repository's own source files
# (tokenized at start, nothing downloaded) with 2 data-parallel ranks.
set -eu
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
exec "$BUILD/zinc-run" -n 2 "$BUILD/zinc-train" configs/demo.json "$@"
