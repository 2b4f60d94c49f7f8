# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-browser sysdeps bench mutants lint venv clean

venv: $(STAMP)

# Re-install only when pyproject.toml changed.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/exitsim compare

# Debian packages the tests drive: chromium (tests/browser/ opens traces in the Perfetto
# UI), strace and bpftrace (exitsim record). Installed only when the command is missing;
# CI is root on a fresh Debian machine, anyone else goes through sudo.
SYSDEPS := chromium strace bpftrace
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

sysdeps:
	@missing=""; \
	for cmd in $(SYSDEPS); do command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$cmd"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

# The whole suite, the browser tests included (they take some 15 s).
test: $(STAMP) sysdeps
	$(BIN)/python -m pytest

# Only the tests that drive Chromium.
test-browser: $(STAMP) sysdeps
	$(BIN)/python -m pytest tests/browser

bench: $(STAMP)
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/teardown.py --arch arm64
	$(BIN)/python bench/teardown.py --arch amd64
	$(BIN)/python bench/sweep.py

# The mutation campaign of the checker (docs/checking.md, "Mutation campaign"): some
# 20 minutes on 2 cores; not part of `make test`. JSON in build/mutants.json.
mutants: $(STAMP)
	$(BIN)/python bench/mutants.py --jobs 2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
