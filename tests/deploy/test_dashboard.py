"""The Grafana dashboard queries only what the service exports.

Every PromQL expression in docker/grafana/dashboards/critic-rm.json (panels and template
variables) is parsed with a real PromQL parser; every critic_rm_* metric it selects must appear
as a sample in /metrics of the gateway after real traffic over the fake engines, and every label
matcher must name a label (and, for `=`/`=~`, a value) that the metric carries."""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.settings import Settings
from tests.deploy.tooling import REPO, tools_python
from tests.fakes import loader_for, wait_ready

DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "critic-rm.json"
CHART_COPY = REPO / "k8s" / "critic-rm" / "dashboards" / "critic-rm.json"
PARSER = Path(__file__).with_name("promql_selectors.py")

# Grafana's interval variables are not PromQL: substitute a duration before parsing.
GRAFANA_INTERVALS = re.compile(
    r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}"
)
# Labels Prometheus attaches at scrape time (not in /metrics).
TARGET_LABELS = {"job", "instance", "__name__"}
# Metrics that are not the service's own but exist in every Prometheus.
OTHER_METRICS = {"up"}
ITEM = {"prompt": "What is 2+2?", "response": "4"}


# ---------------------------------------------------------------- dashboard contents


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def expressions(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable's metric selector."""
    out: list[tuple[str, str]] = []
    for panel in all_panels(dash["panels"]):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)", query.strip())
        assert m, f"variable {var['name']}: unsupported query {query!r}"
        out.append((f"variable {var['name']}", m.group(1)))
    return out


def to_promql(expr: str) -> str:
    return GRAFANA_INTERVALS.sub("5m", expr)


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)


def lexical_metric_names(expr: str) -> set[str]:
    """critic_rm_* identifiers outside string literals (a cross-check of the parser)."""
    return set(re.findall(r"(?<![A-Za-z0-9_:])critic_rm_[A-Za-z0-9_:]*", strip_strings(expr)))


