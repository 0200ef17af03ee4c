#!/bin/bash
set -u
export PATH=/work/main/.venv/bin:$PATH
run() { # name agent-src
  local name=$1 src=$2
  echo "== $name $(date -u +%T)"
  (cd /work/main/bench && PYTHONPATH=$src:/work/main/lab:/work/main/bench MT_LAB_PREFIX=mb- \
    flock /tmp/mt-heavy.lock flock /tmp/mt-lab.lock python -m run_bench --only latency \
    --latency-contenders mptcp-tunnel-fq-links --out /tmp/bgw-ab/$name > /tmp/bgw-ab/$name.log 2>&1)
  grep -h "fq-links" /tmp/bgw-ab/$name/RESULTS.md | cut -d'|' -f3,6,8
}
for i in 1 2; do
  run exp-$i /tmp/bgwlim/src
  run base-$i /work/main/files/mptcp_tunnel/src
done
echo "== done $(date -u +%T)"
