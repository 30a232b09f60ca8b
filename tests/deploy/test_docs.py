"""The README keeps its promises: the two commands, the CI entry point, the runbook links."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_readme_starts_with_the_run_and_test_commands() -> None:
    first_block = README.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:]]
    assert [c for c in commands if c] == ["make run", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE)


def test_every_alert_links_to_its_runbook_section() -> None:
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", README, re.MULTILINE)}
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("README.md#"), url
        assert url.split("#", 1)[1] in anchors, f"{rule['alert']}: no README section {url}"


def test_the_readme_table_of_settings_is_made_from_their_declarations() -> None:
    from runtime.config import README_BEGIN, README_END, readme_table

    table = README.split(README_BEGIN + "\n", 1)[1].split(README_END, 1)[0]
    assert table == readme_table(), "run `make readme`: the settings changed since"
