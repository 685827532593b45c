#!/usr/bin/env bash
# Fresh machine -> a CLs scan of the example grid, then the service on http://127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e .
export PATH="$PWD/.venv/bin:$PATH"
echo "== local scan of workspaces/example (25 signal points, CLs + upper limits) -> results.json"
fitserve scan workspaces/example/BkgOnly.json workspaces/example/patchset.json -o results.json --limits
echo "== starting the service (embedded Redis, local Parsl workers); Ctrl-C stops everything"
exec fitserve up --host 127.0.0.1 --port "${PORT:-8000}"
