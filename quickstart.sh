#!/usr/bin/env bash
# Fresh clone -> a CLs scan of the example grid, then your own private service on http://127.0.0.1:8000.
#   PORT=8001 ./quickstart.sh        another port (if 8000 is taken)
#   QUICKSTART_NO_INSTALL=1 ...      use the fitserve already on PATH (tests/test_docs.py does)
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${QUICKSTART_NO_INSTALL:-}" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    # pandas: the README's and the analyst guide's snippets use results as a DataFrame
    .venv/bin/pip install -q -e '.[pandas]'
    export PATH="$PWD/.venv/bin:$PATH"
fi
mkdir -p results   # gitignored: what the quickstart and the README write stays out of git status
echo "== local scan of workspaces/example (25 signal points, CLs + upper limits) -> results/example.json"
fitserve scan workspaces/example/BkgOnly.json workspaces/example/patchset.json -o results/example.json --limits
echo "== starting your own service (private embedded Redis under ./var, local Parsl workers); Ctrl-C stops everything"
exec fitserve up --host 127.0.0.1 --port "${PORT:-8000}"
