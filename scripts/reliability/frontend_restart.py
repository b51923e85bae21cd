"""Frontend restart: SIGKILL TorchServe's Java frontend under load; the supervising serve tool brings it back.

TorchServe restarts a dead worker but nothing restarts a dead frontend: that is scripts/serve.py's
job in the foreground (`start --foreground`, restart policy on-failure). This runs that exact
command as a subprocess, with the production config (token auth on: a restart also replaces the
keys, and the clients must cope), keeps it busy with closed-loop clients, runs
`python -m scripts.serve status` every `status_interval` seconds, and in each round SIGKILLs the
Java process (what the OOM killer or a crash does). It measures:

- kill → the supervisor's "frontend died" line, and → its "restarted" line;
- kill → the first `status` run (started after the kill) that exits 0 with "ready: True";
- the requests that failed, how (connection refused, reset, 400 for a stale key, 5xx) and whether
  they were in flight at the kill;
- readiness as reported: no `status` run may say ready while a request sent after it still fails,
  and every run during the outage must say not ready (exit 1);
- after the recovery, `settle_seconds` of load at 100 % success;
- the old tree: every process of the killed server (the orphaned workers too) is gone.

The clients behave as clients of a token-auth TorchServe must: after a failed request they pause
`retry_pause` seconds and re-read key_file.json, since TorchServe 0.12 makes new keys at every start.

    python -m scripts.reliability.frontend_restart                          # 3 rounds, production config
    python -m scripts.reliability.frontend_restart --rounds 1 --config dev --output-dir /tmp/fr

Writes frontend_restart.json and frontend_restart.md into --output-dir and exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.load_client import CONNECTION_FAILED, LoadConfig, Outcome, run_closed_loop
from scripts.reliability.load_thread import LoadThread
from scripts.reliability.report import (
    RESULTS_DIR,
    Check,
    answer_kinds,
    checks_markdown,
    image_files,
    latency_summary,
    longest_gap_seconds,
    machine_description,
    machine_line,
    status_counts,
    write_report,
)
from scripts.reliability.server import MODEL_NAME
from scripts.serve import CONFIGS, STATE_FILENAME, auth_headers, read_keys

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "frontend_restart"
READY_LINE = "TorchServe ready in "
DIED_LINE = "TorchServe frontend died: "
RESTARTED_LINE = "TorchServe restarted: "
KEYS_CHANGED = "the keys CHANGED"
_PID = re.compile(r" \(pid \d+\)")


@dataclass(frozen=True)
class FrontendRestartConfig:
    """One frontend-restart run.

    Attributes:
        model_store: holds deepfake.mar (its model-config decides the workers).
        config: scripts.serve's --config: production (token auth; the default) or dev.
        images: folder of request images; default: the shared face photos, else the demo set.
        image_count: how many different images the clients cycle through.
        concurrency: closed-loop clients.
        rounds: frontend kills, each after the previous recovery and its settle phase.
        settle_seconds: load before each kill and after each recovery (the latter must be 100 % success).
        status_interval: pause between two `status` runs (each takes a Python start-up, ~0.3 s here).
        retry_pause: a client's pause after a failed request, before it re-reads the key and sends again.
        startup_timeout: seconds for the first start and for each restart to be ready.
        target_recovery_seconds: kill → `status` ready.
        target_overhead_seconds: kill → `status` ready, less the restarted server's own start-up time: what the
            supervisor adds (noticing, ending the old tree) plus the status sampling's delay.
        target_notice_seconds: kill → the supervisor's "frontend died" line.
        timeout: seconds one request may take before it counts as unanswered.
        output_dir: where frontend_restart.json and frontend_restart.md go.

    """

    model_store: Path = REPO_ROOT / "model_store"
    config: str = "production"
    images: Path | None = None
    image_count: int = 8
    concurrency: int = 4
    rounds: int = 3
    settle_seconds: float = 10.0
    status_interval: float = 0.5
    retry_pause: float = 0.1
    startup_timeout: float = 300.0
    target_recovery_seconds: float = 30.0
    target_overhead_seconds: float = 5.0
    target_notice_seconds: float = 2.0
    timeout: float = 60.0
    output_dir: Path = RESULTS_DIR

    def __post_init__(self) -> None:
        if self.config not in CONFIGS:
            raise ValueError(f"config {self.config!r} is not one of {', '.join(CONFIGS)}")
        if self.concurrency < 1 or self.rounds < 1 or self.settle_seconds <= 0:
            raise ValueError("concurrency and rounds must be >= 1, settle_seconds > 0")


def run_dir_processes(run_dir: Path) -> list[psutil.Process]:
    """Every live process TorchServe runs from `run_dir` (CLI, Java, workers, orphans too): TMPDIR is run_dir/tmp."""
    tmp_dir = str(run_dir.resolve() / "tmp")
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("TMPDIR") == tmp_dir and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


class SupervisedServer:
    """`python -m scripts.serve start --foreground` as a subprocess, its stdout lines kept with their arrival times."""

    def __init__(self, config: FrontendRestartConfig, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.command = [sys.executable, "-m", "scripts.serve", "start", "--foreground", "--config", config.config,
                        "--free-ports", "--run-dir", str(run_dir), "--model-store", str(config.model_store)]
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, name="supervisor-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_line(self, prefix: str, after: float, timeout: float) -> tuple[float, str]:
        """The first output line starting with `prefix` that arrived after `after` (time.monotonic()).

        Raises:
            TimeoutError: none within `timeout` seconds, or the supervisor exited.

        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = next(((at, line) for at, line in self.lines if at > after and line.startswith(prefix)), None)
            if found is not None:
                return found
            if self.process.poll() is not None and not self._reader.is_alive():
                raise TimeoutError(f"the supervisor exited (code {self.process.returncode}) before printing "
                                   f"{prefix!r}; its output:\n{self.output()}")
            time.sleep(0.02)  # polling interval of the output check
        raise TimeoutError(f"no {prefix!r} line within {timeout:g} s; output so far:\n{self.output()}")

    def line_after(self, text: str, after: float) -> str | None:
        """The first output line containing `text` that arrived after `after`, if any yet."""
        with self._lock:
            return next((line for at, line in self.lines if at > after and text in line), None)

    def output(self) -> str:
        """Everything the supervisor printed so far."""
        with self._lock:
            return "\n".join(line for _, line in self.lines)

    def state(self) -> dict[str, Any]:
        """The run dir's server.json (what `status` reads)."""
        return json.loads((self.run_dir / STATE_FILENAME).read_text())

    def stop(self, timeout: float = 90.0) -> dict[str, Any]:
        """SIGTERM (as docker stop or systemd would), then what was left: the exit code and surviving processes."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)
        left = run_dir_processes(self.run_dir)
        for process in left:  # a failed run must not leave a server behind; reported, then ended
            process.kill()
        return {"exit_code": self.process.returncode, "processes_left": [process.pid for process in left]}


@dataclass(frozen=True)
class StatusSample:
    """One `python -m scripts.serve status` run.

    Attributes:
        started: time.monotonic() when it was launched.
        finished: time.monotonic() when it had exited.
        exit_code: 0 = ready.
        first_line: e.g. "running: False, ready: False; restarting".
        restarting: whether its output says "restarting".

    """

    started: float
    finished: float
    exit_code: int
    first_line: str
    restarting: bool

    @property
    def ready(self) -> bool:
        """What the operator reads: exit 0 and "ready: True"."""
        return self.exit_code == 0 and "ready: True" in self.first_line


class StatusSampler:
    """Runs the real `status` command in a loop on a thread, every `interval` seconds after the previous one ended."""

    def __init__(self, run_dir: Path, interval: float) -> None:
        self.command = [sys.executable, "-m", "scripts.serve", "status", "--run-dir", str(run_dir)]
        self.interval = interval
        self.samples: list[StatusSample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="status-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            result = subprocess.run(self.command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                                    check=False)
            sample = StatusSample(started, time.monotonic(), result.returncode,
                                  (result.stdout.splitlines() or [""])[0], "restarting" in result.stdout)
            with self._lock:
                self.samples.append(sample)
            self._stop.wait(self.interval)  # the sampling interval, not a readiness wait

    def start(self) -> StatusSampler:
        """Starts sampling; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops after the run in progress."""
        self._stop.set()
        self._thread.join()

    def snapshot(self) -> list[StatusSample]:
        """The samples so far."""
        with self._lock:
            return list(self.samples)

    def wait_for(self, condition: Callable[[StatusSample], bool], timeout: float) -> StatusSample | None:
        """The first sample meeting `condition`, waiting up to `timeout` seconds for it (None if none came)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((sample for sample in self.snapshot() if condition(sample)), None)
            if found is not None:
                return found
            time.sleep(0.05)  # polling interval of the condition
        return None


