"""Soak: sustained closed-loop load on a production-config TorchServe; no server error, no memory creep.

32 clients send real photos back to back for 10 minutes after a warm-up, while the workers' and the
Java frontend's resident memory is sampled every few seconds. A leak shows as RSS that keeps
climbing once the warm-up has filled the caches and allocator pools; a fault shows as a 5xx or a
dropped connection. Targets: no 5xx and no unanswered request, no worker restarted, worker RSS
growth < 5 % from the start of the measured phase to its end (frontend likewise).

    python -m scripts.reliability.soak                              # 600 s at c=32 after a 60-s warm-up
    python -m scripts.reliability.soak --duration 30 --warmup 10    # a quick look
    python -m scripts.reliability.soak --model-store model_store --images ../shared/data/faces --output-dir /tmp/s

Writes soak.json, soak.md and soak.png (RSS and throughput over time) into --output-dir and exits 1
when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.load_client import CONNECTION_FAILED, LoadConfig, Outcome, run_closed_loop
from scripts.reliability.report import (
    RESULTS_DIR,
    Check,
    MemorySample,
    MemorySampler,
    checks_markdown,
    image_files,
    latency_summary,
    longest_gap_seconds,
    machine_description,
    machine_line,
    plot_memory_and_throughput,
    rss_growth,
    status_counts,
    timeline,
    write_report,
)
from scripts.reliability.server import inference_headers, predictions_url, running_server, worker_identities
from scripts.serve import TorchServe

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "soak"


@dataclass(frozen=True)
class SoakConfig:
    """One soak run.

    Attributes:
        model_store: holds deepfake.mar (make demo builds model_store/).
        images: folder of request images; default: the shared face photos, else the demo set.
        image_count: how many different images the clients cycle through.
        concurrency: closed-loop clients.
        duration: seconds of measured load.
        warmup_seconds: seconds of unmeasured load first (JIT, allocator pools, caches settle).
        warmup_requests: when set, the warm-up is this many requests instead of warmup_seconds.
        sample_seconds: interval between RSS samples.
        rss_window: samples at each end whose peaks are compared; None: a third of the samples each.
        max_worker_growth_percent: the target for every worker's RSS growth.
        max_frontend_growth_percent: the target for the Java frontend's RSS growth.
        timeout: seconds one request may take before it counts as unanswered.
        output_dir: where soak.json, soak.md and soak.png go.

    """

    model_store: Path = REPO_ROOT / "model_store"
    images: Path | None = None
    image_count: int = 8
    concurrency: int = 32
    duration: float = 600.0
    warmup_seconds: float = 60.0
    warmup_requests: int | None = None
    sample_seconds: float = 5.0
    rss_window: int | None = None
    max_worker_growth_percent: float = 5.0
    max_frontend_growth_percent: float = 5.0
    timeout: float = 60.0
    output_dir: Path = RESULTS_DIR

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.duration <= 0 or self.sample_seconds <= 0:
            raise ValueError("concurrency must be >= 1, duration and sample_seconds > 0")


@dataclass
class _Tally:
    """What the observer keeps of each measured answer: enough for the figures, without every body."""

    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        kept = outcome if not outcome.ok else Outcome(outcome.client, outcome.started, outcome.finished,
                                                     outcome.status, b"", {}, None)
        with self.lock:
            self.outcomes.append(kept)


def warm_up(config: SoakConfig, url: str, headers: dict[str, str], payloads: list[bytes]) -> dict[str, Any]:
    """Unmeasured load at the soak's concurrency, for warmup_requests requests or warmup_seconds seconds."""
    base = LoadConfig(url, concurrency=config.concurrency, warmup=0, timeout=config.timeout,
                      headers=tuple(headers.items()))
    if config.warmup_requests:
        load = LoadConfig(**{**asdict(base), "requests": config.warmup_requests})
    elif config.warmup_seconds > 0:
        load = LoadConfig(**{**asdict(base), "duration": config.warmup_seconds})
    else:
        return {"requests": 0}
    result = run_closed_loop(load, payloads)
    return {"requests": result.requests, "seconds": round(result.wall_seconds, 1), "statuses": result.statuses}


