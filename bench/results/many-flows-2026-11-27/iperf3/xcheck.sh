#!/bin/bash
# plain iperf3 through the running mc- lab: N cubic downloads, 16 s after 4 s omitted, optional UDP beside
P=mc-; S=172.16.0.2
run() { # $1 flows $2 udp(0/1) $3 label
  ip netns exec ${P}server iperf3 -s -1 -p 5301 >/dev/null 2>&1 & SP=$!
  [ $2 = 1 ] && { ip netns exec ${P}server iperf3 -s -1 -p 5302 >/dev/null 2>&1 & UP=$!; }
  sleep 1
  [ $2 = 1 ] && { ip netns exec ${P}client iperf3 -c $S -p 5302 -u -b 1M -l 200 -R -t 21 -J > /tmp/mb/x-udp-$3.json 2>&1 & UC=$!; }
  ip netns exec ${P}client iperf3 -c $S -p 5301 -R -P $1 -C cubic -t 16 -O 4 -J > /tmp/mb/x-tcp-$3.json 2>&1
  [ $2 = 1 ] && wait $UC
  wait $SP; [ $2 = 1 ] && wait $UP
  python3 - "$3" "$2" <<'PY'
import json, sys
lab, udp = sys.argv[1], sys.argv[2] == "1"
d = json.load(open(f"/tmp/mb/x-tcp-{lab}.json"))
e = d["end"]; mb = e["sum_received"]["bits_per_second"] / 1e6
rates = [s["receiver"]["bits_per_second"] for s in e["streams"]]
jain = sum(rates) ** 2 / (len(rates) * sum(r * r for r in rates))
out = f"{lab}: tcp {mb:.2f} Mbit/s = {mb/14.34:.3f} of link sum, jain {jain:.3f}"
if udp:
    u = json.load(open(f"/tmp/mb/x-udp-{lab}.json"))["end"]["sum"]
    out += f"; udp {u['bits_per_second']/1e6:.2f} Mbit/s lost {u['lost_percent']:.2f} %"
print(out)
PY
}
for i in 1 2; do run 8 0 p8-$i; run 8 1 p8u-$i; run 1 0 p1-$i; run 1 1 p1u-$i; done
