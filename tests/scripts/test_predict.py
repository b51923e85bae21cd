"""The REST client: pure parts (inputs, records, summary, formats) and end to end against real TorchServes."""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from scripts.predict import (
    TOKEN_ENV,
    ClientConfig,
    PredictError,
    PredictionRecord,
    RunResult,
    find_images,
    format_records,
    percentile,
    predict_file,
    read_token,
    record_from_answer,
    request_arguments,
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
                             "uncalibrated_probability_fake", "error_code", "error_message", "latency_ms"]
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


@e2e
def test_folder_with_a_corrupt_file_gives_csv_records_summary_and_exit_code_1(torchserve, image_folder):
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
        assert row["label"] == body["label"] and row["calibrated"] == str(body["calibrated"])
        assert float(row["probability_fake"]) == pytest.approx(body["probability_fake"], abs=1e-5)
        assert float(row["latency_ms"]) > 0
    summary = completed.stderr.strip().splitlines()[-1]
    assert summary.startswith("predict: 7 files, 6 ok, 1 errors (corrupt_image 1); latency p50 "), summary
    assert re.search(r"p95 [\d.]+ ms; [\d.]+ requests/s; wall [\d.]+ s; concurrency 3$", summary), summary


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
def test_concurrency_4_gives_the_same_probabilities_as_concurrency_1(torchserve, tiny_dataset):
    paths = find_images([tiny_dataset])
    config = ClientConfig(url=torchserve.config.inference_url)
    sequential = run_predictions(paths, config)
    concurrent = run_predictions(paths, ClientConfig(url=torchserve.config.inference_url, concurrency=4))
    assert len(sequential.records) == len(concurrent.records) == len(paths) == 24
    assert all(r.ok for r in sequential.records + concurrent.records)
    assert [r.path for r in concurrent.records] == [str(p) for p in paths]
    for one, four in zip(sequential.records, concurrent.records, strict=True):
        assert four.probability_fake == pytest.approx(one.probability_fake, abs=1e-5)
        assert four.label == one.label


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
    for args, env in [(["--key-file", str(key_file)], {}), (["--token", inference_key], {}),
                      ([], {"TS_INFERENCE_TOKEN": inference_key})]:
        completed = run_cli(image, "--url", url, *args, env=env)
        assert completed.returncode == 0, (args, completed.stderr)
        record = json.loads(completed.stdout)
        assert record["status"] == 200 and record["label"] in ("real", "fake")
