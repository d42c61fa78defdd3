# The two commands of the README: `make run` and `make test`. Both install what is missing
# (Debian packages as root, Python packages into .venv), build the Cython extensions, then act.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBS := fuse libfuse-dev pkg-config sqlite3 gcc make
CONFIG ?= conf/litefs.yml
PYTEST_ARGS ?=

.PHONY: run test setup debs venv build perf clean

run: setup
	$(VENV)/bin/litefs mount --config $(CONFIG)

test: setup
	LITEFS_REQUIRE_EXTENSIONS=1 $(PY) -m pytest $(PYTEST_ARGS)

perf: setup
	$(PY) -m perf

setup: debs venv build

# Installs only what is missing, so a second run is quick and works offline.
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	[ -f "$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(VENV)/.deps-stamp

$(VENV)/.deps-stamp: pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel "Cython>=3.1"
	$(PY) -m pip install -q -e '.[test]' --no-build-isolation
	touch $@

# Rebuilds the extensions in place; LITEFS_REQUIRE_EXTENSIONS=1 turns a compile failure into an error.
build: venv
	LITEFS_REQUIRE_EXTENSIONS=1 $(PY) setup.py -q build_ext --inplace
	LITEFS_REQUIRE_EXTENSIONS=1 $(PY) -c 'import litefs.native as n; n.check_compiled()'

clean:
	rm -rf build $(VENV) litefs/*.so litefs/*.c pyx/*.cpp
