"""Prometheus config, recording rules and alerts: promtool checks and unit tests, and the
PrometheusRule generated from them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from _monitoring import (
    PROMETHEUS,
    PROMETHEUS_RULE,
    ROOT,
    RULES,
    load_module,
    promtool,
    rule_groups,
    rules,
)

pytestmark = pytest.mark.timeout(60)

needs_promtool = pytest.mark.skipif(
    promtool() is None,
    reason="promtool is not installed (Debian package prometheus; `make deps` installs it)",
)
prometheusrule = load_module(PROMETHEUS / "prometheusrule.py")


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(promtool()), *args], cwd=cwd, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


@needs_promtool
def test_promtool_check_rules() -> None:
    out = _promtool("check", "rules", str(RULES)).stdout
    assert f"SUCCESS: {len(rules())} rules found" in out


@needs_promtool
def test_promtool_check_config_on_a_copy(tmp_path: Path) -> None:
    for name in ("prometheus.yml", "rules.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path / name)
    out = _promtool("check", "config", str(tmp_path / "prometheus.yml")).stdout
    assert "SUCCESS: 1 rule files found" in out


@needs_promtool
def test_promtool_unit_tests_of_every_alert() -> None:
    out = _promtool("test", "rules", "rules_test.yml").stdout
    assert "SUCCESS" in out


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A wrong threshold in rules.yml makes the unit tests fail (they are not vacuous)."""
    shutil.copy(PROMETHEUS / "rules_test.yml", tmp_path)
    text = RULES.read_text()
    broken = text.replace("ratio_rate5m > 0.05", "ratio_rate5m > 0.5")
    assert broken != text
    (tmp_path / "rules.yml").write_text(broken)
    done = subprocess.run(
        [str(promtool()), "test", "rules", "rules_test.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode != 0
    assert "SocketserverHighErrorRatio" in done.stdout + done.stderr


def test_committed_config_scrapes_the_compose_runtime() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["rules.yml"]
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["runtime:9100"]}]
    assert job.get("metrics_path", "/metrics") == "/metrics"


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    names = {rule["alert"] for rule in _alerts()}
    assert {
        "SocketserverTargetDown", "SocketserverRestarting", "SocketserverHighErrorRatio",
        "SocketserverLatencySLOBurn", "SocketserverPoolSaturated", "SocketserverQueueWaitHigh",
        "SocketserverRequestsRejected", "SocketserverDrainingTooLong",
        "SocketserverWorkersRestarting", "SocketserverWorkerHung", "SocketserverNoReadyWorkers",
        "SocketserverRequestsEndedEarly", "SocketserverAcceptFailing",
        "SocketserverTelemetryDropped", "SocketserverHttpErrorRatio",
        "SocketserverHttpLatencySLOBurn",
    } <= names  # fmt: skip
    for rule in _alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        assert annotations["runbook_url"] == f"README.md#runbook-{name.lower()}", name


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for rule in _alerts():
        name = rule["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name} never fires in a test"
        assert any(not case["exp_alerts"] for case in mine), f"{name} never stays quiet"
        severities = {
            alert["exp_labels"]["severity"] for case in mine for alert in case["exp_alerts"]
        }
        assert rule["labels"]["severity"] in severities, f"{name}: untested severity"


def test_recording_rules_follow_the_naming_convention() -> None:
    # level:metric:operations; the metric is a socketserver_* family, or an HTTP family
    # (OpenTelemetry's names, no prefix).
    for rule in rules():
        if "record" in rule:
            assert re.fullmatch(
                r"[a-z_]+:(?:socketserver|http_server)_[a-z_]+:[a-z0-9_]+", rule["record"]
            ), rule["record"]


def test_latency_slo_threshold_is_a_bucket_boundary() -> None:
    from runtime.telemetry.metrics import LATENCY_BUCKETS

    thresholds = set(re.findall(r'le="([^"]+)"', RULES.read_text()))
    assert thresholds, "no le= in the SLO rules"
    for le in thresholds:
        assert float(le) in LATENCY_BUCKETS, f'le="{le}" is not a bucket boundary'
        assert le == repr(float(le)), f'le="{le}" is not written as the client writes it'


def _outcomes(text: str) -> set[str]:
    """Every outcome an ``outcome`` matcher names (regex alternatives split)."""
    found = re.findall(r'outcome\s*(?:=~|!~|=|!=)\s*"([^"]*)"', text)
    return {value for values in found for value in values.split("|")}


def test_rules_and_their_tests_name_only_real_outcomes() -> None:
    """A misspelt outcome ("client-closed") would pass promtool's tests written with the same
    spelling, and match nothing in production."""
    from runtime.telemetry.metrics import OUTCOMES

    in_rules = _outcomes(RULES.read_text())
    in_tests = _outcomes((PROMETHEUS / "rules_test.yml").read_text())
    assert {"error", "client_closed", "timed_out"} <= in_rules
    assert in_rules | in_tests <= set(OUTCOMES), (in_rules | in_tests) - set(OUTCOMES)


def test_committed_prometheusrule_is_generated_from_rules_yml() -> None:
    expected = prometheusrule.render(RULES.read_text())
    assert PROMETHEUS_RULE.read_text() == expected, (
        "deploy/kubernetes/prometheusrule.yaml is stale; run: "
        "python deploy/prometheus/prometheusrule.py"
    )
    assert prometheusrule.main(["--check"]) == 0
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["name"]
    assert resource["spec"]["groups"] == rule_groups()


def test_generator_follows_rules_yml() -> None:
    text = RULES.read_text().replace("> 0.05", "> 0.07")
    assert yaml.safe_load(prometheusrule.render(text))["spec"]["groups"] != rule_groups()


def test_runbook_anchors_match_the_alert_names() -> None:
    # GitHub anchors: "### Runbook: SocketserverTargetDown" -> #runbook-socketservertargetdown
    for rule in _alerts():
        heading = f"Runbook: {rule['alert']}"
        anchor = re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        assert rule["annotations"]["runbook_url"].endswith("#" + anchor)
    assert ROOT.joinpath("README.md").exists()


def test_http_rules_count_server_errors_by_error_type_only() -> None:
    """An HTTP request failed on the server's side exactly when error_type is set (a 5xx
    answer, or the handler raised): a rule matching status codes to find errors would count
    4xx (the clients' errors) or miss the requests that raised before any answer."""
    http = [rule for rule in rules() if "http_server_" in rule["expr"]]
    assert http
    for rule in http:
        name = rule.get("record") or rule.get("alert")
        assert not re.search(r'http_response_status_code\s*=~?\s*"[45]', rule["expr"]), name
        for found in re.findall(r'error_type\s*(=~|!~|=|!=)\s*"([^"]*)"', rule["expr"]):
            assert found == ("!=", ""), f"{name}: error_type{found[0]}{found[1]!r}"
    (ratio,) = [
        r for r in http if r.get("record") == "job_server:http_server_requests_errors:ratio_rate5m"
    ]
    numerator, denominator = ratio["expr"].split("\n/\n")
    assert 'error_type!=""' in numerator and "error_type" not in denominator
