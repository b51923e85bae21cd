"""The REST client: pure parts (inputs, records, summary, formats) and end to end against real TorchServes."""

import csv
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from handler.metadata import METADATA_FILENAME, ModelMetadata
from scripts.predict import (
    QUEUE_FULL_MARKER,
    TOKEN_ENV,
    ClientConfig,
    PredictError,
    PredictionRecord,
    RunResult,
    backoff_seconds,
    find_images,
    format_records,
    percentile,
    predict_file,
    read_token,
    record_from_answer,
    request_arguments,
    retry_after_seconds,
    run_predictions,
    summarize,
)
from scripts.serve import Ports, ServeConfig, TorchServe

REPO_ROOT = Path(__file__).resolve().parents[2]
CLEAN_ENV = {name: value for name, value in os.environ.items() if name != TOKEN_ENV}  # no token unless a test sets one
e2e = pytest.mark.e2e


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.predict", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, env={**CLEAN_ENV, **(env or {})}, check=False)


def assert_one_line_error(completed: subprocess.CompletedProcess, *fragments: str) -> None:
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("predict: "), completed.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def image_folder(tiny_dataset: Path, tmp_path: Path) -> Path:
    """Six good images in nested folders (one with an upper-case extension), one truncated JPEG, one text file."""
    root = tmp_path / "images"
    (root / "real").mkdir(parents=True)
    (root / "fake" / "nested").mkdir(parents=True)
    for index in range(3):
        shutil.copy(tiny_dataset / "real" / f"real_{index:05d}.jpg", root / "real" / f"r{index}.jpg")
    shutil.copy(tiny_dataset / "fake" / "fake_00000.jpg", root / "fake" / "f0.JPG")
    for index in (1, 2):
        shutil.copy(tiny_dataset / "fake" / f"fake_{index:05d}.jpg", root / "fake" / "nested" / f"f{index}.jpg")
    good = (tiny_dataset / "real" / "real_00004.jpg").read_bytes()
    (root / "broken.jpg").write_bytes(good[: len(good) // 3])
    (root / "notes.txt").write_text("not sent: a folder contributes image extensions only")
    return root


# --- pure parts ---------------------------------------------------------------------------------------------------


def test_find_images_recurses_sorted_case_insensitive_and_keeps_explicit_files(image_folder):
    found = find_images([image_folder])
    assert [p.relative_to(image_folder).as_posix() for p in found] == [
        "broken.jpg", "fake/f0.JPG", "fake/nested/f1.jpg", "fake/nested/f2.jpg", "real/r0.jpg", "real/r1.jpg",
        "real/r2.jpg"]
    notes = image_folder / "notes.txt"
    assert find_images([notes, image_folder / "real", image_folder / "real" / "r0.jpg"]) == [
        notes, *sorted((image_folder / "real").iterdir())]  # explicit files always count; no duplicates


def test_find_images_names_the_missing_file_and_the_empty_folder(tmp_path):
    with pytest.raises(PredictError, match=f"file not found: {re.escape(str(tmp_path / 'nope.jpg'))}"):
        find_images([tmp_path / "nope.jpg"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.md").write_text("no image here")
    with pytest.raises(PredictError, match="no images .* in folder .*empty"):
        find_images([tmp_path / "empty"])


def test_endpoint_carries_the_version_and_every_send_mode_carries_the_uncalibrated_header(tmp_path):
    assert ClientConfig(url="http://h:1/").endpoint == "http://h:1/predictions/deepfake"
    assert ClientConfig(url="http://h:1", model="m", version="2.0").endpoint == "http://h:1/predictions/m/2.0"
    for send in ("raw", "multipart", "json"):
        arguments = request_arguments(tmp_path / "a.png", b"png", send, token="k", uncalibrated=True)
        assert arguments["headers"]["X-Uncalibrated"] == "true" and arguments["headers"]["Authorization"] == "Bearer k"
        assert "X-Uncalibrated" not in request_arguments(tmp_path / "a.png", b"png", send, None)["headers"]


def test_read_token_prefers_flag_then_key_file_then_environment(tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "inf"}, "management": {"key": "mgmt"}}))
    environ = {"TS_INFERENCE_TOKEN": "env"}
    assert read_token("flag", key_file, environ) == "flag"
    assert read_token(None, key_file, environ) == "inf"
    assert read_token(None, None, environ) == "env"
    assert read_token(None, None, {}) is None
    with pytest.raises(PredictError, match="key file not found"):
        read_token(None, tmp_path / "missing.json", {})
    (tmp_path / "bad.json").write_text('{"management": {"key": "x"}}')
    with pytest.raises(PredictError, match="not a TorchServe key file"):
        read_token(None, tmp_path / "bad.json", {})


def test_records_from_handler_errors_and_frontend_errors():
    handler_error = record_from_answer(Path("a.jpg"), 400, {"error": {"code": "corrupt_image", "message": "cut"}}, 1.0)
    frontend_error = record_from_answer(Path("b.jpg"), 503, {"code": 503, "type": "ServiceUnavailableException",
                                                            "message": "no worker"}, 2.0)
    assert (handler_error.error_code, handler_error.error_message, handler_error.ok) == ("corrupt_image", "cut", False)
    assert (frontend_error.error_code, frontend_error.error_message) == ("ServiceUnavailableException", "no worker")


def test_percentile_interpolates_like_numpy():
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile([3.0], 95) == 3.0


def test_summary_counts_errors_by_code_and_rates_answered_requests():
    records = [PredictionRecord(path=f"{i}.jpg", status=200, label="real", latency_ms=float(10 * (i + 1)))
               for i in range(4)]
    records += [PredictionRecord(path="x.jpg", status=400, error_code="corrupt_image", latency_ms=50.0),
                PredictionRecord(path="y.jpg", status=None, error_code="file_unreadable")]
    line = summarize(RunResult(records=records, wall_seconds=2.0, concurrency=3))
    assert line.startswith("6 files, 4 ok, 2 errors (corrupt_image 1, file_unreadable 1)")
    assert "latency p50 30.0 ms, p95 48.0 ms" in line and "2.5 requests/s" in line and "wall 2.00 s" in line


def test_csv_has_a_header_and_one_row_per_record():
    records = [PredictionRecord(path="a.jpg", status=200, label="fake", probability_fake=0.9, confidence=0.9,
                                borderline=False, calibrated=True, latency_ms=3.0),
               PredictionRecord(path="b.jpg", status=None, error_code="timeout", error_message="read timed out")]
    rows = list(csv.DictReader(io.StringIO(format_records(records, "csv"))))
    assert list(rows[0]) == ["path", "status", "label", "probability_fake", "confidence", "borderline", "calibrated",
                             "uncalibrated_probability_fake", "error_code", "error_message", "latency_ms", "scored",
                             "video_frames_scored", "video_timeline"]
    assert [(r["path"], r["status"], r["error_code"]) for r in rows] == [("a.jpg", "200", ""), ("b.jpg", "", "timeout")]
    assert [json.loads(line)["path"] for line in format_records(records, "jsonl").splitlines()] == ["a.jpg", "b.jpg"]


def test_help_describes_the_tool():
    completed = run_cli("--help")
    assert completed.returncode == 0 and "--concurrency" in completed.stdout and "--key-file" in completed.stdout


def test_missing_file_and_empty_folder_are_one_line_errors(tmp_path):
    assert_one_line_error(run_cli(str(tmp_path / "nope.jpg")), "file not found", "nope.jpg")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli(str(tmp_path / "empty")), "no images", "empty")