class KeyRereadingLoad(LoadThread):
    """Closed-loop clients (benchmarks/load_client.py) that, after a failed request, pause and re-read the key.

    The load client sends fixed headers, so the load runs in segments: a failure ends the segment
    (its other requests in flight finish and count), and the next segment starts `retry_pause`
    seconds later with the key key_file.json holds then. While the server is up a segment lasts
    until stop(); during an outage each try costs one failure per client and a pause.
    """

    def __init__(self, url: str, run_dir: Path, payloads: list[bytes], config: FrontendRestartConfig) -> None:
        super().__init__("load")
        self.url, self.run_dir, self.payloads, self.config = url, run_dir, payloads, config
        self.segments = 0
        self._segment_stop = threading.Event()

    def record(self, outcome: Outcome) -> None:
        """Keeps the answer; a failure (or stop()) ends the segment."""
        super().record(outcome)
        if not outcome.ok or self._stop.is_set():
            self._segment_stop.set()

    def drive(self) -> None:
        """Segments of closed-loop clients with the key of their start, a pause after each, until stop()."""
        while not self._stop.is_set():
            self._segment_stop = threading.Event()
            headers = tuple(auth_headers(self.run_dir, "inference").items())
            load = LoadConfig(self.url, concurrency=self.config.concurrency, requests=10**9, warmup=0,
                              timeout=self.config.timeout, headers=headers)
            run_closed_loop(load, self.payloads, observer=self.record, stop=self._segment_stop)
            self.segments += 1
            self._stop.wait(self.config.retry_pause)  # a client's back-off after a failure

    def stop(self) -> None:
        """Stops sending and waits for the requests in flight.

        Raises:
            RuntimeError: the load thread failed.

        """
        self._stop.set()
        self._segment_stop.set()
        self.end()


