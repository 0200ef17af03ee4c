#!/bin/bash
# tonight's machine vs the code: the 26 Nov revision (6f1e658, its own bench and lab) and HEAD, alternating
set -u
export PATH=/work/main/.venv/bin:$PATH
run() { # name tree args...
  local name=$1 tree=$2; shift 2
  echo "== $name $(date -u +%T)"
  (cd $tree/bench && PYTHONPATH=$tree/files/mptcp_tunnel/src:$tree/lab:$tree/bench MT_LAB_PREFIX=mb- \
    flock /tmp/mt-heavy.lock flock /tmp/mt-lab.lock python -m run_bench "$@" --out /tmp/ab-night/$name > /tmp/ab-night/$name.log 2>&1)
  grep -h "ceiling\|fleet_scale N" /tmp/ab-night/$name.log | tail -6
}
mkdir -p /tmp/ab-night
run old-dp /tmp/old6f --quick --only datapath_ceiling
run new-dp /work/main --quick --only datapath_ceiling
run old-fleet /tmp/old6f --only fleet_scale --fleet-sizes 10000
run old-dp2 /tmp/old6f --quick --only datapath_ceiling
run new-dp2 /work/main --quick --only datapath_ceiling
