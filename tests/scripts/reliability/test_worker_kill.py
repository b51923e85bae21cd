"""The worker-kill check's short version: one SIGKILL under load on a real production-config TorchServe.

The archive runs the shipped model-config (2 workers, batchSize 8), not the one-worker test archive: with
a second worker serving while the first restarts, the run shows that only the dead worker's batch fails
and that requests keep succeeding during the restart, which one worker could not show.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from scripts.package_model import DEFAULT_MODEL_CONFIG, PackageConfig, package_model
from scripts.reliability.server import running_server, worker_identities, worker_processes
from scripts.reliability.worker_kill import WorkerKillConfig, kill_checks, main, markdown, run_worker_kills
from tests.shared_faces import FACES_DIR

pytestmark = pytest.mark.e2e  # about 30 s


@pytest.fixture(scope="module")
def two_worker_store(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deepfake.mar from the tiny export with config/model-config.yaml as shipped (2 workers, batchSize 8)."""
    store = tmp_path_factory.mktemp("two_worker_store")
    package_model(PackageConfig(export_dir=tiny_export, model_store=store, model_config=DEFAULT_MODEL_CONFIG))
    return store


def test_a_killed_worker_comes_back_and_only_requests_in_flight_fail(two_worker_store, tiny_dataset, tmp_path):
    # Recovery is mostly a new Python process importing torch while the other worker and the clients hold both cores:
    # 5-10 s in our runs on a 2-core machine, once 11 s with other test sessions beside it. The script holds it to the
    # issue's 10 s (worker_kill.md); this test allows 20 s so that a busy CI machine does not fail it.
    config = WorkerKillConfig(model_store=two_worker_store, images=FACES_DIR if FACES_DIR.is_dir() else tiny_dataset,
                              concurrency=16, kills=1, warmup_requests=64, settle_requests=100,
                              target_recovery_seconds=20.0, output_dir=tmp_path / "results")
    with running_server(two_worker_store, tmp_path / "serve") as server:
        before = worker_identities(server)
        results = run_worker_kills(config, server)
        after = worker_identities(server)
        live_workers = {process.pid for process in worker_processes(server)}

    assert results["workers"] == 2 and results["model"]["batchSize"] == 8
    kill = results["kills"][0]
    # The kill was real: the worker keeps its id (and TorchServe keeps its startTime) but runs in a new process; the
    # other worker is untouched.
    killed = next(identity for identity in before if identity[1] == kill["killed_pid"])
    restarted = next(identity for identity in after if identity[0] == killed[0])
    assert restarted[1] == kill["new_pid"] != kill["killed_pid"]
    assert [i for i in before if i != killed] == [i for i in after if i != restarted]
    assert not psutil.pid_exists(kill["killed_pid"]) or kill["killed_pid"] not in live_workers
    assert kill["new_pid"] in live_workers

    assert kill["recovery_seconds"] is not None and kill["recovery_seconds"] < config.target_recovery_seconds
    # Only the dead worker's batch failed: at most batchSize, none sent after the kill, each with TorchServe's verdict.
    assert 0 < kill["failed"] <= 8 and kill["failed"] <= kill["in_flight_at_kill"]
    assert kill["failed_sent_after_kill"] == 0 and kill["failed_in_flight_at_kill"] == kill["failed"]
    for kind in kill["failure_kinds"]:
        assert kind["status"] in (500, 507) and json.loads(kind["body"])["message"] == "Worker died."
    # The other worker kept serving: a request sent after the kill succeeded long before the restart was done.
    assert kill["seconds_until_requests_succeed"] < kill["recovery_seconds"]
    after_recovery = kill["after_recovery"]
    assert after_recovery["requests"] >= 100 and after_recovery["ok"] == after_recovery["requests"]
    assert kill["worker_states"][-1]["workers"] == sorted((w[0], w[1], "READY") for w in after)

    checks = kill_checks(results, config)
    assert len(checks) == 4 and all(check.passed for check in checks), checks
    text = "\n".join(markdown(results, checks))
    assert "Worker died." in text and f"pid {kill['killed_pid']} → {kill['new_pid']}" in text


def test_help_names_the_command():
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
