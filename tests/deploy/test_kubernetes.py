"""The kustomize base in deploy/kubernetes: valid for the Kubernetes versions we claim, and
consistent with itself, with the image and with the runtime's drain semantics.

Built-in kinds are checked with kubernetes-validate in strict mode (unknown fields fail), offline,
against its bundled schemas for each version in ``K8S_VERSIONS``. The Prometheus Operator's
kinds (ServiceMonitor, PrometheusRule) are checked against the CRD schemas in
deploy/kubernetes/crds/, made strict the same way. kustomize is not needed; if ``kubectl`` is
installed, ``kubectl kustomize`` builds the base and its output is validated as well.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from _dockerfile import ROOT, env_of, exec_form, stages

from runtime.config import parse_address, settings_from
from runtime.lifecycle import Runtime

pytestmark = pytest.mark.timeout(60)

BASE = ROOT / "deploy" / "kubernetes"
CRDS = BASE / "crds"
#: The Kubernetes versions the manifests are validated against (and the README claims).
K8S_VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33")
#: Written by the alert-rules generator (deploy/prometheus/rules.yml); may not exist yet.
GENERATED = "prometheusrule.yaml"
CUSTOM_GROUP = "monitoring.coreos.com/"
APP = "socketserver-runtime"

Doc = dict[str, Any]


def manifest_files() -> list[Path]:
    return sorted(p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.fixture(scope="module")
def docs() -> dict[str, Doc]:
    """Every resource of the base, by kind (one of each)."""
    by_kind: dict[str, Doc] = {}
    for path in manifest_files():
        for doc in load(path):
            assert doc["kind"] not in by_kind, f"two {doc['kind']} resources"
            by_kind[doc["kind"]] = doc
    return by_kind


@pytest.fixture(scope="module")
def pod(docs: dict[str, Doc]) -> Doc:
    return docs["Deployment"]["spec"]["template"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def container(pod: Doc) -> Doc:
    containers = pod["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def config(docs: dict[str, Doc]) -> dict[str, str]:
    return docs["ConfigMap"]["data"]  # type: ignore[no-any-return]


def strict(schema: Any) -> Any:
    """The CRD schema as the API server's strict field validation applies it: an object with
    ``properties`` takes no other field; int-or-string fields take either."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if k != "default"}
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def validate_builtin(doc: Doc, version: str) -> None:
    try:
        used = kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        where = "/".join(str(p) for p in err.path)
        raise AssertionError(
            f"{doc['kind']} {doc['metadata']['name']} invalid for Kubernetes {version} "
            f"at {where or '(top)'}: {err.message}"
        ) from None
    assert used == version, f"validated against Kubernetes {used}'s schemas, not {version}'s"


def validate_custom(doc: Doc) -> None:
    group, _, version = doc["apiVersion"].partition("/")
    schema_file = CRDS / f"{doc['kind'].lower()}-{group.split('.')[0]}-{version}.json"
    assert schema_file.is_file(), f"no vendored schema {schema_file.name} for {doc['kind']}"
    schema = strict(json.loads(schema_file.read_text()))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=str)
    assert not errors, "\n".join(
        f"{doc['kind']} at {'/'.join(map(str, e.path))}: {e.message}" for e in errors
    )
    # The API server validates metadata as ObjectMeta for custom resources too.
    shell = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
    for k8s in K8S_VERSIONS:
        validate_builtin(shell, k8s)


