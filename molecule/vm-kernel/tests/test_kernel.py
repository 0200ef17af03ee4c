"""vm-kernel: the VM rebooted from Debian 12's stock kernel into the backports one; MPTCP works."""

import os
from pathlib import Path

import pytest
import testinfra

SSH_CONFIG = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ssh_config"

# An MPTCP connection over loopback inside the VM; MPTCP_INFO (SOL_MPTCP=284, optname 1) only
# answers on a socket that really runs MPTCP (it fails after a fallback to TCP).
MPTCP_PROBE = r"""
import socket
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_MPTCP)
srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_MPTCP)
cli.connect(srv.getsockname())
conn, _ = srv.accept()
cli.sendall(b"x" * 100000)
got = 0
while got < 100000:
    got += len(conn.recv(65536))
cli.getsockopt(284, 1, 256)
print("mptcp-ok", got)
"""


@pytest.fixture(scope="module")
def vm():
    return testinfra.get_host(f"ssh://mtv-kernel?ssh_config={SSH_CONFIG}")


def test_rebooted_into_the_backports_kernel(vm):
    before_kernel, before_boot = vm.file("/var/lib/mt-test/before").content_string.split()
    assert before_kernel.startswith("6.1."), before_kernel
    now = vm.check_output("uname -r")
    major, minor = (int(x) for x in now.split(".")[:2])
    assert (major, minor) >= (6, 12), now
    assert now != before_kernel
    assert vm.file("/proc/sys/kernel/random/boot_id").content_string.strip() != before_boot


def test_backports_source_is_deb822(vm):
    src = vm.file("/etc/apt/sources.list.d/bookworm-backports.sources")
    assert src.exists
    assert "Suites: bookworm-backports" in src.content_string
    pkg = vm.check_output("dpkg-query -W -f='${Version}' linux-image-amd64")
    assert "bpo12" in pkg, pkg


def test_mptcp_works(vm):
    assert vm.file("/proc/sys/net/mptcp/enabled").content_string.strip() == "1"
    assert vm.check_output("python3 -c %s", MPTCP_PROBE) == "mptcp-ok 100000"
    # the 6.12 kernel has what the 6.1 kernel lacked (net.mptcp.scheduler came with 6.6)
    assert vm.file("/proc/sys/net/mptcp/scheduler").exists


def test_grub_boots_the_new_kernel_by_default(vm):
    cfg = vm.file("/boot/grub/grub.cfg").content_string
    first = next(line for line in cfg.splitlines() if line.strip().startswith("linux"))
    assert f"/boot/vmlinuz-{vm.check_output('uname -r')} " in first, first
