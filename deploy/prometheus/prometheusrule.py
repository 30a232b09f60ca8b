"""Write deploy/kubernetes/prometheusrule.yaml from deploy/prometheus/rules.yml.

    python deploy/prometheus/prometheusrule.py           # (re)write the PrometheusRule
    python deploy/prometheus/prometheusrule.py --check   # exit 1 if the committed file differs

rules.yml is the source of truth (promtool checks and unit-tests it; the compose stack
loads it as is); the PrometheusRule (prometheus-operator's monitoring.coreos.com/v1) carries
the same groups for clusters where the operator loads rules.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["prometheus_rule", "render", "main"]

ROOT = Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
OUTPUT = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"
NAME = "socketserver-runtime"
HEADER = (
    "# Generated from deploy/prometheus/rules.yml by deploy/prometheus/prometheusrule.py;\n"
    "# do not edit (the tests compare it with the generated text).\n"
    "# Needs the prometheus-operator CRDs; label it for your Prometheus's ruleSelector\n"
    "# (kube-prometheus-stack: release: <its release name>).\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, so the YAML reads like rules.yml."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(rules: dict[str, Any]) -> dict[str, Any]:
    """A PrometheusRule object holding the rule groups of a Prometheus rules file."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": NAME,
            "labels": {
                "app.kubernetes.io/name": NAME,
                "app.kubernetes.io/component": "monitoring",
            },
        },
        "spec": {"groups": rules["groups"]},
    }


def render(rules_text: str) -> str:
    """The committed text of the PrometheusRule for the rules file *rules_text*."""
    rules = yaml.safe_load(rules_text)
    body = yaml.dump(
        prometheus_rule(rules), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True
    )
    return HEADER + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the PrometheusRule from rules.yml.")
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed file instead"
    )
    args = parser.parse_args(argv)
    text = render(RULES.read_text())
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date; run {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
