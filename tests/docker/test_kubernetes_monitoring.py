"""docker/kubernetes/monitoring/: the Prometheus Operator objects that scrape the pods and load the alert rules.

Their CRDs are not in kubernetes-validate's schemas, so the checks here are the ones that matter for them: the
ServiceMonitor reaches the Service's metrics port and names the job the rules select, and the PrometheusRule is the
rules file (promtool-checked, unit-tested in tests/config/) and nothing else.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from scripts.prometheus_rule import MANIFEST, RULES_FILE, render

REPO_ROOT = Path(__file__).resolve().parents[2]
MONITORING_DIR = REPO_ROOT / "docker" / "kubernetes" / "monitoring"
SERVICE = REPO_ROOT / "docker" / "kubernetes" / "base" / "service.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_prometheus_rule_is_the_rules_file_and_up_to_date():
    manifest = load(MANIFEST)
    assert (manifest["apiVersion"], manifest["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert manifest["spec"]["groups"] == load(RULES_FILE)["groups"]
    assert MANIFEST.read_text() == render(), "run python -m scripts.prometheus_rule"


def test_a_changed_rules_file_makes_the_manifest_stale(tmp_path):
    rules = load(RULES_FILE)
    rules["groups"][-1]["rules"][0]["for"] = "99m"
    changed = tmp_path / "rules.yml"
    changed.write_text(yaml.safe_dump(rules))
    assert render(changed) != MANIFEST.read_text()


def test_promtool_accepts_the_manifests_groups(tmp_path):
    groups = tmp_path / "groups.yml"
    groups.write_text(yaml.safe_dump({"groups": load(MANIFEST)["spec"]["groups"]}))
    checked = subprocess.run([shutil.which("promtool") or "promtool", "check", "rules", str(groups)],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_service_monitor_scrapes_the_services_metrics_port_as_the_job_the_rules_select():
    monitor, service = load(MONITORING_DIR / "servicemonitor.yaml"), load(SERVICE)
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    [endpoint] = monitor["spec"]["endpoints"]
    [port] = [port for port in service["spec"]["ports"] if port["name"] == endpoint["port"]]
    assert port["port"] == 8082
    jobs_in_rules = set(re.findall(r'job="([^"]+)"', RULES_FILE.read_text()))
    assert jobs_in_rules == {"torchserve"}
    assert {"targetLabel": "job", "replacement": "torchserve"} in endpoint["relabelings"]


def test_the_kustomization_lists_every_manifest_of_its_folder():
    listed = set(load(MONITORING_DIR / "kustomization.yaml")["resources"])
    assert listed == {path.name for path in MONITORING_DIR.glob("*.yaml")} - {"kustomization.yaml"}
