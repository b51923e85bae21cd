"""Starts TorchServe in its own process group, waits until the model's workers are READY, stops it cleanly.

TorchServe's CLI returns before Java and the workers exit, answers /ping before any worker can
predict, and exits 0 even when a port is taken. This tool works around all three: readiness is
"every worker of the model reports READY", a dead server is detected while waiting, and stop
signals the whole process group and waits until every child is gone.

Two configs: `dev` (config/config.properties: no token, loopback only, model API on) and
`production` (config/production.properties: token auth, management and metrics on loopback,
model API off, quiet access log). Either is rewritten into <run dir>/config.properties with this
run's ports and absolute paths; that file is what TorchServe reads.

Supervision (--foreground): TorchServe restarts a dead worker, but nothing restarts its Java
frontend. In the foreground this tool watches it (the CLI's exit at once, Java every 0.5 s) and,
with `--restart on-failure` (the default), ends whatever is left of the old tree (orphaned
workers included), starts the same config on the same ports, waits until every worker is READY
and says so. Restarts back off (immediately, then 1, 2, 4 ... s) and stop after --max-restarts
failures within --restart-window seconds: the tool then stops everything and exits 1, as it does
with `--restart never`. A start that fails the first time is never retried (a config error is not
a crash). SIGTERM or Ctrl-C stops everything at any moment, during a restart too. TorchServe 0.12
makes new token keys at every start: after a restart, clients must re-read key_file.json.
<run dir>/server.json records the supervisor (pid, state, restarts, last restart and why), so
`status` says "restarting" and exits 1 until the restarted server is ready, and `stop` ends the
supervisor first (otherwise it would restart what stop ends).

Usage:
    python -m scripts.serve start [--config dev|production | --properties FILE] [--free-ports]
                                  [--model-store model_store] [--workflow-store model_store] [--run-dir build/serve]
                                  [--foreground [--restart on-failure|never] [--max-restarts 5]
                                                [--restart-window 300] [--restart-backoff 1]]
    python -m scripts.serve status [--run-dir build/serve]
    python -m scripts.serve token [--kind inference|management] [--run-dir build/serve]
    python -m scripts.serve stop [--run-dir build/serve]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psutil
import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {  # --config NAME → base properties file
    "dev": REPO_ROOT / "config" / "config.properties",
    "production": REPO_ROOT / "config" / "production.properties",
}
DEFAULT_PROPERTIES = CONFIGS["dev"]
DEFAULT_RUN_DIR = REPO_ROOT / "build" / "serve"
STATE_FILENAME = "server.json"
RUNTIME_PROPERTIES_FILENAME = "config.properties"
KEY_FILENAME = "key_file.json"  # TorchServe writes it into its working directory, the run dir
MODEL_STORE_PLACEHOLDER = "{model_store}"  # in allowed_urls: replaced by the store's absolute path, as a regex
LOG4J_OPTION = "-Dlog4j.configurationFile="
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class ServeError(RuntimeError):
    """TorchServe could not be started, did not become ready, or could not be stopped."""


@dataclass(frozen=True)
class Ports:
    """The five listeners of one TorchServe instance."""

    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071

    @classmethod
    def free(cls) -> Ports:
        """Five distinct ports the OS says are free now (for tests running beside other servers)."""
        sockets = [socket.socket() for _ in range(5)]
        try:
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
            return cls(*(sock.getsockname()[1] for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()

    def busy(self) -> list[str]:
        """The listeners whose port something already accepts connections on, as "name=port"."""
        return [f"{name}={port}" for name, port in asdict(self).items() if port_in_use(port)]


RESTART_MODES = ("on-failure", "never")


@dataclass(frozen=True)
class RestartPolicy:
    """What a foreground server does when its Java frontend dies (crash, SIGKILL, -XX:+ExitOnOutOfMemoryError).

    Attributes:
        mode: "on-failure" restarts it; "never" stops what is left and exits 1, for a supervisor of
            its own (systemd, Kubernetes) to act on.
        max_restarts: failures (a death or a restart that did not become ready) allowed within
            window_seconds; one more and the tool gives up and exits 1 rather than spin on a server that
            cannot start (an archive gone, a port taken, a config broken since).
        window_seconds: how long a failure counts against max_restarts.
        backoff_seconds: the wait before the second restart within the window; it doubles for each
            later one. The first restart is immediate: one crash should cost one start-up, no more.
        max_backoff_seconds: the longest wait.
        poll_seconds: how often Java is checked. The CLI's exit (which follows Java's within
            milliseconds) is seen at once: the supervisor blocks in waitpid on it.

    """

    mode: str = "on-failure"
    max_restarts: int = 5
    window_seconds: float = 300.0
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    poll_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in RESTART_MODES:
            raise ValueError(f"restart mode {self.mode!r} is not one of {', '.join(RESTART_MODES)}")
        if self.max_restarts < 0 or self.window_seconds <= 0 or self.poll_seconds <= 0:
            raise ValueError("max_restarts must be >= 0, window_seconds and poll_seconds > 0")
        if self.backoff_seconds < 0 or self.max_backoff_seconds < self.backoff_seconds:
            raise ValueError("backoff_seconds must be >= 0 and <= max_backoff_seconds")

    def delay(self, failures: int) -> float:
        """Seconds to wait before the restart that follows the `failures`-th failure within the window (1-based)."""
        if failures <= 1:
            return 0.0
        return min(self.backoff_seconds * 2 ** (failures - 2), self.max_backoff_seconds)

    def describe(self) -> str:
        """One phrase for logs and `status`."""
        if self.mode == "never":
            return "restart policy never"
        return (f"restart policy on-failure: at most {self.max_restarts} restart(s) within "
                f"{self.window_seconds:g} s")


class CrashLoopGuard:
    """Counts failures within the policy's window and says how long to back off, or that it is time to give up."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._failures: deque[float] = deque()

    @property
    def recent(self) -> int:
        """Failures within the window, as of the last one recorded."""
        return len(self._failures)

    def record_failure(self, now: float) -> float | None:
        """Counts a failure at `now` (time.monotonic()); the seconds to wait before restarting, or None to give up."""
        self._failures.append(now)
        while self._failures and self._failures[0] <= now - self.policy.window_seconds:
            self._failures.popleft()
        if len(self._failures) > self.policy.max_restarts:
            return None
        return self.policy.delay(len(self._failures))