# --- end to end against the shared TorchServe ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_threshold(tiny_export: Path) -> float:
    """The threshold the test server judges with (the shipped model-config.yaml does not override it)."""
    return ModelMetadata.load(tiny_export / METADATA_FILENAME).threshold


def assert_same_label(label: str, expected: str, probability_fake: float, threshold: float) -> None:
    """Labels of the same file from a batched and a single request agree, away from the threshold.

    Batching may move a probability by float rounding, and the tiny model's flattened probabilities can sit that
    close to the threshold (CI once saw 'real' against 'fake' for equal probabilities).
    """
    if abs(probability_fake - threshold) > 1e-5:
        assert label == expected == ("fake" if probability_fake >= threshold else "real")


@e2e
def test_folder_with_a_corrupt_file_gives_csv_records_summary_and_exit_code_1(torchserve, image_folder,
                                                                             served_threshold):
    completed = run_cli(str(image_folder), "--url", torchserve.config.inference_url, "--format", "csv",
                        "--concurrency", "3")
    assert completed.returncode == 1, completed.stderr
    rows = list(csv.DictReader(io.StringIO(completed.stdout)))
    expected_paths = find_images([image_folder])
    assert [Path(r["path"]) for r in rows] == expected_paths  # input order, the text file skipped
    by_name = {Path(r["path"]).name: r for r in rows}
    broken = by_name.pop("broken.jpg")
    assert (broken["status"], broken["error_code"], broken["label"]) == ("400", "corrupt_image", "")
    assert broken["error_message"]
    for name, row in by_name.items():
        # Independent check: the same file sent with one plain request gets the same verdict.
        status, body = predict_file(next(p for p in expected_paths if p.name == name), torchserve.config.inference_url)
        assert status == 200 and row["status"] == "200" and row["error_code"] == ""
        assert row["calibrated"] == str(body["calibrated"])
        assert float(row["probability_fake"]) == pytest.approx(body["probability_fake"], abs=1e-5)
        assert_same_label(row["label"], body["label"], body["probability_fake"], served_threshold)
        assert float(row["latency_ms"]) > 0
    summary = completed.stderr.strip().splitlines()[-1]
    assert summary.startswith("predict: 7 files, 6 ok, 1 errors (corrupt_image 1); latency p50 "), summary
    assert re.search(r"p95 [\d.]+ ms; [\d.]+ requests/s; wall [\d.]+ s; concurrency 3$", summary), summary


