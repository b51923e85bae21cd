"""Sends images, videos or folders of them to a running TorchServe; writes one record per file (JSON, JSONL or CSV).

A REST client for /predictions/MODEL[/VERSION]: folders are searched recursively for images, requests
run on a thread pool (one HTTP session per thread), and a summary (errors by code, client latency
percentiles, requests/s) goes to stderr. The first file is sent alone, so a server that is not there,
an unknown model or a missing token stops the run with one clear line instead of N identical errors.
A server that answers 503 (its request queue is full) or 507 (a worker out of resources) is asked again
after an exponential backoff with jitter, or after the Retry-After a proxy in front of it sends, up to
--retries times; what is still refused then is reported as "server busy", not in TorchServe's words
(which blame missing workers for a full queue).
A video (MP4, MOV, WebM, AVI) goes to the same endpoint with its own media type; its record adds how many
frames were scored and a compact timeline ("time_s:probability_fake" per sampled frame, docs/VIDEO.md).

Usage:
    python -m scripts.predict IMAGE_VIDEO_OR_FOLDER [...] [--url http://127.0.0.1:8080] [--model deepfake]
        [--version 1.0] [--send raw|multipart|json] [--uncalibrated] [--concurrency 4]
        [--token KEY | --key-file RUN_DIR/key_file.json] [--format json|jsonl|csv] [--out FILE] [--retries 3]
        [--explain [--overlay-dir DIR]]   # Grad-CAM: /explanations/MODEL; DIR/<name>.explain.png = image + heat map
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import mimetypes
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import requests
from PIL import Image, ImageOps
from tqdm import tqdm

from scripts.serve import api_key

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_MODEL = "deepfake"
TOKEN_ENV = "TS_INFERENCE_TOKEN"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
# Videos the handler accepts (handler/video.py), with the media type each is sent as.
VIDEO_TYPES = {".mp4": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm", ".avi": "video/x-msvideo"}
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS | frozenset(VIDEO_TYPES)
SEND_MODES = ("raw", "multipart", "json")
OUTPUT_FORMATS = ("json", "jsonl", "csv")
MULTIPART_FIELD = "data"  # the field name the handler looks for first (handler/request_body.py)
# TorchServe 0.12 drops the query string of /predictions/MODEL before the worker, so the option travels as a
# header, which every send mode can carry (handler/request_options.py).
UNCALIBRATED_HEADER = "X-Uncalibrated"
# Answers worth asking again: 503 when TorchServe's job queue is full (or a proxy is overloaded), 507 when a worker
# ran out of resources or died (TorchServe restarts it). Anything else would fail the same way again.
RETRY_STATUSES = frozenset({503, 507})
# TorchServe 0.12's words for a full job queue (it blames missing workers; the queue is what is full).
QUEUE_FULL_MARKER = "has no worker to serve inference request"
SERVER_BUSY = "server_busy"
SERVER_OUT_OF_RESOURCES = "server_out_of_resources"


class PredictError(RuntimeError):
    """A mistake that makes the whole run pointless (no server, unknown model, bad token, missing input)."""


@dataclass(frozen=True)
class ClientConfig:
    """Where and how to send the images.

    Attributes:
        url: base URL of TorchServe's inference API.
        model: registered model name.
        version: model version; None means the default version.
        send: "raw" body, "multipart" field "data", or "json" {"data": base64}.
        uncalibrated: also ask for the model's raw softmax (the verdict itself stays calibrated).
        concurrency: parallel requests (threads, one HTTP session each).
        timeout: seconds to wait for each answer.
        token: inference key when TorchServe's token authorization is on.
        retries: how many times a file answered 503 or 507 is sent again.
        retry_base_seconds: the first backoff; each further one doubles, with a random factor in [0.5, 1].
        retry_max_seconds: cap on one wait, a server's Retry-After included.
        explain: ask /explanations/MODEL (the verdict plus a Grad-CAM heat map, docs/EXPLANATIONS.md) instead.
        overlay_dir: with explain, write each image with its heat map drawn over it to DIR/<file stem>.explain.png.

    """

    url: str = DEFAULT_URL
    model: str = DEFAULT_MODEL
    version: str | None = None
    send: str = "raw"
    uncalibrated: bool = False
    concurrency: int = 1
    timeout: float = 60.0
    token: str | None = None
    retries: int = 3
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    explain: bool = False
    overlay_dir: Path | None = None

    @property
    def endpoint(self) -> str:
        """The prediction (or explanation) URL, with the model version when one is asked for."""
        path = f"{self.url.rstrip('/')}/{'explanations' if self.explain else 'predictions'}/{self.model}"
        return f"{path}/{self.version}" if self.version else path


@dataclass(frozen=True)
class PredictionRecord:
    """The outcome of one file: its verdict, or why it has none."""

    path: str
    status: int | None  # HTTP status; None when no HTTP answer came (connection refused, timeout, unreadable file)
    label: str | None = None
    probability_fake: float | None = None
    confidence: float | None = None
    borderline: bool | None = None
    calibrated: bool | None = None
    uncalibrated_probability_fake: float | None = None  # only when --uncalibrated asked for it
    error_code: str | None = None
    error_message: str | None = None
    latency_ms: float | None = None
    scored: str | None = None  # faces, whole_image_no_face, whole_image, or video
    video_frames_scored: int | None = None  # videos only
    video_timeline: str | None = None  # videos only: "time_s:probability_fake" per scored frame, in time order
    # (a frame a face model found no face in has no score: it is left out here, as it is left out of the verdict)

    @property
    def ok(self) -> bool:
        """True when the server scored the file."""
        return self.status == 200 and self.error_code is None


RECORD_FIELDS = tuple(field.name for field in fields(PredictionRecord))


@dataclass(frozen=True)
class RunResult:
    """Every file's record (in input order) and the wall time of the whole run."""

    records: list[PredictionRecord]
    wall_seconds: float
    concurrency: int


