#!/bin/bash
# A/B of fqcodel.GATE_FLOOR for the fq-links latency (29 Nov, 03:12-03:30 UTC; results were written to
# /tmp/gate-ab and copied here): 16 KiB (main's agent, unchanged since e65240e) against 6 KiB (a copy of the agent's source
# with only that constant changed), alternating, each its own latency run.
set -u
export PATH=/work/main/.venv/bin:$PATH
run() { # name agent-src
  local name=$1 src=$2
  echo "== $name $(date -u +%T)"
  (cd /work/main/bench && PYTHONPATH=$src:/work/main/lab:/work/main/bench MT_LAB_PREFIX=mb- \
    flock /tmp/mt-heavy.lock flock /tmp/mt-lab.lock python -m run_bench --only latency \
    --latency-contenders mptcp-tunnel-fq-links --out /tmp/gate-ab/$name > /tmp/gate-ab/$name.log 2>&1)
  grep -h "fq-links" /tmp/gate-ab/$name/RESULTS.md | cut -d'|' -f3,6,8
}
for i in 1 2 3; do
  run base-$i /work/main/files/mptcp_tunnel/src
  run g6k-$i /tmp/gate6k/src
done
echo "== done $(date -u +%T)"
