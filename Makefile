# The two commands of the README. Both create the virtual environment if it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/4agents_ring.yaml
# bench/vs_rllib.py only: ray pins a gymnasium older than ours, so RLlib gets a venv of its own.
VENV_BENCH ?= .venv-bench

.PHONY: run test test-long test-extended test-deps setup docs bench bench-rllib clean

# The example plugin (examples/parley_ippo, docs/guide/your_own.md) is installed beside Parley, as
# a user's package would be: its entry point `ippo` is then a learner kind, and the tests use it.
$(BIN)/orchestrate: pyproject.toml examples/parley_ippo/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,stats]'
	# MiniGrid (env minigrid_v0) without its pygame dependency: pygame would overwrite the
	# pygame-ce that mpe2 installs under the same module name; MiniGrid only draws with it.
	$(BIN)/pip install --quiet --no-deps 'minigrid==3.0.0'
	$(BIN)/pip install --quiet --no-deps -e examples/parley_ippo
	# Compile DQN's gradient step once (numba caches it in agent_node/algos/__pycache__), so
	# the first run does not.
	$(BIN)/python -c 'from agent_node.algos.numpy_steps import warm_up; warm_up()'
	touch $@

setup: $(BIN)/orchestrate

run: setup
	$(BIN)/orchestrate up $(CONFIG)

# The multi-host tests (tests/integration/test_ssh_backend_netns.py) start Debian's sshd inside
# network namespaces; as root (CI) it is installed when missing. Without root they skip.
test-deps:
	@if [ "$$(id -u)" = 0 ] && [ ! -x /usr/sbin/sshd ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null; fi

# The Ray backend's tests (tests/integration/test_ray_backend.py) need the optional `[ray]` extra;
# `make run` does not.
$(VENV)/.ray-extra: $(BIN)/orchestrate
	$(BIN)/pip install --quiet -e '.[ray]'
	touch $@

# The README's test command: every test but those marked `long` (whole scenarios of tens of
# seconds each: multi-host over namespaces, ...), which keeps it under 15 minutes on 2 cores.
test: setup test-deps $(VENV)/.ray-extra
	$(BIN)/python -m pytest -q -m "not long"

# The long scenarios (pytest -m long: see the README); CI runs them after `make test`. The checks
# marked `extended` cost minutes each that CI's 90 cannot spare (the verbs x configs chain on the
# configs beyond the ones CI runs it on, the matrix game at the bench's budget):
# `make test-extended` runs them.
test-long: setup test-deps $(VENV)/.ray-extra
	$(BIN)/python -m pytest -q -m "long and not extended"

test-extended: setup test-deps $(VENV)/.ray-extra
	$(BIN)/python -m pytest -q -m extended

# The docs site (mkdocs.yml): the config reference must match the schemas, and every page, link
# and anchor must resolve (--strict). The `[docs]` extra is installed only here.
$(VENV)/.docs-extra: $(BIN)/orchestrate
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-extra
	$(BIN)/python -m orchestrator.docs_reference --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: setup
	$(BIN)/python bench/throughput.py

$(VENV_BENCH)/bin/ray: pyproject.toml
	$(PYTHON) -m venv $(VENV_BENCH)
	$(VENV_BENCH)/bin/pip install --quiet --upgrade pip
	$(VENV_BENCH)/bin/pip install --quiet -e '.[bench]'
	touch $@

bench-rllib: $(VENV_BENCH)/bin/ray
	$(VENV_BENCH)/bin/python bench/vs_rllib.py

clean:
	rm -rf $(VENV) $(VENV_BENCH) runs site .pytest_cache