def failure_kind(outcome: Outcome) -> str:
    """How a request failed, in the words an operator uses."""
    if outcome.status == CONNECTION_FAILED:
        return {"ConnectionRefusedError": "connection refused", "ConnectionResetError": "connection reset",
                "IncompleteReadError": "connection closed mid-answer", "timeout": "timeout"}.get(
            outcome.error or "", f"no answer ({outcome.error})")
    if outcome.status == 400 and b"InvalidKeyException" in outcome.body:
        return "400 stale or missing key"
    return f"HTTP {outcome.status}"


def round_analysis(outcomes: Sequence[Outcome], samples: Sequence[StatusSample], killed_at: float,
                   recovered_at: float | None, settled_at: float) -> dict[str, Any]:
    """What the clients got and what `status` said from the kill until the end of the settle phase.

    Args:
        outcomes: every answer of the load.
        samples: every status run.
        killed_at: time.monotonic() of the SIGKILL.
        recovered_at: when the first status run started after the kill said ready (None: never).
        settled_at: the end of the settle phase after the recovery.

    """
    window = [o for o in outcomes if killed_at <= o.finished <= settled_at]
    failures = [o for o in window if not o.ok]
    sent_after = [o for o in window if o.started > killed_at]
    first_success = min((o.finished for o in sent_after if o.ok), default=None)
    end_of_outage = recovered_at if recovered_at is not None else settled_at
    outage_samples = [s for s in samples if killed_at < s.started and s.finished < end_of_outage]
    ready_samples = [s for s in samples if killed_at < s.started and s.ready and s.finished <= settled_at]
    # Said ready, yet a request sent after that answer still failed: readiness reported too early.
    too_early = [{"status_finished_s": round(s.finished - killed_at, 3),
                  "failed_after": sum(o.started > s.finished for o in failures)}
                 for s in ready_samples if any(o.started > s.finished for o in failures)]
    after = [o for o in window if recovered_at is not None and o.started >= recovered_at]
    return {
        "in_flight_at_kill": sum(o.started <= killed_at < o.finished for o in outcomes),
        "failed": len(failures),
        "failed_in_flight_at_kill": sum(o.started <= killed_at for o in failures),
        "failed_by_kind": dict(Counter(failure_kind(o) for o in failures).most_common()),
        "failure_kinds": answer_kinds(failures, limit=200),
        "seconds_until_requests_succeed": None if first_success is None else round(first_success - killed_at, 3),
        "longest_gap_without_success_s": round(longest_gap_seconds(outcomes, killed_at, settled_at), 3),
        "statuses_kill_to_settled": status_counts(window),
        "status_during_outage": {"runs": len(outage_samples), "not_ready": sum(not s.ready for s in outage_samples),
                                 "said_restarting": sum(s.restarting for s in outage_samples),
                                 "first_lines": dict(Counter(_PID.sub("", s.first_line)
                                                             for s in outage_samples).most_common())},
        "ready_while_requests_failed": too_early,
        "after_recovery": {"requests": len(after), "ok": sum(o.ok for o in after), "statuses": status_counts(after),
                           "latency_ms": latency_summary(o.latency_ms for o in after if o.ok)},
    }


