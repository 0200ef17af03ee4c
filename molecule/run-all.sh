#!/usr/bin/env bash
# `make molecule`: build (or reuse) the base image, then `molecule test` for each scenario
# (default and fleet, or those named as arguments). `molecule test` destroys its containers (and with
# them their veth links) even when a step fails; an interrupt destroys the running scenario too.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
export CONTAINERS_CONF="$here/containers.conf"
export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-0}" PY_COLORS="${PY_COLORS:-0}"
if [[ $# -gt 0 ]]; then scenarios=("$@"); else scenarios=(default fleet); fi

"$here/build-image.sh" || { echo "molecule: building the base image failed" >&2; exit 1; }

current=""
on_interrupt() {
  [[ -n "$current" ]] && molecule destroy -s "$current" >/dev/null 2>&1
  exit 130
}
trap on_interrupt INT TERM

rc=0
summary=()
for s in "${scenarios[@]}"; do
  current="$s"
  start=$(date +%s)
  echo ">> molecule test -s $s"
  if molecule test -s "$s" --destroy always; then result=passed; else
    result=FAILED
    rc=1
    molecule destroy -s "$s" >/dev/null 2>&1 || true
  fi
  summary+=("molecule: scenario $s $result in $(( $(date +%s) - start )) s")
done
current=""
printf '%s\n' "${summary[@]}"
exit $rc
