"""Starts TorchServe in its own process group, waits until the model's workers are READY, stops it cleanly.

TorchServe's CLI returns before Java and the workers exit, answers /ping before any worker can
predict, and exits 0 even when a port is taken. This tool works around all three: readiness is
"every worker of the model reports READY", a dead server is detected while waiting, and stop
signals the whole process group and waits until every child is gone.

Two configs: `dev` (config/config.properties: no token, loopback only, model API on) and
`production` (config/production.properties: token auth, management and metrics on loopback,
model API off, quiet access log). Either is rewritten into <run dir>/config.properties with this
run's ports and absolute paths; that file is what TorchServe reads.

Usage:
    python -m scripts.serve start [--config dev|production | --properties FILE] [--foreground] [--free-ports]
                                  [--model-store model_store] [--run-dir build/serve]
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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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

    """

    run_dir: Path = DEFAULT_RUN_DIR
    model_store: Path = REPO_ROOT / "model_store"
    models: dict[str, str] = field(default_factory=lambda: {"deepfake": "deepfake.mar"})
    properties: Path = DEFAULT_PROPERTIES
    ports: Ports = field(default_factory=Ports)
    startup_timeout: float = 120.0
    ready_poll_seconds: float = 0.2

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
    values = read_properties(config.properties)
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
    warnings = ["token authorization is DISABLED: anyone who can reach these ports can call every API"
                + (", including model registration (enable_model_api=true)"
                   if values.get("enable_model_api", "false").lower() == "true" else "")
                + ". Development only: use --config production to deploy."]
    exposed = [key for key in HTTP_LISTENERS if _host(values[key]) not in LOOPBACK_HOSTS]
    exposed += [key for key in GRPC_LISTENERS if values.get(key, "127.0.0.1") not in LOOPBACK_HOSTS]
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
    """Every model has at least one worker and all its workers report READY."""
    for model in config.models:
        workers = model_workers(config, model)
        if not workers or any(worker.get("status") != "READY" for worker in workers):
            return False
    return True


def _log_tail(run_dir: Path, lines: int = 30) -> str:
    out = run_dir / "torchserve.out"
    return "\n".join(out.read_text(errors="replace").splitlines()[-lines:]) if out.exists() else "(no output)"


