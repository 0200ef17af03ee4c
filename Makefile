# mptcp-tunnel — every entry point. `make demo` and `make test` install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(abspath $(VENV))/bin/python
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export PYTHONPATH := $(abspath lab):$(abspath bench)

# Debian packages the lab, the tests and Molecule use.
APT_PACKAGES := iperf3 mptcpd iproute2 iputils-ping nftables iptables curl ethtool procps \
	python3-venv python3-dev build-essential libnetfilter-queue-dev \
	podman runc debootstrap qemu-system-x86 qemu-utils fdisk e2fsprogs openssh-client
APT_STAMP := $(VENV)/.apt-installed
PIP_STAMP := $(VENV)/.pip-installed
PIP_REQS := files/mptcp_tunnel/pyproject.toml $(wildcard lab/requirements.txt molecule/requirements.txt bench/requirements.txt)

.PHONY: setup demo demo-netns test lint unit fleet-test lab-test molecule molecule-containers molecule-vm molecule-vm-e2e bench bench-quick lab-up lab-down clean

setup: $(PIP_STAMP)

$(APT_STAMP):
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo ">> apt-get install $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@touch $@

$(PIP_STAMP): $(APT_STAMP) $(PIP_REQS)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e 'files/mptcp_tunnel[dev]' $(foreach r,$(filter %.txt,$(PIP_REQS)),-r $(r))
	@touch $@

lint: setup
	cd files/mptcp_tunnel && $(BIN)/ruff check src tests && $(BIN)/ruff format --check src tests && $(BIN)/mypy src
	$(BIN)/ruff check lab bench tests roles
	$(BIN)/ruff format --check tests roles
	$(BIN)/ruff check --config lab/ruff.toml molecule/shared/vm.py molecule/shared/lint_roles.py molecule/vm-kernel molecule/vm-e2e
	@if [ -x $(BIN)/yamllint ]; then $(BIN)/yamllint -s .; fi
	$(PY) molecule/shared/lint_roles.py
	@if [ -d roles ] && [ -n "$$(ls roles)" ] && [ -x $(BIN)/ansible-lint ]; then $(BIN)/ansible-lint --profile production; fi

# --durations: the slowest tests in every log (make test must stay within 60 minutes).
unit: setup
	cd files/mptcp_tunnel && $(BIN)/pytest -q --durations=10

# The role's fleet assembly and checks on generated inventories (check mode against this machine, 1-2 min).
fleet-test: setup
	$(BIN)/pytest -q --durations=5 tests/fleet

lab-test: setup
	$(BIN)/pytest -q --durations=25 lab/tests

# The podman scenarios only. With vm-kernel (~12 min) `make test` took 70 min on 29 Nov, past its 60:
# the QEMU scenarios run after it, in CI (.ci/run) or by hand (below).
molecule: setup
	molecule/run-all.sh default fleet

# The old name of `make molecule`; then only a QEMU one (software emulation, ~1 core per VM; ~12 and ~11 min).
molecule-containers: molecule

molecule-vm: setup
	molecule/run-all.sh vm-kernel

molecule-vm-e2e: setup
	molecule/run-all.sh vm-e2e

test: lint unit fleet-test lab-test molecule

# The main job: podman lab fleet deployed with `ansible-playbook -i inventory/lab site.yml`, measured.
demo: setup
	$(PY) -m mtlab demo --fleet

# The same measurement on the netns lab (agents started directly, no Ansible): faster.
demo-netns: setup
	$(PY) -m mtlab demo

lab-up: setup
	$(PY) -m mtlab up

lab-down: setup
	$(PY) -m mtlab down

bench: setup
	$(PY) -m run_bench

bench-quick: setup
	$(PY) -m run_bench --quick

clean: lab-down
	rm -rf $(VENV)
