#!/usr/bin/env bash
# `make molecule`: build (or reuse) the base image, then `molecule test` for each scenario.
# Every scenario destroys its containers (and with them its veth links) even when it fails.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
export CONTAINERS_CONF="$here/containers.conf"
export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-0}"
scenarios=("${@:-default}")
[[ $# -eq 0 ]] && scenarios=(default fleet)

"$here/build-image.sh" || { echo "molecule: building the base image failed" >&2; exit 1; }

rc=0
declare -A took
for s in "${scenarios[@]}"; do
  start=$(date +%s)
  echo ">> molecule test -s $s"
  if ! molecule test -s "$s"; then
    echo "molecule: scenario $s FAILED" >&2
    rc=1
    molecule destroy -s "$s" >/dev/null 2>&1 || true
  fi
  took[$s]=$(( $(date +%s) - start ))
done
for s in "${scenarios[@]}"; do echo "molecule: $s took ${took[$s]} s"; done
exit $rc
