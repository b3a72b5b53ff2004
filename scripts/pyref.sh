#!/usr/bin/env bash
# Prints the path of a Python with the test-only reference packages (the `tokenizers`
# library, numpy and jinja2 for chat templates, pinned), making the virtual environment on first use:
#   scripts/pyref.sh [DIR]     DIR: where the environment lives (default build/pyref)
# zinc itself never runs Python; tests use this one as an independent reference. Needs
# python3 with venv (scripts/install-deps.sh pyref installs it) and the package index.
set -euo pipefail
dir=${1:-build/pyref}
want="tokenizers==0.23.3 numpy==2.4.6 jinja2==3.1.6 markupsafe==3.0.3"
if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import tokenizers, numpy, jinja2" 2>/dev/null; then
    echo "$dir/bin/python"
    exit 0
fi
if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
    "$(dirname "$0")/install-deps.sh" pyref >&2
fi
rm -rf "$dir"
python3 -m venv "$dir" >&2
"$dir/bin/pip" install -q --disable-pip-version-check $want >&2 \
    || { echo "pyref.sh: could not install $want into $dir (is the package index reachable?)" >&2; exit 1; }
echo "$dir/bin/python"
