#!/bin/bash
cd /work/main/bench
export PATH=/work/main/.venv/bin:$PATH
for i in 1 2; do
  for v in old new; do
    if [ $v = old ]; then PP=/tmp/old/files/mptcp_tunnel/src:/work/main/lab:/work/main/bench; else PP=/work/main/lab:/work/main/bench; fi
    echo "== $v $i $(date -u +%T)"
    PYTHONPATH=$PP MT_LAB_PREFIX=mb- flock /tmp/mt-heavy.lock flock /tmp/mt-lab.lock python -m run_bench --only datapath_ceiling --reps 3 --out /tmp/ab/$v-$i > /tmp/ab/$v-$i.log 2>&1
    grep -h "Mbit/s\|ratio\|/ raw" /tmp/ab/$v-$i.log | tail -20
  done
done
echo DONE $(date -u +%T)
