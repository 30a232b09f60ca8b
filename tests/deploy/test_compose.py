"""deploy/compose: the demo stack's files exist and fit together (no container engine needed).

Checks what ``docker compose up`` would otherwise find out one service at a time: every file it
mounts is in the repository, images are pinned, the demo gets the whole drain before SIGKILL,
and the names that join the services (hosts, ports, datasource uids, paths) agree.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from _dockerfile import DOCKERFILE, ROOT, env_of, exec_form, stages

from runtime.config import parse_address, settings_from
from runtime.lifecycle import Runtime

pytestmark = pytest.mark.timeout(60)

COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
PROVISIONING = COMPOSE_DIR / "grafana" / "provisioning"
#: Written by the Prometheus helper; fixed names, mounted by the prometheus service.
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS_RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
OTHER_HELPERS = {PROMETHEUS_CONFIG, PROMETHEUS_RULES}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]  # type: ignore[no-any-return]


def bind_mounts(service: dict[str, Any]) -> dict[Path, str]:
    """Host path (resolved from the compose file's folder) -> container path, for bind mounts."""
    mounts: dict[Path, str] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[(COMPOSE_DIR / source).resolve()] = target
    return mounts


def duration(text: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in parts)


def test_every_mounted_file_is_in_the_repository(services: dict[str, Any]) -> None:
    pending = []
    for name, service in services.items():
        for source in bind_mounts(service):
            assert source.is_relative_to(ROOT), f"{name} mounts {source}, outside the repository"
            if not source.exists() and source in OTHER_HELPERS:
                pending.append(source.relative_to(ROOT))
                continue
            assert source.exists(), f"{name} mounts {source.relative_to(ROOT)}, which is missing"
    if pending:
        pytest.skip(f"not written yet (by the Prometheus rules work): {pending}")


def test_prometheus_mounts_the_fixed_config_and_rules(services: dict[str, Any]) -> None:
    mounts = bind_mounts(services["prometheus"])
    assert mounts.get(PROMETHEUS_CONFIG) == "/etc/prometheus/prometheus.yml"
    assert mounts.get(PROMETHEUS_RULES) == "/etc/prometheus/rules.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_prometheus_config_scrapes_the_demo_and_loads_the_rules(services: dict[str, Any]) -> None:
    if not PROMETHEUS_CONFIG.exists():
        pytest.skip("deploy/prometheus/prometheus.yml is not written yet")
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    mounted = bind_mounts(services["prometheus"])
    config_dir = Path(mounted[PROMETHEUS_CONFIG]).parent
    rule_files = [str(config_dir / f) for f in config.get("rule_files", [])]
    assert mounted[PROMETHEUS_RULES] in rule_files, rule_files
    admin = flag_value("--admin")
    port = parse_address(admin).address[1]
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static.get("targets", [])
    ]
    assert f"runtime:{port}" in targets, f"no scrape target runtime:{port} in {targets}"


def flag_value(name: str) -> str:
    final = stages()[-1]
    argv = exec_form(final.last("CMD"), "CMD")
    return argv[argv.index(name) + 1]


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image} unpinned"


def test_runtime_is_built_from_the_dockerfile_and_publishes_its_ports(
    services: dict[str, Any],
) -> None:
    runtime = services["runtime"]
    context = (COMPOSE_DIR / runtime["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / runtime["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert "command" not in runtime and "entrypoint" not in runtime, "the image's own command"
    exposed = {int(p) for rest in stages()[-1].all("EXPOSE") for p in rest.split()}
    published = {int(p.split(":")[-1]) for p in runtime["ports"]}
    assert published == exposed
    assert all(p.startswith("127.0.0.1:") for p in runtime["ports"])


def test_stop_grace_period_covers_the_drain(services: dict[str, Any]) -> None:
    runtime = services["runtime"]
    env = {**env_of(stages()[-1]), **runtime.get("environment", {})}
    settings = settings_from(env)  # the service's settings are valid, as the container checks
    flush = inspect.signature(Runtime).parameters["flush_timeout"].default
    needed = settings.drain_delay + settings.graceful_timeout + flush
    assert duration(runtime["stop_grace_period"]) >= needed
    assert runtime.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_traces_go_to_the_otlp_backend(services: dict[str, Any]) -> None:
    env = services["runtime"]["environment"]
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert settings_from({**env_of(stages()[-1]), **env}).traces == "otlp"
    endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.hostname in services, f"{endpoint.hostname} is not a service"
    backend = services[endpoint.hostname]
    assert backend["image"].startswith("jaegertracing/all-in-one:")
    assert backend["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert endpoint.port == 4318, "OTLP/HTTP, the only protocol the runtime exports"


def test_grafana_datasources(services: dict[str, Any]) -> None:
    mounts = bind_mounts(services["grafana"])
    assert mounts[PROVISIONING.resolve()] == "/etc/grafana/provisioning"
    config = yaml.safe_load((PROVISIONING / "datasources" / "datasource.yaml").read_text())
    sources = {d["uid"]: d for d in config["datasources"]}
    prometheus = sources["prometheus"]
    assert prometheus["type"] == "prometheus" and prometheus["isDefault"] is True
    url = urlsplit(prometheus["url"])
    assert url.hostname in services and url.port == 9090
    traces = [d for d in sources.values() if d["type"] in ("jaeger", "tempo")]
    assert len(traces) == 1
    assert urlsplit(traces[0]["url"]).hostname in services
    links = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert [(x["name"], x["datasourceUid"]) for x in links] == [("trace_id", traces[0]["uid"])]


def test_grafana_loads_the_repository_dashboards(services: dict[str, Any]) -> None:
    mounts = bind_mounts(services["grafana"])
    target = mounts[(ROOT / "dashboards").resolve()]
    config = yaml.safe_load((PROVISIONING / "dashboards" / "provider.yaml").read_text())
    (provider,) = config["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == target
