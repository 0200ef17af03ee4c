#!/usr/bin/env bash
# Build the agent's wheel plus its dependencies' wheels on the controller, reproducibly (the same
# sources give byte-identical wheels, so copying them to the hosts is idempotent).
# Usage: build-wheels.sh PYTHON SOURCE_DIR OUT_DIR [extra pip wheel args...]
set -euo pipefail
python="$1" src="$2" out="$3"
shift 3
[[ -f "$src/pyproject.toml" ]] || { echo "error: $src/pyproject.toml not found" >&2; exit 2; }
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Build from a clean copy: a stale build/ or *.egg-info in the work tree must not leak into the wheel.
tar -C "$src" --exclude=build --exclude=dist --exclude='*.egg-info' --exclude=__pycache__ \
  --exclude=.venv --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache \
  --exclude=.hypothesis -cf - . | tar -C "$tmp" -xf -
export SOURCE_DATE_EPOCH=315532800 PIP_DISABLE_PIP_VERSION_CHECK=1
"$python" -m pip wheel --quiet --wheel-dir "$tmp/wheels" "$@" "$tmp" >&2
# Replace the output only where a wheel's content changed.
for whl in "$tmp"/wheels/*.whl; do
  name="$(basename "$whl")"
  if ! cmp -s "$whl" "$out/$name"; then cp "$whl" "$out/$name"; fi
done
ls "$tmp"/wheels
