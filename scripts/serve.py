"""Starts TorchServe in its own process group, waits until the model's workers are READY, stops it cleanly.

TorchServe's CLI returns before Java and the workers exit, answers /ping before any worker can
predict, and exits 0 even when a port is taken. This tool works around all three: readiness is
"every worker of the model reports READY", a dead server is detected while waiting, and stop
signals the whole process group and waits until every child is gone.

Usage:
    python -m scripts.serve start [--foreground] [--run-dir build/serve]
    python -m scripts.serve status [--run-dir build/serve]
    python -m scripts.serve stop [--run-dir build/serve]
"""

from __future__ import annotations

import argparse
import json
import os
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
DEFAULT_PROPERTIES = REPO_ROOT / "config" / "config.properties"
DEFAULT_RUN_DIR = REPO_ROOT / "build" / "serve"
STATE_FILENAME = "server.json"


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
        properties: base config.properties; listeners and model_store are overridden from here.
        ports: where to listen (always on 127.0.0.1).
        startup_timeout: seconds to wait for every worker to be READY.

    """

    run_dir: Path = DEFAULT_RUN_DIR
    model_store: Path = REPO_ROOT / "model_store"
    models: dict[str, str] = field(default_factory=lambda: {"deepfake": "deepfake.mar"})
    properties: Path = DEFAULT_PROPERTIES
    ports: Ports = field(default_factory=Ports)
    startup_timeout: float = 120.0

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


def runtime_properties(config: ServeConfig) -> dict[str, str]:
    """The base properties with this instance's listeners, absolute model store and absolute config paths.

    TorchServe resolves relative paths against its working directory (the run dir), so paths
    written next to the properties file (metrics.yaml, log4j2 config) are made absolute here.
    """
    values = read_properties(config.properties)
    base = config.properties.resolve().parent
    for key in PATH_KEYS:
        if key in values and not Path(values[key]).is_absolute():
            values[key] = str(base / values[key])
    ports = config.ports
    values.update({
        "inference_address": f"http://127.0.0.1:{ports.inference}",
        "management_address": f"http://127.0.0.1:{ports.management}",
        "metrics_address": f"http://127.0.0.1:{ports.metrics}",
        "grpc_inference_port": str(ports.grpc_inference),
        "grpc_management_port": str(ports.grpc_management),
        "model_store": str(config.model_store.resolve()),
    })
    return values


def port_in_use(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def auth_headers(run_dir: Path) -> dict[str, str]:
    """Authorization header for the management API when token auth is on (key_file.json in run_dir)."""
    key_file = run_dir / "key_file.json"
    if not key_file.is_file():
        return {}
    keys = json.loads(key_file.read_text())
    return {"Authorization": f"Bearer {keys['management']['key']}"}


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
        properties_file = run_dir / "config.properties"
        properties_file.write_text("".join(f"{k}={v}\n" for k, v in runtime_properties(config).items()))
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
        self.state_file.write_text(json.dumps({"pid": process.pid, "ports": asdict(config.ports),
                                               "models": config.models, "started_at": time.time()}, indent=2))
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
            time.sleep(0.2)  # polling interval of the readiness check, not a stand-in for it
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
    return ServeConfig(run_dir=run_dir, ports=Ports(**state["ports"]), models=state["models"])


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument("--model-store", type=Path, default=ServeConfig.model_store)
    parser.add_argument("--properties", type=Path, default=DEFAULT_PROPERTIES)
    parser.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C or SIGTERM stops the server")
    parser.add_argument("--free-ports", action="store_true", help="listen on free ports instead of 8080-8082/7070-7071")
    args = parser.parse_args(argv)

    if args.action == "start":
        ports = Ports.free() if args.free_ports else Ports()
        server = TorchServe(ServeConfig(run_dir=args.run_dir, model_store=args.model_store, properties=args.properties,
                                        ports=ports))
        if server.is_running():
            sys.exit(f"TorchServe from {args.run_dir} is already running (pid {server.pid_of_running()}); "
                     f"stop it first: python -m scripts.serve stop")

        def announce(started: TorchServe) -> None:
            print(f"TorchServe ready in {started.ready_seconds:.1f} s (pid {started.pid}): "  # tests wait for this line
                  f"inference {started.config.inference_url}, management {started.config.management_url}, "
                  f"metrics {started.config.metrics_url}/metrics; logs in {args.run_dir / 'logs'}", flush=True)

        try:
            if args.foreground:
                serve_in_foreground(server, announce)
            else:
                announce(server.start())
        except ServeError as error:
            sys.exit(f"serve: {error}")
        except KeyboardInterrupt:  # background start-up interrupted: start() has stopped what it had started
            sys.exit("serve: interrupted during start-up; TorchServe stopped")
        return

    server = TorchServe(_config_from_state(args.run_dir))
    if args.action == "status":
        running = server.is_running()
        ready = running and is_ready(server.config)
        print(f"running: {running}, ready: {ready}")
        sys.exit(0 if ready else 1)
    ended = server.stop()
    print(f"stopped TorchServe ({ended} processes ended)" if ended else f"no TorchServe running from {args.run_dir}")


if __name__ == "__main__":
    main()