def test_videos_are_sent_as_video_and_recorded_with_their_timeline(tmp_path):
    assert request_arguments(tmp_path / "a.MP4", b"v", "raw", None)["headers"]["Content-Type"] == "video/mp4"
    assert request_arguments(tmp_path / "a.webm", b"v", "multipart", None)["files"]["data"][2] == "video/webm"
    assert request_arguments(tmp_path / "a.jpg", b"i", "raw", None)["headers"]["Content-Type"] == (
        "application/octet-stream")
    answer = {"label": "real", "probability_fake": 0.2, "scored": "video", "video": {"frames_scored": 2},
              "timeline": [{"frame": 0, "time_s": 0.0, "probability_fake": 0.1},
                           {"frame": 9, "time_s": 1.8, "probability_fake": 0.25}]}
    record = record_from_answer(tmp_path / "a.mp4", 200, answer, 5.0)
    assert (record.scored, record.video_frames_scored, record.video_timeline) == ("video", 2, "0:0.1000 1.8:0.2500")
    image = record_from_answer(tmp_path / "a.jpg", 200, {"label": "real", "scored": "whole_image"}, 5.0)
    assert (image.scored, image.video_frames_scored, image.video_timeline) == ("whole_image", None, None)
    # A face model's frame without a face has a null score: listed by the server, left out of the record's timeline.
    answer["timeline"].insert(1, {"frame": 4, "time_s": 0.8, "probability_fake": None, "label": None,
                                  "scored": "no_face", "faces": []})
    assert record_from_answer(tmp_path / "a.mp4", 200, answer, 5.0).video_timeline == "0:0.1000 1.8:0.2500"