def run_soak(config: SoakConfig, server: TorchServe) -> dict[str, Any]:
    """Warms `server` up, then loads it for config.duration seconds while sampling RSS; returns the results."""
    files = image_files(config.images, config.image_count)
    payloads = [path.read_bytes() for path in files]
    url, headers = predictions_url(server), inference_headers(server)
    machine = machine_description()
    warmup = warm_up(config, url, headers, payloads)
    workers_before = worker_identities(server)
    tally = _Tally()
    load = LoadConfig(url, concurrency=config.concurrency, warmup=0, timeout=config.timeout,
                      headers=tuple(headers.items()), duration=config.duration)
    with MemorySampler(server, config.sample_seconds) as sampler:
        result = run_closed_loop(load, payloads, observer=tally.add)
        ended = time.monotonic()
    workers_after = worker_identities(server)
    outcomes = tally.outcomes
    bins = timeline(outcomes, sampler.started)
    return {
        "machine": machine,
        "config": {**asdict(config), "images": [str(path) for path in files]},
        "warmup": warmup,
        "load": result.to_dict(),
        "latency_ms": latency_summary(o.latency_ms for o in outcomes if o.ok),
        "statuses": status_counts(outcomes),
        "server_errors": sum(o.status >= 500 for o in outcomes),
        "unanswered": sum(o.status == CONNECTION_FAILED for o in outcomes),
        "other_non_2xx": sum(not o.ok and 0 < o.status < 500 for o in outcomes),
        "longest_gap_without_2xx_seconds": round(longest_gap_seconds(outcomes, sampler.started, ended), 3),
        "failures": [{"status": o.status, "error": o.error, "body": o.body[:300].decode("utf-8", "replace"),
                      "seconds": round(o.finished - sampler.started, 2)} for o in outcomes if not o.ok][:50],
        "workers_before": workers_before,
        "workers_after": workers_after,
        "memory": rss_growth(sampler.samples, config.rss_window),
        "memory_samples": [asdict(sample) for sample in sampler.samples],
        "timeline": bins,
    }


def soak_checks(results: dict[str, Any], config: SoakConfig) -> list[Check]:
    """The targets: no server error, no unanswered request, no worker restart, bounded RSS growth."""
    memory = results["memory"]
    worker_growth = memory["max_worker_growth_percent"]
    frontend = memory["frontend"]
    return [
        Check("5xx answers", results["server_errors"] == 0, str(results["server_errors"]), "0"),
        Check("requests without an answer (connection failed or timed out)", results["unanswered"] == 0,
              str(results["unanswered"]), "0"),
        Check("workers restarted (id, pid, start time before vs after)",
              results["workers_before"] == results["workers_after"] and not memory["restarted"],
              "none" if results["workers_before"] == results["workers_after"] else
              f"{results['workers_before']} → {results['workers_after']}", "none"),
        Check("worker RSS growth after warm-up (worst worker)",
              worker_growth is not None and worker_growth < config.max_worker_growth_percent,
              "n/a" if worker_growth is None else f"{worker_growth:+.2f} %",
              f"< {config.max_worker_growth_percent:g} %"),
        Check("frontend RSS growth after warm-up",
              frontend is not None and frontend["growth_percent"] < config.max_frontend_growth_percent,
              "n/a" if frontend is None else f"{frontend['growth_percent']:+.2f} %",
              f"< {config.max_frontend_growth_percent:g} %"),
    ]


