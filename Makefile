# `make test` is the README's test command and what .ci/run calls: it installs every dependency,
# prepares the real test peers (.ci/setup.d/*.sh, in order) and runs the whole suite.
PYTHON ?= python3
export WATTSCALE_CACHE ?= $(HOME)/.cache/wattscale
# The control-plane build needs Go 1.26, installed under /usr/local/go on the CI machines.
export PATH := $(PATH):/usr/local/go/bin

.PHONY: install test lint peers

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'

peers:
	@for script in .ci/setup.d/*.sh; do [ -e "$$script" ] || continue; echo "== $$script"; bash "$$script" || exit 1; done

lint:
	ruff check .
	ruff format --check .
	mypy

test: install peers lint
	$(PYTHON) -m pytest
