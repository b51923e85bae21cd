"""Test harness: a real Prometheus server scraping given targets, queried through its HTTP API.

Tests read TorchServe's metrics back the way an operator would (scrape → PromQL), so a metric
that exists in /metrics but that Prometheus cannot parse or label as expected fails here too.
The binary is the Debian package `prometheus`; when it is missing the harness raises (tests fail,
they are not skipped).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.local_process import LocalProcess

INSTALL_HINT = "sudo apt-get install prometheus"

QueryResult = list[dict[str, Any]]


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or answered a query with an error."""


@dataclass(frozen=True)
class PrometheusConfig:
    """One throwaway Prometheus instance.

    Attributes:
        work_dir: holds prometheus.yml, the TSDB folder and the log.
        targets: scrape targets as "host:port".
        binary: executable name on PATH, or a path.
        scrape_interval: how often the targets are scraped (Prometheus duration).
        metrics_path: HTTP path scraped on every target.
        job_name: the `job` label of the scraped series.
        startup_timeout: seconds to wait for /-/ready.
        rule_files: recording/alerting rule files to load (evaluated every scrape_interval).

    """

    work_dir: Path
    targets: list[str] = field(default_factory=list)
    binary: str = "prometheus"
    scrape_interval: str = "1s"
    metrics_path: str = "/metrics"
    job_name: str = "torchserve"
    startup_timeout: float = 30.0
    rule_files: tuple[Path, ...] = ()


def free_port() -> int:
    """A loopback port the OS says is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape_config(config: PrometheusConfig) -> dict[str, Any]:
    """The prometheus.yml document: one job scraping every target at the configured interval."""
    return {
        "global": {"scrape_interval": config.scrape_interval, "evaluation_interval": config.scrape_interval},
        "rule_files": [str(path.resolve()) for path in config.rule_files],
        "scrape_configs": [{
            "job_name": config.job_name,
            "metrics_path": config.metrics_path,
            "scrape_interval": config.scrape_interval,
            "scrape_timeout": config.scrape_interval,
            "static_configs": [{"targets": list(config.targets)}],
        }],
    }


def value_sum(result: QueryResult) -> float:
    """Sum of the sample values of an instant-vector result (0.0 for no series)."""
    return sum(float(item["value"][1]) for item in result)


class PrometheusServer(LocalProcess):
    """A Prometheus process on a free loopback port; use as a context manager or start()/stop()."""

    def __init__(self, config: PrometheusConfig) -> None:
        self.config = config
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        if self.port is None:
            raise PrometheusError("Prometheus is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        """Prometheus's stdout and stderr."""
        return self.config.work_dir / "prometheus.log"

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the log, for error messages."""
        if not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def _binary(self) -> str:
        binary = self.config.binary
        found = shutil.which(binary) if "/" not in binary else (binary if Path(binary).is_file() else None)
        if found is None:
            raise PrometheusError(f"Prometheus binary '{binary}' not found; install it with `{INSTALL_HINT}` "
                                  f"(Debian package `prometheus`, /usr/bin/prometheus)")
        return found

    def start(self) -> PrometheusServer:
        """Writes prometheus.yml, starts the binary and waits until /-/ready answers 200.

        Raises:
            PrometheusError: the binary is missing, the process died, or it was not ready in time.

        """
        binary = self._binary()
        work_dir = self.config.work_dir.resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        config_file = work_dir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(scrape_config(self.config), sort_keys=False))
        self.port = free_port()
        command = [binary, f"--config.file={config_file}", f"--storage.tsdb.path={work_dir / 'data'}",
                   f"--web.listen-address=127.0.0.1:{self.port}"]
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=work_dir, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.config.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(f"Prometheus exited (code {self.process.returncode}) before it was ready; "
                                      f"log:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)  # polling interval of the readiness check
        raise PrometheusError(f"Prometheus not ready after {self.config.startup_timeout:.0f} s; "
                              f"log:\n{self.log_tail()}")


    def _api(self, path: str, params: dict[str, str] | None = None) -> Any:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        try:
            document = response.json()
        except ValueError:
            raise PrometheusError(f"/api/v1/{path} answered HTTP {response.status_code}: "
                                  f"{response.text[:300]}") from None
        if document.get("status") != "success":
            raise PrometheusError(f"/api/v1/{path} {params or ''} failed: {document.get('errorType')}: "
                                  f"{document.get('error')}")
        return document["data"]

    def query(self, promql: str) -> QueryResult:
        """The instant query's result: a list of {"metric": labels, "value": [time, "value"]}.

        A scalar or string result is wrapped as one item with no labels, so callers handle one shape.
        """
        data = self._api("query", {"query": promql})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def wait_for(self, promql: str, predicate: Callable[[QueryResult], bool], timeout: float = 30.0) -> QueryResult:
        """Polls the query until its result satisfies the predicate; returns that result.

        Raises:
            TimeoutError: not satisfied in time (the message carries the last result).

        """
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{promql!r} did not satisfy the condition in {timeout:.0f} s; last result: "
                                   f"{result}")
            time.sleep(0.25)  # polling interval: scrapes happen every scrape_interval

    def rules(self) -> list[dict[str, Any]]:
        """The loaded rule groups, each rule with its `health` ("ok", "err", "unknown") and `lastError`."""
        return self._api("rules")["groups"]

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their `health` ("up", "down", "unknown") and `lastError`."""
        return self._api("targets")["activeTargets"]

    def wait_for_targets_up(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Waits until every configured target was scraped successfully; returns the targets.

        Raises:
            TimeoutError: some target is not up in time (the message carries their last errors).

        """
        deadline = time.monotonic() + timeout
        while True:
            targets = self.targets()
            if len(targets) == len(self.config.targets) and all(t["health"] == "up" for t in targets):
                return targets
            if time.monotonic() >= deadline:
                states = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
                raise TimeoutError(f"targets not up after {timeout:.0f} s: {states}")
            time.sleep(0.25)
