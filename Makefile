# The two commands of the README: `make run` (demo) and `make test` (everything CI checks).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck pytest deps bench bench-suite compat clean readme constraints

# The runtime's dependencies at the versions in constraints.txt, the image's (the dev tools: newest).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Pin the runtime's dependencies afresh (pip's resolution now), for the tests and the image.
constraints: $(STAMP)
	$(PY) deploy/constraints.py

# Debian packages the tests need: gcc builds the benchmark's load generator and wrk drives
# its HTTP scenarios; prometheus (with promtool) checks the dashboards and alert rules for
# real; chromium and chromium-driver load the admin status page in a headless browser;
# docker.io (dockerd, and a client whose `docker build` is BuildKit without buildx) and
# debootstrap (the base image, made locally) build and run the image.
deps:
	@missing=""; \
	{ [ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ]; } || missing="$$missing docker.io"; \
	[ -x /usr/sbin/debootstrap ] || missing="$$missing debootstrap"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing="$$missing prometheus"; \
	{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || missing="$$missing chromium chromium-driver"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

run: $(STAMP)
	$(PY) -m runtime echo --bind 127.0.0.1:9000 --admin 127.0.0.1:9100

# The README's table of settings, from their declarations in runtime/config.py.
readme: $(STAMP)
	$(PY) -c 'from runtime.config import write_readme; write_readme("README.md")'

lint: $(STAMP)
	$(PY) -m ruff check runtime tests bench dashboards deploy
	$(PY) -m ruff format --check runtime
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(PY) -m mypy --strict runtime bench dashboards/generate.py deploy/prometheus/prometheusrule.py deploy/constraints.py

pytest: $(STAMP) deps
	$(PY) -m pytest -q

test: lint typecheck pytest

# The tests again on the other supported Pythons this machine has (pyenv's), each in its
# own venv. Every Python runs even when an earlier one fails; the end prints one line per
# Python (passed / failed / not installed, skipped) and the status is non-zero if any failed.
# COMPAT_PYTEST_ARGS narrows the run, e.g. COMPAT_PYTEST_ARGS=tests/integration/test_cli.py. By default
# it leaves out the benchmarks' smoke runs: the benchmarks run on the main venv's Python only
# (make bench, make bench-suite), and their smoke runs take 80 s a Python; and the image test,
# which runs the image's own Python whatever the host's.
COMPAT_PYTHONS ?= 3.10 3.12 3.13
COMPAT_PYTEST_ARGS ?= --ignore=tests/integration/test_bench_smoke.py --ignore=tests/integration/test_bench_suite_smoke.py \
	--ignore=tests/deploy/test_image.py
compat: deps
	@set --; failed=0; \
	for v in $(COMPAT_PYTHONS); do \
		py=$$(ls -d $$HOME/.pyenv/versions/$$v.*/bin/python 2>/dev/null | sort -V | tail -n 1); \
		[ -n "$$py" ] || py=$$(command -v python$$v || true); \
		if [ -z "$$py" ]; then \
			echo "compat: Python $$v not installed here, skipped"; \
			set -- "$$@" "Python $$v: not installed, skipped"; continue; \
		fi; \
		echo "compat: Python $$v ($$py)"; \
		if ! { $$py -m venv .venv-$$v && .venv-$$v/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'; }; then \
			result="failed (venv or install)"; \
		elif ! .venv-$$v/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_PYTEST_ARGS); then \
			result="failed (tests)"; \
		else \
			result=passed; \
		fi; \
		case $$result in failed*) failed=1;; esac; \
		set -- "$$@" "Python $$v ($$py): $$result"; \
	done; \
	echo "compat: summary"; \
	for line in "$$@"; do echo "compat:   $$line"; done; \
	exit $$failed

# The runtime's ThreadingTCPServer with its parts on and off, against the standard library's.
BENCH_SERVERS = stdlib-threading,runtime-threading,runtime-threading-notel,runtime-threading-nolog,runtime-threading-watchdog
bench: $(STAMP) deps
	$(PY) bench/suite.py --scenarios connect --clients 8,64 --servers $(BENCH_SERVERS)

# Issue 4's suite: stdlib, gunicorn and the runtime, TCP and HTTP, 8/64/512 clients (~20 min).
bench-suite: $(STAMP) deps
	$(PY) bench/suite.py

clean:
	rm -rf $(VENV) .venv-3.* bench/build .mypy_cache .ruff_cache .pytest_cache
