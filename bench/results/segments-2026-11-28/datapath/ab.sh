#!/bin/bash
# Alternate two versions of the agent's source in datapath_ceiling runs (the versions are source trees
# put first on PYTHONPATH; the venv's editable install comes after it).
#   ab.sh OUT PAIRS "RUN_BENCH_ARGS" NAME_A=SRC_A NAME_B=SRC_B
# The three A/Bs of 28 Nov ran this loop with the paths written in (results copied here as
# NAME-i.json/.log); /tmp/old: a worktree of 622a6e9; /tmp/mend: the next commit's tree; /tmp/var:
# that tree with CUT_BELOW = 1 << 30:
#   ab.sh full-ab    2 "--reps 3" old=/tmp/old/files/mptcp_tunnel/src new=/work/main/files/mptcp_tunnel/src
#   ab.sh backlog-ab 3 "--quick"  main=/work/main/files/mptcp_tunnel/src mend=/tmp/mend/files/mptcp_tunnel/src
#   ab.sh cut-all-ab 2 "--quick"  var=/tmp/var/src mend=/tmp/mend/files/mptcp_tunnel/src
set -eu
out=$1 pairs=$2 args=$3
shift 3
mkdir -p "$out"
cd /work/main/bench
export PATH=/work/main/.venv/bin:$PATH
for i in $(seq "$pairs"); do
  for version in "$@"; do
    name=${version%%=*} src=${version#*=}
    echo "== $name $i $(date -u +%T)"
    # shellcheck disable=SC2086  # the run_bench arguments are words
    PYTHONPATH=$src:/work/main/lab:/work/main/bench MT_LAB_PREFIX=mb- \
      flock /tmp/mt-heavy.lock flock /tmp/mt-lab.lock \
      python -m run_bench --only datapath_ceiling $args --out "$out/$name-$i" > "$out/$name-$i.log" 2>&1
    grep -h "ceiling" "$out/$name-$i.log" | tail -4
  done
done
