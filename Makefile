# Two front doors: `make demo` and `make test`. Both create .venv when missing
# and install the project into it, so a fresh machine needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install sandbox-tools demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
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

clean:
	rm -rf $(VENV) .pytest_cache
