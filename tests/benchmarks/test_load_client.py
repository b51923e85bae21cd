"""benchmarks/load_client.py against real loopback HTTP servers: counting, warm-up, statuses, framing, overlap."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from benchmarks.load_client import CONNECTION_FAILED, LoadConfig, LoadResult, Outcome, run_closed_loop

BATCH_IN_BODY = re.compile(rb"batch=(\d+)")
STATUS_IN_PATH = re.compile(r"/status/(\d{3})")
PADDING = "x" * 70_000  # answers larger than one socket read, so every framing has to reassemble them
SERVER_WAIT_SECONDS = 10  # how long a handler waits for its peers before giving up with 504


class RecordingServer(ThreadingHTTPServer):
    """A loopback HTTP server that remembers every request and connection, and the most requests in flight."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], barrier: threading.Barrier | None = None,
                 hold: threading.Event | None = None) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.barrier = barrier  # every request waits here for its peers: answers only if they overlap
        self.hold = hold  # every request waits for this event: answers come after the client gave up

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out and hung up is part of these tests, not a failure of the server


class KeepAliveHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive with Content-Length. A body starting with b"bad" gets 500, a path /status/NNN gets NNN."""

    protocol_version = "HTTP/1.1"
    server: RecordingServer

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, format: str, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server = self.server
        with server.lock:
            server.requests.append((self.path, dict(self.headers.items()), body))
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            status = self.status_for(body)
        finally:
            with server.lock:
                server.in_flight -= 1
        batch = BATCH_IN_BODY.search(body)
        answer = {"label": "real", "padding": PADDING}
        if batch:
            answer["timing_ms"] = {"batch_size": int(batch.group(1))}
        self.answer(status, json.dumps(answer).encode())

    def status_for(self, body: bytes) -> int:
        if self.server.barrier is not None:
            try:
                self.server.barrier.wait(timeout=SERVER_WAIT_SECONDS)
            except threading.BrokenBarrierError:
                return 504
        if self.server.hold is not None and not self.server.hold.wait(timeout=SERVER_WAIT_SECONDS):
            return 504
        if match := STATUS_IN_PATH.fullmatch(self.path):
            return int(match.group(1))
        return 500 if body.startswith(b"bad") else 200

    def answer(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if status == 503:
            self.send_header("Retry-After", "7")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class ChunkedHandler(KeepAliveHandler):
    """HTTP/1.1 keep-alive answering with Transfer-Encoding: chunked, a chunk extension and a trailer."""

    def answer(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        third = len(payload) // 3 + 1
        for index, start in enumerate(range(0, len(payload), third)):
            part = payload[start:start + third]
            extension = ";part=first" if index == 0 else ""
            self.wfile.write(f"{len(part):x}{extension}\r\n".encode() + part + b"\r\n")
        self.wfile.write(b"0\r\nX-Checksum: none\r\n\r\n")


class ClosingHandler(KeepAliveHandler):
    """HTTP/1.0 without Content-Length: the body ends when the server closes the connection."""

    protocol_version = "HTTP/1.0"

    def answer(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], **options) -> Iterator[RecordingServer]:
    server = RecordingServer(handler, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        if server.hold is not None:
            server.hold.set()
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def expected_status(body: bytes) -> int:
    return 500 if body.startswith(b"bad") else 200


PAYLOADS = [b"good batch=1", b"bad batch=9", b"good batch=2", b"good batch=4"]


@pytest.mark.parametrize("handler", [KeepAliveHandler, ChunkedHandler, ClosingHandler])
@pytest.mark.parametrize("concurrency", [1, 3])
def test_each_measured_request_is_counted_once_and_warmup_is_not_counted(handler, concurrency):
    with serving(handler) as server:
        config = LoadConfig(f"{server.url}/predict", concurrency=concurrency, requests=10, warmup=5)
        result = run_closed_loop(config, PAYLOADS)
    assert len(server.requests) == config.warmup + config.requests
    assert result.requests == config.requests
    assert len(result.latencies_ms) + result.errors == config.requests
    # The warm-up run finishes before the measured one starts: the server's last `requests` bodies are the
    # measured ones, which cycle through the payloads from the first.
    measured = [PAYLOADS[index % len(PAYLOADS)] for index in range(config.requests)]
    assert sorted(body for _, _, body in server.requests[config.warmup:]) == sorted(measured)
    assert result.statuses == dict(Counter(expected_status(body) for body in measured))
    # Batch sizes are read from successful answers only (the failing body's 9 is never collected).
    assert sorted(result.batch_sizes) == sorted(int(BATCH_IN_BODY.search(body).group(1)) for body in measured
                                                if expected_status(body) == 200)
    summary = result.to_dict()
    assert summary["ok"] + summary["errors"] == summary["requests"] == config.requests
    assert summary["statuses"] == {str(status): count for status, count in result.statuses.items()}


@pytest.mark.parametrize(("handler", "keeps_alive"), [(KeepAliveHandler, True), (ChunkedHandler, True),
                                                      (ClosingHandler, False)])
def test_connections_are_reused_when_kept_alive_and_reopened_when_closed(handler, keeps_alive):
    with serving(handler) as server:
        result = run_closed_loop(LoadConfig(f"{server.url}/predict", concurrency=2, requests=10, warmup=0),
                                 [b"good"])
    assert result.statuses == {200: 10}
    assert server.connections == (2 if keeps_alive else 10)


@pytest.mark.parametrize(("status", "succeeds"), [(201, True), (404, False), (503, False)])
def test_statuses_are_tallied_and_only_2xx_count_as_success(status, succeeds):
    with serving(KeepAliveHandler) as server:
        result = run_closed_loop(LoadConfig(f"{server.url}/status/{status}", concurrency=2, requests=6, warmup=2),
                                 [b"good batch=3"])
    assert result.statuses == {status: 6}
    assert result.errors == (0 if succeeds else 6)
    assert len(result.latencies_ms) == (6 if succeeds else 0)
    assert result.batch_sizes == ([3] * 6 if succeeds else [])


def test_percentiles_are_those_of_the_successful_latencies():
    with serving(KeepAliveHandler) as server:
        result = run_closed_loop(LoadConfig(f"{server.url}/predict", concurrency=3, requests=30, warmup=3),
                                 [b"good", b"bad"])
    assert len(result.latencies_ms) == 15  # the failing half has no latency
    for q in (50, 95, 99):
        assert result.percentile(q) == pytest.approx(float(np.percentile(result.latencies_ms, q)), rel=1e-12)
    latency = result.to_dict()["latency_ms"]
    assert latency["p50"] == round(float(np.percentile(result.latencies_ms, 50)), 2)
    assert latency["p99"] == round(float(np.percentile(result.latencies_ms, 99)), 2)
    assert latency["mean"] == round(float(np.mean(result.latencies_ms)), 2)
    # Every latency lies inside the measured wall time, and each client's requests follow one another.
    assert all(0 < value <= result.wall_seconds * 1000.0 for value in result.latencies_ms)
    assert sum(result.latencies_ms) <= 3 * result.wall_seconds * 1000.0


def test_throughput_is_successful_requests_per_wall_second():
    with serving(KeepAliveHandler) as server:
        result = run_closed_loop(LoadConfig(f"{server.url}/predict", concurrency=2, requests=12, warmup=2),
                                 [b"good", b"bad", b"good"])
    ok = len(result.latencies_ms)
    assert ok == 8 and result.errors == 4
    assert result.wall_seconds > 0
    assert result.throughput == pytest.approx(ok / result.wall_seconds, rel=1e-12)
    assert result.to_dict()["throughput_rps"] == round(ok / result.wall_seconds, 2)


def test_custom_headers_content_type_and_query_reach_the_server():
    headers = (("Authorization", "Bearer s3cret-key"), ("X-Request-Source", "benchmark"))
    with serving(KeepAliveHandler) as server:
        url = f"{server.url}/predictions/deepfake?explain=1"
        result = run_closed_loop(LoadConfig(url, concurrency=2, requests=4, warmup=2, content_type="image/jpeg",
                                            headers=headers), [b"good one", b"good second"])
    assert result.statuses == {200: 4}
    assert len(server.requests) == 6
    for path, received, body in server.requests:
        assert path == "/predictions/deepfake?explain=1"
        assert received["Authorization"] == "Bearer s3cret-key"
        assert received["X-Request-Source"] == "benchmark"
        assert received["Content-Type"] == "image/jpeg"
        assert int(received["Content-Length"]) == len(body)
        assert received["Host"] == server.url.removeprefix("http://")


def test_a_closed_port_gives_connection_failed_errors_not_an_exception():
    result = run_closed_loop(LoadConfig(f"http://127.0.0.1:{closed_port()}/predict", concurrency=2, requests=5,
                                        warmup=1, timeout=5), [b"good"])
    assert result.statuses == {CONNECTION_FAILED: 5}
    assert result.errors == 5 and result.latencies_ms == [] and result.throughput == 0.0
    assert np.isnan(result.percentile(50))


def test_an_answer_slower_than_the_timeout_counts_as_connection_failed():
    with serving(KeepAliveHandler, hold=threading.Event()) as server:
        result = run_closed_loop(LoadConfig(f"{server.url}/predict", concurrency=1, requests=2, warmup=0,
                                            timeout=0.2), [b"good"])
    assert result.statuses == {CONNECTION_FAILED: 2}  # each request given up on, none waited for past the timeout
    assert result.wall_seconds < SERVER_WAIT_SECONDS


def test_clients_really_overlap_their_requests():
    # Each request is answered only once 4 requests are inside the server at the same time (else 504 after
    # SERVER_WAIT_SECONDS): 4 clients that did not overlap could not get a single 200.
    concurrency = 4
    with serving(KeepAliveHandler, barrier=threading.Barrier(concurrency)) as server:
        result = run_closed_loop(LoadConfig(f"{server.url}/predict", concurrency=concurrency, requests=8, warmup=4),
                                 [b"good"])
    assert result.statuses == {200: 8}
    assert server.max_in_flight == concurrency


def test_one_client_sends_one_request_at_a_time():
    with serving(ClosingHandler) as server:
        result = run_closed_loop(LoadConfig(f"{server.url}/predict", concurrency=1, requests=6, warmup=0),
                                 [b"good"])
    assert result.statuses == {200: 6}
    assert server.max_in_flight == 1
    assert sum(result.latencies_ms) <= result.wall_seconds * 1000.0


def test_more_clients_than_requests_send_each_request_once():
    with serving(KeepAliveHandler) as server:
        result = run_closed_loop(LoadConfig(f"{server.url}/predict", concurrency=8, requests=3, warmup=0),
                                 [b"good"])
    assert result.statuses == {200: 3} and len(server.requests) == 3
    assert result.concurrency == 8 and result.requests == 3


@pytest.mark.parametrize("fields", [dict(concurrency=0), dict(requests=0), dict(warmup=-1)])
def test_load_config_rejects_impossible_runs(fields):
    with pytest.raises(ValueError, match="concurrency and requests must be >= 1"):
        LoadConfig("http://127.0.0.1:1/predict", **fields)


def test_run_closed_loop_rejects_empty_payloads():
    with pytest.raises(ValueError, match="no request bodies"):
        run_closed_loop(LoadConfig(f"http://127.0.0.1:{closed_port()}/predict", requests=1, warmup=0), [])


def test_a_result_without_successes_summarises_without_failing():
    summary = LoadResult(concurrency=1, requests=2, wall_seconds=0.0, latencies_ms=[], statuses={500: 2}).to_dict()
    assert summary["ok"] == 0 and summary["errors"] == 2 and summary["throughput_rps"] == 0.0
    assert summary["mean_batch_size"] is None and np.isnan(summary["latency_ms"]["p50"])


# --- duration, stop and observer (the reliability checks' additions) ----------------------------------------------


def test_a_duration_run_sends_until_the_time_is_up_and_counts_every_answer():
    with serving(KeepAliveHandler) as server:
        config = LoadConfig(f"{server.url}/predict", concurrency=3, requests=1, warmup=2, duration=0.5)
        outcomes: list[Outcome] = []
        started = time.monotonic()
        result = run_closed_loop(config, [b"good batch=1", b"bad"], observer=outcomes.append)
        elapsed = time.monotonic() - started
    assert result.requests == len(outcomes) == len(server.requests) - config.warmup
    assert result.requests > 10  # `requests=1` is ignored: the duration decides
    assert 0.5 <= elapsed < 5.0
    # No request starts after the duration (measured from the end of the warm-up, before the first measured send).
    first = min(outcome.started for outcome in outcomes)
    assert all(outcome.started < first + 0.5 for outcome in outcomes)
    assert result.statuses == dict(Counter(outcome.status for outcome in outcomes))
    assert sorted({outcome.client for outcome in outcomes}) == [0, 1, 2]


def test_the_observer_sees_status_headers_body_and_times_of_each_measured_request():
    with serving(KeepAliveHandler) as server:
        outcomes: list[Outcome] = []
        result = run_closed_loop(LoadConfig(f"{server.url}/status/503", concurrency=2, requests=4, warmup=3),
                                 [b"good batch=2"], observer=outcomes.append)
    assert len(outcomes) == 4 and result.statuses == {503: 4}  # warm-up answers are not observed
    for outcome in outcomes:
        assert outcome.status == 503 and not outcome.ok and outcome.error is None
        assert outcome.headers["retry-after"] == "7" and outcome.headers["content-type"] == "application/json"
        assert json.loads(outcome.body)["padding"] == PADDING
        assert outcome.finished >= outcome.started and outcome.latency_ms == pytest.approx(
            (outcome.finished - outcome.started) * 1000.0)


def test_the_observer_tells_a_timeout_from_a_refused_connection():
    outcomes: list[Outcome] = []
    with serving(KeepAliveHandler, hold=threading.Event()) as server:
        run_closed_loop(LoadConfig(f"{server.url}/predict", concurrency=1, requests=1, warmup=0, timeout=0.2),
                        [b"good"], observer=outcomes.append)
    run_closed_loop(LoadConfig(f"http://127.0.0.1:{closed_port()}/predict", concurrency=1, requests=1, warmup=0),
                    [b"good"], observer=outcomes.append)
    assert [(o.status, o.error, o.body, o.headers) for o in outcomes] == [
        (CONNECTION_FAILED, "timeout", b"", {}), (CONNECTION_FAILED, "ConnectionRefusedError", b"", {})]
    assert outcomes[0].latency_ms >= 200.0


def test_stop_from_another_thread_ends_the_run_and_awaits_the_requests_in_flight():
    stop = threading.Event()
    with serving(KeepAliveHandler) as server:
        outcomes: list[Outcome] = []
        timer = threading.Timer(0.4, stop.set)
        timer.start()
        result = run_closed_loop(LoadConfig(f"{server.url}/predict", concurrency=4, requests=10**9, warmup=0),
                                 [b"good"], observer=outcomes.append, stop=stop)
        timer.join()
    assert stop.is_set() and result.requests == len(outcomes) == len(server.requests) > 4
    assert result.statuses == {200: result.requests}  # every request sent was answered and counted


def test_bodies_larger_than_socket_buffers_arrive_whole():
    body = bytes(range(256)) * 40_000  # 10 MB
    with serving(KeepAliveHandler) as server:
        result = run_closed_loop(LoadConfig(f"{server.url}/predict", concurrency=2, requests=4, warmup=0),
                                 [body])
    assert result.statuses == {200: 4}
    assert all(received == body for _, _, received in server.requests)


def test_load_config_rejects_a_duration_that_is_not_positive():
    with pytest.raises(ValueError, match="duration must be > 0"):
        LoadConfig("http://127.0.0.1:1/predict", duration=0)