@dataclass(frozen=True)
class ServeConfig:
    """One TorchServe instance.

    Attributes:
        run_dir: holds the runtime config, logs, TMPDIR (worker sockets, unpacked archives) and state.
        model_store: folder of .mar files.
        models: name → .mar file name, registered at start-up.
        properties: base config.properties; each listener keeps its host there and gets its port from `ports`.
        ports: where to listen. This tool itself talks to the server over 127.0.0.1, which reaches
            listeners bound to 127.0.0.1 or 0.0.0.0.
        startup_timeout: seconds to wait for every worker to be READY.
        ready_poll_seconds: how often readiness is checked while waiting; it bounds how precisely
            ready_seconds measures the start-up (benchmarks/serving.py polls faster).
        restart: what serve_in_foreground does when the frontend dies (a background start has no supervisor).
        echo_output: also copy TorchServe's console output to this process's stdout, line by line. Containers need
            it: `docker logs` and `kubectl logs` read PID 1's stdout, not run_dir/torchserve.out. Only for a
            foreground server (this process must outlive TorchServe to keep draining the pipe).
        overrides: properties set over the base file's (before ports and paths are filled in), for a run that
            differs in a value or two: the browser tests allow their page's origin on a free port
            (cors_allowed_origin) without a second copy of the properties file.
        workflow_store: folder of .war files (TorchServe's --workflow-store), for workflows registered through
            the management API (POST /workflows?url=NAME.war, scripts/package_workflow.py); None = no workflows.
            With workflows only, `models` may be empty: the server is then ready once /ping answers.

    """

    run_dir: Path = DEFAULT_RUN_DIR
    model_store: Path = REPO_ROOT / "model_store"
    models: dict[str, str] = field(default_factory=lambda: {"deepfake": "deepfake.mar"})
    properties: Path = DEFAULT_PROPERTIES
    ports: Ports = field(default_factory=Ports)
    startup_timeout: float = 120.0
    ready_poll_seconds: float = 0.2
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    echo_output: bool = False
    overrides: dict[str, str] = field(default_factory=dict)
    workflow_store: Path | None = None

    @property
    def inference_url(self) -> str:
        """Base URL of the inference API."""
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        """Base URL of the management API."""
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        """Base URL of the metrics API (Prometheus text at /metrics)."""
        return f"http://127.0.0.1:{self.ports.metrics}"


