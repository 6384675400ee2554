"""The alert rules (k8s/critic-rm/alerts/critic-rm.rules.yaml): `promtool check rules` passes,
`promtool test rules` makes every alert fire and resolve, every metric they read is one the
gateway exports, every alert has its section in docs/operations.md, and the chart's
PrometheusRule and the compose Prometheus both carry the very same file."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.deploy.test_helm import CHART, RELEASE, _helm, helm_or_skip
from tests.deploy.tooling import REPO, require_tool
from tests.fakes import loader_for, wait_ready

ALERTS = CHART / "alerts"
RULES = ALERTS / "critic-rm.rules.yaml"
RULE_TESTS = ALERTS / "critic-rm.rules.test.yaml"
RUNBOOK = REPO / "docs" / "operations.md"
# Series that Prometheus makes itself, not the gateway.
SCRAPE_SERIES = {"up"}


def rules() -> list[dict[str, Any]]:
    (group,) = yaml.safe_load(RULES.read_text())["groups"]
    return list(group["rules"])


def promtool(*args: str, cwd: Path = ALERTS) -> str:
    tool = require_tool("promtool")
    proc = subprocess.run(
        [str(tool), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_the_rules_pass_promtool_check() -> None:
    out = promtool("check", "rules", RULES.name)
    assert f"SUCCESS: {len(rules())} rules found" in out, out


def test_every_alert_fires_and_resolves_under_promtool() -> None:
    promtool("test", "rules", RULE_TESTS.name)
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    evals: dict[str, list[tuple[int, bool]]] = {}
    for case in cases:
        for check in case["alert_rule_test"]:
            minutes = int(check["eval_time"].removesuffix("m"))
            evals.setdefault(check["alertname"], []).append((minutes, bool(check["exp_alerts"])))
    for rule in rules():
        seen = sorted(evals.get(rule["alert"], []))
        fired = [t for t, firing in seen if firing]
        assert fired, f"{rule['alert']}: no promtool case makes it fire"
        # Quiet once the cause has gone; and quiet before its `for` where it has one.
        assert any(t > fired[-1] and not firing for t, firing in seen), rule["alert"]
        if "for" in rule:
            assert any(t < fired[0] and not firing for t, firing in seen), rule["alert"]


@pytest.fixture(scope="module")
def exported(checkpoint_root: Path) -> Iterator[set[str]]:
    """The metric names the gateway exports (over the fake engines: the names, not the values,
    are what the rules need)."""
    settings = Settings(checkpoint_root=checkpoint_root, warmup=False, max_model_len=512)
    with TestClient(create_app(settings, loader_for(checkpoint_root))) as c:
        wait_ready(c)
        text = c.get("/metrics").text
    yield {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def test_the_rules_read_only_metrics_the_gateway_exports(exported: set[str]) -> None:
    for rule in rules():
        names = set(re.findall(r"\b((?:critic_rm|process)_[a-z_]+|up)\b", rule["expr"]))
        assert names, rule["alert"]
        missing = names - exported - SCRAPE_SERIES
        assert not missing, f"{rule['alert']} reads {missing}, which /metrics lacks"


def test_every_alert_has_its_runbook_section() -> None:
    text = RUNBOOK.read_text()
    for rule in rules():
        name = rule["alert"]
        assert f"\n## {name}\n" in text, f"docs/operations.md has no section for {name}"
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{name.lower()}"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])


def test_the_chart_ships_the_rules_file_as_a_prometheus_rule() -> None:
    helm = helm_or_skip()
    out = _helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.labels.release=kube-prometheus-stack",
        "--show-only",
        "templates/prometheusrule.yaml",
    )
    obj = yaml.safe_load(out)
    assert obj["kind"] == "PrometheusRule"
    assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert obj["spec"] == yaml.safe_load(RULES.read_text())  # {{ $labels }} untouched
    # Off by default: no PrometheusRule CRD needed to install the chart.
    default = _helm(helm, "template", RELEASE, str(CHART))
    assert "kind: PrometheusRule" not in default


def test_the_compose_prometheus_loads_the_same_file() -> None:
    docker = REPO / "docker"
    compose = yaml.safe_load((docker / "compose.yaml").read_text())
    config = yaml.safe_load((docker / "prometheus" / "prometheus.yml").read_text())
    volumes = [v.split(":") for v in compose["services"]["prometheus"]["volumes"]]
    mounts = {target: source for source, target, *_ in volumes}
    for path in config["rule_files"]:
        assert (docker / mounts[path]).resolve() == RULES.resolve()