def kill_frontend(server: SupervisedServer, load: KeyRereadingLoad, sampler: StatusSampler,
                  config: FrontendRestartConfig, number: int) -> dict[str, Any]:
    """One round: SIGKILL Java under load, wait until `status` says ready, settle under load; what was measured.

    The server must be ready and loaded when it is called (the first round after a settle phase of
    its own, later ones right after the previous round's).
    """
    state = server.state()
    old_tree = run_dir_processes(server.run_dir)
    old_key = read_keys(server.run_dir).get("inference", {}).get("key")
    java = psutil.Process(int(state["frontend_pid"]))
    if java.name() != "java" or java not in old_tree:
        raise RuntimeError(f"pid {java.pid} recorded as the frontend is not this server's java process")
    killed_at = time.monotonic()
    java.send_signal(signal.SIGKILL)
    noticed_at, died_line = server.wait_line(DIED_LINE, killed_at, config.startup_timeout)
    restarted_at, restarted_line = server.wait_line(RESTARTED_LINE, killed_at, config.startup_timeout)
    ready = sampler.wait_for(lambda sample: sample.started > killed_at and sample.ready, config.startup_timeout)
    recovered_at = None if ready is None else ready.finished
    if recovered_at is not None:
        time.sleep(config.settle_seconds)  # the load phase after the recovery, which must be 100 % success
    settled_at = time.monotonic()
    new_state = server.state()
    key_line = server.line_after(KEYS_CHANGED, restarted_at)
    supervisor = new_state.get("supervisor", {})
    return {
        "round": number,
        "killed_java_pid": java.pid,
        "new_java_pid": new_state.get("frontend_pid"),
        "seconds_to_notice": round(noticed_at - killed_at, 3),
        "seconds_to_restarted_line": round(restarted_at - killed_at, 3),
        "seconds_to_status_ready": None if recovered_at is None else round(recovered_at - killed_at, 3),
        "died_line": died_line,
        "restarted_line": restarted_line,
        "restart_ready_seconds": _ready_seconds(restarted_line),
        "restart_overhead_seconds": _overhead(recovered_at, killed_at, _ready_seconds(restarted_line)),
        "supervisor_restarts": supervisor.get("restarts"),
        "keys_changed": old_key is not None and read_keys(server.run_dir).get("inference", {}).get("key") != old_key,
        "keys_changed_line": key_line,
        "old_processes": len(old_tree),
        "old_processes_left": [p.pid for p in old_tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
        "processes_now": len(run_dir_processes(server.run_dir)),
        **round_analysis(load.snapshot(), sampler.snapshot(), killed_at, recovered_at, settled_at),
    }


def _overhead(recovered_at: float | None, killed_at: float, start_up: float | None) -> float | None:
    if recovered_at is None or start_up is None:
        return None
    return round(recovered_at - killed_at - start_up, 3)


def _ready_seconds(line: str) -> float | None:
    """The start-up time a "TorchServe restarted: ready in X s" line reports."""
    words = line.split("ready in ", 1)
    try:
        return float(words[1].split(" s", 1)[0]) if len(words) == 2 else None
    except ValueError:
        return None


def run_frontend_restart(config: FrontendRestartConfig, run_dir: Path) -> dict[str, Any]:
    """Starts the supervised server, loads it, kills its frontend config.rounds times, stops it; the results."""
    files = image_files(config.images, config.image_count)
    payloads = [path.read_bytes() for path in files]
    machine = machine_description()
    server = SupervisedServer(config, run_dir)
    rounds: list[dict[str, Any]] = []
    load: KeyRereadingLoad | None = None
    sampler: StatusSampler | None = None
    try:
        started_at, ready_line = server.wait_line(READY_LINE, 0.0, config.startup_timeout)
        ports = server.state()["ports"]
        url = f"http://127.0.0.1:{ports['inference']}/predictions/{MODEL_NAME}"
        load = KeyRereadingLoad(url, run_dir, payloads, config).start()
        sampler = StatusSampler(run_dir, config.status_interval).start()
        time.sleep(config.settle_seconds)  # the load phase before the first kill
        for number in range(1, config.rounds + 1):
            result = kill_frontend(server, load, sampler, config, number)
            rounds.append(result)
            print(f"round {number}: java {result['killed_java_pid']} killed → noticed in {result['seconds_to_notice']} "
                  f"s, status ready in {result['seconds_to_status_ready']} s; {result['failed']} requests failed "
                  f"({result['failed_by_kind']}), after: {result['after_recovery']['ok']}/"
                  f"{result['after_recovery']['requests']} ok", flush=True)
            if result["seconds_to_status_ready"] is None:
                break
    finally:
        if sampler is not None:
            sampler.stop()
        if load is not None:
            load.stop()
        stopped = server.stop()
    outcomes = load.snapshot() if load is not None else []
    return {
        "machine": machine,
        "config": {**asdict(config), "images": [str(path) for path in files]},
        "command": " ".join(server.command[1:]),
        "first_start": {"line": ready_line, "ready_seconds": _first_ready_seconds(ready_line)},
        "load": {"requests": len(outcomes), "statuses": status_counts(outcomes),
                 "segments": load.segments if load is not None else 0},
        "status_runs": len(sampler.samples) if sampler is not None else 0,
        "rounds": rounds,
        "final_stop": stopped,
        "supervisor_output": server.output().splitlines(),
    }


def _first_ready_seconds(line: str) -> float | None:
    try:
        return float(line.removeprefix(READY_LINE).split(" s", 1)[0])
    except ValueError:
        return None


def restart_checks(results: dict[str, Any], config: FrontendRestartConfig) -> list[Check]:
    """Per round: noticed fast, ready in time, status honest during and after, 100 % after, no process left."""
    checks = []
    token_auth = config.config == "production"
    for result in results["rounds"]:
        label = f"round {result['round']}"
        recovery, outage = result["seconds_to_status_ready"], result["status_during_outage"]
        overhead = result["restart_overhead_seconds"]
        after = result["after_recovery"]
        checks += [
            Check(f"{label}: kill → supervisor notices", result["seconds_to_notice"] < config.target_notice_seconds,
                  f"{result['seconds_to_notice']:.2f} s", f"< {config.target_notice_seconds:g} s"),
            Check(f"{label}: kill → `status` ready", recovery is not None and recovery < config.target_recovery_seconds,
                  "never" if recovery is None else f"{recovery:.2f} s", f"< {config.target_recovery_seconds:g} s"),
            Check(f"{label}: kill → `status` ready, less the restart's start-up",
                  overhead is not None and overhead < config.target_overhead_seconds,
                  "n/a" if overhead is None else f"{overhead:.2f} s", f"< {config.target_overhead_seconds:g} s"),
            Check(f"{label}: `status` during the outage", outage["runs"] > 0 and outage["not_ready"] == outage["runs"],
                  f"{outage['not_ready']}/{outage['runs']} not ready ({outage['said_restarting']} said restarting)",
                  "every run not ready (exit 1), at least one run"),
            Check(f"{label}: `status` ready while requests sent after it failed",
                  not result["ready_while_requests_failed"], str(len(result["ready_while_requests_failed"])), "0"),
            Check(f"{label}: success after `status` ready", after["requests"] > 0 and after["ok"] == after["requests"],
                  f"{after['ok']}/{after['requests']}", "100 %"),
            Check(f"{label}: processes of the killed tree left", not result["old_processes_left"],
                  f"{len(result['old_processes_left'])} of {result['old_processes']}", "0 (orphaned workers included)"),
            Check(f"{label}: supervisor's restart count", result["supervisor_restarts"] == result["round"],
                  str(result["supervisor_restarts"]), str(result["round"])),
        ]
        if token_auth:
            checks.append(Check(f"{label}: restart says the keys changed", result["keys_changed"]
                                and result["keys_changed_line"] is not None,
                                "yes" if result["keys_changed_line"] else "no", "new keys, and the line says so"))
    if len(results["rounds"]) < config.rounds:
        checks.append(Check("rounds done", False, str(len(results["rounds"])), str(config.rounds)))
    final = results["final_stop"]
    checks.append(Check("SIGTERM to the supervisor at the end", final["exit_code"] == 0 and not final["processes_left"],
                        f"exit {final['exit_code']}, {len(final['processes_left'])} processes left",
                        "exit 0, none left"))
    return checks


def markdown(results: dict[str, Any], checks: Sequence[Check]) -> list[str]:
    """frontend_restart.md: the setup, one row per round, how requests failed, what status said, the targets."""
    config = results["config"]
    lines = [
        "# Frontend (Java) SIGKILL under load: the supervising serve tool restarts it",
        "",
        machine_line(results["machine"]),
        "",
        f"Command: `python -m scripts.reliability.frontend_restart --rounds {config['rounds']} --concurrency "
        f"{config['concurrency']} --config {config['config']}`; it runs `python {results['command']}` and samples "
        f"`python -m scripts.serve status` every {config['status_interval']:g} s (after the previous run). Clients "
        f"pause {config['retry_pause']:g} s after a failure and re-read key_file.json. First start: ready in "
        f"{results['first_start']['ready_seconds']} s.",
        "",
        "| round | kill → noticed | kill → restarted line (its start-up) | kill → `status` ready | failed (in flight) "
        "| how they failed | `status` runs during the outage | after ready |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results["rounds"]:
        outage, after = result["status_during_outage"], result["after_recovery"]
        ready = "never" if result["seconds_to_status_ready"] is None else f"{result['seconds_to_status_ready']:.2f} s"
        kinds = ", ".join(f"{count} {kind}" for kind, count in result["failed_by_kind"].items()) or "none"
        lines.append(f"| {result['round']} | {result['seconds_to_notice']:.2f} s | "
                     f"{result['seconds_to_restarted_line']:.2f} s ({result['restart_ready_seconds']} s) | {ready} | "
                     f"{result['failed']} ({result['failed_in_flight_at_kill']}) | {kinds} | "
                     f"{outage['not_ready']}/{outage['runs']} not ready, {outage['said_restarting']} said restarting | "
                     f"{after['ok']}/{after['requests']} ok |")
    if results["rounds"]:
        first = results["rounds"][0]
        lines += ["", "Round 1, as the supervisor said it:", "", "```", first["died_line"], first["restarted_line"]]
        lines += [first["keys_changed_line"]] if first["keys_changed_line"] else []
        lines += ["```", "", "`status` first lines during the round-1 outage (count):", ""]
        lines += [f"- {count} × `{line}`" for line, count in first["status_during_outage"]["first_lines"].items()]
    return [*lines, "", *checks_markdown(checks)]


def run(config: FrontendRestartConfig, run_dir: Path) -> tuple[dict[str, Any], list[Path]]:
    """Measures, checks and writes the report; returns the results (with `checks`, `passed`) and the files written."""
    results = run_frontend_restart(config, run_dir)
    checks = restart_checks(results, config)
    results = {**results, "checks": [asdict(check) for check in checks],
               "passed": all(check.passed for check in checks)}
    return results, write_report(config.output_dir, NAME, results, markdown(results, checks))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: exits 1 when a target is missed."""
    defaults = FrontendRestartConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model-store", type=Path, default=defaults.model_store, help="folder with deepfake.mar")
    parser.add_argument("--config", choices=sorted(CONFIGS), default=defaults.config,
                        help="scripts.serve --config (production: token auth, keys change at each restart)")
    parser.add_argument("--images", type=Path, default=None, help="request images (default: shared faces, else demo)")
    parser.add_argument("--image-count", type=int, default=defaults.image_count)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="frontend kills")
    parser.add_argument("--settle-seconds", type=float, default=defaults.settle_seconds,
                        help="load before each kill and after each recovery (the latter must be 100 %% success)")
    parser.add_argument("--status-interval", type=float, default=defaults.status_interval)
    parser.add_argument("--target-recovery", type=float, default=defaults.target_recovery_seconds,
                        help="target seconds from the kill to `status` ready")
    parser.add_argument("--target-overhead", type=float, default=defaults.target_overhead_seconds,
                        help="target for kill → `status` ready less the restart's own start-up time")
    parser.add_argument("--output-dir", type=Path, default=defaults.output_dir)
    parser.add_argument("--run-dir", type=Path, default=None, help="the server's run dir (default: a temporary one)")
    args = parser.parse_args(argv)
    config = FrontendRestartConfig(model_store=args.model_store, config=args.config, images=args.images,
                                   image_count=args.image_count, concurrency=args.concurrency, rounds=args.rounds,
                                   settle_seconds=args.settle_seconds, status_interval=args.status_interval,
                                   target_recovery_seconds=args.target_recovery,
                                   target_overhead_seconds=args.target_overhead, output_dir=args.output_dir)
    with tempfile.TemporaryDirectory(prefix="frontend-restart-") as scratch:
        results, paths = run(config, args.run_dir or Path(scratch) / "serve")
    for check in results["checks"]:
        print(f"{'pass' if check['passed'] else 'FAIL'}: {check['name']}: {check['measured']} (target "
              f"{check['target']})")
    print(f"wrote {', '.join(str(path) for path in paths)}")
    if not results["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
