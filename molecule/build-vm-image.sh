#!/usr/bin/env bash
# Build the Debian 12 VM disk image for the vm-* Molecule scenarios from Debian packages (no cloud image is
# reachable here): debootstrap -> raw disk without loop devices (sfdisk + mkfs.ext4 -d) -> one boot under
# QEMU (-kernel/-initrd) in which the guest installs its own grub and powers off -> compressed qcow2.
# Cached: the image's name carries a hash of this script, so an unchanged script reuses it; runs take
# copy-on-write overlays of it. Prints the image path on the last line of stdout.
# Usage: molecule/build-vm-image.sh [--force]
# Wrap in `flock /tmp/mt-heavy.lock` on shared machines (the build boots a TCG VM).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
CACHE="${MT_VM_CACHE:-/var/tmp/mptcp-tunnel-vm}"
MIRROR="${MT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
# Everything the roles and the tests would otherwise fetch: the agent's Python dependencies, iperf3, curl,
# nftables... (the kernel from backports is fetched by the mptcp_kernel role itself: that is under test).
PACKAGES="linux-image-amd64,initramfs-tools,grub-pc,systemd,systemd-sysv,udev,dbus,openssh-server,\
python3,python3-apt,python3-venv,python3-packaging,python3-yaml,python3-prometheus-client,iproute2,iputils-ping,\
iperf3,curl,socat,nftables,sudo,procps,ca-certificates,kmod"
key="$(sha256sum "$0" | cut -c1-12)"
image="$CACHE/debian12-$key.qcow2"
sshkey="$CACHE/id_ed25519"

mkdir -p "$CACHE"
if [[ "${1:-}" != "--force" && -f "$image" && -f "$sshkey" ]]; then
  echo "VM image is cached" >&2
  echo "$image"
  exit 0
fi
for tool in debootstrap qemu-system-x86_64 qemu-img sfdisk mkfs.ext4 ssh-keygen; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (run make setup)" >&2; exit 1; }
done
[[ -f "$sshkey" ]] || ssh-keygen -q -t ed25519 -N '' -C mptcp-tunnel-molecule -f "$sshkey"

work="$(mktemp -d /var/tmp/mt-vmbuild.XXXXXX)"
qemu_pid=""
cleanup() {
  [[ -n "$qemu_pid" ]] && kill "$qemu_pid" 2>/dev/null
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
root="$work/root"
start=$(date +%s)

echo ">> debootstrap $SUITE (kernel, systemd, sshd, python3, grub) into $root" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" \
  >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

# Guest configuration.
echo "/dev/vda1 / ext4 errors=remount-ro 0 1" >"$root/etc/fstab"
echo "mt-vm" >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 mt-vm\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
# Under TCG mkinitramfs with MODULES=most takes > 5 min; dep (only what this machine boots from) is quick.
echo "MODULES=dep" >"$root/etc/initramfs-tools/conf.d/mptcp-tunnel-vm.conf"
cat >"$root/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0 net.ifnames=0"
GRUB_TERMINAL=console
EOF
# eth0 = QEMU user-mode network (ssh from the host, the Debian mirror); other NICs are set up by the scenarios.
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\nIPv6AcceptRA=false\n' >"$root/etc/systemd/network/10-eth0.network"
ln -sf /lib/systemd/system/systemd-networkd.service "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
mkdir -p "$root/root/.ssh"
install -m 0600 "$sshkey.pub" "$root/root/.ssh/authorized_keys"
chmod 0700 "$root/root/.ssh"
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n' >"$root/etc/ssh/sshd_config.d/mptcp-tunnel-vm.conf"
# Units that only slow a test VM down.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer \
    systemd-networkd-wait-online.service getty@tty1.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# First boot (during this build only): install the guest's own boot loader so that a reboot boots the
# newest installed kernel, then power off.
cat >"$root/etc/systemd/system/mt-firstboot.service" <<'EOF'
[Unit]
Description=mptcp-tunnel VM image: install grub, then power off
ConditionPathExists=!/etc/mt-firstboot.done
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/sbin/grub-install --target=i386-pc /dev/vda
ExecStart=/usr/sbin/update-grub
ExecStart=/usr/bin/touch /etc/mt-firstboot.done
ExecStart=/bin/sh -c 'echo MT-FIRSTBOOT-OK >/dev/ttyS0'
ExecStart=/usr/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/mt-firstboot.service "$root/etc/systemd/system/multi-user.target.wants/mt-firstboot.service"
cp "$root"/boot/vmlinuz-* "$work/vmlinuz"
cp "$root"/boot/initrd.img-* "$work/initrd"
# apt lists stay (an installed system has them; check mode cannot update them)
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* "$root"/usr/share/man/*
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

echo ">> raw disk (sfdisk, mkfs.ext4 -d)" >&2
raw="$work/disk.raw"
truncate -s 6G "$raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
mkfs.ext4 -q -F -L root -E offset=1048576 -d "$root" "$raw" $(( 6 * 1024 * 1024 - 1024 ))k
rm -rf --one-file-system "$root"

echo ">> first boot: grub-install inside the guest" >&2
qemu-system-x86_64 -accel tcg,tb-size=256 -m 1024 -smp 1 -display none -no-reboot \
  -drive "file=$raw,if=virtio,format=raw,cache=unsafe" -nic none \
  -kernel "$work/vmlinuz" -initrd "$work/initrd" -append "root=/dev/vda1 rw console=ttyS0 net.ifnames=0" \
  -serial "file:$work/console.log" &
qemu_pid=$!
deadline=$(( $(date +%s) + 600 ))
while kill -0 "$qemu_pid" 2>/dev/null; do
  if (( $(date +%s) > deadline )); then echo "error: first boot did not power off in 600 s" >&2; tail -n 40 "$work/console.log" >&2; exit 1; fi
  sleep 2
done
wait "$qemu_pid" || true
qemu_pid=""
if ! grep -q MT-FIRSTBOOT-OK "$work/console.log"; then
  echo "error: the first boot did not install grub" >&2; tail -n 40 "$work/console.log" >&2; exit 1
fi

echo ">> qcow2" >&2
qemu-img convert -O qcow2 "$raw" "$work/image.qcow2"
rm -f "$CACHE"/debian12-*.qcow2
mv "$work/image.qcow2" "$image"
echo ">> built $image in $(( $(date +%s) - start )) s" >&2
echo "$image"
