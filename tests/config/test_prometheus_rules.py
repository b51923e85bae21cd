"""config/prometheus/ and docker/prometheus/: valid for promtool, and the rules compute and alert as they claim."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO_ROOT / "config" / "prometheus"
RULES = PROMETHEUS_DIR / "deepfake-rules.yml"
COMPOSE_PROMETHEUS = REPO_ROOT / "docker" / "prometheus" / "prometheus.yml"
COMPOSE_FILE = REPO_ROOT / "docker" / "compose.yaml"
RULES_TEST = Path(__file__).with_name("deepfake_rules_test.yml")
# What an alert must carry for whoever it wakes up (the runbook sections are in docs/operations.md).
ANNOTATIONS = {"summary", "description", "runbook_url"}
ALERTS = {"TorchServeDown", "DeepfakeNoLiveWorkers", "DeepfakeHighErrorRate", "DeepfakeHighItemErrorRatio",
          "DeepfakeHighLatency", "DeepfakeSlowBatchInference", "DeepfakeFakeRateSpike"}


def promtool(*arguments: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: it comes with the Debian package prometheus (make setup installs it)"
    return subprocess.run([binary, *arguments], capture_output=True, text=True, timeout=120, check=False)


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_example_scrape_config_and_rules_are_valid():
    checked = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout + checked.stderr


def test_rules_file_is_valid():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compose_prometheus_config_is_valid_where_compose_mounts_the_rules(tmp_path):
    # The container sees the rules at the path compose mounts them to; promtool here must resolve that path, so the
    # container's layout is rebuilt under tmp_path and the config's absolute paths are pointed into it.
    config = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    (container_rules,) = config["rule_files"]
    service = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["prometheus"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
    assert (COMPOSE_FILE.parent / mounts[container_rules]).resolve() == RULES  # the one rules file, mounted there
    assert (COMPOSE_FILE.parent / mounts["/etc/prometheus/prometheus.yml"]).resolve() == COMPOSE_PROMETHEUS
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]

    layout = tmp_path / container_rules.lstrip("/")
    layout.parent.mkdir(parents=True)
    shutil.copy(RULES, layout)
    config["rule_files"] = [str(layout)]
    rebuilt = tmp_path / "etc" / "prometheus" / "prometheus.yml"
    rebuilt.write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", str(rebuilt))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout + checked.stderr
    torchserve = next(job for job in config["scrape_configs"] if job["job_name"] == "torchserve")  # alerts need it
    assert torchserve["static_configs"][0]["targets"] == ["torchserve:8082"]
    assert config["global"]["scrape_interval"] == "15s" and config["global"]["external_labels"]


def test_every_alert_says_how_bad_what_it_means_and_where_the_runbook_is():
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert set(rule["annotations"]) == ANNOTATIONS, rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{rule['alert'].lower()}", rule["alert"]
        assert 'job="torchserve"' in rule["expr"] or "up{" not in rule["expr"], rule["alert"]


def test_recording_rules_and_alerts_on_synthetic_series(tmp_path):
    # Mean latency = rate(latency)/rate(requests), p95, live workers, ratios; each alert fires on a series that
    # should fire it and stays silent on those that should not (deepfake_rules_test.yml).
    test_file = tmp_path / RULES_TEST.name
    test_file.write_text(RULES_TEST.read_text().replace("RULES_FILE", str(RULES)))
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_silent():
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    cases = [case for group in tests for case in group.get("alert_rule_test", [])]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert fired == silent == ALERTS


@pytest.mark.parametrize("broken", ["deepfake:batch_size:mean5m > bogus(", "sum(rate(Requests5XX[5m]) > 0.01"])
def test_promtool_rejects_a_broken_expression(tmp_path, broken):
    # The check above could only pass if promtool really parses the rules.
    rules = RULES.read_text()
    assert "deepfake:inference_latency_ms:mean5m > 500" in rules
    broken_file = tmp_path / "broken.yml"
    broken_file.write_text(rules.replace("deepfake:inference_latency_ms:mean5m > 500", broken))
    assert promtool("check", "rules", str(broken_file)).returncode != 0


def test_a_wrong_threshold_fails_the_unit_tests(tmp_path):
    # The unit tests really evaluate the alerts: a fixed 50 % fake-share rule instead of the baseline would miss
    # the 40 % spike they expect to fire.
    rules = RULES.read_text()
    spike = "deepfake:fake_ratio:15m > 2 * deepfake:fake_ratio:1d"
    assert spike in rules
    mutated = tmp_path / "mutated.yml"
    mutated.write_text(rules.replace(spike, "deepfake:fake_ratio:15m > 0.5"))
    test_file = tmp_path / RULES_TEST.name
    test_file.write_text(RULES_TEST.read_text().replace("RULES_FILE", str(mutated)))
    result = promtool("test", "rules", str(test_file))
    assert result.returncode != 0 and "DeepfakeFakeRateSpike" in result.stdout + result.stderr