# --- inputs -------------------------------------------------------------------------------------------------------


def is_image_file(path: Path) -> bool:
    """True for a file whose extension (any case) is an image's or a video's (MEDIA_EXTENSIONS)."""
    return path.is_file() and path.suffix.lower() in MEDIA_EXTENSIONS


def find_images(inputs: Iterable[Path]) -> list[Path]:
    """The files to send: each file as given, each folder's images recursively in sorted order, no duplicates.

    A file named explicitly is sent whatever its extension (the server decides whether it is an
    image); inside folders only image extensions count, so notes and sidecar files are skipped.

    Raises:
        PredictError: an input does not exist, or a folder holds no image.

    """
    found: dict[Path, None] = {}  # ordered set
    for item in inputs:
        if item.is_dir():
            images = sorted(path for path in item.rglob("*") if is_image_file(path))
            if not images:
                raise PredictError(f"no images or videos ({', '.join(sorted(e[1:] for e in MEDIA_EXTENSIONS))}) "
                                   f"in folder {item}")
            found.update(dict.fromkeys(images))
        elif item.is_file():
            found[item] = None
        else:
            raise PredictError(f"file not found: {item}")
    return list(found)


def read_token(token: str | None, key_file: Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The inference key: --token, else --key-file's ["inference"]["key"], else $TS_INFERENCE_TOKEN, else None.

    Raises:
        PredictError: the key file is missing or is not a TorchServe key_file.json.

    """
    if token:
        return token
    if key_file is not None:
        try:
            return api_key(key_file, "inference")
        except FileNotFoundError:
            raise PredictError(f"key file not found: {key_file} (TorchServe writes key_file.json into the folder "
                               f"it was started from)") from None
        except ValueError as error:
            raise PredictError(f"{key_file} is not a TorchServe key file: "
                               f"no [\"inference\"][\"key\"] ({error})") from None
    return (environ if environ is not None else os.environ).get(TOKEN_ENV) or None


# --- one request --------------------------------------------------------------------------------------------------


def request_arguments(path: Path, data: bytes, send: str, token: str | None,
                      uncalibrated: bool = False) -> dict[str, Any]:
    """The keyword arguments of requests.post for one file in the chosen encoding."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if uncalibrated:
        headers[UNCALIBRATED_HEADER] = "true"
    video_type = VIDEO_TYPES.get(path.suffix.lower())
    if send == "raw":  # the handler goes by the bytes; a video's type is for proxies and logs
        return {"data": data, "headers": {**headers, "Content-Type": video_type or "application/octet-stream"}}
    if send == "multipart":
        mime = video_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return {"files": {MULTIPART_FIELD: (path.name, data, mime)}, "headers": headers}
    if send == "json":
        return {"json": {"data": base64.b64encode(data).decode("ascii")}, "headers": headers}
    raise ValueError(f"unknown send mode {send!r}; choose one of {', '.join(SEND_MODES)}")


def parse_body(response: requests.Response) -> dict[str, Any]:
    """The JSON answer, or an error object holding the start of a non-JSON answer."""
    try:
        body = response.json()
    except ValueError:
        return {"error": {"code": "non_json_response", "message": response.text[:500]}}
    return body if isinstance(body, dict) else {"error": {"code": "unexpected_response", "message": str(body)[:500]}}


def record_from_answer(path: Path, status: int, body: dict[str, Any], latency_ms: float) -> PredictionRecord:
    """One record from an HTTP answer: the handler's verdict, its per-item error, or TorchServe's own error.

    The handler's errors look like {"error": {"code", "message"}}; TorchServe's frontend answers
    {"code": 404, "type": "ModelNotFoundException", "message": ...}.
    """
    latency = round(latency_ms, 3)
    if status == 200 and "error" not in body:
        raw = body.get("uncalibrated")
        video = body.get("video") if isinstance(body.get("video"), dict) else {}
        timeline = body.get("timeline") if isinstance(body.get("timeline"), list) else None
        return PredictionRecord(
            path=str(path), status=status, label=body.get("label"), probability_fake=body.get("probability_fake"),
            confidence=body.get("confidence"), borderline=body.get("borderline"), calibrated=body.get("calibrated"),
            uncalibrated_probability_fake=raw.get("probability_fake") if isinstance(raw, dict) else None,
            latency_ms=latency, scored=body.get("scored"), video_frames_scored=video.get("frames_scored"),
            video_timeline=None if timeline is None else " ".join(
                f"{entry.get('time_s', 0):g}:{entry['probability_fake']:.4f}" for entry in timeline
                if isinstance(entry.get("probability_fake"), (int, float))))
    error = body.get("error")
    if isinstance(error, dict):
        code, message = str(error.get("code", f"http_{status}")), str(error.get("message", ""))
    else:
        code, message = str(body.get("type") or f"http_{status}"), str(body.get("message", body))
    return PredictionRecord(path=str(path), status=status, error_code=code, error_message=message, latency_ms=latency)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header in seconds: delta-seconds or an HTTP date (None when absent or unreadable).

    TorchServe sends none; a proxy or load balancer in front of it may.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The wait before retry number attempt + 1: base × 2^attempt, times a random factor in [0.5, 1], at most cap.

    The jitter spreads the clients that a full queue turned away at the same moment, so they do not
    all come back at the same moment and fill it again.
    """
    return min(cap, base * 2**attempt) * (rng or random).uniform(0.5, 1.0)


def retry_delay(headers: Mapping[str, str], attempt: int, config: ClientConfig) -> float:
    """The server's Retry-After when it sent one, else the exponential backoff; never more than retry_max_seconds."""
    asked = retry_after_seconds(headers.get("Retry-After"))
    if asked is not None:
        return min(asked, config.retry_max_seconds)
    return backoff_seconds(attempt, config.retry_base_seconds, config.retry_max_seconds)


def refusal_record(record: PredictionRecord, retries: int) -> PredictionRecord:
    """A 503/507 record after its retries, told in plain words instead of TorchServe's.

    A 503 carrying TorchServe's queue-full message, or a 503 that is not TorchServe's JSON at all (a
    proxy's), means the server is busy. Other 503s (the handler failed: "Prediction failed") keep their
    message: calling them a full queue would mislead the other way.
    """
    tried = f"retried {retries} time{'s' if retries != 1 else ''}"
    if record.status == 507:
        return replace(record, error_code=SERVER_OUT_OF_RESOURCES,
                       error_message=f"server out of resources (HTTP 507: {record.error_message}); {tried}; try "
                                     f"again later or scale workers")
    frontend_error = record.error_code not in (None, "non_json_response", f"http_{record.status}")
    if QUEUE_FULL_MARKER in (record.error_message or "") or not frontend_error:
        return replace(record, error_code=SERVER_BUSY,
                       error_message=f"server busy: its request queue is full; {tried}; try again later or scale "
                                     f"workers")
    return replace(record, error_message=f"{record.error_message} (HTTP {record.status}; {tried})")


def send_file(session: requests.Session, path: Path, config: ClientConfig) -> PredictionRecord:
    """POSTs one file and turns whatever happens (answer, refused connection, timeout) into its record.

    A 503 or 507 is sent again up to config.retries times (see retry_delay); the latency is the
    whole time from the first send to the last answer, waits included, as the caller lived it.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        return PredictionRecord(path=str(path), status=None, error_code="file_unreadable", error_message=str(error))
    arguments = request_arguments(path, data, config.send, config.token, config.uncalibrated)
    started = time.perf_counter()
    for attempt in range(config.retries + 1):
        try:
            response = session.post(config.endpoint, timeout=config.timeout, **arguments)
        except requests.Timeout as error:
            return PredictionRecord(path=str(path), status=None, error_code="timeout", error_message=str(error),
                                    latency_ms=round((time.perf_counter() - started) * 1000.0, 3))
        except requests.ConnectionError as error:
            return PredictionRecord(path=str(path), status=None, error_code="connection_error",
                                    error_message=str(error))
        if response.status_code not in RETRY_STATUSES or attempt == config.retries:
            break
        time.sleep(retry_delay(response.headers, attempt, config))  # the backoff itself, not a readiness wait
    latency_ms = (time.perf_counter() - started) * 1000.0
    body = parse_body(response)
    record = record_from_answer(path, response.status_code, body, latency_ms)
    if config.overlay_dir is not None and record.ok and isinstance(body.get("explanation"), dict):
        save_overlay(data, body["explanation"], config.overlay_dir / f"{path.stem}.explain.png")
    return refusal_record(record, config.retries) if response.status_code in RETRY_STATUSES else record


def save_overlay(image: bytes, explanation: Mapping[str, Any], out: Path) -> Path:
    """Draws an explanation's heat map (an RGBA PNG, handler/explain.py) over the upright image; writes a PNG.

    The heat map has the image's aspect at most 512 px on its long side, so it is stretched to the image's size.
    """
    with Image.open(io.BytesIO(image)) as opened:
        picture = ImageOps.exif_transpose(opened).convert("RGBA")
    with Image.open(io.BytesIO(base64.b64decode(explanation["heatmap_png"]))) as heat:
        overlay = heat.convert("RGBA").resize(picture.size, Image.Resampling.BILINEAR)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.alpha_composite(picture, overlay).convert("RGB").save(out, format="PNG", optimize=True)
    return out


def predict_file(path: Path, url: str = DEFAULT_URL, model: str = DEFAULT_MODEL,
                 token: str | None = None, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """POSTs the file's bytes to /predictions/<model>; returns (HTTP status, parsed JSON). Used by scripts/demo.py."""
    config = ClientConfig(url=url, model=model, token=token, timeout=timeout)
    arguments = request_arguments(path, path.read_bytes(), "raw", token)
    response = requests.post(config.endpoint, timeout=timeout, **arguments)
    return response.status_code, parse_body(response)


# --- the run ------------------------------------------------------------------------------------------------------


def _is_token_refusal(record: PredictionRecord) -> bool:
    if record.status == 401:
        return True
    text = f"{record.error_code} {record.error_message}".lower()
    return record.status == 400 and ("token" in text or "invalidkey" in text)


def fatal_problem(record: PredictionRecord, config: ClientConfig) -> str | None:
    """A one-line reason to stop the run, when the first answer shows that every file would fail the same way."""
    if record.error_code == "connection_error":
        reason = "connection refused" if "refused" in (record.error_message or "").lower() else record.error_message
        return (f"no TorchServe answering at {config.url} ({reason}); start one with "
                f"`python -m scripts.serve start` or pass --url")
    if _is_token_refusal(record):
        if config.token:
            return (f"the server refused the token (HTTP {record.status}: {record.error_message}); keys expire after "
                    f"60 minutes by default: pass the current inference key from key_file.json")
        return (f"the server requires a token (HTTP {record.status}: {record.error_message}); pass --token KEY, "
                f"set {TOKEN_ENV}, or --key-file RUN_DIR/key_file.json (its \"inference\" key)")
    if record.status == 404:
        what = f"model '{config.model}'" + (f" version '{config.version}'" if config.version else "")
        return (f"{what} not found at {config.url} (HTTP 404: {record.error_message}); list the registered models "
                f"with `python -m scripts.ops list`")
    return None


class _SessionPerThread:
    """One requests.Session per pool thread (a Session is not thread-safe); all are closed at the end."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def get(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        for session in self._sessions:
            session.close()


def run_predictions(paths: Sequence[Path], config: ClientConfig,
                    on_done: Callable[[PredictionRecord], None] | None = None) -> RunResult:
    """Sends every file (the first alone, the rest on `config.concurrency` threads); records keep the input order.

    Raises:
        PredictError: the first answer shows the run cannot succeed (see fatal_problem).

    """
    if not paths:
        raise PredictError("no files to send")
    if config.concurrency < 1:
        raise PredictError(f"--concurrency must be at least 1, got {config.concurrency}")
    if config.retries < 0:
        raise PredictError(f"--retries must be at least 0, got {config.retries}")
    sessions = _SessionPerThread()
    records: list[PredictionRecord | None] = [None] * len(paths)
    pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="predict")
    started = time.perf_counter()
    try:
        first = pool.submit(lambda: send_file(sessions.get(), paths[0], config)).result()
        problem = fatal_problem(first, config)
        if problem:
            raise PredictError(problem)
        records[0] = first
        if on_done:
            on_done(first)
        futures = {pool.submit(lambda p=path: send_file(sessions.get(), p, config)): index
                   for index, path in enumerate(paths[1:], start=1)}
        for future in as_completed(futures):
            records[futures[future]] = record = future.result()
            if on_done:
                on_done(record)
    finally:
        # On Ctrl-C the files not yet sent are dropped instead of being sent before the exit.
        pool.shutdown(wait=True, cancel_futures=True)
        sessions.close()
    return RunResult(records=[r for r in records if r is not None], wall_seconds=time.perf_counter() - started,
                     concurrency=config.concurrency)


# --- output and summary -------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(result: RunResult) -> str:
    """One line: files, ok, errors by code, p50/p95 client latency, requests/s and wall time."""
    records = result.records
    ok = sum(record.ok for record in records)
    errors = Counter(record.error_code or f"http_{record.status}" for record in records if not record.ok)
    error_text = ", ".join(f"{code} {count}" for code, count in sorted(errors.items()))
    latencies = [r.latency_ms for r in records if r.status is not None and r.latency_ms is not None]
    answered = len(latencies)
    latency_text = (f"latency p50 {percentile(latencies, 50):.1f} ms, p95 {percentile(latencies, 95):.1f} ms"
                    if latencies else "latency n/a")
    rate = answered / result.wall_seconds if result.wall_seconds > 0 else 0.0
    return (f"{len(records)} files, {ok} ok, {len(records) - ok} errors" + (f" ({error_text})" if errors else "")
            + f"; {latency_text}; {rate:.1f} requests/s; wall {result.wall_seconds:.2f} s"
            + f"; concurrency {result.concurrency}")


def format_records(records: Sequence[PredictionRecord], output_format: str) -> str:
    """The records as a JSON list, JSON lines or CSV with a header row."""
    rows = [asdict(record) for record in records]
    if output_format == "json":
        return json.dumps(rows, indent=2) + "\n"
    if output_format == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=RECORD_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    raise ValueError(f"unknown format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}")


def refusal_lines(records: Sequence[PredictionRecord]) -> list[str]:
    """One line per kind of refusal that outlasted the retries (server busy, out of resources), with its count."""
    counts = Counter(record.error_message for record in records
                     if record.error_code in (SERVER_BUSY, SERVER_OUT_OF_RESOURCES))
    return [f"{count} file{'s' if count != 1 else ''}: {message}" for message, count in sorted(counts.items())]


# --- command line -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER",
                        help=f"image or video files, or folders searched recursively for "
                             f"{', '.join(sorted(MEDIA_EXTENSIONS))}")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"base URL of TorchServe's inference API (default {DEFAULT_URL})")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"registered model name (default {DEFAULT_MODEL})")
    parser.add_argument("--version", default=None, help="model version (/predictions/MODEL/VERSION); default: "
                                                        "the model's default version")
    parser.add_argument("--send", choices=SEND_MODES, default="raw",
                        help="raw body (default), multipart field 'data', or JSON {\"data\": base64}")
    parser.add_argument("--uncalibrated", action="store_true",
                        help=f"also ask for the model's raw softmax ({UNCALIBRATED_HEADER}: true header); "
                             f"the verdict stays calibrated")
    parser.add_argument("--explain", action="store_true",
                        help="ask /explanations/MODEL: the verdict plus a Grad-CAM heat map (images only)")
    parser.add_argument("--overlay-dir", type=Path, default=None,
                        help="with --explain: write each image with its heat map over it to DIR/<name>.explain.png")
    parser.add_argument("--concurrency", type=int, default=1, help="parallel requests (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer (default 60)")
    parser.add_argument("--retries", type=int, default=ClientConfig.retries,
                        help="send a file answered 503 (server busy) or 507 again up to this many times, after an "
                             "exponential backoff with jitter or the server's Retry-After (default %(default)s)")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", default=None,
                      help=f"inference key, written --token=KEY (a key may start with '-'); without --token or "
                           f"--key-file, ${TOKEN_ENV} is used when set")
    auth.add_argument("--key-file", type=Path, default=None,
                      help="TorchServe's key_file.json; its [\"inference\"][\"key\"] is sent")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="jsonl", help="one record per file (default jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="write the records here instead of stdout")
    parser.add_argument("--allow-errors", action="store_true", help="exit 0 even when some files failed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: exits 1 if any file failed (unless --allow-errors) or the run could not start."""
    args = build_parser().parse_args(argv)
    try:
        paths = find_images(args.inputs)
        config = ClientConfig(url=args.url, model=args.model, version=args.version, send=args.send,
                              uncalibrated=args.uncalibrated, concurrency=args.concurrency, timeout=args.timeout,
                              token=read_token(args.token, args.key_file), retries=args.retries,
                              explain=args.explain or args.overlay_dir is not None, overlay_dir=args.overlay_dir)
        with tqdm(total=len(paths), unit="file", file=sys.stderr,
                  disable=args.quiet or not sys.stderr.isatty()) as progress:
            result = run_predictions(paths, config, on_done=lambda _: progress.update())
    except PredictError as error:
        sys.exit(f"predict: {error}")
    except KeyboardInterrupt:
        sys.exit("predict: interrupted")
    text = format_records(result.records, args.format)
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            args.out.write_text(text)
        except OSError as error:
            sys.exit(f"predict: cannot write {args.out}: {error}")
    for line in refusal_lines(result.records):
        print(f"predict: {line}", file=sys.stderr)
    print(f"predict: {summarize(result)}", file=sys.stderr)
    failed = any(not record.ok for record in result.records)
    sys.exit(1 if failed and not args.allow_errors else 0)


if __name__ == "__main__":
    main()
