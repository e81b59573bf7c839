"""``deploy/``: every metric the Grafana dashboard queries exists in a real scrape, and the
Prometheus, Grafana, compose and Kubernetes files agree with each other and with the gateway.

No YAML library is a dependency, so the YAML files are kept simple and read line by line."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import load_settings
from tests.integration.conftest import StackFactory
from tests.integration.test_observability import PROVIDERS, one_job_per_provider, scrape

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "jobgate.json"

PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}
SUFFIXES = {"_bucket": "histogram", "_sum": "histogram", "_count": "histogram", "_total": "counter"}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def expressions(board: dict[str, Any]) -> list[str]:
    return [
        target["expr"]
        for panel in board["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects: identifiers that are not functions,
    keywords, label names, label values or ranges."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values may hold braces
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group(0).lower() not in PROMQL_KEYWORDS:
            names.add(match.group(0))
    return names


def family_of(name: str) -> tuple[str, str | None]:
    """(family name, the type its suffix implies), e.g. ``x_bucket`` → (``x``, histogram)."""
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return name.removesuffix(suffix), kind
    return name, None


def yaml_values(path: Path, key: str) -> list[str]:
    """Every scalar value of ``key:`` in a simple YAML file (comments and quotes stripped)."""
    values = []
    for line in path.read_text().splitlines():
        match = re.match(rf"\s*-?\s*{re.escape(key)}:\s*(.+?)\s*(?:#.*)?$", line)
        if match:
            values.append(match.group(1).strip("\"'"))
    return values


# -- the extraction itself ------------------------------------------------------------------------


def test_metric_names_are_extracted_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (provider, le) (rate(a_bucket{provider=~"$p", '
        'route!="/v1/jobs/{job_id}"}[$__rate_interval]))) / sum without (x) (b_total offset 5m)'
        " + on (provider) group_left c and d"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d"}
    assert family_of("a_bucket") == ("a", "histogram")
    assert family_of("b_total") == ("b", "counter")
    assert family_of("jobgate_jobs") == ("jobgate_jobs", None)


# -- the dashboard --------------------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"]
    assert board["title"] == "jobgate"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {item["name"]: item for item in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"])


def test_the_dashboard_covers_what_operators_ask() -> None:
    exprs = "\n".join(expressions(dashboard()))
    for needed in (
        "jobgate_jobs",
        "jobgate_job_transitions_total",
        "jobgate_job_polls_bucket",
        "jobgate_job_duration_seconds_bucket",
        "jobgate_job_detection_lag_seconds_bucket",
        "jobgate_circuit_state",
        'outcome="rate_limited"',
        'outcome!="ok"',
    ):
        assert needed in exprs, needed
    for quantile in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({quantile}, sum by (provider, le) "
            "(rate(jobgate_upstream_request_duration_seconds_bucket"
        ) in exprs


async def test_every_dashboard_metric_is_in_a_real_scrape(make_stack: StackFactory) -> None:
    board = dashboard()
    used: set[str] = set()
    for expr in expressions(board):
        found = metric_names(expr)
        assert found, expr
        used |= found
    for variable in board["templating"]["list"]:
        definition = variable.get("definition", "")
        used |= set(re.findall(r"label_values\((\w+)", definition))
    assert all(name.startswith("jobgate_") for name in used), used

    stack = await make_stack()
    await one_job_per_provider(stack)
    text = await scrape(stack)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    seen: dict[str, set[str]] = {}
    for family in families.values():
        for sample in family.samples:
            seen.setdefault(sample.name, set()).add(sample.labels.get("provider", ""))

    for name in sorted(used):
        base, kind = family_of(name)
        assert base in families, f"{name}: no family {base} in the scrape"
        if kind == "histogram":
            assert families[base].type == "histogram", name
        elif kind == "counter":
            assert families[base].type == "counter", name
        else:
            assert families[base].type == "gauge", name
        assert name in seen, f"{name}: the family exists but has no samples"
        if seen[name] != {""}:
            assert set(PROVIDERS) <= seen[name], f"{name}: not every provider has a series"


# -- Prometheus, Grafana provisioning, compose ----------------------------------------------------


def test_prometheus_scrapes_the_gateway() -> None:
    config = DEPLOY / "prometheus" / "prometheus.yml"
    text = config.read_text()
    assert "\t" not in text
    assert re.search(r"^scrape_configs:\s*$", text, re.MULTILINE)
    assert yaml_values(config, "job_name") == ["jobgate"]
    assert yaml_values(config, "metrics_path") == ["/metrics"]
    # One target per compose replica (test_deploy.py checks them against the compose services).
    assert yaml_values(config, "targets") == ['["jobgate-1:8080", "jobgate-2:8080"]']


def test_grafana_provisioning_matches_compose_and_the_dashboard() -> None:
    datasource = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    assert yaml_values(datasource, "type") == ["prometheus"]
    assert yaml_values(datasource, "url") == ["http://prometheus:9090"]
    uid = yaml_values(datasource, "uid")
    variables = {item["name"]: item for item in dashboard()["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == uid[0]

    provider = DEPLOY / "grafana" / "provisioning" / "dashboards" / "jobgate.yml"
    [path] = yaml_values(provider, "path")
    compose = (DEPLOY / "compose.yaml").read_text()
    assert f"./grafana/dashboards:{path}:ro" in compose
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in compose
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in compose
    services = re.findall(r"^  (\w[\w-]*):\s*$", compose.split("\nservices:")[1], re.MULTILINE)
    assert {"jobgate-1", "jobgate-2", "prometheus", "grafana"} <= set(services)
    assert '"8080:8080"' in compose


def test_the_dockerfile_serves_the_mounted_config() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\s*$", dockerfile, re.MULTILINE)
    assert "pip install ." in dockerfile
    assert 'CMD ["serve", "--config", "/etc/jobgate/config.toml"]' in dockerfile
    assert 'ENTRYPOINT ["jobgate"]' in dockerfile


# -- Kubernetes -----------------------------------------------------------------------------------


def configmap_toml() -> str:
    """The ``config.toml: |`` block of the ConfigMap, de-indented."""
    lines = (DEPLOY / "k8s" / "configmap.yaml").read_text().splitlines()
    start = lines.index("  config.toml: |") + 1
    block = []
    for line in lines[start:]:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block)


def test_the_configmap_is_valid_settings_without_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(configmap_toml())
    data = tomllib.loads(config.read_text())
    assert all("api_key" not in provider for provider in data["providers"].values())
    for name in PROVIDERS:
        monkeypatch.setenv(f"JOBGATE_PROVIDERS__{name.upper()}__API_KEY", f"k8s-{name}-key")
    # The DSN comes from the jobgate-store Secret (deployment.yaml), never the ConfigMap.
    monkeypatch.setenv("JOBGATE_STORE__DSN", "postgresql://jobgate:k8s@postgres:5432/jobgate")
    settings = load_settings(config)
    assert settings.store.kind == "postgres"
    assert settings.server.host == "0.0.0.0"  # a container answers on every address
    assert settings.log.format == "json"
    assert set(settings.providers) == set(PROVIDERS)
    assert settings.provider_key("pulse") == "k8s-pulse-key"


def test_the_deployment_probes_and_keys() -> None:
    deployment = (DEPLOY / "k8s" / "deployment.yaml").read_text()
    probes = re.findall(
        r"(readinessProbe|livenessProbe):\s*\n\s*httpGet:\s*\n\s*path: (\S+)", deployment
    )
    assert dict(probes) == {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for name in PROVIDERS:
        assert f"JOBGATE_PROVIDERS__{name.upper()}__API_KEY" in deployment
    assert (
        yaml_values(DEPLOY / "k8s" / "deployment.yaml", "name").count("jobgate-provider-keys") == 4
    )
    assert "kind: Service" in (DEPLOY / "k8s" / "service.yaml").read_text()
    kustomization = (DEPLOY / "k8s" / "kustomization.yaml").read_text()
    for manifest in ("configmap.yaml", "deployment.yaml", "service.yaml"):
        assert f"- {manifest}" in kustomization
        assert (DEPLOY / "k8s" / manifest).is_file()
