"""scripts/reliability/frontend_restart.py: one round against the real supervising serve tool (production config)."""

import json

import pytest

from scripts.reliability.frontend_restart import FrontendRestartConfig, run

pytestmark = pytest.mark.e2e


def test_one_round_the_frontend_comes_back_and_status_never_says_ready_too_early(model_store, tiny_dataset, tmp_path):
    # Timing targets are for the script on a quiet machine; here the behaviour is checked, so they are loose.
    config = FrontendRestartConfig(model_store=model_store, images=tiny_dataset / "real", image_count=4,
                                   concurrency=2, rounds=1, settle_seconds=3, status_interval=0.3,
                                   target_recovery_seconds=240, target_overhead_seconds=60,
                                   output_dir=tmp_path / "results")
    results, paths = run(config, tmp_path / "serve")

    assert paths == [tmp_path / "results" / "frontend_restart.json", tmp_path / "results" / "frontend_restart.md"]
    assert json.loads(paths[0].read_text())["passed"] is results["passed"]
    assert [check for check in results["checks"] if not check["passed"]] == []
    [kill] = results["rounds"]
    assert kill["died_line"].startswith(f"TorchServe frontend died: the Java frontend (pid {kill['killed_java_pid']})")
    assert kill["new_java_pid"] != kill["killed_java_pid"] and kill["supervisor_restarts"] == 1
    # The outage was seen by the clients (the server was really down) and only before `status` said ready.
    assert kill["failed"] > 0 and kill["ready_while_requests_failed"] == []
    assert set(kill["failed_by_kind"]) <= {"connection refused", "connection reset", "connection closed mid-answer",
                                           "400 stale or missing key"}
    outage = kill["status_during_outage"]
    assert outage["runs"] > 0 and outage["not_ready"] == outage["runs"] and outage["said_restarting"] > 0
    assert kill["after_recovery"]["requests"] > 0
    assert kill["after_recovery"]["ok"] == kill["after_recovery"]["requests"]
    assert kill["keys_changed"] and kill["old_processes_left"] == []
    assert kill["processes_now"] == kill["old_processes"]  # CLI, Java, one worker: the same tree again
    assert kill["seconds_to_notice"] <= kill["seconds_to_restarted_line"] <= kill["seconds_to_status_ready"]
    assert results["final_stop"] == {"exit_code": 0, "processes_left": []}
    markdown = paths[1].read_text()
    assert "| 1 | " in markdown and "the keys CHANGED" in markdown and "**FAIL**" not in markdown
