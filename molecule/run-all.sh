#!/usr/bin/env bash
# `make molecule`: build (or reuse) the base images, then `molecule test` for each scenario named
# (`make test`: default and fleet; with no names: default, fleet, vm-kernel). `molecule test` destroys its
# containers (and with them their veth links) or VMs (and their overlays) even when a step fails; an
# interrupt destroys the running scenario too. The vm-* scenarios boot QEMU VMs in software emulation:
# on a shared machine run them under `flock /tmp/mt-heavy.lock`.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
export CONTAINERS_CONF="$here/containers.conf"
export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-0}" PY_COLORS="${PY_COLORS:-0}"
# The QEMU scenarios run after `make test` in CI (.ci/run). Not beside the podman ones: tried on 29 Nov,
# both are CPU-bound on 2 cores, so each ran ~1.5 times (vm-e2e's two VMs ~2.5 times) as long.
if [[ $# -gt 0 ]]; then scenarios=("$@"); else scenarios=(default fleet vm-kernel); fi

containers=0 vms=0
for s in "${scenarios[@]}"; do if [[ "$s" == vm-* ]]; then vms=1; else containers=1; fi; done
if (( containers )); then
  "$here/build-image.sh" || { echo "molecule: building the base image failed" >&2; exit 1; }
fi
if (( vms )); then
  start=$(date +%s)
  "$here/build-vm-image.sh" >/dev/null || { echo "molecule: building the VM image failed" >&2; exit 1; }
  echo "molecule: VM image ready in $(( $(date +%s) - start )) s"
fi

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