class TorchServe:
    """A TorchServe instance this process (or an earlier one, via run_dir/server.json) started."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.pid: int | None = None
        self.ready_seconds: float | None = None

    @property
    def state_file(self) -> Path:
        """Where the pid and ports of a started server are recorded, for `stop` from another process."""
        return self.config.run_dir / STATE_FILENAME

    def start(self) -> TorchServe:
        """Launches TorchServe in a new session (its own process group) and waits until it is ready.

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
            "--models", *(f"{name}={archive}" for name, archive in config.models.items()),
        ]
        with (run_dir / "torchserve.out").open("wb") as output:
            process = subprocess.Popen(command, cwd=run_dir, env=env, stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = process.pid
        self.state_file.write_text(json.dumps({
            "pid": process.pid, "ports": asdict(config.ports), "models": config.models, "started_at": time.time(),
            "properties": str(config.properties.resolve()), "model_store": str(config.model_store.resolve()),
        }, indent=2))
        try:
            self._wait_ready(process)
        except BaseException:
            self.stop()
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

    def _recorded_pid(self) -> int | None:
        if self.pid is not None:
            return self.pid
        if self.state_file.is_file():
            return int(json.loads(self.state_file.read_text())["pid"])
        return None

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

    def pid_of_running(self) -> int | None:
        """Pid of the running server recorded for this run dir, if any."""
        process = self._recorded_process()
        return process.pid if process else None

    def is_running(self) -> bool:
        """True while the TorchServe process recorded in run_dir is alive."""
        return self._recorded_process() is not None

    def stop(self, timeout: float = 30.0) -> int:
        """Signals the whole process group, waits for every process of the tree; returns how many ended.

        Raises:
            ServeError: some process survived SIGTERM and SIGKILL.

        """
        root = self._recorded_process()
        # Keys of a stopped server open nothing, and a later run must not mistake them for its own.
        (self.config.run_dir / KEY_FILENAME).unlink(missing_ok=True)
        if root is None:
            self.state_file.unlink(missing_ok=True)
            self.pid = None
            return 0
        tree = [root, *root.children(recursive=True)]
        try:
            os.killpg(os.getpgid(root.pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        for process in alive:  # anything that left the group or ignored SIGTERM
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(alive, timeout=10)
        if alive:
            raise ServeError(f"processes still alive after SIGKILL: {[p.pid for p in alive]}")
        self.state_file.unlink(missing_ok=True)
        self.pid = None
        return len(tree)


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


def serve_in_foreground(server: TorchServe, announce: Callable[[TorchServe], None]) -> None:
    """Starts TorchServe, announces it, and blocks until it exits or a stop signal arrives; then stops the tree.

    One try block covers start-up, the ready line and the wait, so a signal at any moment (even
    while the ready line is being printed, which is when a client that waited for it may react)
    ends in the same clean stop instead of an orphaned server.
    """
    stop_on_signals()
    try:
        server.start()
        announce(server)
        while server.is_running():
            time.sleep(1)  # waits on the process, not for readiness (which start() already checked)
    except KeyboardInterrupt as interrupt:
        print(f"{interrupt.args[0] if interrupt.args else 'SIGINT'}: stopping TorchServe", flush=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # an impatient second Ctrl-C must not cut the stop short
            signal.signal(signum, signal.SIG_IGN)
        ended = server.stop()
        print(f"stopped TorchServe ({ended} processes ended)", flush=True)


def _config_from_state(run_dir: Path) -> ServeConfig:
    state_file = run_dir / STATE_FILENAME
    if not state_file.is_file():
        return ServeConfig(run_dir=run_dir)
    state = json.loads(state_file.read_text())
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


def status_lines(server: TorchServe) -> tuple[list[str], bool]:
    """What `status` prints (running/ready, config, listeners, models and workers) and whether it is ready."""
    config = server.config
    running = server.is_running()
    ready = running and is_ready(config)
    lines = [f"running: {running}, ready: {ready}" + (f" (pid {server.pid_of_running()})" if running else "")]
    if not running:
        return [*lines, f"no TorchServe running from {config.run_dir}"], False
    runtime_file = config.run_dir / RUNTIME_PROPERTIES_FILENAME
    values = read_properties(runtime_file) if runtime_file.is_file() else {}
    auth = values.get("disable_token_authorization", "false").lower() != "true"
    lines += [
        f"config: {config.properties} (as run: {runtime_file})",
        f"token authorization: {'on, keys in ' + str(config.run_dir / KEY_FILENAME) if auth else 'OFF'}; "
        f"model API: {'on' if values.get('enable_model_api', 'false').lower() == 'true' else 'off'}",
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


def _warn(config: ServeConfig) -> None:
    """Prints the config's security warnings to stderr before starting, where no stop signal can lose them."""
    for warning in security_warnings(runtime_properties(config)):
        print(f"WARNING ({config.properties.name}): {warning}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=", ".join(f"--config {name}: {path}" for name, path in CONFIGS.items()))
    parser.add_argument("action", choices=["start", "stop", "status", "token"],
                        help="start a server; stop it; status: running/ready, config, ports, models, workers; "
                             "token: print the API keys of a token-auth server")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR,
                        help="runtime config, logs, key_file.json, state (default: %(default)s)")
    parser.add_argument("--model-store", type=Path, default=ServeConfig.model_store)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--config", choices=sorted(CONFIGS), help="named config (default: dev)")
    which.add_argument("--properties", type=Path, help="a config.properties of your own")
    parser.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C or SIGTERM stops the server")
    parser.add_argument("--free-ports", action="store_true", help="listen on free ports instead of 8080-8082/7070-7071")
    parser.add_argument("--kind", choices=["inference", "management"],
                        help="token: print only this key (for scripts: TOKEN=$(... token --kind inference))")
    args = parser.parse_args(argv)

    if args.action == "start":
        properties = args.properties or CONFIGS[args.config or "dev"]
        if not properties.is_file():
            sys.exit(f"serve: {properties} does not exist")
        ports = Ports.free() if args.free_ports else Ports()
        server = TorchServe(ServeConfig(run_dir=args.run_dir, model_store=args.model_store, properties=properties,
                                        ports=ports))
        if server.is_running():
            sys.exit(f"TorchServe from {args.run_dir} is already running (pid {server.pid_of_running()}); "
                     f"stop it first: python -m scripts.serve stop")
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

    server = TorchServe(_config_from_state(args.run_dir))
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
    ended = server.stop()
    print(f"stopped TorchServe ({ended} processes ended)" if ended else f"no TorchServe running from {args.run_dir}")


if __name__ == "__main__":
    main()
