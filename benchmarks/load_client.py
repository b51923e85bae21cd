"""Closed-loop HTTP load: N clients, each sending its next request as soon as its previous answer arrived.

Built on asyncio streams with keep-alive HTTP/1.1 rather than an HTTP library because the client
shares the benchmark machine's cores with the server it measures: a request costs this client
about 0.1 ms of CPU, several times less than requests or aiohttp would, and every millisecond it
spends is taken from the server. It speaks just enough HTTP for the servers measured here
(Content-Length, chunked, or read-to-close bodies; keep-alive or a new connection per request).

The reliability checks (scripts/reliability) drive the same loop for a fixed time (`duration`), stop it
from another thread (`stop`), and watch every answer as it arrives (`observer`, with its status,
headers, body and timestamps): a run there is about what each request got and when, not only about
the totals.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

# The handler reports the size of the batch a request was scored in; the client reads it from the body.
BATCH_SIZE_FIELD = re.compile(rb'"batch_size":\s*(\d+)')
CONNECTION_FAILED = 0  # the status recorded for a request that got no HTTP answer at all


@dataclass(frozen=True)
class LoadConfig:
    """One closed-loop run.

    Attributes:
        url: where each request is POSTed, e.g. http://127.0.0.1:8080/predictions/deepfake.
        concurrency: clients, each with one request in flight at a time.
        requests: measured requests (all clients together).
        warmup: requests sent first at the same concurrency and not measured (JIT, caches, batching settle).
        content_type: of every request body.
        timeout: seconds a single request may take before it counts as failed.
        headers: extra request headers, e.g. (("Authorization", "Bearer <key>"),).
        duration: when set, the measured phase lasts this many seconds instead of `requests` requests: no
            client starts a request after it, and the requests in flight then are still awaited and counted.

    """

    url: str
    concurrency: int = 1
    requests: int = 200
    warmup: int = 20
    content_type: str = "application/octet-stream"
    timeout: float = 60.0
    headers: tuple[tuple[str, str], ...] = ()
    duration: float | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.requests < 1 or self.warmup < 0:
            raise ValueError("concurrency and requests must be >= 1 and warmup >= 0")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"duration must be > 0 seconds, got {self.duration}")


@dataclass(frozen=True)
class Outcome:
    """One measured request as an observer sees it, the moment its answer (or its failure) arrived.

    Attributes:
        client: index of the client that sent it (0 .. concurrency - 1).
        started: time.monotonic() when it was sent; comparable with other threads' monotonic clocks.
        finished: time.monotonic() when its answer arrived or it was given up on.
        status: HTTP status, or CONNECTION_FAILED when no answer came.
        body: the answer's body (b"" without an answer).
        headers: the answer's headers, names in lower case ({} without an answer).
        error: why no answer came: "timeout" or the exception's class name; None when one came.

    """

    client: int
    started: float
    finished: float
    status: int
    body: bytes
    headers: dict[str, str]
    error: str | None = None

    @property
    def latency_ms(self) -> float:
        """Milliseconds from sending to the answer (or to giving up)."""
        return (self.finished - self.started) * 1000.0

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return 200 <= self.status < 300


Observer = Callable[[Outcome], None]


@dataclass
class LoadResult:
    """What a run measured. Latencies are of successful (2xx) requests only; every other answer is an error.

    Attributes:
        concurrency: clients.
        requests: measured requests sent.
        wall_seconds: from the first measured request sent to the last answer received.
        latencies_ms: per successful request, in completion order.
        statuses: HTTP status → count (CONNECTION_FAILED for no answer).
        batch_sizes: batch sizes reported in response bodies, when the server reports them.

    """

    concurrency: int
    requests: int
    wall_seconds: float
    latencies_ms: list[float]
    statuses: dict[int, int]
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def errors(self) -> int:
        """Requests without a 2xx answer."""
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)

    @property
    def throughput(self) -> float:
        """Successful requests per second of wall time."""
        return len(self.latencies_ms) / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """The q-th percentile (0–100) of the successful latencies in ms (NaN when none succeeded)."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Summary for the JSON report (the raw latencies are summarised, not listed)."""
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": len(self.latencies_ms),
            "errors": self.errors,
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "wall_seconds": round(self.wall_seconds, 3),
            "throughput_rps": round(self.throughput, 2),
            "latency_ms": {
                "p50": round(self.percentile(50), 2), "p95": round(self.percentile(95), 2),
                "p99": round(self.percentile(99), 2),
                "mean": round(float(np.mean(self.latencies_ms)), 2) if self.latencies_ms else float("nan"),
            },
            "mean_batch_size": round(float(np.mean(self.batch_sizes)), 2) if self.batch_sizes else None,
        }


