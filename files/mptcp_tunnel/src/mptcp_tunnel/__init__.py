"""mptcp-tunnel: bond a fixed and a cellular access link into one MPTCP connection carrying IP packets."""

__version__ = "0.1.0"