def test_an_image_the_model_cannot_judge_is_recorded_with_its_422_code_and_message(tmp_path):
    body = {"error": {"code": "no_face_found", "status": 422, "field": "body", "accepted": "Photos in which ...",
                      "message": "no face was found in the image; this model judges faces only"}}
    record = record_from_answer(tmp_path / "landscape.jpg", 422, body, 7.0)
    assert (record.status, record.error_code, record.ok, record.label) == (422, "no_face_found", False, None)
    assert record.error_message == body["error"]["message"]
    assert summarize(RunResult([record], 1.0, 1)).startswith("1 files, 0 ok, 1 errors (no_face_found 1)")


@e2e
def test_a_folder_with_a_video_gets_its_video_record(torchserve, tiny_dataset, tmp_path):
    from tests.handler.video_files import WEBM, demo_frames, write_video

    (tmp_path / "clip.webm").write_bytes(write_video(demo_frames(tiny_dataset, "real", 6), WEBM, fps=3.0))
    shutil.copy(tiny_dataset / "real" / "real_00000.jpg", tmp_path / "photo.jpg")
    completed = run_cli(str(tmp_path), "--url", torchserve.config.inference_url, "--format", "json")
    assert completed.returncode == 0, completed.stderr
    video, photo = json.loads(completed.stdout)
    assert video["path"].endswith("clip.webm") and video["scored"] == "video" and video["video_frames_scored"] == 6
    assert [float(pair.split(":")[0]) for pair in video["video_timeline"].split()] == pytest.approx(
        [0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3], abs=1e-5)
    assert photo["scored"] == "whole_image" and photo["video_timeline"] is None


@e2e
def test_json_to_a_file_with_allow_errors_exits_0(torchserve, image_folder, tmp_path):
    out = tmp_path / "records.json"
    completed = run_cli(str(image_folder), "--url", torchserve.config.inference_url, "--format", "json",
                        "--out", str(out), "--allow-errors")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""
    records = json.loads(out.read_text())
    assert isinstance(records, list) and len(records) == 7
    assert sorted(r["status"] for r in records) == [200] * 6 + [400]
    assert all(r["label"] in ("real", "fake") and 0.0 <= r["probability_fake"] <= 1.0
               for r in records if r["status"] == 200)


@e2e
def test_concurrency_4_gives_the_same_probabilities_as_concurrency_1(torchserve, tiny_dataset, served_threshold):
    paths = find_images([tiny_dataset])
    config = ClientConfig(url=torchserve.config.inference_url)
    sequential = run_predictions(paths, config)
    concurrent = run_predictions(paths, ClientConfig(url=torchserve.config.inference_url, concurrency=4))
    assert len(sequential.records) == len(concurrent.records) == len(paths) == 24
    assert all(r.ok for r in sequential.records + concurrent.records)
    assert [r.path for r in concurrent.records] == [str(p) for p in paths]
    for one, four in zip(sequential.records, concurrent.records, strict=True):
        assert four.probability_fake == pytest.approx(one.probability_fake, abs=1e-5)
        assert_same_label(four.label, one.label, one.probability_fake, served_threshold)


@e2e
@pytest.mark.parametrize("send", ["multipart", "json"])
def test_each_send_mode_gives_the_raw_body_probabilities(torchserve, tiny_dataset, send):
    paths = [tiny_dataset / "real" / "real_00005.jpg", tiny_dataset / "fake" / "fake_00005.jpg"]
    url = torchserve.config.inference_url
    raw = run_predictions(paths, ClientConfig(url=url, send="raw", uncalibrated=True)).records
    other = run_predictions(paths, ClientConfig(url=url, send=send, uncalibrated=True)).records
    assert all(r.ok for r in raw + other), raw + other
    assert [r.probability_fake for r in other] == pytest.approx([r.probability_fake for r in raw], abs=1e-5)
    # The uncalibrated option travels with every encoding (as a header).
    assert None not in [r.uncalibrated_probability_fake for r in raw + other]
    assert [r.uncalibrated_probability_fake for r in other] == pytest.approx(
        [r.uncalibrated_probability_fake for r in raw], abs=1e-5)