class _Connection:
    """One keep-alive HTTP/1.1 connection that reconnects when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(head)  # two writes: joining them would copy a multi-megabyte body once per request
        self.writer.write(body)
        await self.writer.drain()
        status_line = await self.reader.readuntil(b"\r\n")
        version, status = status_line.split(b" ", 2)[:2]
        headers, raw_headers = {}, {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
            raw_headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        if b"content-length" in headers:
            payload = await self.reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding") == b"chunked":
            payload = await self._chunked()
        else:
            payload = await self.reader.read()
            headers[b"connection"] = b"close"
        keep_alive = version == b"HTTP/1.1" and headers.get(b"connection") != b"close"
        if not keep_alive:
            self.close()
        return int(status), payload, raw_headers

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)
        while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        return b"".join(parts)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def request_head(config: LoadConfig, length: int) -> bytes:
    """The request line and headers of a POST of `length` bytes to config.url."""
    parts = urlsplit(config.url)
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    extra = "".join(f"{name}: {value}\r\n" for name, value in config.headers)
    return (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {config.content_type}\r\n"
            f"{extra}Content-Length: {length}\r\n\r\n").encode()


def _indices(config: LoadConfig, total: int, record: bool, stop: threading.Event | None) -> Iterator[int]:
    """The request numbers the clients share: `total` of them, or as many as `duration` allows; none after `stop`."""
    deadline = time.monotonic() + config.duration if record and config.duration is not None else None
    for index in itertools.count() if deadline is not None else range(total):
        if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() >= deadline):
            return
        yield index


async def _run(config: LoadConfig, payloads: list[bytes], total: int, record: bool,
               observer: Observer | None = None, stop: threading.Event | None = None) -> LoadResult:
    parts = urlsplit(config.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [(request_head(config, len(payload)), payload) for payload in payloads]
    next_index = _indices(config, total, record, stop)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    batch_sizes: list[int] = []

    async def client(number: int) -> None:
        connection = _Connection(host, port)
        try:
            for index in next_index:  # a shared iterator: the clients take the requests in turn
                head, body = requests[index % len(requests)]
                started, sent = time.perf_counter(), time.monotonic()
                error = None
                try:
                    status, answer, headers = await asyncio.wait_for(connection.request(head, body), config.timeout)
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as failure:
                    connection.close()
                    status, answer, headers = CONNECTION_FAILED, b"", {}
                    error = "timeout" if isinstance(failure, TimeoutError) else type(failure).__name__
                elapsed_ms = (time.perf_counter() - started) * 1000.0
                if not record:
                    continue
                statuses[status] += 1
                if 200 <= status < 300:
                    latencies.append(elapsed_ms)
                    if match := BATCH_SIZE_FIELD.search(answer):
                        batch_sizes.append(int(match.group(1)))
                if observer is not None:
                    observer(Outcome(number, sent, time.monotonic(), status, answer, headers, error))
        finally:
            connection.close()

    clients = config.concurrency if record and config.duration is not None else min(config.concurrency, total)
    started = time.perf_counter()
    await asyncio.gather(*(client(number) for number in range(clients)))
    wall = time.perf_counter() - started
    return LoadResult(config.concurrency, sum(statuses.values()) if record else total, wall, latencies,
                      dict(statuses), batch_sizes)


def run_closed_loop(config: LoadConfig, payloads: list[bytes], observer: Observer | None = None,
                    stop: threading.Event | None = None) -> LoadResult:
    """Sends config.warmup unmeasured requests, then the measured ones, cycling through `payloads`.

    The measured phase is config.requests requests, or config.duration seconds when that is set.

    Args:
        config: the run.
        payloads: request bodies, sent in turn.
        observer: called in the client's thread with every measured request's Outcome as it completes
            (keep it quick: the clients wait while it runs).
        stop: once set (from any thread), no client starts another request; those in flight finish and count.

    Raises:
        ValueError: no payloads.

    """
    if not payloads:
        raise ValueError("no request bodies to send")
    if config.warmup:
        asyncio.run(_run(config, payloads, config.warmup, record=False, stop=stop))
    return asyncio.run(_run(config, payloads, config.requests, record=True, observer=observer, stop=stop))
