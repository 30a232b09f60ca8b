# The socketserver runtime and its echo demo.
#
#   DOCKER_BUILDKIT=1 docker build -t socketserver-runtime:0.1.0 .
#   docker run --rm --stop-timeout 45 -p 9000:9000 -p 9100:9100 socketserver-runtime:0.1.0
#
# Built by BuildKit and run by a real engine in tests/deploy/test_image.py (as `docker run` runs it,
# and as the Kubernetes manifests do: read-only root, no capabilities); linted by hadolint and its
# command run on each supported Python in tests/deploy/test_container.py.
#
# No `# syntax=` line: it makes BuildKit pull a frontend image from a registry before building,
# which fails where no registry is reachable; the engine's built-in frontend handles RUN --mount.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- builder: the project's wheel, plus wheels of its dependencies -------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is built from (pyproject names README.md as the long description).
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY runtime ./runtime
# What the wheel ships besides the code (runtime/_ship.py): `python -m runtime export ...`
COPY dashboards/socketserver-overview.json ./dashboards/
COPY deploy/prometheus ./deploy/prometheus
COPY deploy/kubernetes ./deploy/kubernetes
# The dependencies at the versions the tests ran (constraints.txt: `make constraints`).
COPY constraints.txt ./
# Every dependency is pure Python or ships a manylinux wheel (psutil, protobuf), so no compiler;
# the final stage installs from /wheels alone, without reaching an index.
RUN pip wheel --constraint constraints.txt --wheel-dir /wheels .

# --- final: only the installed wheels, no build tools, not root ----------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RUNTIME_LOG_FORMAT=json

# The wheels are bind-mounted from the builder, so they never become a layer of this image;
# setuptools and wheel (build tools the base image ships for Python 3.11) go, nothing needs them.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/socketserver_runtime-*.whl \
    && pip uninstall --yes setuptools wheel \
    && groupadd --system --gid 10001 runtime \
    && useradd --system --uid 10001 --gid runtime --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin runtime

WORKDIR /tmp
# Numeric, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 10001:10001

# 9000: the demo's TCP echo port; 9100: the admin port (/metrics, /livez, /readyz).
EXPOSE 9000 9100

# The runtime turns SIGTERM into its graceful drain (readiness fails, keeps serving for the
# drain delay, waits for requests in flight, flushes telemetry, exits 0).
STOPSIGNAL SIGTERM

# No curl in a slim image: Python asks /livez (urlopen raises, so exits non-zero, on 503).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9100/livez', timeout=2)"]

# Python is PID 1, with no init in front: the runtime installs its own SIGTERM/SIGINT (and
# SIGQUIT) handlers, so the kernel's PID 1 rule of ignoring signals without a handler does not
# bite, and in fork mode it reaps the children it forks itself. A handler that spawns
# subprocesses which leave orphans behind needs an init (docker run --init, or tini) to reap them.
ENTRYPOINT ["python", "-m", "runtime"]
CMD ["echo", "--bind", "0.0.0.0:9000", "--admin", "0.0.0.0:9100"]
