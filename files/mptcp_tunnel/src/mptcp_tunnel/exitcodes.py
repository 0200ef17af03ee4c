"""Process exit codes (documented in the README; systemd's Restart=on-failure acts on non-zero)."""

OK = 0  # stopped by SIGTERM/SIGINT
RUNTIME_ERROR = 1  # e.g. cannot create the TUN device, address in use
CONFIG_ERROR = 2  # invalid configuration or command line
NO_MPTCP = 3  # the kernel cannot give MPTCP sockets
FALLBACK = 4  # the connection to the BGW runs as plain TCP: refused, never carried silently