def markdown(results: dict[str, Any], checks: Sequence[Check]) -> list[str]:
    """soak.md: the run, its figures, RSS per process, the targets."""
    config, load, latency, memory = results["config"], results["load"], results["latency_ms"], results["memory"]
    lines = [
        "# Soak",
        "",
        machine_line(results["machine"]),
        "",
        f"Command: `python -m scripts.reliability.soak --duration {config['duration']:g} --concurrency "
        f"{config['concurrency']}` (production config, model store `{config['model_store']}`, "
        f"{len(config['images'])} images).",
        "",
        f"- Warm-up: {results['warmup']['requests']} requests, unmeasured.",
        f"- Measured: **{load['requests']} requests** in {load['wall_seconds']:.0f} s at concurrency "
        f"{config['concurrency']}: **{load['throughput_rps']:.1f} requests/s**, latency p50 {latency['p50']} ms, "
        f"p99 {latency['p99']} ms, max {latency['max']} ms.",
        f"- Statuses: {results['statuses']}; 5xx: **{results['server_errors']}**; unanswered: "
        f"{results['unanswered']}; other non-2xx: {results['other_non_2xx']}; longest stretch without a 2xx: "
        f"{results['longest_gap_without_2xx_seconds']:.2f} s.",
        "",
        f"RSS: peak of the first and of the last {memory['window_samples']} samples (one every "
        f"{config['sample_seconds']:g} s) of the measured phase:",
        "",
        "| process | start (MiB) | end (MiB) | growth |",
        "|---|---|---|---|",
    ]
    for pid, worker in memory["workers"].items():
        lines.append(f"| worker {pid} | {worker['start_mb']} | {worker['end_mb']} | "
                     f"{worker['growth_percent']:+.2f} % |")
    if memory["frontend"]:
        frontend = memory["frontend"]
        lines.append(f"| frontend (Java) | {frontend['start_mb']} | {frontend['end_mb']} | "
                     f"{frontend['growth_percent']:+.2f} % |")
    return [*lines, "", *checks_markdown(checks), "", f"![RSS and throughput over time]({NAME}.png)"]


def write_soak_report(results: dict[str, Any], config: SoakConfig) -> tuple[list[Check], list[Path]]:
    """soak.json, soak.md and soak.png in config.output_dir; returns the checks and the files."""
    checks = soak_checks(results, config)
    results = {**results, "checks": [asdict(check) for check in checks],
               "passed": all(check.passed for check in checks)}
    paths = write_report(config.output_dir, NAME, results, markdown(results, checks))
    samples = [MemorySample(s["seconds"], {int(p): v for p, v in s["workers"].items()}, s["frontend"])
               for s in results["memory_samples"]]
    paths.append(plot_memory_and_throughput(config.output_dir / f"{NAME}.png", samples, results["timeline"],
                                            f"Soak at concurrency {config.concurrency}"))
    return checks, paths


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: exits 1 when a target is missed."""
    defaults = SoakConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model-store", type=Path, default=defaults.model_store, help="folder with deepfake.mar")
    parser.add_argument("--images", type=Path, default=None, help="request images (default: shared faces, else demo)")
    parser.add_argument("--image-count", type=int, default=defaults.image_count)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=defaults.warmup_seconds, help="seconds of unmeasured load")
    parser.add_argument("--warmup-requests", type=int, default=None, help="a request count instead of --warmup")
    parser.add_argument("--sample-seconds", type=float, default=defaults.sample_seconds, help="RSS sampling interval")
    parser.add_argument("--max-growth", type=float, default=defaults.max_worker_growth_percent,
                        help="target: worker and frontend RSS growth in percent")
    parser.add_argument("--output-dir", type=Path, default=defaults.output_dir)
    parser.add_argument("--run-dir", type=Path, default=None, help="TorchServe's run dir (default: a temporary one)")
    args = parser.parse_args(argv)
    config = SoakConfig(model_store=args.model_store, images=args.images, image_count=args.image_count,
                        concurrency=args.concurrency, duration=args.duration, warmup_seconds=args.warmup,
                        warmup_requests=args.warmup_requests, sample_seconds=args.sample_seconds,
                        max_worker_growth_percent=args.max_growth, max_frontend_growth_percent=args.max_growth,
                        output_dir=args.output_dir)
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        run_dir = args.run_dir or Path(scratch) / "serve"
        started = time.monotonic()
        with running_server(config.model_store, run_dir) as server:
            print(f"TorchServe ready in {server.ready_seconds:.1f} s; warm-up, then {config.duration:g} s at "
                  f"concurrency {config.concurrency}", flush=True)
            results = run_soak(config, server)
    checks, paths = write_soak_report(results, config)
    for check in checks:
        print(f"{'pass' if check.passed else 'FAIL'}: {check.name}: {check.measured} (target {check.target})")
    print(f"wrote {', '.join(str(path) for path in paths)} in {time.monotonic() - started:.0f} s")
    sys.exit(0 if all(check.passed for check in checks) else 1)


if __name__ == "__main__":
    main()