@e2e
def test_version_path_and_uncalibrated_option(torchserve, tiny_dataset):
    path = tiny_dataset / "fake" / "fake_00006.jpg"
    default = run_cli(str(path), "--url", torchserve.config.inference_url)
    versioned = run_cli(str(path), "--url", torchserve.config.inference_url, "--version", "1.0")
    uncalibrated = run_cli(str(path), "--url", torchserve.config.inference_url, "--uncalibrated")
    assert default.returncode == versioned.returncode == uncalibrated.returncode == 0, uncalibrated.stderr
    default_record, versioned_record, raw_record = (json.loads(c.stdout) for c in (default, versioned, uncalibrated))
    assert versioned_record["probability_fake"] == pytest.approx(default_record["probability_fake"], abs=1e-5)
    assert default_record["calibrated"] is True and default_record["uncalibrated_probability_fake"] is None
    # The handler adds the raw softmax; the verdict stays calibrated. The tiny model's temperature is far from 1,
    # so the two probabilities differ.
    for key in ("label", "probability_fake", "confidence", "borderline", "calibrated"):
        assert raw_record[key] == default_record[key], key
    assert raw_record["uncalibrated_probability_fake"] != pytest.approx(default_record["probability_fake"], abs=1e-4)


@e2e
def test_no_server_unknown_model_and_unknown_version_are_one_line_errors(torchserve, tiny_dataset):
    image = str(tiny_dataset / "real" / "real_00001.jpg")
    nobody = f"http://127.0.0.1:{Ports.free().inference}"
    assert_one_line_error(run_cli(image, "--url", nobody), f"no TorchServe answering at {nobody}",
                          "connection refused")
    url = torchserve.config.inference_url
    assert_one_line_error(run_cli(image, "--url", url, "--model", "nope"), "model 'nope' not found", "HTTP 404")
    assert_one_line_error(run_cli(image, "--url", url, "--version", "9.9"), "model 'deepfake' version '9.9' not found")


# --- end to end against a TorchServe with token authorization on ------------------------------------------------


@pytest.fixture(scope="module")
def token_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """The development config with token authorization switched back on (TorchServe's default)."""
    root = tmp_path_factory.mktemp("token_server")
    config_dir = root / "config"
    shutil.copytree(REPO_ROOT / "config", config_dir)  # relative paths in the properties keep resolving
    properties = config_dir / "config.properties"
    text, replaced = re.subn(r"(?m)^disable_token_authorization=.*$", "disable_token_authorization=false",
                             properties.read_text())
    properties.write_text(text if replaced else text + "disable_token_authorization=false\n")
    server = TorchServe(ServeConfig(run_dir=root / "serve", model_store=model_store, properties=properties,
                                    models={"deepfake": "deepfake.mar"}, ports=Ports.free())).start()
    yield server
    server.stop()


@e2e
def test_token_auth_refuses_without_a_key_and_accepts_the_inference_key(token_server, tiny_dataset):
    image = str(tiny_dataset / "real" / "real_00001.jpg")
    url = token_server.config.inference_url
    key_file = token_server.config.run_dir / "key_file.json"
    inference_key = json.loads(key_file.read_text())["inference"]["key"]
    without = requests.post(f"{url}/predictions/deepfake", data=b"x", timeout=30)
    assert without.status_code in (400, 401)  # the server really refuses anonymous calls

    assert_one_line_error(run_cli(image, "--url", url), "requires a token", "--key-file")
    assert_one_line_error(run_cli(image, "--url", url, "--token", "wrong"), "refused the token")
    for args, env in [(["--key-file", str(key_file)], {}), ([f"--token={inference_key}"], {}),
                      ([], {"TS_INFERENCE_TOKEN": inference_key})]:
        completed = run_cli(image, "--url", url, *args, env=env)
        assert completed.returncode == 0, (args, completed.stderr)
        record = json.loads(completed.stdout)
        assert record["status"] == 200 and record["label"] in ("real", "fake")