def parse_all(exprs: list[str]) -> list[dict[str, Any]]:
    python = tools_python("promql_parser")
    proc = subprocess.run(
        [str(python), str(PARSER)],
        input=json.dumps(exprs),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    parsed: list[dict[str, Any]] = json.loads(proc.stdout)
    return parsed


# ---------------------------------------------------------------- what the service exports


def make_app(root: Path, **overrides: Any) -> Any:
    settings = Settings(checkpoint_root=root, warmup=False, max_model_len=512, **overrides)  # type: ignore[arg-type]
    return create_app(settings, loader_for(root))


def drive(c: TestClient) -> str:
    """Traffic that touches every code path with a metric; returns /metrics."""
    wait_ready(c)
    assert c.post("/score", json={"items": [ITEM], "num_critiques": 2}).status_code == 200
    again = c.post("/score", json={"items": [ITEM], "num_critiques": 2})
    assert again.status_code == 200
    other = {"prompt": "Name a prime.", "response": "7"}
    assert c.post("/score", json={"items": [other, ITEM], "num_critiques": 0}).status_code == 200
    assert c.post("/critique", json={**ITEM, "n": 3}).status_code == 200
    refine = {**ITEM, "rounds": 1, "stop": "never", "num_critiques": 1}
    assert c.post("/refine", json=refine).status_code == 200
    pair = {"prompt": ITEM["prompt"], "responses": ["4", "5"], "num_criteria": 1}
    assert c.post("/compare", json=pair).status_code == 200
    same = {"prompt": ITEM["prompt"], "responses": ["4", "4"]}
    assert c.post("/compare", json=same).status_code == 200
    assert c.post("/score", json={"items": []}).status_code == 422
    gen = c.app.state.service.runtime.generator  # type: ignore[attr-defined]
    gen.fail_next = 1
    failed = c.post("/score", json={"items": [ITEM], "num_critiques": 1, "use_cache": False})
    assert failed.status_code == 503
    return c.get("/metrics").text


@pytest.fixture(scope="module")
def exported(checkpoint_root: Path) -> dict[str, dict[str, set[str]]]:
    """sample name -> label -> values seen, over two gateways: one with the in-process cache
    (a cache hit, an engine error, a 422), one whose Redis refuses connections (cache errors,
    fail-open)."""
    texts = []
    with TestClient(make_app(checkpoint_root)) as c:
        texts.append(drive(c))
    # Port 1 on loopback: nothing listens, so every Redis operation fails fast.
    with TestClient(make_app(checkpoint_root, redis_url="redis://127.0.0.1:1/0")) as c:
        texts.append(drive(c))
    samples: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = samples[sample.name]
                for k, v in sample.labels.items():
                    labels[k].add(v)
    return samples


# ---------------------------------------------------------------- tests


def test_every_dashboard_metric_is_exported(exported: dict[str, dict[str, set[str]]]) -> None:
    found = expressions(dashboard())
    parsed = parse_all([to_promql(e) for _, e in found])
    problems: list[str] = []
    referenced: set[str] = set()
    for (where, expr), result in zip(found, parsed, strict=True):
        if "error" in result:
            problems.append(f"{where}: not valid PromQL: {result['error']}\n  {expr}")
            continue
        names = {s["name"] for s in result["selectors"]}
        ours = {n for n in names if n.startswith("critic_rm_")}
        if ours != lexical_metric_names(expr):
            problems.append(f"{where}: parser found {ours}, text has {lexical_metric_names(expr)}")
        for foreign in names - ours - OTHER_METRICS:
            problems.append(f"{where}: queries {foreign!r}, which critic-rm does not export")
        for sel in result["selectors"]:
            name = sel["name"]
            if not name.startswith("critic_rm_"):
                continue
            referenced.add(name)
            if name not in exported:
                problems.append(f"{where}: {name} is not in /metrics")
                continue
            labels = exported[name]
            for label, op, value in sel["matchers"]:
                if label in TARGET_LABELS:
                    continue
                if label not in labels:
                    problems.append(f"{where}: {name} has no label {label!r} (has {set(labels)})")
                elif op == "=" and value not in labels[label]:
                    problems.append(f"{where}: {name}{{{label}={value!r}}} never exported")
                elif op == "=~" and not any(re.fullmatch(value, v) for v in labels[label]):
                    problems.append(f"{where}: {name}{{{label}=~{value!r}}} matches nothing")
    assert not problems, "\n".join(problems)
    # The parser really saw the metrics (not an empty walk).
    assert len(referenced) >= 15, referenced


def test_dashboard_covers_the_issue_panels() -> None:
    exprs = " ".join(e for _, e in expressions(dashboard()))
    for needed in (
        "critic_rm_requests_total",
        "critic_rm_request_failures_total",
        "critic_rm_request_duration_seconds_bucket",
        "critic_rm_queue_depth",
        "critic_rm_queue_wait_seconds_bucket",
        "critic_rm_batch_size_bucket",
        "critic_rm_batch_sequences_bucket",
        "critic_rm_critiques_total",
        "critic_rm_critique_tokens_total",
        "critic_rm_generate_seconds_bucket",
        "critic_rm_score_seconds_bucket",
        "critic_rm_cache_hits_total",
        "critic_rm_cache_misses_total",
        "critic_rm_cache_errors_total",
        "critic_rm_prompt_tokens_total",
        "critic_rm_reward_bucket",
        "critic_rm_model_info",
        "critic_rm_engine_errors_total",
    ):
        assert needed in exprs, needed
    for q in ("0.5", "0.95", "0.99"):
        pattern = rf"histogram_quantile\({q}, sum by \(le[^)]*\) \(rate\(critic_rm_request_duration_seconds_bucket"
        assert re.search(pattern, exprs), f"no p{q} request latency"
    # Request and error rates are broken down by route and status.
    assert "sum by (route, status) (rate(critic_rm_requests_total" in exprs


def test_dashboard_structure() -> None:
    dash = dashboard()
    assert dash["uid"] == "critic-rm" and dash["title"]
    panels = list(all_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= names
    ds_var = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
    assert ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", p["title"]
                # Every query is scoped to the selected job(s) and replica(s).
                for sel in re.findall(r"(critic_rm_\w+|\bup)\{([^}]*)\}", t["expr"]):
                    assert 'job=~"$job"' in sel[1] and 'instance=~"$instance"' in sel[1], t
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_every_panel_selector_is_scoped() -> None:
    """Bare metric names (no label set) in a panel would mix in other jobs' series."""
    for where, expr in expressions(dashboard()):
        if not where.startswith("panel "):
            continue
        bare = re.findall(r"(?<![\w:])(critic_rm_\w+)(?![\w{])", strip_strings(expr))
        assert not bare, f"{where}: unscoped selector {bare}"


def test_helm_chart_ships_the_same_dashboard() -> None:
    assert CHART_COPY.read_bytes() == DASHBOARD.read_bytes(), (
        f"{CHART_COPY} differs from {DASHBOARD}: copy the dashboard into the chart"
    )


def test_scrape_intervals_and_rate_windows_agree() -> None:
    """The chart's ServiceMonitor and the compose Prometheus scrape at one interval, Grafana's
    data source knows it (so $__rate_interval spans at least 4 scrapes), and every range in a
    panel is $__rate_interval: a fixed window shorter than 2 scrapes would draw no data."""
    import yaml

    chart = yaml.safe_load((REPO / "k8s" / "critic-rm" / "values.yaml").read_text())
    prom = yaml.safe_load((REPO / "docker" / "prometheus" / "prometheus.yml").read_text())
    source = yaml.safe_load(
        (
            REPO / "docker" / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
        ).read_text()
    )
    (ds,) = source["datasources"]
    interval = chart["serviceMonitor"]["interval"]
    assert prom["global"]["scrape_interval"] == interval
    assert ds["jsonData"]["timeInterval"] == interval
    for where, expr in expressions(dashboard()):
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", f"{where}: range [{window}]"
