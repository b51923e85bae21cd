"""scripts/healthcheck.py against real servers: the session's dev TorchServe and a production-config one (token auth).

Conditions are real: a run dir with no server, a stale state file, a model scaled to zero workers, an expired
management key renewed through TorchServe's own token API.
"""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from scripts.healthcheck import CheckConfig, Verdict, check_live, check_ready, key_expired, worker_summary
from scripts.reliability.server import running_server
from scripts.serve import TorchServe, read_keys

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def production(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """config/production.properties (token auth on) on free ports, serving deepfake.mar (one worker)."""
    with running_server(model_store, tmp_path_factory.mktemp("healthcheck_production")) as server:
        yield server


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.healthcheck", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, check=False)


def management(server: TorchServe) -> dict[str, str]:
    return {"Authorization": f"Bearer {read_keys(server.config.run_dir)['management']['key']}"}


def scale(server: TorchServe, workers: int) -> None:
    response = requests.put(f"{server.config.management_url}/models/deepfake", headers=management(server),
                            params={"min_worker": workers, "max_worker": workers, "synchronous": "true"}, timeout=120)
    assert response.status_code in (200, 202), response.text


@pytest.mark.parametrize("check", ["ready", "live"])
def test_dev_server_is_ready_and_live(torchserve, check):
    completed = cli(check, "--run-dir", str(torchserve.config.run_dir))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    [line] = completed.stdout.splitlines()
    if check == "ready":  # the session server serves two models, one worker each
        assert line == "ready: deepfake 1.0: 1 READY; deepfake_batch6 1.0: 1 READY"
    else:
        assert line == "live: /ping answered Healthy"


@pytest.mark.parametrize("check", ["ready", "live"])
def test_production_server_is_ready_and_live_with_its_keys(production, check):
    completed = cli(check, "--run-dir", str(production.config.run_dir))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.startswith("ready: deepfake 1.0: 1 READY" if check == "ready" else "live: /ping")
    # The same calls without the key are refused: the check passed because it read key_file.json.
    assert requests.get(f"{production.config.inference_url}/ping", timeout=10).status_code == 400


@pytest.mark.parametrize("check", ["ready", "live"])
def test_a_run_dir_without_a_server_is_neither(tmp_path, check):
    completed = cli(check, "--run-dir", str(tmp_path))
    assert completed.returncode == 1
    assert completed.stdout == f"not {check}: no TorchServe recorded in {tmp_path} (no server.json): not started, " \
                               f"or stopped\n"


def test_a_stale_state_file_is_not_ready(production, tmp_path):
    # What a crash leaves: server.json naming ports nothing listens on and a pid that is not TorchServe.
    state = json.loads(production.state_file.read_text())
    (tmp_path / "server.json").write_text(json.dumps({**state, "pid": os.getpid()}))
    verdict = check_ready(CheckConfig(run_dir=tmp_path, timeout=2))
    assert not verdict.healthy and verdict.reason == f"not ready: the TorchServe recorded in {tmp_path} is not running"


def test_a_model_without_workers_is_not_ready_until_scaled_back(production):
    config = CheckConfig(run_dir=production.config.run_dir)
    scale(production, 0)
    try:
        verdict = check_ready(config)
        assert (verdict.healthy, verdict.reason) == (False, "not ready: deepfake 1.0: no workers")
        assert check_live(config).healthy  # the frontend still answers /ping: alive, not ready
        assert cli("ready", "--run-dir", str(production.config.run_dir)).returncode == 1
    finally:
        scale(production, 1)
    assert check_ready(config) == Verdict(True, "ready: deepfake 1.0: 1 READY")


def test_an_expired_management_key_is_renewed_and_the_old_one_stops_working(production):
    key_file = production.config.run_dir / "key_file.json"
    keys = json.loads(key_file.read_text())
    old = keys["management"]["key"]
    # Keys last token_expiration_min (60) minutes; the check goes by the expiry TorchServe recorded, so mark it past.
    keys["management"]["expiration time"] = "2020-01-01T00:00:00.000000000Z"
    key_file.write_text(json.dumps(keys))
    verdict = check_ready(CheckConfig(run_dir=production.config.run_dir))
    assert verdict.healthy and verdict.reason.endswith(" (renewed the expired management key)"), verdict.reason
    renewed = read_keys(production.config.run_dir)
    assert renewed["management"]["key"] != old and renewed["inference"] == keys["inference"]
    models = f"{production.config.management_url}/models"
    assert requests.get(models, headers={"Authorization": f"Bearer {old}"}, timeout=10).status_code == 400
    assert requests.get(models, headers=management(production), timeout=10).status_code == 200
    assert not key_expired(renewed["management"], datetime.now(UTC))
    assert check_ready(CheckConfig(run_dir=production.config.run_dir)).reason == "ready: deepfake 1.0: 1 READY"


def test_worker_summary_needs_every_worker_ready_and_one_per_model():
    def version(name: str, number: str, *states: str) -> dict:
        return {"modelName": name, "modelVersion": number, "workers": [{"status": state} for state in states]}

    assert worker_summary([version("m", "1", "READY", "READY")]) == (True, "m 1: 2 READY")
    assert worker_summary([version("m", "1", "READY", "UNLOADING")]) == (False, "m 1: 1 READY, 1 UNLOADING")
    # a canary: version 2 at zero workers is fine while version 1 serves; a model with no worker at all is not
    assert worker_summary([version("m", "1", "READY"), version("m", "2")]) == (True, "m 1: 1 READY; m 2: no workers")
    assert worker_summary([version("m", "1", "READY"), version("n", "1")])[0] is False
    assert worker_summary([]) == (False, "no model registered")


def test_the_module_imports_no_torch():
    # Docker runs the check every 15 s inside the serving container: it must not pay for torch's import.
    completed = subprocess.run([sys.executable, "-c", "import sys, scripts.healthcheck; print('torch' in sys.modules)"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert completed.stdout == "False\n"
