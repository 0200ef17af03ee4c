#!/bin/bash
cd /work/main/bench
export PATH=/work/main/.venv/bin:$PATH
for i in 1 2; do
  for v in var mend; do
    if [ $v = mend ]; then PP=/tmp/mend/files/mptcp_tunnel/src:/work/main/lab:/work/main/bench; else PP=/tmp/var/src:/work/main/lab:/work/main/bench; fi
    echo "== $v $i $(date -u +%T)"
    PYTHONPATH=$PP MT_LAB_PREFIX=mb- flock /tmp/mt-heavy.lock flock /tmp/mt-lab.lock python -m run_bench --only datapath_ceiling --quick --out /tmp/ab/q-$v-$i > /tmp/ab/q-$v-$i.log 2>&1
    grep -h "ceiling" /tmp/ab/q-$v-$i.log | tail -4
  done
done
echo DONE $(date -u +%T)
