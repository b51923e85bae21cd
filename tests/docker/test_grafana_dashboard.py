"""docker/grafana/: the provisioned datasource, the dashboard provider and the dashboard JSON fit together.

Grafana itself cannot run here, so these are the structural checks Grafana would otherwise fail on silently (a panel
pointing at a datasource uid nobody provisioned shows "datasource not found"; overlapping panels are pushed around;
a provider path that compose does not mount loads nothing). That every query runs against a real Prometheus and
every metric it names exists is tested end to end in tests/test_prometheus.py.
"""

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
GRAFANA = REPO_ROOT / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "deepfake-detector.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "deepfake.yml"
COMPOSE = REPO_ROOT / "docker" / "compose.yaml"
# Where Grafana's image reads provisioning, and where the provider (and compose) put the dashboards.
PROVISIONING_IN_CONTAINER = "/etc/grafana/provisioning"
DASHBOARDS_IN_CONTAINER = "/var/lib/grafana/dashboards"
GRID_COLUMNS = 24
# What issue 8 asks the dashboard to show, by panel title.
REQUIRED_PANELS = {
    "Request rate", "Error rate: 4xx and 5xx share", "Mean latency", "Queue time", "Batch inference time p50 / p95",
    "Preprocess time p50 / p95", "Batch size", "Live workers", "Predictions by label", "Fake share",
    "Item errors by code", "Scored images by kind", "Host CPU and memory", "Alert state"}
# Panels about the whole host or Prometheus rather than one model: they need not filter by $model.
HOST_PANELS = {"Error rate: 4xx and 5xx share", "Host CPU and memory", "Alert state"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(document: dict) -> Iterator[dict]:
    """Every panel, rows' nested panels included."""
    for panel in document["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(document: dict) -> Iterator[tuple[dict, dict]]:
    for panel in panels(document):
        for target in panel.get("targets", []):
            yield panel, target


def provisioned_datasource() -> dict:
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    return datasource


def compose_mounts(service: str) -> dict[str, Path]:
    """Container path → host path of the service's bind mounts (relative to docker/, as compose resolves them)."""
    volumes = yaml.safe_load(COMPOSE.read_text())["services"][service]["volumes"]
    mounts = {}
    for volume in volumes:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def overlaps(a: dict, b: dict) -> bool:
    """Whether two gridPos rectangles share a cell."""
    across = a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
    down = a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
    return across and down


def test_the_dashboard_is_a_grafana_11_dashboard_with_a_fixed_uid():
    document = dashboard()
    assert document["uid"] == "deepfake-detector" and document["title"]
    assert document["schemaVersion"] >= 39  # Grafana 11.0 writes 39
    assert "id" not in document or document["id"] is None  # a provisioned dashboard gets its id from Grafana
    assert {panel["title"] for panel in panels(document)} >= REQUIRED_PANELS


def test_panel_ids_are_unique():
    ids = [panel["id"] for panel in panels(dashboard())]
    assert len(ids) == len(set(ids)) and all(isinstance(panel_id, int) for panel_id in ids)


def test_every_query_uses_the_provisioned_datasource():
    datasource = provisioned_datasource()
    expected = {"type": datasource["type"], "uid": datasource["uid"]}
    document = dashboard()
    queried = [panel for panel in panels(document) if panel["type"] != "row"]
    assert queried and all(panel["datasource"] == expected for panel in queried)
    assert all(target["datasource"] == expected for _, target in targets(document))
    assert all(variable["datasource"] == expected for variable in document["templating"]["list"])


def test_panels_fit_the_grid_without_overlapping():
    boxes = [(panel["title"], panel["gridPos"]) for panel in panels(dashboard())]
    for title, box in boxes:
        assert box["w"] > 0 and box["h"] > 0 and 0 <= box["x"] and box["x"] + box["w"] <= GRID_COLUMNS, title
    for (first, a), (second, b) in itertools.combinations(boxes, 2):
        assert not overlaps(a, b), f"{first!r} {a} overlaps {second!r} {b}"


def test_overlap_check_sees_an_overlap():
    assert overlaps({"x": 0, "y": 0, "w": 8, "h": 8}, {"x": 7, "y": 7, "w": 8, "h": 8})
    assert not overlaps({"x": 0, "y": 0, "w": 8, "h": 8}, {"x": 8, "y": 0, "w": 8, "h": 8})


def test_queries_follow_the_model_variable_and_grafanas_rate_window():
    document = dashboard()
    (variable,) = document["templating"]["list"]
    assert variable["name"] == "model" and variable["includeAll"] and variable["multi"]
    assert variable["allValue"] == ".*"  # "All" also matches models that have not been called yet
    for panel, target in targets(document):
        expr = target["expr"]
        assert target["refId"] and target.get("legendFormat"), panel["title"]
        # Grafana sizes $__rate_interval to the scrape interval; a fixed window breaks when either changes.
        assert set(re.findall(r"\[([^\]]+)\]", expr)) <= {"$__rate_interval"}, (panel["title"], expr)
        if panel["title"] not in HOST_PANELS:
            assert '=~"$model"' in expr, (panel["title"], expr)


def test_every_panel_explains_itself_and_has_a_unit():
    for panel in panels(dashboard()):
        if panel["type"] == "row":
            continue
        assert len(panel["description"]) > 30, panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]


def test_the_datasource_is_the_compose_prometheus():
    datasource = provisioned_datasource()
    assert (datasource["uid"], datasource["type"], datasource["url"]) == ("prometheus", "prometheus",
                                                                          "http://prometheus:9090")
    assert datasource["access"] == "proxy" and datasource["isDefault"]
    assert yaml.safe_load(DATASOURCES.read_text())["apiVersion"] == 1


def test_provisioning_paths_match_where_compose_mounts_them():
    mounts = compose_mounts("grafana")
    assert mounts[PROVISIONING_IN_CONTAINER] == GRAFANA / "provisioning"
    assert mounts[DASHBOARDS_IN_CONTAINER] == DASHBOARD.parent
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == DASHBOARDS_IN_CONTAINER
    # Grafana reads provisioning/<kind>/*.yaml: both files are where it looks once mounted.
    for file, kind in ((DATASOURCES, "datasources"), (PROVIDERS, "dashboards")):
        assert file.parent == GRAFANA / "provisioning" / kind
    assert sorted(path.name for path in DASHBOARD.parent.glob("*.json")) == [DASHBOARD.name]


@pytest.mark.parametrize("path", [DATASOURCES, PROVIDERS])
def test_provisioning_files_are_yaml_mappings(path):
    assert isinstance(yaml.safe_load(path.read_text()), dict)
