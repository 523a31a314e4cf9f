# Two commands for a new user: `make demo` (the main job on the embedded default) and `make test`.
# Each creates .venv with the tested versions (constraints.txt) if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE ?= token

.PHONY: venv test check lint typecheck demo bench clean browser

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "the pinned \
	versions need Python >= 3.11; run with PYTHON=python3.11 (or newer)" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check taskonomy_ray tests benchmarks workflows
	$(BIN)/mypy

typecheck: lint

check: lint

test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q

# The report's browser test needs Debian's chromium and chromedriver; install them when we can
# (root with apt, as on CI). Without them that one test skips and says which packages it needs.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver for the report's browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium chromium-driver >/dev/null) || echo "warning: chromium install failed"; \
	  else echo "note: no chromium/chromedriver; the browser test will skip"; fi; fi

demo: $(STAMP)
	$(BIN)/taskonomy-ray sweep workflows/mini.yaml --storage runs/mini --data data/mini
	@echo "open runs/mini/report/index.html; re-solve with: $(BIN)/taskonomy-ray solve runs/mini --budget 3"

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
