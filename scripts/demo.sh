#!/usr/bin/env bash
# Install tinymlops and run the main job on embedded defaults (SQLite, local files).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
exec tinymlops demo "$@"
