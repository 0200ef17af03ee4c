#!/usr/bin/env bash
# Build the systemd-capable Debian base image for Molecule and the lab fleet with debootstrap
# (no container registry is reachable here). Cached: does nothing if the image already exists.
# Usage: molecule/build-image.sh [--force]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
IMAGE="${MT_IMAGE:-localhost/mptcp-tunnel-base:bookworm}"
MIRROR="${MT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${MT_DEBIAN_SUITE:-bookworm}"
# python3-cryptography: the mptcp_pki role's crypto modules; python3-cffi-backend named too (it provides the
# virtual packages python3-cryptography depends on, which debootstrap does not resolve)
PACKAGES="python3,python3-apt,python3-venv,python3-packaging,python3-yaml,python3-prometheus-client,python3-cryptography,python3-cffi-backend,systemd,systemd-sysv,dbus,iproute2,iputils-ping,iperf3,nftables,socat,sudo,procps,ca-certificates"

# The image is labelled with a hash of this script: a cached image from an older package list is rebuilt.
KEY="$(sha256sum "$0" | cut -c1-12)"
if [[ "${1:-}" != "--force" ]] && podman image exists "$IMAGE" \
   && [[ "$(podman image inspect -f '{{ index .Config.Labels "mptcp-tunnel.build" }}' "$IMAGE" 2>/dev/null)" == "$KEY" ]]; then
  echo "base image $IMAGE is cached"
  exit 0
fi
for tool in debootstrap podman tar; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (run make setup)" >&2; exit 1; }
done

root="$(mktemp -d /var/tmp/mt-rootfs.XXXXXX)"
cleanup() { rm -rf --one-file-system "$root"; }
trap cleanup EXIT

echo ">> debootstrap $SUITE into $root"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
  || { tail -n 30 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# A container shares the host kernel and these containers see /proc/sys unmasked: systemd-sysctl
# would write kernel.*/fs.* defaults into the HOST at every boot. Only net.* keys (per netns) may be
# set in a container, and the roles apply their own net.* file themselves.
ln -sf /dev/null "$root/etc/systemd/system/systemd-sysctl.service"
# Units that make no sense in a container or slow its boot down.
for unit in systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
    getty@tty1.service console-getty.service systemd-networkd-wait-online.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
echo "mptcp-tunnel-base" >"$root/etc/hostname"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

echo ">> podman import $IMAGE"
tar -C "$root" -c . | podman import \
  --change 'CMD ["/sbin/init"]' \
  --change 'ENV container=podman' \
  --change 'STOPSIGNAL SIGRTMIN+3' \
  --change "LABEL mptcp-tunnel.build=$KEY" \
  - "$IMAGE" >/dev/null
echo "built $IMAGE"
