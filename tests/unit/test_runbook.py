"""docs/runbook.md has a section for every alarm and alert the project defines (issue 16).

Names come from the sources themselves: every ``AWS::CloudWatch::Alarm`` of
infra/template.yaml (read with the CloudFormation-tag-aware loader of harness/infra_helpers.py)
and every ``alert`` of infra/prometheus/alerts.yml. A new alarm or alert without a
``## <Name>`` section, or a section without its five parts, fails here.
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.harness.infra_helpers import ROOT, load_template

RUNBOOK = ROOT / "docs" / "runbook.md"
ALERTS = ROOT / "infra" / "prometheus" / "alerts.yml"
PARTS = ("**Means**", "**First command**", "**Likely causes**", "**Fix**", "**Verify**")


def alarm_names() -> list[str]:
    """Logical ids of the template's CloudWatch alarms."""
    resources = load_template()["Resources"]
    return sorted(name for name, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm")


def alert_names() -> list[str]:
    """Names of the Prometheus alerting rules (recording rules have no ``alert``)."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return sorted(rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule)


def sections() -> dict[str, str]:
    """The runbook's ``## `` sections by heading."""
    parts = re.split(r"(?m)^## +(.+?)\s*$", RUNBOOK.read_text())
    return {heading: body for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_the_sources_define_alarms_and_alerts() -> None:
    """The parsers find something (a renamed key must not make the checks below vacuous)."""
    assert "DeadLetterQueueNotEmptyAlarm" in alarm_names()
    assert "KomorebiDeadLetters" in alert_names()


@pytest.mark.parametrize("name", alarm_names() + alert_names())
def test_every_alarm_and_alert_has_a_complete_section(name: str) -> None:
    found = sections()
    assert name in found, f"docs/runbook.md has no '## {name}' section"
    missing = [part for part in PARTS if part not in found[name]]
    assert not missing, f"'## {name}' lacks {missing}"


def test_every_section_names_an_alarm_an_alert_or_the_logs() -> None:
    """No stale section for an alarm or alert that no longer exists."""
    known = set(alarm_names()) | set(alert_names())
    extra = [h for h in sections() if h not in known and not h.startswith("Following")]
    assert extra == [], f"sections for unknown alarms/alerts: {extra}"


def test_logs_insights_queries_use_the_fields_the_worker_writes() -> None:
    """The queries filter on the fields job_context binds (worker/observability/logs.py)."""
    logs = sections()["Following one recording through the logs"]
    source = (ROOT / "worker" / "observability" / "logs.py").read_text()
    for field in ("recording_id", "message_id", "receive_count"):
        assert f'"{field}"' in source, f"the worker no longer binds {field}"
    assert 'filter recording_id = "<recording id>"' in logs
    assert 'filter message_id = "<message id>"' in logs
