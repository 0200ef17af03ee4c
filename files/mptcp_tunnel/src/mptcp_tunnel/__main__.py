import sys

from mptcp_tunnel.cli import main

sys.exit(main())
