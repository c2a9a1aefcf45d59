# Two commands on a fresh machine: `make serve` (install, then start the dashboard and its workers
# on the embedded SQLite file) and `make test` (install, then run the whole test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: install serve test lint bench browser-deps plotly

# The venv sees the system site-packages, so a torch already installed there is used as it is;
# otherwise torch is pinned before anything else, because an unpinned `torch` would pull a
# multi-GB CUDA build to satisfy pyproject's range.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e ".[test,postgres]"
	touch $@

install: $(VENV)/.installed

serve: install
	$(PY) -m app serve

# Browser tests need Debian's Chromium; as root it is installed here, otherwise they skip.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core; } || \
		echo "chromium not installed: browser tests will skip"

test: install browser-deps
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check app trainer tests bench collapsewatch

# Rebuilds the committed static/vendor/plotly-collapsewatch.min.js (needs npm and its registry); set-up
# does not: only a change of plotly.js version or of the traces the pages draw does
plotly:
	scripts/plotly/build.sh

bench: install
	$(PY) -m pip install -e ".[bench]"