# --- 503/507: retries with backoff against a real local HTTP server ------------------------------------------------

# TorchServe 0.12's answer when the model's job queue is full (measured: scripts/reliability/queue_overflow.py).
TORCHSERVE_QUEUE_FULL = {"code": 503, "type": "ServiceUnavailableException",
                         "message": f'Model "deepfake" {QUEUE_FULL_MARKER}. Please use scale workers API to add '
                                    f"workers. If this is a sequence inference, please check if it is closed, or "
                                    f"expired; or exceeds maxSequenceJobQueueSize"}
VERDICT = {"label": "fake", "probability_fake": 0.9, "confidence": 0.9, "borderline": False, "calibrated": True}


class ScriptedServer(ThreadingHTTPServer):
    """Answers POSTs by a script of (status, JSON or text body, headers), then 200 with a verdict; notes arrivals."""

    daemon_threads = True

    def __init__(self, script: list[tuple[int, object, dict[str, str]]]) -> None:
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.script = list(script)
        self.arrivals: list[float] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedServer

    def log_message(self, format: str, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.arrivals.append(time.monotonic())
            status, body, headers = self.server.script.pop(0) if self.server.script else (200, VERDICT, {})
        payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if isinstance(body, str) else "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@contextmanager
def scripted(*script: tuple[int, object, dict[str, str]]) -> Iterator[ScriptedServer]:
    server = ScriptedServer(list(script))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def one_image(tmp_path: Path) -> Path:
    path = tmp_path / "face.jpg"
    path.write_bytes(b"\xff\xd8 not decoded by this server")
    return path


FAST = {"retry_base_seconds": 0.05, "retry_max_seconds": 1.0}


def test_a_full_queue_is_retried_with_growing_backoff_until_it_answers(tmp_path):
    with scripted((503, TORCHSERVE_QUEUE_FULL, {}), (503, TORCHSERVE_QUEUE_FULL, {}), (503, TORCHSERVE_QUEUE_FULL, {}))\
            as server:
        result = run_predictions([one_image(tmp_path)], ClientConfig(url=server.url, retries=3, **FAST))
    record = result.records[0]
    assert record.ok and record.label == "fake" and record.error_code is None
    assert len(server.arrivals) == 4
    waits = [later - earlier for earlier, later in zip(server.arrivals, server.arrivals[1:], strict=False)]
    # Attempt k waits base × 2^k × [0.5, 1]: at least 25, 50, 100 ms.
    for attempt, wait in enumerate(waits):
        assert wait >= 0.05 * 2**attempt * 0.5, waits
    assert record.latency_ms >= sum(waits) * 1000.0  # the caller's time includes the waits


def test_a_queue_still_full_after_the_retries_says_server_busy_not_torchserves_words(tmp_path):
    with scripted(*[(503, TORCHSERVE_QUEUE_FULL, {})] * 5) as server:
        result = run_predictions([one_image(tmp_path)], ClientConfig(url=server.url, retries=2, **FAST))
    record = result.records[0]
    assert len(server.arrivals) == 3  # the first send and 2 retries
    assert (record.status, record.error_code) == (503, "server_busy")
    assert record.error_message == ("server busy: its request queue is full; retried 2 times; try again later or "
                                    "scale workers")
    assert "scale workers API" not in record.error_message


def test_retry_after_from_a_proxy_is_honoured_over_the_backoff(tmp_path):
    with scripted((503, "<html>503 Service Temporarily Unavailable</html>", {"Retry-After": "1"})) as server:
        result = run_predictions([one_image(tmp_path)], ClientConfig(url=server.url, retries=3,
                                                                     retry_base_seconds=0.01, retry_max_seconds=5.0))
    assert result.records[0].ok
    assert len(server.arrivals) == 2
    assert server.arrivals[1] - server.arrivals[0] >= 1.0  # not the 5-10 ms backoff


def test_a_proxy_503_without_torchserve_json_is_also_server_busy(tmp_path):
    with scripted(*[(503, "<html>upstream overloaded</html>", {"Retry-After": "0"})] * 2) as server:
        record = run_predictions([one_image(tmp_path)], ClientConfig(url=server.url, retries=1, **FAST)).records[0]
    assert record.error_code == "server_busy" and "retried 1 time;" in record.error_message


def test_507_is_retried_and_reported_as_out_of_resources(tmp_path):
    died = {"code": 507, "type": "InternalServerException", "message": "Worker died."}
    with scripted(*[(507, died, {})] * 3) as server:
        record = run_predictions([one_image(tmp_path)], ClientConfig(url=server.url, retries=2, **FAST)).records[0]
    assert len(server.arrivals) == 3
    assert (record.status, record.error_code) == (507, "server_out_of_resources")
    assert record.error_message.startswith("server out of resources (HTTP 507: Worker died.); retried 2 times")


def test_a_handler_failure_503_keeps_its_own_message_after_the_retries(tmp_path):
    failed = {"code": 503, "type": "InternalServerException", "message": "Prediction failed"}
    with scripted(*[(503, failed, {})] * 2) as server:
        record = run_predictions([one_image(tmp_path)], ClientConfig(url=server.url, retries=1, **FAST)).records[0]
    assert record.error_code == "InternalServerException"
    assert record.error_message == "Prediction failed (HTTP 503; retried 1 time)"


@pytest.mark.parametrize("status", [400, 413, 500])
def test_other_errors_and_zero_retries_send_once(tmp_path, status):
    with scripted((status, {"error": {"code": "x", "message": "no"}}, {})) as server:
        record = run_predictions([one_image(tmp_path)], ClientConfig(url=server.url, retries=3, **FAST)).records[0]
    assert len(server.arrivals) == 1 and record.status == status
    with scripted((503, TORCHSERVE_QUEUE_FULL, {})) as server:
        record = run_predictions([one_image(tmp_path)], ClientConfig(url=server.url, retries=0, **FAST)).records[0]
    assert len(server.arrivals) == 1 and record.error_message.startswith("server busy") and "retried 0 times" in \
        record.error_message


def test_retry_after_reads_seconds_and_http_dates():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None and retry_after_seconds("") is None


def test_backoff_doubles_with_jitter_and_is_capped():
    rng = random.Random(0)
    for attempt in range(6):
        values = [backoff_seconds(attempt, 0.5, 4.0, rng) for _ in range(200)]
        ceiling = min(4.0, 0.5 * 2**attempt)
        assert all(ceiling * 0.5 <= value <= ceiling for value in values)
        assert max(values) - min(values) > ceiling * 0.3  # really jittered, not a constant


def test_cli_prints_the_busy_message_and_exits_1(tmp_path):
    with scripted(*[(503, TORCHSERVE_QUEUE_FULL, {"Retry-After": "0"})] * 2) as server:
        completed = run_cli(str(one_image(tmp_path)), "--url", server.url, "--retries", "1")
    assert completed.returncode == 1
    record = json.loads(completed.stdout)
    assert record["error_code"] == "server_busy"
    lines = completed.stderr.strip().splitlines()
    assert lines[-2] == ("predict: 1 file: server busy: its request queue is full; retried 1 time; try again later or "
                         "scale workers")
    assert lines[-1].startswith("predict: 1 files, 0 ok, 1 errors (server_busy 1)")
    assert_one_line_error(run_cli(str(one_image(tmp_path)), "--url", server.url, "--retries", "-1"),
                          "--retries must be at least 0")