def read_properties(path: Path) -> dict[str, str]:
    """Parses a Java .properties file of key=value lines (comments and blanks skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "!")) and "=" in stripped:
            key, _, value = stripped.partition("=")
            values[key.strip()] = value.strip()
    return values


# Keys whose value is a file path; a relative one is resolved against the properties file's folder.
PATH_KEYS = ("metrics_config",)
# HTTP listener → the Ports field giving its port; the host (and scheme) come from the properties file.
HTTP_LISTENERS = {"inference_address": "inference", "management_address": "management", "metrics_address": "metrics"}
# gRPC listener host key → (its port key, the Ports field).
GRPC_LISTENERS = {"grpc_inference_address": ("grpc_inference_port", "grpc_inference"),
                  "grpc_management_address": ("grpc_management_port", "grpc_management")}
_ADDRESS = re.compile(r"^(?P<scheme>https?)://(?P<host>\[[^\]]+\]|[^:/\[\]]+)(?::\d+)?/?$")
# Regex metacharacters a path may contain that a character class matches literally; [ ] \ ^ cannot be.
_CLASS_ESCAPED = set(".+*?(){}|$")


def with_port(address: str, port: int) -> str:
    """`scheme://host[:port]` with its port replaced: the configured host (0.0.0.0, 127.0.0.1, ...) is kept.

    Raises:
        ServeError: the address is not of the form http(s)://host[:port].

    """
    match = _ADDRESS.match(address)
    if match is None:
        raise ServeError(f"listener address {address!r} is not of the form http(s)://host[:port]")
    return f"{match['scheme']}://{match['host']}:{port}"


def literal_regex(text: str) -> str:
    """A Java regex matching `text` literally, without backslashes (a .properties file would eat them).

    Raises:
        ServeError: the text holds [ ] ^ or a backslash, which cannot be written that way.

    """
    unsupported = sorted(set(text) & set("[]\\^"))
    if unsupported:
        raise ServeError(f"path {text!r} contains {' '.join(unsupported)}: allowed_urls cannot match it; "
                         f"move the model store to a plain path")
    return "".join(f"[{char}]" if char in _CLASS_ESCAPED else char for char in text)


def absolute_log4j_vmargs(vmargs: str, base: Path) -> str:
    """The JVM options with a relative -Dlog4j.configurationFile= path made absolute against `base`.

    Raises:
        ServeError: the path contains whitespace (TorchServe splits vmargs on whitespace).

    """
    words = vmargs.split()
    for index, word in enumerate(words):
        if word.startswith(LOG4J_OPTION):
            location = word.removeprefix(LOG4J_OPTION)
            if ":" not in location and not Path(location).is_absolute():  # leave file:/classpath: URIs alone
                resolved = str(base / location)
                if any(char.isspace() for char in resolved):
                    raise ServeError(f"log4j config path {resolved!r} contains whitespace, which TorchServe's vmargs "
                                     f"cannot carry; move the checkout or give an absolute path without spaces")
                words[index] = LOG4J_OPTION + resolved
    return " ".join(words)


def log4j_config_file(values: dict[str, str]) -> Path | None:
    """The log4j2 file named in vmargs, if any (None for TorchServe's built-in config or a URI)."""
    for word in values.get("vmargs", "").split():
        if word.startswith(LOG4J_OPTION):
            location = word.removeprefix(LOG4J_OPTION)
            return None if ":" in location else Path(location)
    return None


def runtime_properties(config: ServeConfig) -> dict[str, str]:
    """The base properties with this instance's ports, absolute model store and absolute config paths.

    TorchServe resolves relative paths against its working directory (the run dir), so paths
    written next to the properties file (metrics.yaml, log4j2 config) are made absolute here.
    Each listener keeps the host its properties file gives (loopback in dev; 0.0.0.0 for the
    production inference API) and takes its port from config.ports. `{model_store}` in
    allowed_urls becomes this run's absolute model store, as a regex.
    """
    values = {**read_properties(config.properties), **config.overrides}
    base = config.properties.resolve().parent
    for key in PATH_KEYS:
        if key in values and not Path(values[key]).is_absolute():
            values[key] = str(base / values[key])
    if "vmargs" in values:
        values["vmargs"] = absolute_log4j_vmargs(values["vmargs"], base)
    model_store = str(config.model_store.resolve())
    if "allowed_urls" in values:
        values["allowed_urls"] = values["allowed_urls"].replace(MODEL_STORE_PLACEHOLDER, literal_regex(model_store))
    ports = asdict(config.ports)
    for key, port_name in HTTP_LISTENERS.items():
        values[key] = with_port(values.get(key, "http://127.0.0.1"), ports[port_name])
    for key, (port_key, port_name) in GRPC_LISTENERS.items():
        values.setdefault(key, "127.0.0.1")
        values[port_key] = str(ports[port_name])
    values["model_store"] = model_store
    return values


def check_runtime_properties(values: dict[str, str], source: Path) -> None:
    """Fails early on what TorchServe would misread or only report in its log.

    Raises:
        ServeError: a referenced file is missing, or a value holds a backslash (an escape character
            in .properties files, so Java would read another value than the one written).

    """
    referenced = {key: Path(values[key]) for key in PATH_KEYS if key in values}
    log4j = log4j_config_file(values)
    if log4j is not None:
        referenced["vmargs -Dlog4j.configurationFile"] = log4j
    for key, path in referenced.items():
        if not path.is_file():
            raise ServeError(f"{source}: {key} names {path}, which does not exist")
    for key, value in values.items():
        if "\\" in value:
            raise ServeError(f"{source}: {key} contains a backslash, which Java's .properties reader would "
                             f"treat as an escape; write it without one")
    leftover = values.get("allowed_urls", "")
    if MODEL_STORE_PLACEHOLDER in leftover:
        raise ServeError(f"{source}: allowed_urls still contains {MODEL_STORE_PLACEHOLDER}")


def security_warnings(values: dict[str, str]) -> list[str]:
    """What a person starting this config must know about who can call it (empty for the production config)."""
    if values.get("disable_token_authorization", "false").lower() != "true":
        return []
    model_api = values.get("enable_model_api", "false").lower() == "true"
    # Metrics never asks for a token (with auth on neither), so only the other listeners count as exposed.
    exposed = [key for key in HTTP_LISTENERS if key != "metrics_address" and _host(values[key]) not in LOOPBACK_HOSTS]
    exposed += [key for key in GRPC_LISTENERS if values.get(key, "127.0.0.1") not in LOOPBACK_HOSTS]
    if not exposed and not model_api:  # config/kubernetes.properties: a token-checking proxy in the pod guards it
        return ["token authorization is disabled and every API listens on loopback only: anything on this host "
                "(in this pod) can call it without a token, so a token-checking proxy in front must be the only way "
                "in (config/nginx/sidecar.conf.template, as docker/kubernetes runs it)."]
    warnings = ["token authorization is DISABLED: anyone who can reach these ports can call every API"
                + (", including model registration (enable_model_api=true)" if model_api else "")
                + ". Development only: use --config production to deploy."]
    if exposed:
        warnings.append(f"and {', '.join(exposed)} listen beyond this machine: other hosts can call them "
                        f"without a token")
    return warnings


def _host(address: str) -> str:
    match = _ADDRESS.match(address)
    return match["host"] if match else address


def listener_summary(values: dict[str, str]) -> str:
    """One line naming where each API listens, from a runtime config."""
    grpc = [f"gRPC {key.split('_')[1]} {values.get(key, '127.0.0.1')}:{values.get(port_key, '?')}"
            for key, (port_key, _) in GRPC_LISTENERS.items()]
    http = [f"{key.removesuffix('_address')} {values.get(key, '?')}" for key in HTTP_LISTENERS]
    return ", ".join(http + grpc)


def port_in_use(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def read_keys(run_dir: Path) -> dict[str, dict[str, str]]:
    """The keys TorchServe wrote to run_dir/key_file.json ({} when token auth is off or it is not running).

    Shape: {"management": {"key", "expiration time"}, "inference": {...}, "API": {"key"}}.
    """
    key_file = run_dir / KEY_FILENAME
    if not key_file.is_file():
        return {}
    try:
        return json.loads(key_file.read_text())
    except json.JSONDecodeError:  # caught while TorchServe is still writing it
        return {}


def api_key(key_file: Path, kind: str) -> str:
    """One API's key ("inference" or "management") from a key_file.json TorchServe wrote.

    The one place that knows the file's layout; the clients wrap its errors in their own messages.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: the file is not JSON, or has no [kind]["key"].

    """
    keys = json.loads(key_file.read_text())  # json.JSONDecodeError is a ValueError
    try:
        return str(keys[kind]["key"])
    except (KeyError, TypeError) as error:
        raise ValueError(f'no ["{kind}"]["key"] in it') from error


def auth_headers(run_dir: Path, kind: str = "management") -> dict[str, str]:
    """Authorization header for one API ("management" or "inference") when token auth is on."""
    key = read_keys(run_dir).get(kind, {}).get("key")
    return {"Authorization": f"Bearer {key}"} if key else {}


def model_workers(config: ServeConfig, model: str) -> list[dict[str, Any]]:
    """The workers of a model as the management API describes them ([] when it cannot answer yet)."""
    try:
        response = requests.get(f"{config.management_url}/models/{model}", headers=auth_headers(config.run_dir),
                                timeout=2)
    except requests.RequestException:
        return []
    if response.status_code != 200:
        return []
    return [worker for description in response.json() for worker in description.get("workers", [])]


def is_ready(config: ServeConfig) -> bool:
    """Every model has at least one worker and all its workers report READY (no models: /ping answers 200)."""
    if not config.models:  # a server for workflows only: nothing to wait for but the frontend itself
        try:
            return requests.get(f"{config.inference_url}/ping", headers=auth_headers(config.run_dir, "inference"),
                                timeout=2).status_code == 200
        except requests.RequestException:
            return False
    for model in config.models:
        workers = model_workers(config, model)
        if not workers or any(worker.get("status") != "READY" for worker in workers):
            return False
    return True


def _log_tail(run_dir: Path, lines: int = 30) -> str:
    out = run_dir / "torchserve.out"
    return "\n".join(out.read_text(errors="replace").splitlines()[-lines:]) if out.exists() else "(no output)"


# Lines of TorchServe's console output that say why Java ended (the JVM prints them itself, whatever log4j keeps).
_FATAL_OUTPUT = re.compile(r"java\.lang\.OutOfMemoryError|Terminating due to|Address already in use|"
                           r"Exception in thread \"main\"")
RESTART_MARKER = "--- scripts.serve: restart"  # written into torchserve.out before each restart's output


def _fatal_output_line(run_dir: Path, lines: int = 80) -> str | None:
    """The last line since the last (re)start that names why Java ended, if any."""
    tail = _log_tail(run_dir, lines).split(RESTART_MARKER)[-1]
    found = [line.strip() for line in tail.splitlines() if _FATAL_OUTPUT.search(line)]
    return found[-1][:300] if found else None


def _tee_lines(source: IO[bytes], out_file: Path) -> None:
    """Copies TorchServe's output to out_file (read by _fatal_output_line) and to stdout until the pipe closes.

    The file is appended to, so a restart keeps the previous frontend's last words, as without echo.
    """
    with source, out_file.open("ab") as output:
        for line in source:
            output.write(line)
            output.flush()
            try:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            except (OSError, ValueError):  # stdout closed: keep draining so TorchServe never blocks on a full pipe
                pass


def _alive(process: psutil.Process | None) -> bool:
    try:
        return process is not None and process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The live process `pid` if it is the one that was created at `create_time` (not a later holder of the pid)."""
    try:
        process = psutil.Process(pid)
        same = abs(process.create_time() - create_time) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return process if same and _alive(process) else None


def process_group(pgid: int, run_dir: Path) -> list[psutil.Process]:
    """The live processes of process group `pgid` that TorchServe started from `run_dir`.

    When the Java frontend dies its workers are orphaned (re-parented to init), so they are no
    longer anyone's children, but they keep the group of the CLI that started the tree. Only
    processes whose TMPDIR is this run's tmp folder count: a stale pgid can never reach a stranger.
    """
    tmp_dir = str(run_dir.resolve() / "tmp")
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.environ().get("TMPDIR") == tmp_dir and _alive(process):
                members.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def wait_ended(processes: list[psutil.Process], timeout: float, poll_seconds: float = 0.02) -> list[psutil.Process]:
    """Waits until every process has exited (a zombie counts: it holds no memory, socket or port); returns the rest.

    Not psutil.wait_procs: for a process that is not our child it waits until the pid is gone, and
    orphaned workers are reaped by PID 1 whenever it gets to it (about once a second on some hosts).
    """
    deadline = time.monotonic() + timeout
    alive = [process for process in processes if _alive(process)]
    while alive and time.monotonic() < deadline:
        time.sleep(poll_seconds)  # polling interval of the exit check
        alive = [process for process in alive if _alive(process)]
    return alive


def _unique(processes: list[psutil.Process]) -> list[psutil.Process]:
    return list({process.pid: process for process in processes}.values())


class TorchServe:
    """A TorchServe instance this process (or an earlier one, via run_dir/server.json) started."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.pid: int | None = None
        self.ready_seconds: float | None = None
        self.started_at: float | None = None  # time.time() of the last start
        self.frontend_pid: int | None = None
        self.supervision: dict[str, Any] | None = None  # set by a Supervisor: recorded in the state file
        self._process: subprocess.Popen | None = None
        self._frontend: psutil.Process | None = None

    @property
    def state_file(self) -> Path:
        """Where the pid and ports of a started server are recorded, for `stop` from another process."""
        return self.config.run_dir / STATE_FILENAME

    def start(self, append_output: bool = False) -> TorchServe:
        """Launches TorchServe in a new session (its own process group) and waits until it is ready.

        Args:
            append_output: add to run_dir/torchserve.out instead of replacing it (a restart keeps the
                output that tells why the previous frontend died).

        Raises:
            ServeError: a port is taken, the .mar is missing, the server died, or it was not ready in time.

        """
        config = self.config
        for name, archive in config.models.items():
            if not (config.model_store / archive).is_file():
                raise ServeError(f"{config.model_store / archive} does not exist; build it with "
                                 f"python -m scripts.package_model (model '{name}')")
        busy = config.ports.busy()
        if busy:
            raise ServeError(f"port(s) already in use: {', '.join(busy)}. Another TorchServe may be running: "
                             f"stop it with `make stop` (or python -m scripts.serve stop --run-dir ...)")
        run_dir = config.run_dir.resolve()
        tmp_dir = run_dir / "tmp"
        logs_dir = run_dir / "logs"
        for folder in (tmp_dir, logs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        properties_file = run_dir / RUNTIME_PROPERTIES_FILENAME
        values = runtime_properties(config)
        check_runtime_properties(values, config.properties)
        properties_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        if read_properties(properties_file) != values:  # a value with a newline or a leading # would not survive
            raise ServeError(f"{properties_file} does not read back as written; check {config.properties}")
        (run_dir / KEY_FILENAME).unlink(missing_ok=True)  # a previous run's keys: the readiness poll must not use them
        env = {**os.environ, "TMPDIR": str(tmp_dir), "TEMP": str(tmp_dir), "LOG_LOCATION": str(logs_dir),
               "METRICS_LOCATION": str(logs_dir)}
        # Workers must run this interpreter (the venv's torch), whatever `python` is on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        command = [
            str(Path(sys.executable).parent / "torchserve"), "--start", "--foreground", "--ncs",
            "--model-store", str(config.model_store.resolve()),
            "--ts-config", str(properties_file),
        ]
        if config.models:
            command += ["--models", *(f"{name}={archive}" for name, archive in config.models.items())]
        if config.workflow_store is not None:
            command += ["--workflow-store", str(config.workflow_store.resolve())]
        with (run_dir / "torchserve.out").open("ab" if append_output else "wb") as output:
            process = subprocess.Popen(command, cwd=run_dir, env=env,
                                       stdout=subprocess.PIPE if config.echo_output else output,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        if config.echo_output:
            threading.Thread(target=_tee_lines, args=(process.stdout, run_dir / "torchserve.out"),
                             name="torchserve-output", daemon=True).start()
        self.pid, self._process, self.started_at = process.pid, process, time.time()
        self.frontend_pid = self._frontend = None
        try:
            self.write_state()
            self._wait_ready(process)
            self._frontend = next((child for child in psutil.Process(process.pid).children(recursive=True)
                                   if child.name() == "java"), None)
            self.frontend_pid = self._frontend.pid if self._frontend else None
            self.write_state()
        except BaseException:
            if self.supervision is None:
                self.stop()
            else:  # the supervisor keeps its record (state "restarting") for `status`
                self.end_processes()
            raise
        return self

    def _wait_ready(self, process: subprocess.Popen) -> None:
        started = time.monotonic()
        deadline = started + self.config.startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServeError(f"TorchServe exited (code {process.returncode}) before its model was ready; "
                                 f"last output:\n{_log_tail(self.config.run_dir)}")
            if is_ready(self.config):
                self.ready_seconds = time.monotonic() - started
                return
            time.sleep(self.config.ready_poll_seconds)  # polling interval of the readiness check, not a stand-in for it
        raise ServeError(f"model(s) {list(self.config.models)} not READY after {self.config.startup_timeout:.0f} s; "
                         f"last output:\n{_log_tail(self.config.run_dir)}")

    def write_state(self) -> None:
        """Records pid, ports, paths and the supervisor's state in run_dir/server.json, atomically (status reads it)."""
        config = self.config
        state: dict[str, Any] = {
            "pid": self.pid, "frontend_pid": self.frontend_pid, "ports": asdict(config.ports), "models": config.models,
            "started_at": self.started_at, "properties": str(config.properties.resolve()),
            "model_store": str(config.model_store.resolve()),
        }
        if self.supervision is not None:
            state["supervisor"] = self.supervision
        partial = self.state_file.with_name(STATE_FILENAME + ".tmp")
        partial.write_text(json.dumps(state, indent=2))
        os.replace(partial, self.state_file)

    def read_state(self) -> dict[str, Any]:
        """What run_dir/server.json records ({} without one)."""
        if not self.state_file.is_file():
            return {}
        try:
            return json.loads(self.state_file.read_text())
        except json.JSONDecodeError:  # an older writer was cut off half-way: treat as no record
            return {}

    def _recorded_pid(self) -> int | None:
        if self.pid is not None:
            return self.pid
        pid = self.read_state().get("pid")
        return int(pid) if pid is not None else None

    def _recorded_process(self) -> psutil.Process | None:
        """The live TorchServe CLI process recorded for this run dir, or None.

        A state file can outlive its server (reboot, kill -9): a pid that now belongs to another
        program is ignored, so `stop` never signals a stranger's process group.
        """
        pid = self._recorded_pid()
        if pid is None:
            return None
        try:
            process = psutil.Process(pid)
            alive = process.status() != psutil.STATUS_ZOMBIE
            ours = any("torchserve" in part for part in process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return process if alive and ours else None

    def _recorded_supervisor(self) -> psutil.Process | None:
        """The live foreground supervisor of this run dir when it is another process than this one."""
        supervision = self.read_state().get("supervisor")
        if not supervision or supervision.get("pid") == os.getpid():
            return None
        return _same_process(int(supervision["pid"]), float(supervision["create_time"]))

    def pid_of_running(self) -> int | None:
        """Pid of the running server recorded for this run dir, if any."""
        process = self._recorded_process()
        return process.pid if process else None

    def is_running(self) -> bool:
        """True while the TorchServe process recorded in run_dir is alive."""
        return self._recorded_process() is not None

    def wait_for_exit(self, poll_seconds: float = 0.5) -> str:
        """Blocks until the CLI this object started, or its Java frontend, has ended; returns what ended.

        The CLI runs Java in the foreground and exits as soon as Java does, so blocking on the CLI
        (waitpid, not a sleep) sees a dead frontend within milliseconds; Java itself is checked every
        `poll_seconds` in case the CLI lingers.

        Raises:
            ServeError: this object did not start the server (only the process that started it can wait on it).

        """
        process = self._process
        if process is None:
            raise ServeError("wait_for_exit needs the server this object started")
        while True:
            try:
                code: int | None = process.wait(timeout=poll_seconds)
            except subprocess.TimeoutExpired:
                code = None
            java_gone = self._frontend is not None and not _alive(self._frontend)
            if code is None and not java_gone:
                continue
            if self._frontend is not None and java_gone:
                reason = f"the Java frontend (pid {self._frontend.pid}) exited"
                reason += f", then the torchserve CLI (exit code {code})" if code is not None else ""
            else:
                reason = f"the torchserve CLI (pid {process.pid}) exited with code {code}"
            fatal = _fatal_output_line(self.config.run_dir)
            return reason + (f"; its output says: {fatal}" if fatal else "")

    def _processes(self) -> list[psutil.Process]:
        """Every live process of this server: the CLI, its descendants, and orphans left in its process group."""
        found: list[psutil.Process] = []
        root = self._recorded_process()
        if root is not None:
            try:
                found = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                found = []
        pgid = self._recorded_pid()  # the CLI leads its own session, so its pid is the group's id
        if pgid is not None:
            found += process_group(pgid, self.config.run_dir)
        return _unique(found)

    def _end(self, processes: list[psutil.Process], timeout: float) -> None:
        """SIGTERM to the group and each process, then SIGKILL to whatever is left after `timeout` seconds.

        Raises:
            ServeError: some process survived SIGKILL.

        """
        if not processes:
            return
        pgid = self._recorded_pid()
        if pgid is not None and process_group(pgid, self.config.run_dir):
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in processes:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        alive = wait_ended(processes, timeout)
        # Anything that left the group, ignored SIGTERM, or was started meanwhile (a worker Java replaced).
        alive = _unique(alive + (process_group(pgid, self.config.run_dir) if pgid is not None else []))
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        alive = wait_ended(alive, timeout=10)
        if alive:
            raise ServeError(f"processes still alive after SIGKILL: {[p.pid for p in alive]}")

    def end_processes(self, timeout: float = 30.0) -> int:
        """Ends every process of this server and forgets them, keeping the state file; returns how many ended.

        What a supervisor does between a dead frontend and its restart: the workers Java leaves
        behind must not linger, hold memory or answer on their sockets when the new tree starts.

        Raises:
            ServeError: some process survived SIGKILL.

        """
        return self._end_and_forget(self._processes(), timeout)

    def _end_and_forget(self, processes: list[psutil.Process], timeout: float) -> int:
        # Keys of a stopped server open nothing, and a later run must not mistake them for its own.
        (self.config.run_dir / KEY_FILENAME).unlink(missing_ok=True)
        self._end(processes, timeout)
        if self._process is not None:
            self._process.poll()  # reap the CLI: no zombie left behind
        self.pid = self.frontend_pid = None
        self._process = self._frontend = None
        return len(processes)

    def stop(self, timeout: float = 30.0) -> int:
        """Ends the supervisor (when another process is one), every process of the tree and the state file.

        A foreground supervisor would restart a server killed under it, so it is asked to stop
        first (SIGTERM: it stops its own server and exits); whatever it leaves is ended here.

        Returns:
            How many processes of the tree ended (the supervisor not counted).

        Raises:
            ServeError: some process survived SIGTERM and SIGKILL.

        """
        processes = self._processes()
        supervisor = self._recorded_supervisor()
        if supervisor is not None:
            supervisor.terminate()
            for process in wait_ended([supervisor], timeout=timeout + 30):  # it waits up to `timeout` for its tree
                process.kill()
            processes = _unique(processes + self._processes())  # a restart it had begun meanwhile
        ended = self._end_and_forget(processes, timeout)
        self.state_file.unlink(missing_ok=True)
        return ended


class Supervisor:
    """Keeps a foreground TorchServe up: restarts its frontend when it dies, as the config's RestartPolicy allows.

    Every change of state goes to the state file (`supervisor`: pid, state, restarts, the last
    restart's time and reason), so `status` in another shell can say "restarting" and when the
    keys changed.
    """

    def __init__(self, server: TorchServe, announce_restart: Callable[[TorchServe, Supervisor], None],
                 log: Callable[[str], None] | None = None) -> None:
        self.server = server
        self.policy = server.config.restart
        self.guard = CrashLoopGuard(self.policy)
        self.announce_restart = announce_restart
        self.log = log or (lambda line: print(line, flush=True))
        self.restarts = 0
        self.down_seconds: float | None = None  # from noticing the death to ready again, of the last restart
        self.cleanup: tuple[int, float] = (0, 0.0)  # processes of the old tree ended before the last start, seconds
        server.supervision = {"pid": os.getpid(), "create_time": psutil.Process().create_time(),
                              "policy": asdict(self.policy), "state": "starting", "restarts": 0,
                              "last_restart_at": None, "last_restart_reason": None}

    def record(self, state: str, **fields: Any) -> None:
        """Sets the supervisor's state (starting, running, restarting) and writes the state file."""
        assert self.server.supervision is not None
        self.server.supervision.update(state=state, **fields)
        self.server.write_state()

    def watch(self) -> None:
        """Blocks while the started server serves, restarting it whenever it dies; returns never.

        Raises:
            ServeError: the frontend died with the policy "never", or the crash-loop guard gave up.

        """
        while True:
            self.restart(self.server.wait_for_exit(self.policy.poll_seconds))

    def restart(self, reason: str) -> None:
        """Ends what is left of the dead server and starts it again until one start is ready, or gives up.

        Raises:
            ServeError: the policy is "never", or more than max_restarts failures fell within the window.

        """
        noticed = time.monotonic()
        if self.policy.mode == "never":
            self.log(f"TorchServe frontend died: {reason}. Restart policy never: stopping")
            raise ServeError(f"the TorchServe frontend died ({reason}); not restarted (--restart never)")
        event = f"TorchServe frontend died: {reason}"
        while True:
            delay = self.guard.record_failure(time.monotonic())
            if delay is None:
                self.log(f"{event}. Giving up: {self.guard.recent} failures within {self.policy.window_seconds:g} s")
                raise ServeError(f"giving up after {self.guard.recent} failures within "
                                 f"{self.policy.window_seconds:g} s (more than --max-restarts "
                                 f"{self.policy.max_restarts}); the last: {reason}")
            self.restarts += 1
            self.log(f"{event}. Restart {self.restarts} in {delay:.1f} s (failure {self.guard.recent} of at most "
                     f"{self.policy.max_restarts} within {self.policy.window_seconds:g} s)")
            self.record("restarting", restarts=self.restarts, last_restart_at=time.time(), last_restart_reason=reason)
            cleanup_started = time.monotonic()
            self.cleanup = (self.server.end_processes(), time.monotonic() - cleanup_started)
            time.sleep(delay)  # the crash-loop back-off, not a readiness wait
            output = self.server.config.run_dir / "torchserve.out"
            with output.open("a") as marker:
                marker.write(f"\n{RESTART_MARKER} {self.restarts} at {datetime.now().isoformat()}: "
                             f"{reason} ---\n")
            try:
                self.server.start(append_output=True)
            except ServeError as error:
                reason = f"restart {self.restarts} failed: {str(error).splitlines()[0]}"
                event = f"TorchServe {reason} (output: {output})"
                continue
            self.down_seconds = time.monotonic() - noticed
            self.record("running")
            self.announce_restart(self.server, self)
            return


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """Turns SIGINT and SIGTERM into KeyboardInterrupt, so a foreground server is stopped, not orphaned.

    Both are installed explicitly: a process started in the background inherits SIGINT as
    ignored, and supervisors (systemd, docker stop, kill) send SIGTERM, not Ctrl-C. Install
    before start(): a signal during start-up then also stops what was started.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_keyboard_interrupt)


def serve_in_foreground(server: TorchServe, announce: Callable[[TorchServe], None],
                        announce_restart: Callable[[TorchServe, Supervisor], None] | None = None) -> None:
    """Starts TorchServe, announces it, and keeps it up until a stop signal arrives; then stops the tree.

    A dead frontend is restarted as server.config.restart says (see Supervisor). One try block
    covers start-up, the ready line, the watch and every restart, so a signal at any moment (even
    while the ready line is being printed, which is when a client that waited for it may react, or
    half-way through a restart) ends in the same clean stop instead of an orphaned server.

    Raises:
        ServeError: the first start failed, or the frontend died and the policy did not (or no longer) restart it;
            everything is stopped by then.

    """
    stop_on_signals()
    supervisor = Supervisor(server, announce_restart or _announce_restart)
    try:
        server.start()
        supervisor.record("running")  # before the ready line: whoever reacts to it finds the state it announces
        announce(server)
        supervisor.watch()
    except KeyboardInterrupt as interrupt:
        print(f"{interrupt.args[0] if interrupt.args else 'SIGINT'}: stopping TorchServe", flush=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # an impatient second Ctrl-C must not cut the stop short
            signal.signal(signum, signal.SIG_IGN)
        ended = server.stop()
        print(f"stopped TorchServe ({ended} processes ended)", flush=True)


def recorded_config(run_dir: Path) -> ServeConfig | None:
    """The config of the server run_dir/server.json records (ports, models, files), or None if none is recorded."""
    state = TorchServe(ServeConfig(run_dir=run_dir)).read_state()
    if not state:
        return None
    recorded = {key: Path(state[key]) for key in ("properties", "model_store") if key in state}
    return ServeConfig(run_dir=run_dir, ports=Ports(**state["ports"]), models=state["models"], **recorded)


def registered_models(config: ServeConfig) -> list[dict[str, Any]]:
    """Every registered version of every model, with `default` marked, from the management API.

    Raises:
        requests.RequestException: the management API cannot be reached.

    """
    headers = auth_headers(config.run_dir)

    def get(path: str) -> Any:
        response = requests.get(f"{config.management_url}{path}", headers=headers, timeout=5)
        response.raise_for_status()  # e.g. 400 once the management key has expired
        return response.json()

    versions = []
    for entry in get("/models?limit=100").get("models", []):
        name = entry["modelName"]
        default = get(f"/models/{name}")[0]["modelVersion"]
        versions += [{**description, "default": description["modelVersion"] == default}
                     for description in get(f"/models/{name}/all")]
    return versions


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


def supervisor_lines(server: TorchServe, token_auth: bool) -> tuple[str | None, list[str]]:
    """What `status` says about a foreground supervisor: its state, its restarts, and whether the keys changed.

    Returns:
        The live supervisor's state (starting, running, restarting; None without a live one) and the
        lines: none for a server started in the background, one for a supervisor that is gone, else
        the supervisor's line, plus a line on the keys once a restart has replaced them.

    """
    supervision = server.read_state().get("supervisor")
    if not supervision:
        return None, []
    pid = supervision["pid"]
    if _same_process(int(pid), float(supervision["create_time"])) is None:
        return None, [f"supervisor: pid {pid} is gone: nothing restarts this TorchServe if its frontend dies"]
    restarts, last_at = supervision.get("restarts", 0), supervision.get("last_restart_at")
    line = f"supervisor: pid {pid}, {supervision['state']}; {restarts} restart(s)"
    if restarts and last_at:
        line += f", the last at {_clock(last_at)} after: {supervision['last_restart_reason']}"
    lines = [f"{line}; {RestartPolicy(**supervision['policy']).describe()}"]
    if restarts and last_at and token_auth:
        lines.append(f"token keys: NEW since the restart at {_clock(last_at)} (TorchServe makes new ones at every "
                     f"start); clients holding older keys get 400 until they re-read "
                     f"{server.config.run_dir / KEY_FILENAME} (python -m scripts.serve token --run-dir "
                     f"{server.config.run_dir})")
    return supervision["state"], lines


def status_lines(server: TorchServe) -> tuple[list[str], bool]:
    """What `status` prints (running/ready, supervisor, config, listeners, models and workers) and whether it is ready.

    Ready is measured, never read from the state file: the server runs and every worker of every
    model reports READY. While a supervisor (re)starts the server, the first line says so.
    """
    config = server.config
    running = server.is_running()
    ready = running and is_ready(config)
    runtime_file = config.run_dir / RUNTIME_PROPERTIES_FILENAME
    values = read_properties(runtime_file) if runtime_file.is_file() else {}
    auth = values.get("disable_token_authorization", "false").lower() != "true"
    state, supervised = supervisor_lines(server, auth)
    transient = state if state in ("starting", "restarting") else None
    lines = [f"running: {running}, ready: {ready}" + (f" (pid {server.pid_of_running()})" if running else "")
             + (f"; {transient}" if transient else ""), *supervised[:1]]
    if not running:
        gone = f"TorchServe from {config.run_dir} is {transient}: not ready" if transient else \
            f"no TorchServe running from {config.run_dir}"
        return [*lines, gone], False
    lines += [
        f"config: {config.properties} (as run: {runtime_file})",
        f"token authorization: {'on, keys in ' + str(config.run_dir / KEY_FILENAME) if auth else 'OFF'}; "
        f"model API: {'on' if values.get('enable_model_api', 'false').lower() == 'true' else 'off'}",
        *supervised[1:],
        f"listeners: {listener_summary(values)}",
        f"model store: {values.get('model_store', config.model_store)}",
    ]
    try:
        versions = registered_models(config)
    except requests.RequestException as error:
        return [*lines, f"models: management API not answering ({error})"], ready
    for version in versions:
        workers = version.get("workers", [])
        counts = ", ".join(f"{sum(w['status'] == status for w in workers)} {status}"
                           for status in sorted({w["status"] for w in workers})) or "none"
        lines.append(f"model {version['modelName']} {version['modelVersion']}"
                     f"{' (default)' if version['default'] else ''}: {len(workers)} worker(s): {counts}")
    return lines, ready


def token_lines(run_dir: Path, config: ServeConfig, kind: str | None) -> list[str]:
    """What `token` prints: one key (for $(...)) or every key with its expiry and how to use it.

    Raises:
        ServeError: there is no key file (server stopped, or token authorization disabled).

    """
    keys = read_keys(run_dir)
    if not keys:
        raise ServeError(f"no {KEY_FILENAME} in {run_dir}: TorchServe is not running from there, or runs with "
                         f"token authorization disabled (the dev config)")
    if kind is not None:
        return [keys[kind]["key"]]
    lines = [f"{name:<10} {keys[name]['key']}  (expires {keys[name].get('expiration time', '?')})"
             for name in ("inference", "management") if name in keys]
    if "API" in keys:
        lines.append(f"{'API':<10} {keys['API']['key']}  (renews the others: curl -H 'Authorization: Bearer "
                     f"{keys['API']['key']}' '{config.management_url}/token?type=inference')")
    lines.append(f"e.g. curl -H 'Authorization: Bearer {keys['inference']['key']}' -T face.jpg "
                 f"{config.inference_url}/predictions/deepfake")
    return lines


def _announce(server: TorchServe) -> None:
    config = server.config
    lines = [f"TorchServe ready in {server.ready_seconds:.1f} s (pid {server.pid}): "  # tests wait for this line
             f"inference {config.inference_url}, management {config.management_url}, "
             f"metrics {config.metrics_url}/metrics; logs in {config.run_dir / 'logs'}"]
    if read_keys(config.run_dir):
        lines.append(f"token authorization on: keys in {config.run_dir / KEY_FILENAME} "
                     f"(python -m scripts.serve token --run-dir {config.run_dir})")
    print("\n".join(lines), flush=True)  # one write: a stop signal right after it cannot cut the second line off


def _announce_restart(server: TorchServe, supervisor: Supervisor) -> None:
    config = server.config
    ended, seconds = supervisor.cleanup
    lines = [f"TorchServe restarted: ready in {server.ready_seconds:.1f} s, {supervisor.down_seconds:.1f} s after the "
             f"frontend was found dead (restart {supervisor.restarts}, pid {server.pid}; {ended} processes of the old "
             f"tree ended in {seconds:.1f} s): inference {config.inference_url}, management {config.management_url}, "
             f"same ports and config"]
    if read_keys(config.run_dir):
        lines.append(f"token authorization on: the keys CHANGED (TorchServe makes new ones at every start): clients "
                     f"must re-read {config.run_dir / KEY_FILENAME} (python -m scripts.serve token --run-dir "
                     f"{config.run_dir})")
    print("\n".join(lines), flush=True)


def _warn(config: ServeConfig) -> None:
    """Prints the config's security warnings to stderr before starting, where no stop signal can lose them."""
    for warning in security_warnings(runtime_properties(config)):
        print(f"WARNING ({config.properties.name}): {warning}", file=sys.stderr, flush=True)


def _restart_policy(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RestartPolicy:
    """The --restart* options as a policy; they apply to --foreground only (nothing watches a background server)."""
    given = {"mode": args.restart, "max_restarts": args.max_restarts, "window_seconds": args.restart_window,
             "backoff_seconds": args.restart_backoff}
    given = {key: value for key, value in given.items() if value is not None}
    if given and not args.foreground:
        parser.error("--restart, --max-restarts, --restart-window and --restart-backoff need --foreground: only a "
                     "foreground start supervises TorchServe (in the background, run it under systemd or docker "
                     "with --foreground)")
    backoff = given.get("backoff_seconds", RestartPolicy.backoff_seconds)
    try:
        return RestartPolicy(**given, max_backoff_seconds=max(RestartPolicy.max_backoff_seconds, backoff))
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=", ".join(f"--config {name}: {path}" for name, path in CONFIGS.items()))
    parser.add_argument("action", choices=["start", "stop", "status", "token"],
                        help="start a server; stop it (and its foreground supervisor); status: running/ready, "
                             "supervisor and restarts, config, ports, models, workers (exit 1 unless ready); "
                             "token: print the API keys of a token-auth server")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR,
                        help="runtime config, logs, key_file.json, state (default: %(default)s)")
    parser.add_argument("--model-store", type=Path, default=ServeConfig.model_store)
    parser.add_argument("--workflow-store", type=Path, default=None,
                        help="folder of .war workflow archives, registered later with POST /workflows (make ensemble)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--config", choices=sorted(CONFIGS), help="named config (default: dev)")
    which.add_argument("--properties", type=Path, help="a config.properties of your own")
    parser.add_argument("--foreground", action="store_true",
                        help="stay attached and supervise: restart a dead frontend (see --restart); Ctrl-C or "
                             "SIGTERM stops the server")
    parser.add_argument("--free-ports", action="store_true", help="listen on free ports instead of 8080-8082/7070-7071")
    parser.add_argument("--log-stdout", action="store_true",
                        help="with --foreground: also print TorchServe's console output (WARN and above in "
                             "production) on stdout, for docker/kubectl logs; run_dir/torchserve.out keeps it too")
    restart = parser.add_argument_group("supervision (--foreground)")
    restart.add_argument("--restart", choices=RESTART_MODES,
                         help="on-failure (default): restart the frontend when it dies, on the same ports; never: "
                              "stop and exit 1")
    restart.add_argument("--max-restarts", type=int, metavar="N",
                         help=f"give up (stop, exit 1) at failure N+1 within --restart-window "
                              f"(default {RestartPolicy.max_restarts})")
    restart.add_argument("--restart-window", type=float, metavar="SECONDS",
                         help=f"how long a failure counts (default {RestartPolicy.window_seconds:g})")
    restart.add_argument("--restart-backoff", type=float, metavar="SECONDS",
                         help=f"wait before the 2nd restart within the window, doubled for each later one, at most "
                              f"{RestartPolicy.max_backoff_seconds:g} s; the first is immediate "
                              f"(default {RestartPolicy.backoff_seconds:g})")
    parser.add_argument("--kind", choices=["inference", "management"],
                        help="token: print only this key (for scripts: TOKEN=$(... token --kind inference))")
    args = parser.parse_args(argv)

    if args.action == "start":
        policy = _restart_policy(args, parser)
        properties = args.properties or CONFIGS[args.config or "dev"]
        if not properties.is_file():
            sys.exit(f"serve: {properties} does not exist")
        ports = Ports.free() if args.free_ports else Ports()
        if args.log_stdout and not args.foreground:
            parser.error("--log-stdout needs --foreground (this process copies the output while TorchServe runs)")
        server = TorchServe(ServeConfig(run_dir=args.run_dir, model_store=args.model_store, properties=properties,
                                        ports=ports, restart=policy, echo_output=args.log_stdout,
                                        workflow_store=args.workflow_store))
        if server.is_running():
            sys.exit(f"TorchServe from {args.run_dir} is already running (pid {server.pid_of_running()}); "
                     f"stop it first: python -m scripts.serve stop")
        supervisor = server._recorded_supervisor()
        if supervisor is not None:  # between a death and the restart no server runs, but one is coming back
            sys.exit(f"a supervisor (pid {supervisor.pid}) keeps TorchServe from {args.run_dir} running; stop it "
                     f"first: python -m scripts.serve stop --run-dir {args.run_dir}")
        try:
            _warn(server.config)
            if args.foreground:
                serve_in_foreground(server, _announce)
            else:
                _announce(server.start())
        except ServeError as error:
            sys.exit(f"serve: {error}")
        except KeyboardInterrupt:  # background start-up interrupted: start() has stopped what it had started
            sys.exit("serve: interrupted during start-up; TorchServe stopped")
        return

    server = TorchServe(recorded_config(args.run_dir) or ServeConfig(run_dir=args.run_dir))
    if args.action == "status":
        lines, ready = status_lines(server)
        print("\n".join(lines))
        sys.exit(0 if ready else 1)
    if args.action == "token":
        try:
            print("\n".join(token_lines(args.run_dir, server.config, args.kind)))
        except ServeError as error:
            sys.exit(f"serve: {error}")
        return
    supervisor = server._recorded_supervisor()
    ended = server.stop()
    if supervisor is not None:
        print(f"stopped the supervisor (pid {supervisor.pid}) and TorchServe ({ended} processes ended)")
    else:
        print(f"stopped TorchServe ({ended} processes ended)" if ended else
              f"no TorchServe running from {args.run_dir}")


if __name__ == "__main__":
    main()
