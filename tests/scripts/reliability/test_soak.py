"""The soak check's short version: 30 s at concurrency 32 on a real production-config TorchServe."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from scripts.reliability.report import rss_mb
from scripts.reliability.server import running_server, worker_identities, worker_processes
from scripts.reliability.soak import SoakConfig, main, run_soak, write_soak_report
from tests.shared_faces import FACES_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def request_images(tiny_dataset: Path) -> Path:
    """The shared real photos when they are there (what the scripts send), else the tiny demo set."""
    return FACES_DIR if FACES_DIR.is_dir() else tiny_dataset


def test_30_seconds_at_concurrency_32_without_server_errors_restarts_or_memory_creep(model_store, request_images,
                                                                                     tmp_path):
    # The Java frontend still grows its heap in its first minute (+2-4 % from 10 to 40 s here): a 30-s run holds it
    # to 15 %, the 10-minute script (60-s warm-up) to 5 %. The workers are held to the 5 % here too.
    config = SoakConfig(model_store=model_store, images=request_images, concurrency=32, duration=30.0,
                        warmup_seconds=10.0, sample_seconds=1.0, max_frontend_growth_percent=15.0,
                        output_dir=tmp_path / "results")
    with running_server(model_store, tmp_path / "serve") as server:
        identities = worker_identities(server)
        results = run_soak(config, server)
        # Read independently of the sampler: the workers are the same processes, at about the RSS it last saw.
        assert worker_identities(server) == identities
        now = {process.pid: rss_mb(process) for process in worker_processes(server)}
    checks, paths = write_soak_report(results, config)

    load, memory = results["load"], results["memory"]
    assert load["requests"] == sum(results["statuses"].values()) >= 2 * 32
    assert results["longest_gap_without_2xx_seconds"] < 5.0  # answers kept coming throughout
    assert results["statuses"] == {"200": load["requests"]}  # so 0 server errors and 0 unanswered
    assert results["server_errors"] == results["unanswered"] == 0
    assert 25 <= len(results["memory_samples"]) <= 40  # one a second for 30 s, plus both ends
    assert set(memory["workers"]) == {str(pid) for pid in now} and not memory["restarted"]
    for pid, worker in memory["workers"].items():
        assert worker["end_mb"] == pytest.approx(now[int(pid)], rel=0.2)
        assert worker["growth_percent"] < 5.0, memory
    assert memory["frontend"]["growth_percent"] < 15.0, memory
    assert all(check.passed for check in checks), checks
    # The throughput timeline covers the run and adds up to the requests.
    assert sum(sum(entry["statuses"].values()) for entry in results["timeline"]) == load["requests"]
    assert len(results["timeline"]) >= 29

    written = json.loads((tmp_path / "results" / "soak.json").read_text())
    assert written["passed"] is True and written["statuses"] == results["statuses"]
    markdown = (tmp_path / "results" / "soak.md").read_text()
    assert "| 5xx answers | 0 | 0 | pass |" in markdown
    png = tmp_path / "results" / "soak.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert {path.name for path in paths} == {"soak.json", "soak.md", "soak.png"}


def test_help_names_the_command():
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0


def test_psutil_reads_this_process_rss():
    assert rss_mb(psutil.Process()) > 1.0 and rss_mb(None) is None
