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

# Freeze the agent's source for this run: every step deploys the same agent.
snapshot="$(mktemp -d /tmp/mt-agent-src.XXXXXX)"
tar -C files/mptcp_tunnel --exclude=.venv --exclude=build --exclude='*.egg-info' --exclude=__pycache__ \
  --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache --exclude=.hypothesis -cf - . \
  | tar -C "$snapshot" -xf -
export MT_AGENT_SOURCE="$snapshot"

current="" child=""
on_interrupt() {
  [[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null && wait "$child" 2>/dev/null
  [[ -n "$current" ]] && molecule destroy -s "$current" >/dev/null 2>&1
  rm -rf "$snapshot"
  exit 130
}
trap on_interrupt INT TERM

rc=0
summary=()
for s in "${scenarios[@]}"; do
  current="$s"
  start=$(date +%s)
  echo ">> molecule test -s $s"
  # in the background + wait, so that an interrupt is handled at once
  molecule test -s "$s" --destroy always &
  child=$!
  if wait "$child"; then result=passed; else
    result=FAILED
    rc=1
    molecule destroy -s "$s" >/dev/null 2>&1 || true
  fi
  summary+=("molecule: scenario $s $result in $(( $(date +%s) - start )) s")
done
current=""
rm -rf "$snapshot"
printf '%s\n' "${summary[@]}"
exit $rc
