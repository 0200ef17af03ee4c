#!/bin/bash
set -u
export PATH=/work/main/.venv/bin:$PATH
name=${1:-dly-1}
echo "== $name start $(date -u +%s) $(date -u +%T)"
(cd /work/main/bench && MT_DLY_FIFO=${FIFO:-} PYTHONPATH=/work/main/files/mptcp_tunnel/src:/work/main/lab:/work/main/bench MT_LAB_PREFIX=mb- \
    flock /tmp/mt-heavy.lock flock /tmp/mt-lab.lock python -u -m run_bench --only latency \
    --latency-contenders mptcp-tunnel-fq-links --out /tmp/dly/$name 2>&1 | while IFS= read -r l; do echo "$(date -u +%s) $l"; done > /tmp/dly/$name.log)
echo "== $name end $(date -u +%T)"
