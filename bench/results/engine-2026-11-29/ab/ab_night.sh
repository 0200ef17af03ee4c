#!/bin/bash
# The runs in this directory (29 Nov, 00:39-00:55 UTC): the 26 Nov revision against this code, alternating.
# /tmp/old6f: `git worktree add /tmp/old6f 6f1e658` (removed afterwards). Each run names the agent's
# source tree and the tree whose lab and benchmarks run it (the new lab imports modules the old
# agent lacks, so only the old lab can run both agents).
set -u
export PATH=/work/main/.venv/bin:$PATH
run() { # name agent-tree lab-tree run_bench-args...
  local name=$1 agent=$2 lab=$3; shift 3
  echo "== $name $(date -u +%T)"
  (cd $lab/bench && PYTHONPATH=$agent/files/mptcp_tunnel/src:$lab/lab:$lab/bench MT_LAB_PREFIX=mb- \
    flock /tmp/mt-heavy.lock flock /tmp/mt-lab.lock python -m run_bench "$@" --out /tmp/ab-night/$name > /tmp/ab-night/$name.log 2>&1)
  grep -h "ceiling\|fleet_scale N" /tmp/ab-night/$name.log | tail -6
}
old=/tmp/old6f new=/work/main
mkdir -p /tmp/ab-night
# each revision in its own lab
run old-dp $old $old --quick --only datapath_ceiling
run new-dp $new $new --quick --only datapath_ceiling
run old-fleet $old $old --only fleet_scale --fleet-sizes 10000
run old-dp2 $old $old --quick --only datapath_ceiling
run new-dp2 $new $new --quick --only datapath_ceiling
for i in 3 4 5; do
  run new-dp$i $new $new --quick --only datapath_ceiling
  run old-dp$i $old $old --quick --only datapath_ceiling
done
# both agents in the old lab
for i in 1 2; do
  run newagent-oldlab-$i $new $old --quick --only datapath_ceiling
  run oldagent-oldlab-$i $old $old --quick --only datapath_ceiling
done
