#!/usr/bin/env bash
# The lab fleet of inventory/lab as podman containers (systemd inside), deployed with the real site.yml:
#   molecule/lab-demo.sh up [--delay-ms MS] [--no-deploy]   containers, links (tbf + NFQUEUE delay), site.yml
#   molecule/lab-demo.sh down                                 remove delayers, containers (and so their links)
#   molecule/lab-demo.sh status
# `up` leaves the fleet running for traffic (client: mtl-client1 192.168.10.2, server: mtl-server 172.16.0.2);
# if it fails, it tears everything down again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
export CONTAINERS_CONF="$here/containers.conf"
IMAGE="${MT_IMAGE:-localhost/mptcp-tunnel-base:bookworm}"
TOPOLOGY="$repo/inventory/lab/topology.yml"
STATE="${MT_LAB_DEMO_STATE:-/run/mptcp-tunnel-lab-demo}"
PY="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
ANSIBLE_PLAYBOOK="$(dirname "$PY")/ansible-playbook"
[[ -x "$ANSIBLE_PLAYBOOK" ]] || ANSIBLE_PLAYBOOK=ansible-playbook

containers() {
  "$PY" -c 'import sys, yaml
t = yaml.safe_load(open(sys.argv[1]))
print(" ".join(sorted({l[s]["host"] for l in t["links"] for s in ("a", "b")})))' "$TOPOLOGY"
}

pid_of() { podman inspect -f '{{.State.Pid}}' "$1"; }

# Delay = one NFQUEUE delayer per receiving end of each access link (the lab's mtlab.delayer),
# running on the host inside the container's network namespace.
DELAY_ENDS=("mtl-cpe1 wan_fixed 11" "mtl-bgw1 fixed0 12" "mtl-cpe1 wan_cell 21" "mtl-bgw1 cell0 22")

start_delayers() {
  local ms="$1" c dev q pid
  mkdir -p "$STATE"
  for end in "${DELAY_ENDS[@]}"; do
    read -r c dev q <<<"$end"
    pid="$(pid_of "$c")"
    nsenter -t "$pid" -n env PYTHONPATH="$repo/lab" "$PY" -m mtlab.delayer --queue "$q" --delay-ms "$ms" \
      >"$STATE/delay-$c-$dev.log" 2>&1 &
    echo $! >"$STATE/delay-$c-$dev.pid"
    for _ in $(seq 100); do grep -q "delayer: queue" "$STATE/delay-$c-$dev.log" && break; sleep 0.05; done
    grep -q "delayer: queue" "$STATE/delay-$c-$dev.log" \
      || { echo "lab-demo: delayer for $c/$dev did not start: $(tail -3 "$STATE/delay-$c-$dev.log")" >&2; return 1; }
    for tool in iptables ip6tables; do
      nsenter -t "$pid" -n "$tool" -w -t mangle -A PREROUTING -i "$dev" -j NFQUEUE --queue-num "$q"
    done
  done
}

stop_delayers() {
  local f pid
  for f in "$STATE"/delay-*.pid; do
    [[ -e "$f" ]] || continue
    pid="$(cat "$f")"
    kill "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

down() {
  stop_delayers
  # shellcheck disable=SC2046
  podman rm -f -t 5 $(containers) >/dev/null 2>&1 || true
  rm -rf "$STATE"
  echo "lab-demo: down"
}

up() {
  local delay_ms=25 deploy=1
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --delay-ms) delay_ms="$2"; shift 2 ;;
      --no-deploy) deploy=0; shift ;;
      *) echo "lab-demo: unknown option $1" >&2; exit 2 ;;
    esac
  done
  "$here/build-image.sh"
  trap 'echo "lab-demo: failed, tearing down" >&2; down' ERR
  for c in $(containers); do
    if [[ "$(podman inspect -f '{{.State.Running}}' "$c" 2>/dev/null)" != "true" ]]; then
      podman rm -f "$c" >/dev/null 2>&1 || true
      podman run -d --name "$c" --hostname "${c#mtl-}" --network none --cap-add NET_ADMIN \
        --device /dev/net/tun --security-opt unmask=/proc/sys --systemd always \
        --label mptcp-tunnel=lab-demo "$IMAGE" /sbin/init >/dev/null
    fi
  done
  "$PY" "$here/shared/topology.py" up "$TOPOLOGY"
  for c in $(containers); do
    podman exec "$c" timeout 60 systemctl is-system-running --wait >/dev/null || true
  done
  stop_delayers
  if [[ "$delay_ms" != 0 ]]; then start_delayers "$delay_ms"; fi
  if [[ $deploy -eq 1 ]]; then
    (cd "$repo" && ANSIBLE_ROLES_PATH="$repo/roles" "$ANSIBLE_PLAYBOOK" -i inventory/lab site.yml)
  fi
  trap - ERR
  echo "lab-demo: up (delay ${delay_ms} ms each way); try: podman exec mtl-client1 ping 172.16.0.2"
}

status() {
  podman ps -a --filter label=mptcp-tunnel=lab-demo --format '{{.Names}} {{.Status}}'
  for f in "$STATE"/delay-*.pid; do [[ -e "$f" ]] && echo "$(basename "$f" .pid) pid $(cat "$f")"; done
  return 0
}

cmd="${1:-}"
shift || true
case "$cmd" in
  up) up "$@" ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up [--delay-ms MS] [--no-deploy] | down | status" >&2; exit 2 ;;
esac
