#!/usr/bin/env bash
# Create .venv with everything the demo and the tests need. Idempotent: a second run
# only checks. Needs Python 3.10+ and Java 17 (PySpark 4).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Caches stay out of the working tree.
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pip}
export PIP_DISABLE_PIP_VERSION_CHECK=1

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "dear-rerank needs Python 3.10+")'
java -version >/dev/null 2>&1 || { echo "dear-rerank needs Java 17 for Spark (java not found)" >&2; exit 1; }

STAMP=.venv/.dear-rerank-installed
WANT=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --no-compile --upgrade pip
# The CPU wheel of torch; any other torch spec pulls several GB of CUDA packages.
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install -q --no-compile "torch==2.13.0"
.venv/bin/python -m pip install -q --no-compile -c constraints.txt -e ".[dev]"
echo "$WANT" > "$STAMP"
