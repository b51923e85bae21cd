"""Worker SIGKILL under load: TorchServe restarts the worker; only the requests it held may fail.

While 16 clients keep a production-config TorchServe busy, one worker process is killed with a real
SIGKILL (what the kernel's OOM killer or a crash does: no clean-up, no goodbye on the socket). For
each kill this measures:

- recovery: from the kill until the management API lists every worker READY again, none of them
  with the killed pid (right after a kill the API still shows the dead worker READY for a moment);
- until requests succeed again: from the kill to the first 2xx of a request sent after it;
- failures: how many requests failed, with which status and body, and whether each was already in
  flight when the kill came. The dead worker can only take its current batch down with it, so at
  most batchSize requests may fail, and none sent after the kill;
- after recovery, `settle_requests` requests at 100 % success.

Kills rotate over the workers (worker 9000, then 9001, ...), one at a time, each after the previous
recovery. Target: recovery < 10 s.

    python -m scripts.reliability.worker_kill                        # 3 kills at concurrency 16
    python -m scripts.reliability.worker_kill --kills 6 --concurrency 32 --output-dir /tmp/k

Writes worker_kill.json and worker_kill.md into --output-dir and exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

from benchmarks.load_client import LoadConfig, LoadResult, Outcome, run_closed_loop
from scripts.reliability.load_thread import LoadThread
from scripts.reliability.report import (
    RESULTS_DIR,
    Check,
    answer_kinds,
    checks_markdown,
    image_files,
    latency_summary,
    machine_description,
    machine_line,
    status_counts,
    write_report,
)
from scripts.reliability.server import (
    MODEL_NAME,
    inference_headers,
    predictions_url,
    running_server,
    worker_processes,
)
from scripts.serve import TorchServe, auth_headers, model_workers

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "worker_kill"


@dataclass(frozen=True)
class WorkerKillConfig:
    """One worker-kill run.

    Attributes:
        model_store: holds deepfake.mar; its model-config decides workers and batchSize (make demo: 2 × 8).
        images: folder of request images; default: the shared face photos, else the demo set.
        image_count: how many different images the clients cycle through.
        concurrency: closed-loop clients kept busy throughout.
        kills: SIGKILLs, one at a time, rotating over the workers.
        warmup_requests: unmeasured requests before the first kill.
        settle_requests: requests sent after a recovery that must all succeed before the next kill.
        recovery_timeout: seconds to wait for READY workers before a kill counts as unrecovered.
        target_recovery_seconds: the target for kill → every worker READY.
        poll_seconds: interval of the management API polls (bounds the recovery time's precision).
        timeout: seconds one request may take before it counts as unanswered.
        output_dir: where worker_kill.json and worker_kill.md go.

    """

    model_store: Path = REPO_ROOT / "model_store"
    images: Path | None = None
    image_count: int = 8
    concurrency: int = 16
    kills: int = 3
    warmup_requests: int = 200
    settle_requests: int = 200
    recovery_timeout: float = 120.0
    target_recovery_seconds: float = 10.0
    poll_seconds: float = 0.05
    timeout: float = 60.0
    output_dir: Path = RESULTS_DIR

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.kills < 1 or self.settle_requests < 1:
            raise ValueError("concurrency, kills and settle_requests must be >= 1")


class BackgroundLoad(LoadThread):
    """Closed-loop load on a thread from start() until stop(); every measured answer lands in snapshot()."""

    def __init__(self, load: LoadConfig, payloads: list[bytes]) -> None:
        super().__init__("background load")
        self.load = load
        self.payloads = payloads
        self.result: LoadResult | None = None

    def drive(self) -> None:
        """One closed-loop run (its warm-up first) until stop()."""
        self.result = run_closed_loop(self.load, self.payloads, observer=self.record, stop=self._stop)

    def stop(self) -> LoadResult:
        """Stops sending, waits for the answers in flight, returns the load's totals.

        Raises:
            RuntimeError: the load thread failed.

        """
        self.end()
        assert self.result is not None
        return self.result

    def wait_for(self, condition: Callable[[list[Outcome]], bool], timeout: float, what: str) -> list[Outcome]:
        """Polls the outcomes until `condition` holds on them; returns them.

        Raises:
            TimeoutError: it did not hold within `timeout` seconds, or the load stopped.

        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            outcomes = self.snapshot()
            if condition(outcomes):
                return outcomes
            if not self.running:
                raise TimeoutError(f"the load stopped while waiting for {what}: {self.error!r}")
            time.sleep(0.05)  # polling interval of the condition
        raise TimeoutError(f"no {what} within {timeout:g} s")


def model_description(server: TorchServe, model: str = MODEL_NAME) -> dict[str, Any]:
    """The management API's description of a model's default version (batchSize, workers, ...)."""
    response = requests.get(f"{server.config.management_url}/models/{model}",
                            headers=auth_headers(server.config.run_dir), timeout=5)
    response.raise_for_status()
    return response.json()[0]


def wait_recovered(server: TorchServe, killed_pid: int, worker_count: int, started: float, timeout: float,
                   poll_seconds: float) -> tuple[float | None, list[dict[str, Any]]]:
    """Polls the management API until `worker_count` workers are READY and none has the killed pid.

    Returns:
        (seconds from `started` to recovery, or None on timeout; every change of the workers' (pid, status) seen).

    """
    transitions: list[dict[str, Any]] = []
    deadline = started + timeout
    while time.monotonic() < deadline:
        workers = model_workers(server.config, MODEL_NAME)
        now = time.monotonic()
        state = sorted((worker["id"], worker["pid"], worker["status"]) for worker in workers)
        if not transitions or transitions[-1]["workers"] != state:
            transitions.append({"seconds": round(now - started, 3), "workers": state})
        pids = [pid for _, pid, _ in state]
        if (len(state) == worker_count and killed_pid not in pids
                and all(status == "READY" for _, _, status in state)):
            return now - started, transitions
        time.sleep(poll_seconds)  # polling interval of the recovery check
    return None, transitions


def kill_analysis(outcomes: Sequence[Outcome], killed_at: float, recovered_at: float | None,
                  settled_at: float) -> dict[str, Any]:
    """What the clients saw around one kill, from the answers that completed between the kill and `settled_at`.

    Args:
        outcomes: every measured answer of the load.
        killed_at: time.monotonic() of the SIGKILL.
        recovered_at: time.monotonic() of the recovery (None: it did not recover).
        settled_at: time.monotonic() when the after-recovery requests had been collected.

    """
    window = [o for o in outcomes if killed_at <= o.finished <= settled_at]
    in_flight = [o for o in outcomes if o.started <= killed_at < o.finished]
    failures = [o for o in window if not o.ok]
    sent_after = [o for o in window if o.started > killed_at]
    first_success = min((o.finished for o in sent_after if o.ok), default=None)
    after_recovery = [o for o in window if recovered_at is not None and o.started >= recovered_at]
    return {
        "in_flight_at_kill": len(in_flight),
        "failed": len(failures),
        "failed_in_flight_at_kill": sum(o.started <= killed_at for o in failures),
        "failed_sent_after_kill": sum(o.started > killed_at for o in failures),
        "failure_kinds": answer_kinds(failures),
        "failure_latency_ms": latency_summary(o.latency_ms for o in failures),
        "seconds_until_requests_succeed": None if first_success is None else round(first_success - killed_at, 3),
        "statuses_kill_to_settled": status_counts(window),
        "after_recovery": {"requests": len(after_recovery), "ok": sum(o.ok for o in after_recovery),
                           "statuses": status_counts(after_recovery),
                           "latency_ms": latency_summary(o.latency_ms for o in after_recovery if o.ok)},
    }


def kill_one_worker(server: TorchServe, load: BackgroundLoad, config: WorkerKillConfig, index: int,
                    worker_count: int) -> dict[str, Any]:
    """SIGKILLs worker number `index` (rotating by worker id), waits for recovery and the settle requests."""
    workers = sorted(model_workers(server.config, MODEL_NAME), key=lambda worker: worker["id"])
    target = workers[index % len(workers)]
    pid = int(target["pid"])
    if pid not in {process.pid for process in worker_processes(server)}:
        raise RuntimeError(f"worker {target['id']}'s pid {pid} is not a worker process of this server")
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    recovery, transitions = wait_recovered(server, pid, worker_count, killed_at, config.recovery_timeout,
                                           config.poll_seconds)
    recovered_at = None if recovery is None else killed_at + recovery
    if recovered_at is not None:
        outcomes = load.wait_for(lambda seen: sum(o.started >= recovered_at for o in seen) >= config.settle_requests,
                                 config.timeout + config.settle_requests, f"{config.settle_requests} answers after "
                                                                          f"the recovery")
    else:
        outcomes = load.snapshot()
    settled_at = time.monotonic()
    new_workers = sorted(model_workers(server.config, MODEL_NAME), key=lambda worker: worker["id"])
    return {
        "kill": index + 1,
        "worker_id": target["id"],
        "killed_pid": pid,
        "new_pid": next((w["pid"] for w in new_workers if w["id"] == target["id"]), None),
        "recovery_seconds": None if recovery is None else round(recovery, 3),
        "worker_states": transitions,
        **kill_analysis(outcomes, killed_at, recovered_at, settled_at),
    }


def run_worker_kills(config: WorkerKillConfig, server: TorchServe) -> dict[str, Any]:
    """Loads `server` in the background and kills one worker at a time, config.kills times; returns the results."""
    files = image_files(config.images, config.image_count)
    payloads = [path.read_bytes() for path in files]
    description = model_description(server)
    worker_count = len(description["workers"])
    machine = machine_description()
    load = BackgroundLoad(LoadConfig(predictions_url(server), concurrency=config.concurrency,
                                     requests=10**9, warmup=config.warmup_requests, timeout=config.timeout,
                                     headers=tuple(inference_headers(server).items())), payloads).start()
    kills = []
    try:
        load.wait_for(lambda seen: len(seen) >= config.concurrency, config.timeout + 60, "answers after the warm-up")
        for index in range(config.kills):
            kill = kill_one_worker(server, load, config, index, worker_count)
            kills.append(kill)
            print(f"kill {kill['kill']}: worker {kill['worker_id']} (pid {kill['killed_pid']}) → READY again in "
                  f"{kill['recovery_seconds']} s, {kill['failed']} failed ({kill['in_flight_at_kill']} in flight)",
                  flush=True)
            if kill["recovery_seconds"] is None:
                break
    finally:
        total = load.stop()
    return {
        "machine": machine,
        "config": {**asdict(config), "images": [str(path) for path in files]},
        "model": {key: description.get(key) for key in ("modelVersion", "batchSize", "maxBatchDelay", "minWorkers",
                                                         "maxWorkers")},
        "workers": worker_count,
        "load": total.to_dict(),
        "kills": kills,
    }


def kill_checks(results: dict[str, Any], config: WorkerKillConfig) -> list[Check]:
    """Per kill: recovery time, failures bounded by one batch and by what was in flight, 100 % after recovery."""
    batch_size = results["model"]["batchSize"]
    checks = []
    for kill in results["kills"]:
        label = f"kill {kill['kill']} (worker {kill['worker_id']})"
        recovery = kill["recovery_seconds"]
        after = kill["after_recovery"]
        target = config.target_recovery_seconds
        checks += [
            Check(f"{label}: kill → every worker READY", recovery is not None and recovery < target,
                  "not recovered" if recovery is None else f"{recovery:.2f} s", f"< {target:g} s"),
            Check(f"{label}: failed requests", kill["failed"] <= batch_size,
                  f"{kill['failed']} ({kill['in_flight_at_kill']} in flight at the kill, all workers)",
                  f"≤ batchSize {batch_size}"),
            Check(f"{label}: failed requests sent after the kill", kill["failed_sent_after_kill"] == 0,
                  str(kill["failed_sent_after_kill"]), "0 (only those in flight may fail)"),
            Check(f"{label}: success after recovery", after["requests"] >= config.settle_requests
                  and after["ok"] == after["requests"], f"{after['ok']}/{after['requests']}",
                  f"100 % of ≥ {config.settle_requests}"),
        ]
    if len(results["kills"]) < config.kills:
        checks.append(Check("kills done", False, str(len(results["kills"])), str(config.kills)))
    return checks


def markdown(results: dict[str, Any], checks: Sequence[Check]) -> list[str]:
    """worker_kill.md: the setup, one row per kill, what the failed requests got, the targets."""
    config, model = results["config"], results["model"]
    lines = [
        "# Worker SIGKILL under load",
        "",
        machine_line(results["machine"]),
        "",
        f"Command: `python -m scripts.reliability.worker_kill --kills {config['kills']} --concurrency "
        f"{config['concurrency']}` (production config, {results['workers']} workers, batchSize {model['batchSize']}, "
        f"maxBatchDelay {model['maxBatchDelay']} ms).",
        "",
        "| kill | worker | kill → all READY | kill → first 2xx of a new request | in flight (all workers) | failed "
        "| failed but sent after the kill | after recovery |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kill in results["kills"]:
        after = kill["after_recovery"]
        recovery = "not recovered" if kill["recovery_seconds"] is None else f"{kill['recovery_seconds']:.2f} s"
        succeed = kill["seconds_until_requests_succeed"]
        lines.append(f"| {kill['kill']} | {kill['worker_id']} (pid {kill['killed_pid']} → {kill['new_pid']}) | "
                     f"{recovery} | {'n/a' if succeed is None else f'{succeed:.2f} s'} | {kill['in_flight_at_kill']} | "
                     f"{kill['failed']} | {kill['failed_sent_after_kill']} | {after['ok']}/{after['requests']} ok |")
    kinds: dict[tuple[int, str], int] = {}
    for kill in results["kills"]:
        for kind in kill["failure_kinds"]:
            key = (kind["status"], kind["body"].strip())
            kinds[key] = kinds.get(key, 0) + kind["count"]
    lines += ["", "What the failed requests got:", ""]
    lines += [f"- {count} × HTTP {status}: `{' '.join(body.split())}`" for (status, body), count in kinds.items()]
    if not kinds:
        lines.append("- (no request failed)")
    states = results["kills"][0]["worker_states"] if results["kills"] else []
    if states:
        lines += ["", "Worker states the management API reported after kill 1 (seconds after the kill):", ""]
        lines += [f"- {state['seconds']:.2f} s: " + ", ".join(f"{wid} pid {pid} {status}"
                                                             for wid, pid, status in state["workers"])
                  for state in states]
    return [*lines, "", *checks_markdown(checks)]


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: exits 1 when a target is missed."""
    defaults = WorkerKillConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model-store", type=Path, default=defaults.model_store, help="folder with deepfake.mar")
    parser.add_argument("--images", type=Path, default=None, help="request images (default: shared faces, else demo)")
    parser.add_argument("--image-count", type=int, default=defaults.image_count)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--kills", type=int, default=defaults.kills)
    parser.add_argument("--settle-requests", type=int, default=defaults.settle_requests,
                        help="requests after each recovery that must all succeed")
    parser.add_argument("--target-recovery", type=float, default=defaults.target_recovery_seconds,
                        help="target seconds from the kill to every worker READY")
    parser.add_argument("--output-dir", type=Path, default=defaults.output_dir)
    parser.add_argument("--run-dir", type=Path, default=None, help="TorchServe's run dir (default: a temporary one)")
    args = parser.parse_args(argv)
    config = WorkerKillConfig(model_store=args.model_store, images=args.images, image_count=args.image_count,
                              concurrency=args.concurrency, kills=args.kills, settle_requests=args.settle_requests,
                              target_recovery_seconds=args.target_recovery, output_dir=args.output_dir)
    with tempfile.TemporaryDirectory(prefix="worker-kill-") as scratch:
        with running_server(config.model_store, args.run_dir or Path(scratch) / "serve") as server:
            print(f"TorchServe ready in {server.ready_seconds:.1f} s; load at concurrency {config.concurrency}, "
                  f"{config.kills} kills", flush=True)
            results = run_worker_kills(config, server)
    checks = kill_checks(results, config)
    results = {**results, "checks": [asdict(check) for check in checks],
               "passed": all(check.passed for check in checks)}
    paths = write_report(config.output_dir, NAME, results, markdown(results, checks))
    for check in checks:
        print(f"{'pass' if check.passed else 'FAIL'}: {check.name}: {check.measured} (target {check.target})")
    print(f"wrote {', '.join(str(path) for path in paths)}")
    sys.exit(0 if results["passed"] else 1)


if __name__ == "__main__":
    main()