def port_number(container: Doc, port: int | str) -> int:
    """A probe's or Service's target port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert named, f"the container has no port named {port!r}"
    return int(named[0])


def settings(config: dict[str, str]) -> Any:
    """The pod's settings: the ConfigMap's variables, no flags (the container passes none)."""
    return settings_from(config)


# -- schema validation ---------------------------------------------------------------------------


def test_kubernetes_validate_has_the_claimed_versions() -> None:
    available = {v.rsplit(".", 1)[0] for v in kubernetes_validate.utils.all_versions()}
    assert set(K8S_VERSIONS) <= available, sorted(available)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_builtin_kinds_are_valid_strictly(path: Path, version: str) -> None:
    builtin = [d for d in load(path) if not d["apiVersion"].startswith(CUSTOM_GROUP)]
    for doc in builtin:
        validate_builtin(doc, version)


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_custom_resources_match_the_crd_schemas(path: Path) -> None:
    for doc in load(path):
        if doc["apiVersion"].startswith(CUSTOM_GROUP):
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert doc["kind"] in ("ServiceMonitor", "PrometheusRule"), doc["kind"]
            validate_custom(doc)


def test_strict_validation_rejects_what_it_should(docs: dict[str, Doc]) -> None:
    """The validators above can fail: a misspelt field, in a built-in and a custom kind."""
    deployment = copy.deepcopy(docs["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(AssertionError, match="readinessprobe"):
        validate_builtin(deployment, K8S_VERSIONS[0])
    monitor = copy.deepcopy(docs["ServiceMonitor"])
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(AssertionError, match="intervall"):
        validate_custom(monitor)
    monitor = copy.deepcopy(docs["ServiceMonitor"])
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(AssertionError, match="interval"):
        validate_custom(monitor)


# -- the kustomization ---------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource listed twice"
    present = {p.name for p in manifest_files()}
    assert present <= set(listed), f"not in kustomization.yaml: {sorted(present - set(listed))}"
    # Every listed file exists; only the generated PrometheusRule may still be missing.
    missing = set(listed) - present
    assert missing <= {GENERATED}, f"listed but missing: {sorted(missing)}"
    assert GENERATED in listed
    images = {i["name"]: i for i in kustomization["images"]}
    assert images[APP]["newTag"] == _project_version()


def _project_version() -> str:
    found = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert found
    return found.group(1)


def test_kubectl_kustomize_builds_a_valid_base(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    base = tmp_path / "base"
    shutil.copytree(BASE, base, ignore=shutil.ignore_patterns("crds"))
    if not (base / GENERATED).exists():  # not generated yet: build without it
        text = (base / "kustomization.yaml").read_text()
        (base / "kustomization.yaml").write_text(
            "\n".join(line for line in text.splitlines() if GENERATED not in line) + "\n"
        )
    result = subprocess.run(
        [kubectl, "kustomize", str(base)], capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert {d["kind"] for d in built} >= {"ConfigMap", "Deployment", "Service", "ServiceMonitor"}
    for doc in built:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == APP
        if doc["apiVersion"].startswith(CUSTOM_GROUP):
            validate_custom(doc)
        else:
            for version in K8S_VERSIONS:
                validate_builtin(doc, version)
    (deployment,) = [d for d in built if d["kind"] == "Deployment"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"{APP}:{_project_version()}"
    # includeSelectors: false; selectors stay as written, so an overlay's labels never orphan pods.
    assert deployment["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": APP}


# -- consistency ---------------------------------------------------------------------------------


def test_configmap_holds_valid_runtime_settings(config: dict[str, str]) -> None:
    assert all(key.startswith("RUNTIME_") for key in config), sorted(config)
    assert all(isinstance(value, str) for value in config.values()), "ConfigMap values are strings"
    s = settings(config)  # raises on an unknown RUNTIME_* key or a bad value, as the pod would
    assert s.bind is not None and parse_address(s.bind).address[0] == "0.0.0.0"
    assert s.admin_address is not None and s.admin_address.address[0] == "0.0.0.0"


def test_container_runs_the_image_entrypoint_with_settings_from_the_configmap(
    docs: dict[str, Doc], container: Doc
) -> None:
    final = stages()[-1]
    assert container["command"] == exec_form(final.last("ENTRYPOINT"), "ENTRYPOINT")
    # No args: the image's CMD (whose flags would win over RUNTIME_*) must not apply either.
    assert not container.get("args")
    assert container["envFrom"] == [
        {"configMapRef": {"name": docs["ConfigMap"]["metadata"]["name"]}}
    ]
    assert not any(e["name"].startswith("RUNTIME_") for e in container.get("env", []))
    assert container["image"] == APP  # the kustomization's images: entry sets the tag


def test_container_ports_are_the_configured_ones(container: Doc, config: dict[str, str]) -> None:
    s = settings(config)
    assert port_number(container, "app") == parse_address(s.bind).address[1]
    assert s.admin_address is not None
    assert port_number(container, "admin") == s.admin_address.address[1]


def test_probes_ask_the_admin_port(container: Doc, config: dict[str, str]) -> None:
    s = settings(config)
    assert s.admin_address is not None
    admin_port = s.admin_address.address[1]
    expected = {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_number(container, get["port"]) == admin_port, probe
    # /livez itself waits liveness_timeout before failing; one slow answer (a pause on a busy
    # node) must not restart the pod on top of that.
    assert container["livenessProbe"]["failureThreshold"] >= 2


def test_termination_grace_covers_the_whole_drain(
    pod: Doc, container: Doc, config: dict[str, str]
) -> None:
    s = settings(config)
    flush = inspect.signature(Runtime).parameters["flush_timeout"].default
    needed = s.drain_delay + s.graceful_timeout + flush
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace >= needed, (
        f"{grace}s < drain {s.drain_delay} + graceful {s.graceful_timeout} + flush {flush}"
    )
    # The runtime's drain delay replaces a preStop sleep; a preStop would eat into the grace.
    assert "preStop" not in container.get("lifecycle", {})
    assert s.drain_delay > 0, "without a drain delay, traffic still routed to the pod is refused"


def test_pod_is_locked_down(pod: Doc, container: Doc) -> None:
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    user = stages()[-1].last("USER").split(":")[0]
    assert spec["securityContext"]["runAsUser"] == int(user), "the image's USER"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    # Service links would inject <SERVICE>_* variables; RUNTIME_* ones would stop the runtime.
    assert spec["enableServiceLinks"] is False
    # Python writes nothing at import (PYTHONDONTWRITEBYTECODE), /tmp is the only scratch.
    assert env_of(stages()[-1]).get("PYTHONDONTWRITEBYTECODE") == "1"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts


def test_selectors_reach_the_pods(docs: dict[str, Doc], pod: Doc) -> None:
    pod_labels = pod["metadata"]["labels"]
    service = docs["Service"]

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    assert selects(docs["Deployment"]["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(service["spec"]["selector"], pod_labels)
    assert selects(docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], pod_labels)
    # ServiceMonitor -> Service (by the Service's labels) -> pods (by the Service's selector).
    monitor = docs["ServiceMonitor"]["spec"]["selector"]
    assert not monitor.get("matchExpressions")
    assert selects(monitor["matchLabels"], service["metadata"]["labels"])
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    deployment = docs["Deployment"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert docs["ConfigMap"]["metadata"]["name"] == deployment["spec"]["template"]["spec"][
        "containers"][0]["envFrom"][0]["configMapRef"]["name"]  # fmt: skip


def test_servicemonitor_scrapes_metrics_on_the_admin_port(
    docs: dict[str, Doc], container: Doc, config: dict[str, str]
) -> None:
    s = settings(config)
    assert s.admin_address is not None
    ports = {p["name"]: p for p in docs["Service"]["spec"]["ports"]}
    (endpoint,) = docs["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["port"] in ports, f"no Service port named {endpoint['port']!r}"
    target = ports[endpoint["port"]]["targetPort"]
    assert port_number(container, target) == s.admin_address.address[1]
    assert endpoint["path"] == "/metrics"
    app = [
        p
        for p in ports.values()
        if port_number(container, p["targetPort"]) != s.admin_address.address[1]
    ]
    assert [port_number(container, p["targetPort"]) for p in app] == [
        parse_address(s.bind).address[1]
    ]


def test_pdb_and_hpa_leave_room_for_an_eviction(docs: dict[str, Doc]) -> None:
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    pdb = docs["PodDisruptionBudget"]["spec"]
    assert hpa["minReplicas"] >= 2 and docs["Deployment"]["spec"]["replicas"] >= 2
    assert pdb.get("maxUnavailable", 0) >= 1 or pdb["minAvailable"] < hpa["minReplicas"]
    cpu = [m for m in hpa["metrics"] if m["type"] == "Resource"]
    assert cpu and cpu[0]["resource"]["name"] == "cpu"


def _commented_block(text: str, begin: str, end: str) -> str:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if begin in line)
    stop = next(i for i, line in enumerate(lines) if end in line)
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = [line[indent:] for line in lines[start + 1 : stop]]
    assert all(line.startswith("# ") or line == "#" for line in body), body
    return "\n".join(line[2:] for line in body)


def test_hpa_pool_saturation_example_is_valid_when_uncommented(docs: dict[str, Doc]) -> None:
    text = (BASE / "hpa.yaml").read_text()
    metrics = yaml.safe_load(
        _commented_block(text, "BEGIN pool-saturation example", "END pool-saturation example")
    )
    hpa = copy.deepcopy(docs["HorizontalPodAutoscaler"])
    hpa["spec"]["metrics"] += metrics
    for version in K8S_VERSIONS:
        validate_builtin(hpa, version)
    (example,) = metrics
    name = example["pods"]["metric"]["name"]
    # The prometheus-adapter rule after the manifest serves that metric from the runtime's own.
    rule_text = text[text.index("# prometheus-adapter rule") :]
    rules = yaml.safe_load("\n".join(line[2:] for line in rule_text.splitlines()[1:]))
    (rule,) = rules["rules"]
    assert rule["name"]["as"] == name
    query = rule["metricsQuery"]
    assert 'socketserver_workers{state="busy"' in query and "socketserver_workers_max{" in query
