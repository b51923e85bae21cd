"""The queue-overflow check's short version on real production-config TorchServes, and scripts/predict.py meeting it.

The small-queue server runs the one-worker test archive (batchSize 8) with job_queue_size=8: 16 requests
fill it, so 64 clients overflow it for certain.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.load_client import LoadConfig, run_closed_loop
from scripts.predict import QUEUE_FULL_MARKER, ClientConfig, find_images, run_predictions
from scripts.reliability.queue_overflow import (
    OverflowConfig,
    big_body_flood,
    derived_properties,
    main,
    overflow_results,
    padded,
    server_with_properties,
    small_queue_flood,
    write_overflow_report,
)
from scripts.reliability.report import image_files, request_payloads
from scripts.reliability.server import inference_headers, predictions_url, running_server
from scripts.serve import CONFIGS, TorchServe, read_properties
from tests.shared_faces import FACES_DIR

pytestmark = pytest.mark.e2e
JOB_QUEUE_SIZE = 8


@pytest.fixture(scope="module")
def request_images(tiny_dataset: Path) -> Path:
    """The shared real photos when they are there (what the scripts send), else the tiny demo set."""
    return FACES_DIR if FACES_DIR.is_dir() else tiny_dataset


@pytest.fixture(scope="module")
def small_queue_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """The production config with job_queue_size=8, serving the one-worker test archive."""
    root = tmp_path_factory.mktemp("small_queue")
    properties = derived_properties(CONFIGS["production"], {"job_queue_size": str(JOB_QUEUE_SIZE)}, root / "config")
    with server_with_properties(model_store, root / "serve", properties) as server:
        yield server


def test_the_derived_config_changes_only_the_queue_and_makes_paths_absolute(tmp_path):
    path = derived_properties(CONFIGS["production"], {"job_queue_size": "8"}, tmp_path)
    base, derived = read_properties(CONFIGS["production"]), read_properties(path)
    assert derived["job_queue_size"] == "8" and base["job_queue_size"] != "8"
    assert Path(derived["metrics_config"]).is_absolute() and Path(derived["metrics_config"]).is_file()
    log4j = next(word for word in derived["vmargs"].split() if word.startswith("-Dlog4j.configurationFile="))
    assert Path(log4j.split("=", 1)[1]).is_file()
    changed = {key for key in base if base[key] != derived[key]}
    assert changed == {"job_queue_size", "metrics_config", "vmargs"} and set(derived) == set(base)


def test_a_flood_past_the_queue_gets_fast_503s_while_200s_keep_coming(small_queue_server, request_images, tmp_path):
    config = OverflowConfig(images=request_images, job_queue_size=JOB_QUEUE_SIZE, concurrency=64, flood_seconds=10.0,
                            timeout=30.0, after_requests=40, big_bodies=False, output_dir=tmp_path)
    payloads = request_payloads(request_images, 8)
    small = small_queue_flood(small_queue_server, payloads, config)

    statuses = small["statuses"]
    assert set(statuses) == {"200", "503"}, small["answers_other_than_200"]
    assert int(statuses["503"]) > 0 and int(statuses["200"]) > 0
    assert small["timed_out"] == small["connection_failed"] == 0  # nothing hung, nothing dropped
    # A 503 is decided at the door: even the slow ones come before a typical served request, which waits its turn.
    rejected, served = small["latency_503_ms"], small["latency_200_ms"]
    assert rejected["p50"] <= 0.1 * served["p50"] and rejected["p99"] < served["p50"], (rejected, served)
    assert small["longest_gap_without_200_seconds"] <= 5.0
    assert small["after"]["statuses"] == {"200": 40}
    # What TorchServe 0.12 says: a misleading message about workers, no Retry-After, and the connection closed.
    first = small["first_503"]
    body = json.loads(first["body"])
    assert (body["code"], body["type"]) == (503, "ServiceUnavailableException")
    assert QUEUE_FULL_MARKER in body["message"]
    assert first["retry_after"] is None and first["headers"]["connection"] == "close"

    checks, paths = write_overflow_report(overflow_results(config, image_files(request_images, 8), small), config)
    assert all(check.passed for check in checks), checks
    assert [path.name for path in paths] == ["queue_overflow.json", "queue_overflow.md"]  # no big-body flood, no plot
    written = json.loads(paths[0].read_text())
    assert written["passed"] is True and written["small_queue"]["statuses"] == statuses
    text = paths[1].read_text()
    assert "Retry-After: **none**" in text and QUEUE_FULL_MARKER in text


def test_predict_says_server_busy_during_a_flood_and_succeeds_after_it(small_queue_server, request_images,
                                                                         tiny_dataset):
    url = predictions_url(small_queue_server)
    token = inference_headers(small_queue_server)["Authorization"].removeprefix("Bearer ")
    flood = LoadConfig(url, concurrency=64, requests=10**9, warmup=0, timeout=30.0,
                       headers=tuple(inference_headers(small_queue_server).items()))
    stop = threading.Event()
    flooding = threading.Thread(target=run_closed_loop, args=(flood, request_payloads(request_images, 4)),
                                kwargs={"stop": stop})
    files = find_images([tiny_dataset / "real"])[:12]
    client = ClientConfig(url=small_queue_server.config.inference_url, token=token, concurrency=4, retries=0)
    flooding.start()
    try:
        during = run_predictions(files, client).records
    finally:
        stop.set()
        flooding.join()
    busy = [record for record in during if not record.ok]
    assert busy, "the flood never filled the queue"
    for record in busy:
        assert (record.status, record.error_code) == (503, "server_busy")
        assert record.error_message == ("server busy: its request queue is full; retried 0 times; try again later or "
                                        "scale workers")
    after = run_predictions(files, ClientConfig(url=small_queue_server.config.inference_url, token=token,
                                                concurrency=4, retries=3)).records
    assert all(record.ok for record in after), after


@pytest.mark.slow  # 25-30 s, and the frontend takes about 1 GiB
def test_the_frontend_survives_a_few_clients_sending_bodies_just_under_the_limit(model_store, request_images,
                                                                                   tmp_path):
    config = OverflowConfig(images=request_images, flood_seconds=8.0, timeout=60.0, big_concurrency=8,
                            after_requests=20, sample_seconds=0.5, output_dir=tmp_path)
    with running_server(model_store, tmp_path / "serve") as server:
        big = big_body_flood(server, request_payloads(request_images, 4), config)
    limit = int(read_properties(CONFIGS["production"])["max_request_size"])
    assert big["max_request_size"] == limit and big["body_bytes"] == limit - config.big_margin_bytes
    assert big["frontend_survived"] and big["out_of_memory_log_lines"] == []
    assert big["requests"] >= 8 and big["timed_out"] == big["connection_failed"] == 0
    # Each big body is a real photo padded with zeros: the handler scores it, or refuses it as too large (413)
    # when its own upload limit is below the frontend's. Either way it answers, and no 5xx.
    assert set(big["statuses"]) <= {"200", "413"}, big["answers_other_than_200"]
    assert big["after"]["statuses"] == {"200": 20}
    assert big["frontend_rss_mb"]["peak"] >= big["frontend_rss_mb"]["start"] > 50


def test_padding_keeps_the_image_and_reaches_the_size(tiny_dataset):
    image = (tiny_dataset / "real" / "real_00000.jpg").read_bytes()
    body = padded(image, len(image) + 50_000)
    assert len(body) == len(image) + 50_000 and body.startswith(image) and set(body[len(image):]) == {0}
    assert padded(image, len(image)) == image
    with pytest.raises(ValueError, match="already larger"):
        padded(image, len(image) - 1)


def test_help_names_the_command():
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
