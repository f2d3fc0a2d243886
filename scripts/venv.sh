# Sourced by the other scripts: create .venv and install the project with every extra.
# PyTorch is pinned to 2.13.0, whose CPU wheel the build machines carry.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q -e '.[all]' 2>&1 | grep -v -E "^WARNING: Location|^$" || true
python -c "import tinymlops, onnxruntime, torch" || { echo "installation failed" >&2; exit 1; }
