"""The observability deployment files: Prometheus is wired into the compose file with its
rules, and every metric the rules and the Grafana dashboard query is one the code records."""

from __future__ import annotations

import json
import re

import yaml

from tests.helpers import REPO

DEPLOY = REPO / "deploy"
SOURCES = [REPO / "activities" / "telemetry.py", REPO / "workflows" / "metrics.py"]
# Temporal SDK metrics the dashboard uses (checked live in test_telemetry).
TEMPORAL = {"temporal_workflow_task_execution_latency_seconds"}
SUFFIXES = ("_bucket", "_count", "_sum")


def defined() -> set[str]:
    names: set[str] = set()
    for path in SOURCES:
        names |= set(re.findall(r'"(opsc_[a-z_]+)"', path.read_text()))
    return names | TEMPORAL


def used(text: str) -> set[str]:
    found = set(re.findall(r"\b((?:opsc|temporal)_[a-z_]+)\b", text))
    return {next((n[: -len(s)] for s in SUFFIXES if n.endswith(s)), n) for n in found}


def test_prometheus_is_wired_into_compose_with_the_rules() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.temporal.yml").read_text())
    prom = compose["services"]["prometheus"]
    mounted = {v.split(":")[0] for v in prom["volumes"]}
    assert mounted == {"./deploy/prometheus.yml", "./deploy/opsconductor-alerts.yml"}
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/opsconductor-alerts.yml"]
    port = compose["services"]["worker"]["environment"]["OPSC_METRICS_ADDRESS"].split(":")[1]
    assert config["scrape_configs"][0]["dns_sd_configs"][0]["port"] == int(port)


def test_rules_and_dashboard_query_metrics_the_code_records() -> None:
    rules = yaml.safe_load((DEPLOY / "opsconductor-alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert len(alerts) >= 6 and all({"alert", "expr", "labels"} <= set(r) for r in alerts)
    assert len({r["alert"] for r in alerts}) == len(alerts)
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = used("\n".join(r["expr"] for r in alerts) + "\n" + "\n".join(exprs))
    assert queried - {"opsc_"} and queried <= defined(), queried - defined()
    assert {"opsc_executions_total", "opsc_step_duration_seconds", "opsc_dlq_depth",
            "opsc_sla_outcomes_total", "opsc_queue_wait_seconds"} <= queried
