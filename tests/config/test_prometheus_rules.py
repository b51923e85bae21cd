"""config/prometheus/: valid for promtool, and its rules compute what they claim."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO_ROOT / "config" / "prometheus"
RULES_TEST = Path(__file__).with_name("deepfake_rules_test.yml")


def promtool(*arguments: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: it comes with the Debian package prometheus (make setup installs it)"
    return subprocess.run([binary, *arguments], capture_output=True, text=True, timeout=120, check=False)


def test_example_scrape_config_and_rules_are_valid():
    checked = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout + checked.stderr


def test_recording_rules_and_alerts_on_synthetic_series(tmp_path):
    # Mean latency = rate(latency)/rate(requests), mean batch size, fake ratio, and each alert's firing point.
    test_file = tmp_path / RULES_TEST.name
    test_file.write_text(RULES_TEST.read_text().replace("RULES_FILE", str(PROMETHEUS_DIR / "deepfake-rules.yml")))
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@pytest.mark.parametrize("broken", ["deepfake:batch_size:mean5m > bogus(", "sum(rate(Requests5XX[5m]) > 0.01"])
def test_promtool_rejects_a_broken_expression(tmp_path, broken):
    # The check above could only pass if promtool really parses the rules.
    rules = (PROMETHEUS_DIR / "deepfake-rules.yml").read_text()
    broken_file = tmp_path / "broken.yml"
    broken_file.write_text(rules.replace("deepfake:inference_latency_ms:mean5m > 500", broken))
    assert promtool("check", "rules", str(broken_file)).returncode != 0
