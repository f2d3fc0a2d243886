#!/usr/bin/env bash
# Install everything the tests need and run the whole suite (lint, SQLite and PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
echo "== Chromium (browser tests)"
scripts/browser.sh
echo "== ruff"
ruff check src tests benchmarks
echo "== PostgreSQL"
TINYMLOPS_TEST_PG_URL="$(scripts/postgres.sh start)"
export TINYMLOPS_TEST_PG_URL
echo "== pytest"
# On every core (pytest-xdist): each test module goes to one worker as a whole, the modules with slow
# tests first (tests/conftest.py). Pass -n 0 to run in one process.
python -m pytest -q -p no:cacheprovider --durations=30 -n auto --dist loadfile --no-loadscope-reorder "$@"
