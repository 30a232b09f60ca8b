"""Read the dashboards and Prometheus rules, and take PromQL apart, for the monitoring tests;
and what a client of ``handlers:CommandsHandler`` (marked operations) sends and gets."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from _proc import send_all_read_all
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

#: Series Prometheus makes itself for every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "start", "end"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def load_module(path: Path) -> ModuleType:
    """Import a script that is not in a package (the generators)."""
    spec = importlib.util.spec_from_file_location(path.stem + "_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict[str, Any]]:
    """Committed dashboards by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a dashboard: a panel target or an annotation."""

    dashboard: str
    panel: str
    expr: str
    target: dict[str, Any]
    panel_json: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel}: {self.expr}"


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' collapsed panels included; rows themselves excluded."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def queries(name: str, dashboard: dict[str, Any]) -> list[Query]:
    found = [
        Query(name, panel["title"], target["expr"], target, panel)
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    found += [
        Query(name, f"annotation {a['name']}", a["expr"], a, a)
        for a in dashboard["annotations"]["list"]
        if "expr" in a
    ]
    return found


def all_queries() -> list[Query]:
    return [q for name, d in dashboards().items() for q in queries(name, d)]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def variable_query(variable: dict[str, Any]) -> tuple[str, str]:
    """``(selector, label)`` of a ``label_values(selector, label)`` variable."""
    query = variable["query"]
    text = query["query"] if isinstance(query, dict) else query
    found = _LABEL_VALUES.match(text.strip())
    assert found, f"variable {variable['name']}: not a label_values() query: {text!r}"
    return found.group("selector") or "", found.group("label")


def rule_groups() -> list[dict[str, Any]]:
    return list(yaml.safe_load(RULES.read_text())["groups"])


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (functions, keywords and labels excluded)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)
    names = set()
    for found in _IDENTIFIER.finditer(text):
        name = found.group()
        if text[found.end() :].lstrip().startswith("(") or name in _KEYWORDS:
            continue  # a function or aggregation, or an operator
        names.add(name)
    return names


def selectors(expr: str) -> list[tuple[str, str]]:
    """``(metric, matchers)`` of every series selector written with braces."""
    text = _STRING.sub(lambda m: m.group().replace("{", "(").replace("}", ")"), expr)
    return [(m.group(1), m.group(2)) for m in re.finditer(r"([A-Za-z_:][\w:]*)\{([^}]*)\}", text)]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables (``$x`` and ``${x}``); an unknown one raises KeyError."""
    return _VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)


def exposed_names(metrics_text: str) -> tuple[set[str], set[str]]:
    """``(families, series names)`` a /metrics page (Prometheus text) offers.

    Families without samples yet (a labelled counter nothing has incremented) count too:
    their ``# TYPE`` line says which series names they will have.
    """
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created", ""),
        "gauge": ("",),
        "info": ("_info",),
    }
    families: set[str] = set()
    series: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        families.add(family.name)
        series.update(family.name + s for s in suffixes.get(family.type, ("",)))
        series.update(sample.name for sample in family.samples)
    return families, series


def family_of(series: str, families: set[str]) -> str | None:
    for suffix in ("_bucket", "_sum", "_count", "_total", "_created", ""):
        if series.endswith(suffix) and series[: len(series) - len(suffix)] in families:
            return series[: len(series) - len(suffix)]
    return None


def promtool() -> str | None:
    return shutil.which("promtool")


# -- marked operations -------------------------------------------------------------------


#: One connection's commands to CommandsHandler, and the replies: five operations (SET,
#: INCR, GET, SET, INCR), all ok but the last, an INCR of "x": the server's error.
COMMANDS = b"SET n 1\nINCR n\nGET n\nSET s x\nINCR s\n"
COMMAND_REPLIES = b"OK\n2\n2\nOK\nERR not an integer\n"


def send_commands(address: tuple[str, int]) -> bytes:
    """COMMANDS on one connection; every reply, once the server has closed it."""
    return send_all_read_all(address, COMMANDS)
