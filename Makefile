# Two front doors: `make demo` and `make test`. Both create .venv when missing
# and install the project into it, so a fresh machine needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install sandbox-tools demo test bench clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# constraints.txt pins every package to the versions the test suite last passed
# with, so a clean clone installs what CI tested (pytest turns warnings into
# errors, and a new release's deprecation would otherwise fail a clean build).
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) sandbox-tools

# The evaluator's sandbox uses bubblewrap (no network, PID namespace, read-only
# filesystem) when it is installed; without it, resource limits only. Install it
# from Debian packages when we can; never fail the build over it.
sandbox-tools:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) \
	      || echo "note: could not install bubblewrap; the evaluator will use resource limits only"; \
	  else \
	    echo "note: bubblewrap (bwrap) is not installed; the evaluator will use resource limits only"; \
	  fi; }

demo: install
	$(BIN)/python -m search.demo

test: install
	$(BIN)/python -m pytest -q

# Re-resolve the newest versions pyproject.toml allows, in a scratch venv, and
# pin them; run `make test` before committing the new constraints.txt.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet '.[dev]'
	( echo '# Pinned by make lock: the versions make test last passed with.'; \
	  .lock-venv/bin/pip freeze --exclude scalesearch ) > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache
