"""The corpus check: how answers are judged and waves mixed, then (a)+(b)+(c) against a real TorchServe.

The served part runs on the session's `torchserve` (dev config, one worker per model): lone requests go to
"deepfake", the mixed waves to BATCH_MODEL, whose batchSize of 6 and 5-second maxBatchDelay make each
wave of 6 exactly one batch, so every good answer's batch_size shows it shared the batch with bad items.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest

from scripts.reliability.bad_inputs import BadInput, bad_inputs, sample_jpeg
from scripts.reliability.corpus_check import (
    CheckSettings,
    Target,
    answer_problems,
    check_server,
    mixed_waves,
    send_bad,
    served_limits,
    write,
)
from scripts.reliability.server import inference_headers
from tests.conftest import BATCH_MODEL, BATCH_MODEL_SIZE

e2e = pytest.mark.e2e
GOOD = sample_jpeg()
CORPUS = {item.name: item for item in bad_inputs(GOOD)}


def error_body(code: str, field: str | None, status: int, **changes) -> bytes:
    error = {"code": code, "message": "why", "status": status, "field": field, "accepted": "what", **changes}
    return json.dumps({"error": error, "request_id": "r"}).encode()


# --- judging answers ------------------------------------------------------------------------------------------


def test_the_expected_answer_has_no_problems():
    assert answer_problems(CORPUS["truncated_png"], 400, error_body("corrupt_image", "body", 400)) == []
    verdict = json.dumps({"label": "real", "probability_fake": 0.2}).encode()
    assert answer_problems(CORPUS["png_16_bit"], 200, verdict) == []
    assert answer_problems(CORPUS["raw_over_request_limit"], 413, b"") == []


@pytest.mark.parametrize(("name", "status", "content", "phrase"), [
    ("truncated_png", 415, error_body("corrupt_image", "body", 415), "status 415, expected 400"),
    ("truncated_png", 400, error_body("not_an_image", "body", 400), "code 'not_an_image'"),
    ("truncated_png", 400, error_body("corrupt_image", "data", 400), "field 'data', expected 'body'"),
    ("truncated_png", 400, error_body("corrupt_image", "body", 400, accepted=""), "'accepted' is empty"),
    ("truncated_png", 400, error_body("corrupt_image", "body", 400, message=" "), "'message' is empty"),
    ("truncated_png", 400, error_body("corrupt_image", "body", 415), "differs from the HTTP status"),
    ("truncated_png", 400, b"<html>oops</html>", "not JSON"),
    ("truncated_png", 400, b'{"error": "flat"}', "expected a JSON error body"),
    ("png_16_bit", 200, b'{"label": "maybe", "probability_fake": 1.5}', "label 'maybe'"),
    ("png_16_bit", 200, b'{"label": "maybe", "probability_fake": 1.5}', "not in [0, 1]"),
    ("raw_over_request_limit", 413, b'{"error": {}}', "should have an empty body"),
])
def test_every_way_an_answer_can_be_wrong_is_named(name, status, content, phrase):
    problems = answer_problems(CORPUS[name], status, content)
    assert any(phrase in problem for problem in problems), problems


def test_an_error_without_the_new_keys_is_a_problem():
    old_style = json.dumps({"error": {"code": "corrupt_image", "message": "why", "status": 400}}).encode()
    problems = answer_problems(CORPUS["truncated_png"], 400, old_style)
    assert "error has no 'field'" in problems and "error has no 'accepted'" in problems


# --- the mixed waves ------------------------------------------------------------------------------------------


def test_waves_interleave_every_entry_with_good_images_and_fill_batches():
    corpus = list(CORPUS.values())
    handled = [item for item in corpus if item.reaches_handler]
    waves = mixed_waves(corpus, goods=4, rounds=2, wave_size=6, seed=3)
    reaching = [[job for job in wave if job.bad is None or job.bad.reaches_handler] for wave in waves]
    assert all(len(wave) == 6 for wave in reaching)  # each wave can fill one batch of 6
    assert all(any(job.bad for job in wave) and any(job.good is not None for job in wave) for wave in reaching)
    sent = Counter(job.bad.name for wave in waves for job in wave if job.bad)
    assert sent == Counter({item.name: 2 for item in corpus})  # every entry once per round, frontend ones too
    goods = [job.good for wave in waves for job in wave if job.good is not None]
    assert len(goods) >= 2 * len(handled) and set(goods) == {0, 1, 2, 3}
    assert mixed_waves(corpus, 4, 2, 6, seed=3) == waves and mixed_waves(corpus, 4, 2, 6, seed=4) != waves


def test_settings_refuse_waves_that_cannot_mix():
    with pytest.raises(ValueError, match="wave_size"):
        CheckSettings(wave_size=1)
    with pytest.raises(ValueError, match="rounds"):
        CheckSettings(rounds=0)


# --- against a real TorchServe -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(torchserve):
    settings = CheckSettings(model="deepfake", batch_model=BATCH_MODEL, rounds=1, timeout=60)
    return check_server(torchserve, GOOD, settings)


@e2e
def test_every_kind_gets_its_own_answer_alone_and_in_mixed_batches(report):
    assert report.mismatches == []
    assert report.ok and len(report.alone) == len(report.corpus) == len(CORPUS)
    assert len(report.good_alone) == 4 and all(a.status == 200 and a.probability_fake is not None
                                               for a in report.good_alone)
    assert {a.name: (a.status, a.code, a.field) for a in report.alone} == {
        item.name: (item.status, item.code, item.field) for item in report.corpus}
    summary = report.mixed.summary()
    assert summary["mismatches"] == 0 and summary["bad"] == len(CORPUS)
    assert summary["good"] >= sum(item.reaches_handler for item in report.corpus)


@e2e
def test_the_limits_in_force_are_read_from_the_server(torchserve, report):
    limits = served_limits(torchserve, "deepfake")
    assert (limits.max_upload_bytes, limits.max_request_size, limits.max_image_pixels) == (6 * 2**20, 9 * 2**20,
                                                                                           40_000_000)
    assert report.limits == limits and report.settings.wave_size == BATCH_MODEL_SIZE


@e2e
def test_bad_and_good_items_really_shared_batches(report):
    goods = [a for a in report.mixed.answers if a.name.startswith("good:")]
    # Every wave held exactly one batch's worth of worker-reaching requests, bad and good; a good answer
    # reports the size of the batch it was scored in: 6, more than the good items of any wave.
    assert report.mixed.wave_sizes == [BATCH_MODEL_SIZE] * len(report.mixed.waves)
    assert {a.batch_size for a in goods} == {BATCH_MODEL_SIZE}
    assert report.mixed.shared_batches() == len(goods)
    assert all(a.status == 200 and not a.problems for a in goods)  # and each scored as when it came alone


@e2e
def test_no_worker_restarted_and_memory_was_sampled(report):
    assert not report.restarted
    assert set(report.workers_before) == {"deepfake", BATCH_MODEL}
    assert all(workers for workers in report.workers_before.values())
    workers = report.memory["workers"]
    assert len(workers) >= 2 and report.memory["samples"] >= 2
    assert all(0 < m["start_mb"] <= m["peak_mb"] and m["end_mb"] <= m["peak_mb"] for m in workers.values())


@e2e
def test_a_wrong_expectation_is_reported_as_a_mismatch(torchserve):
    target = Target(torchserve.config.inference_url, inference_headers(torchserve))
    wrong: BadInput = replace(CORPUS["truncated_jpeg"], status=200, code=None, field=None)
    answer = send_bad(target, wrong, "deepfake")
    assert answer.status == 400 and answer.code == "corrupt_image"
    assert "status 400, expected 200" in answer.problems


@e2e
def test_the_report_files_hold_every_kind(report, tmp_path):
    json_path, markdown_path = write(report, tmp_path, "python -m scripts.reliability.corpus_check (test)")
    results = json.loads(json_path.read_text())
    assert results["ok"] is True and results["kinds"] == len(CORPUS) and results["workers"]["restarted"] is False
    assert [entry["name"] for entry in results["alone"]] == list(CORPUS)
    assert results["alone"][0]["expected"] == {"status": 400, "code": "empty_input", "field": "body",
                                               "frontend": False}
    table = markdown_path.read_text()
    assert "**PASS**" in table and "| kind | category | status | code | field | ms |" in table
    assert all(f"| {name} |" in table for name in CORPUS)
    assert "| raw_over_request_limit | size | 413 | (empty body) |" in table
