"""Queue overflow: past job_queue_size TorchServe must answer 503 at once, keep serving, and survive big bodies.

Two floods, each on its own production-config TorchServe:

1. Small queue. The production config with job_queue_size=8 (a derived properties file), flooded
   by far more closed-loop clients (128) than queue + batches can hold. Measured: how many 503s,
   their latency (p50/p99/max) against the 200s' (a 503 must come at once, far below a queued
   request's wait), that no request hangs until the client's timeout, that 200s keep coming
   throughout (the longest gap without one), the exact 503 body and headers (TorchServe 0.12
   says the model "has no worker to serve inference request. Please use scale workers API to add
   workers", which is misleading for a full queue, and sends no Retry-After), and that once the
   flood ends every request gets 200 again.
2. Big bodies. The production config as shipped (its job_queue_size), flooded by 128 clients each
   sending a body just under max_request_size (a real photo padded to size; read from the config):
   does the Java frontend (its -Xmx and direct-memory caps, ExitOnOutOfMemoryError) survive a queue full of big bodies?
   Measured: frontend RSS over the flood, whether it exited or logged an OutOfMemoryError, the
   answers, and 200s after the flood.

    python -m scripts.reliability.queue_overflow                        # both floods, 30 s each
    python -m scripts.reliability.queue_overflow --flood-seconds 10 --no-big-bodies --output-dir /tmp/q

Writes queue_overflow.json, queue_overflow.md and queue_overflow.png (frontend RSS in the big-body
flood) into --output-dir and exits 1 when a target is missed. Clients that meet a 503 should back
off and retry: scripts/predict.py does (--retries).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

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
    status_counts,
    timeline,
    write_report,
)
from scripts.reliability.server import frontend_process, inference_headers, predictions_url
from scripts.serve import CONFIGS, Ports, ServeConfig, TorchServe, absolute_log4j_vmargs, read_properties

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "queue_overflow"
# Properties naming a file relative to the properties file's folder: a derived file written elsewhere names them
# absolutely (scripts/serve.py resolves relative ones against the folder of the file it is given).
RELATIVE_PATH_KEYS = ("metrics_config",)
# Java's own report of an OutOfMemoryError, not the -XX:+ExitOnOutOfMemoryError flag TorchServe echoes at start.
OUT_OF_MEMORY = re.compile(r"(?<!ExitOn)OutOfMemoryError")


@dataclass(frozen=True)
class OverflowConfig:
    """One queue-overflow run.

    Attributes:
        model_store: holds deepfake.mar (make demo builds model_store/).
        images: folder of request images; default: the shared face photos, else the demo set.
        image_count: how many different images the clients cycle through.
        job_queue_size: the small queue of the first flood.
        concurrency: clients of the first flood (far more than queue + workers × batchSize).
        flood_seconds: length of each flood.
        timeout: seconds a request may take before it counts as hung (no answer).
        after_requests: requests at after_concurrency once a flood is over, which must all get 200.
        after_concurrency: clients sending them (well within capacity).
        fast_503_ratio: target: p50 of the 503s ≤ this × p50 of the 200s (a 503 must not wait in line); and
            even their p99 must come before the 200s' p50. The tail of the 503s is the flooding client's own
            event loop and a CPU shared with the workers, not TorchServe waiting.
        max_gap_seconds: target: longest stretch of the flood without a 200.
        big_bodies: also run the big-body flood.
        big_concurrency: clients of the big-body flood.
        big_margin_bytes: the big bodies are max_request_size minus this.
        sample_seconds: frontend RSS sampling interval in the big-body flood.
        properties: the config both floods derive from (max_request_size, heap, queue are read from it).
        output_dir: where queue_overflow.json, .md and .png go.

    """

    model_store: Path = REPO_ROOT / "model_store"
    images: Path | None = None
    image_count: int = 8
    job_queue_size: int = 8
    concurrency: int = 128
    flood_seconds: float = 30.0
    timeout: float = 60.0
    after_requests: int = 100
    after_concurrency: int = 4
    fast_503_ratio: float = 0.1
    max_gap_seconds: float = 5.0
    big_bodies: bool = True
    big_concurrency: int = 128
    big_margin_bytes: int = 1024
    sample_seconds: float = 1.0
    properties: Path = CONFIGS["production"]
    output_dir: Path = RESULTS_DIR

    def __post_init__(self) -> None:
        if self.job_queue_size < 1 or self.concurrency < 1 or self.flood_seconds <= 0 or self.after_requests < 1:
            raise ValueError("job_queue_size, concurrency and after_requests must be >= 1, flood_seconds > 0")


# --- servers -----------------------------------------------------------------------------------------------------


def derived_properties(base: Path, overrides: dict[str, str], folder: Path) -> Path:
    """A copy of a properties file with some values replaced, written into `folder`, its file paths made absolute.

    The copy lives apart from config/, so the paths the base names relative to its own folder
    (metrics.yaml, the log4j2 file in vmargs) are written absolutely; scripts/serve.py does the rest
    (ports, model store) as for any config.
    """
    values = read_properties(base)
    origin = base.resolve().parent
    for key in RELATIVE_PATH_KEYS:
        if key in values and not Path(values[key]).is_absolute():
            values[key] = str(origin / values[key])
    if "vmargs" in values:
        values["vmargs"] = absolute_log4j_vmargs(values["vmargs"], origin)
    values.update(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{base.stem}-derived.properties"
    path.write_text(f"# derived from {base} by scripts/reliability/queue_overflow.py: {overrides}\n"
                    + "".join(f"{key}={value}\n" for key, value in values.items()))
    return path


@contextmanager
def server_with_properties(model_store: Path, run_dir: Path, properties: Path) -> Iterator[TorchServe]:
    """Like scripts.reliability.server.running_server, for any properties file."""
    server = TorchServe(ServeConfig(run_dir=run_dir, model_store=model_store, ports=Ports.free(),
                                    properties=properties)).start()
    try:
        yield server
    finally:
        server.stop()


# --- the floods --------------------------------------------------------------------------------------------------


@dataclass
class FloodRecorder:
    """A flood's answers: every outcome without its body, the kinds of non-200 answers counted, the first of each.

    A flood brings hundreds of thousands of near-identical answers: their bodies are counted by kind
    as they arrive instead of being kept.
    """

    outcomes: list[Outcome] = field(default_factory=list)
    kinds: Counter[tuple[int, str, str | None]] = field(default_factory=Counter)
    first: dict[int, Outcome] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        """The observer given to run_closed_loop."""
        bare = Outcome(outcome.client, outcome.started, outcome.finished, outcome.status, b"", {}, outcome.error)
        with self.lock:
            self.outcomes.append(bare)
            self.first.setdefault(outcome.status, outcome)
            if not outcome.ok:
                self.kinds[(outcome.status, outcome.body[:300].decode("utf-8", "replace"), outcome.error)] += 1

    def answer_kinds(self) -> list[dict[str, Any]]:
        """The distinct non-200 answers (status, body, error) with their counts, most frequent first."""
        return [{"status": status, "body": body, "error": error, "count": count}
                for (status, body, error), count in self.kinds.most_common()]


def _load(server: TorchServe, concurrency: int, timeout: float, **fields: Any) -> LoadConfig:
    return LoadConfig(predictions_url(server), concurrency=concurrency, timeout=timeout,
                      headers=tuple(inference_headers(server).items()), **fields)


def after_flood(server: TorchServe, payloads: list[bytes], config: OverflowConfig) -> dict[str, Any]:
    """Requests well within capacity once a flood is over: every one must get 200."""
    result = run_closed_loop(_load(server, config.after_concurrency, config.timeout, requests=config.after_requests,
                                   warmup=0), payloads)
    return {"requests": result.requests, "statuses": {str(s): c for s, c in sorted(result.statuses.items())},
            "ok": len(result.latencies_ms), "latency_ms": latency_summary(result.latencies_ms)}


def flood_figures(recorder: FloodRecorder, started: float, ended: float) -> dict[str, Any]:
    """What a flood's clients got: statuses, 503 and 200 latencies, hung requests, the longest gap without a 200."""
    outcomes = recorder.outcomes
    first = recorder.first.get(503)
    return {
        "requests": len(outcomes),
        "seconds": round(ended - started, 2),
        "statuses": status_counts(outcomes),
        "latency_503_ms": latency_summary(o.latency_ms for o in outcomes if o.status == 503),
        "latency_200_ms": latency_summary(o.latency_ms for o in outcomes if o.ok),
        "timed_out": sum(o.error == "timeout" for o in outcomes),
        "connection_failed": sum(o.status == CONNECTION_FAILED and o.error != "timeout" for o in outcomes),
        "longest_gap_without_200_seconds": round(longest_gap_seconds(outcomes, started, ended), 3),
        "ok_per_second": round(sum(o.ok for o in outcomes) / max(ended - started, 1e-9), 1),
        "first_503": None if first is None else {
            "body": first.body.decode("utf-8", "replace"), "headers": first.headers,
            "retry_after": first.headers.get("retry-after")},
        "answers_other_than_200": recorder.answer_kinds(),
    }


def small_queue_flood(server: TorchServe, payloads: list[bytes], config: OverflowConfig) -> dict[str, Any]:
    """Warms up, floods at config.concurrency for config.flood_seconds, then checks that all is 200 again."""
    run_closed_loop(_load(server, config.after_concurrency, config.timeout, requests=4 * config.after_concurrency,
                          warmup=0), payloads)
    recorder = FloodRecorder()
    started = time.monotonic()
    run_closed_loop(_load(server, config.concurrency, config.timeout, warmup=0, duration=config.flood_seconds),
                    payloads, observer=recorder.add)
    ended = time.monotonic()
    return {"job_queue_size": config.job_queue_size, "concurrency": config.concurrency,
            **flood_figures(recorder, started, ended), "after": after_flood(server, payloads, config)}


def padded(image: bytes, size: int) -> bytes:
    """The image followed by zero bytes up to `size` (decoders stop at the image's end marker)."""
    if len(image) > size:
        raise ValueError(f"the image ({len(image)} bytes) is already larger than {size} bytes")
    return image + bytes(size - len(image))


def out_of_memory_lines(run_dir: Path) -> list[str]:
    """Lines of the server's output and logs that report a Java OutOfMemoryError."""
    files = [run_dir / "torchserve.out", *sorted((run_dir / "logs").glob("*.log"))]
    return [line.strip() for path in files if path.is_file()
            for line in path.read_text(errors="replace").splitlines() if OUT_OF_MEMORY.search(line)]


def frontend_alive(server: TorchServe, pid: int | None) -> bool:
    """The server runs and its Java frontend is still the process `pid` (not exited, not a zombie)."""
    if pid is None or not server.is_running():
        return False
    frontend = frontend_process(server)
    try:
        return frontend is not None and frontend.pid == pid and frontend.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def big_body_flood(server: TorchServe, images: list[bytes], config: OverflowConfig) -> dict[str, Any]:
    """Floods with bodies just under max_request_size while sampling the frontend's RSS; then normal requests."""
    limits = read_properties(config.properties)
    max_request_size = int(limits.get("max_request_size", 6_553_500))
    size = max_request_size - config.big_margin_bytes
    bodies = [padded(image, size) for image in images[:4]]
    frontend = frontend_process(server)
    frontend_pid = frontend.pid if frontend else None
    recorder = FloodRecorder()
    with MemorySampler(server, config.sample_seconds) as sampler:
        started = time.monotonic()
        run_closed_loop(_load(server, config.big_concurrency, config.timeout, warmup=0, duration=config.flood_seconds),
                        bodies, observer=recorder.add)
        ended = time.monotonic()
    survived = frontend_alive(server, frontend_pid)
    after = after_flood(server, images, config) if survived else None
    survived = survived and frontend_alive(server, frontend_pid)  # a frontend can take a moment to die
    frontend_rss = [s.frontend for s in sampler.samples if s.frontend is not None]
    return {
        "max_request_size": max_request_size,
        "body_bytes": size,
        "heap": next((word for word in limits.get("vmargs", "").split() if word.startswith("-Xmx")), None),
        "job_queue_size": int(limits.get("job_queue_size", 100)),
        "concurrency": config.big_concurrency,
        **flood_figures(recorder, started, ended),
        "frontend_survived": survived,
        "frontend_rss_mb": {"start": round(frontend_rss[0], 1) if frontend_rss else None,
                            "peak": round(max(frontend_rss), 1) if frontend_rss else None,
                            "end": round(frontend_rss[-1], 1) if frontend_rss else None},
        "out_of_memory_log_lines": out_of_memory_lines(server.config.run_dir)[:10],
        "after": after,
        "memory_samples": [asdict(sample) for sample in sampler.samples],
        "timeline": timeline(recorder.outcomes, sampler.started),
    }


def overflow_results(config: OverflowConfig, files: Sequence[Path], small: dict[str, Any],
                     big: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's results as the report reads them: machine, config, each flood's figures."""
    results = {"machine": machine_description(), "config": {**asdict(config), "images": [str(path) for path in files]},
               "small_queue": small}
    return results if big is None else {**results, "big_bodies": big}


def run_queue_overflow(config: OverflowConfig, work: Path) -> dict[str, Any]:
    """Both floods, each on a fresh server under `work`; returns the results."""
    files = image_files(config.images, config.image_count)
    payloads = [path.read_bytes() for path in files]
    small_properties = derived_properties(config.properties, {"job_queue_size": str(config.job_queue_size)},
                                          work / "config")
    with server_with_properties(config.model_store, work / "serve-small-queue", small_properties) as server:
        small = small_queue_flood(server, payloads, config)
    big = None
    if config.big_bodies:
        with server_with_properties(config.model_store, work / "serve-big-bodies", config.properties) as server:
            big = big_body_flood(server, payloads, config)
    return overflow_results(config, files, small, big)


# --- targets and the report --------------------------------------------------------------------------------------


def overflow_checks(results: dict[str, Any], config: OverflowConfig) -> list[Check]:
    """Small queue: 503s come, fast; nothing hangs; 200s keep coming and are all there is afterwards. Big: survives."""
    small = results["small_queue"]
    rejected, served = small["latency_503_ms"], small["latency_200_ms"]
    measured = rejected["p50"] is not None and served["p50"] is not None
    fast = measured and rejected["p50"] <= config.fast_503_ratio * served["p50"]
    tail_fast = measured and rejected["p99"] < served["p50"]
    after = small["after"]
    checks = [
        Check("small queue: requests refused with 503", rejected["count"] > 0, str(rejected["count"]),
              "> 0 (else the queue never filled)"),
        Check("small queue: 503 p50 against 200 p50", fast,
              f"{rejected['p50']} ms vs {served['p50']} ms", f"≤ {config.fast_503_ratio:g} ×"),
        Check("small queue: 503 p99 against 200 p50", tail_fast,
              f"{rejected['p99']} ms vs {served['p50']} ms", "<"),
        Check("small queue: requests without an answer", small["timed_out"] + small["connection_failed"] == 0,
              f"{small['timed_out']} timed out, {small['connection_failed']} connection failures",
              f"0 (client timeout {config.timeout:g} s)"),
        Check("small queue: longest stretch without a 200", served["count"] > 0
              and small["longest_gap_without_200_seconds"] <= config.max_gap_seconds,
              f"{small['longest_gap_without_200_seconds']:.2f} s ({served['count']} × 200)",
              f"≤ {config.max_gap_seconds:g} s"),
        Check("small queue: after the flood", after["ok"] == after["requests"], f"{after['ok']}/{after['requests']} "
              f"× 200", "100 %"),
    ]
    big = results.get("big_bodies")
    if big is not None:
        big_after = big["after"]
        checks += [
            Check("big bodies: frontend survived (same pid, no OutOfMemoryError)",
                  big["frontend_survived"] and not big["out_of_memory_log_lines"],
                  f"{'alive' if big['frontend_survived'] else 'EXITED'}, "
                  f"{len(big['out_of_memory_log_lines'])} OOM log lines, peak RSS {big['frontend_rss_mb']['peak']} MiB",
                  "alive, 0"),
            Check("big bodies: requests without an answer", big["timed_out"] + big["connection_failed"] == 0,
                  f"{big['timed_out']} timed out, {big['connection_failed']} connection failures", "0"),
            Check("big bodies: after the flood", big_after is not None and big_after["ok"] == big_after["requests"],
                  "no server" if big_after is None else f"{big_after['ok']}/{big_after['requests']} × 200", "100 %"),
        ]
    return checks


def markdown(results: dict[str, Any], checks: Sequence[Check]) -> list[str]:
    """queue_overflow.md: each flood's figures, the exact 503, the targets."""
    config, small = results["config"], results["small_queue"]
    first = small["first_503"]
    lines = [
        "# Queue overflow",
        "",
        machine_line(results["machine"]),
        "",
        f"Command: `python -m scripts.reliability.queue_overflow --flood-seconds {config['flood_seconds']:g}` "
        f"(production config; {len(config['images'])} images).",
        "",
        f"## Small queue: job_queue_size={small['job_queue_size']}, {small['concurrency']} clients, "
        f"{small['seconds']:.0f} s",
        "",
        f"- {small['requests']} answers: {small['statuses']}; {small['ok_per_second']} × 200 per second.",
        f"- 503 latency: p50 {small['latency_503_ms']['p50']} ms, p99 {small['latency_503_ms']['p99']} ms, max "
        f"{small['latency_503_ms']['max']} ms; 200 latency: p50 {small['latency_200_ms']['p50']} ms, p99 "
        f"{small['latency_200_ms']['p99']} ms, max {small['latency_200_ms']['max']} ms.",
        f"- Hung (client timeout {config['timeout']:g} s): {small['timed_out']}; longest stretch without a 200: "
        f"{small['longest_gap_without_200_seconds']:.2f} s.",
        f"- After the flood: {small['after']['ok']}/{small['after']['requests']} × 200.",
    ]
    if first is not None:
        lines += ["", "The 503 TorchServe sends (body, then headers):", "", "```", first["body"].rstrip(), "```", "",
                  "```", *(f"{name}: {value}" for name, value in first["headers"].items()), "```", "",
                  f"Retry-After: **{first['retry_after'] or 'none'}**. The message blames missing workers; the cause "
                  f"is a full queue. scripts/predict.py retries 503s with exponential backoff and says so plainly."]
    big = results.get("big_bodies")
    if big is not None:
        rss = big["frontend_rss_mb"]
        lines += [
            "",
            f"## Big bodies: {big['concurrency']} clients × {big['body_bytes']:,} bytes (max_request_size "
            f"{big['max_request_size']:,}), job_queue_size {big['job_queue_size']}, heap {big['heap']}, "
            f"{big['seconds']:.0f} s",
            "",
            f"- {big['requests']} answers: {big['statuses']}; hung: {big['timed_out']}, connection failures: "
            f"{big['connection_failed']}.",
            f"- Frontend: {'survived' if big['frontend_survived'] else '**exited**'}; RSS {rss['start']} → peak "
            f"{rss['peak']} → {rss['end']} MiB; OutOfMemoryError lines: {len(big['out_of_memory_log_lines'])}.",
            "- After the flood: " + ("no server" if big["after"] is None else
                                      f"{big['after']['ok']}/{big['after']['requests']} × 200."),
            "",
            f"![frontend RSS and answers during the big-body flood]({NAME}.png)",
        ]
        for kind in big["answers_other_than_200"][:5]:
            lines.append(f"- {kind['count']} × HTTP {kind['status']}"
                         f"{' (' + kind['error'] + ')' if kind['error'] else ''}: `{' '.join(kind['body'].split())}`")
    return [*lines, "", *checks_markdown(checks)]


def write_overflow_report(results: dict[str, Any], config: OverflowConfig) -> tuple[list[Check], list[Path]]:
    """queue_overflow.json, .md and (with the big-body flood) .png; returns the checks and the files."""
    checks = overflow_checks(results, config)
    results = {**results, "checks": [asdict(check) for check in checks],
               "passed": all(check.passed for check in checks)}
    paths = write_report(config.output_dir, NAME, results, markdown(results, checks))
    big = results.get("big_bodies")
    if big is not None:
        samples = [MemorySample(s["seconds"], {int(p): v for p, v in s["workers"].items()}, s["frontend"])
                   for s in big["memory_samples"]]
        paths.append(plot_memory_and_throughput(config.output_dir / f"{NAME}.png", samples, big["timeline"],
                                                f"Big-body flood: {big['concurrency']} clients × "
                                                f"{big['body_bytes'] / 2**20:.1f} MiB"))
    return checks, paths


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: exits 1 when a target is missed."""
    defaults = OverflowConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model-store", type=Path, default=defaults.model_store, help="folder with deepfake.mar")
    parser.add_argument("--images", type=Path, default=None, help="request images (default: shared faces, else demo)")
    parser.add_argument("--job-queue-size", type=int, default=defaults.job_queue_size)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency,
                        help="clients of the small-queue flood")
    parser.add_argument("--flood-seconds", type=float, default=defaults.flood_seconds)
    parser.add_argument("--timeout", type=float, default=defaults.timeout,
                        help="seconds before a request counts as hung")
    parser.add_argument("--big-concurrency", type=int, default=defaults.big_concurrency,
                        help="clients of the big-body flood")
    parser.add_argument("--no-big-bodies", action="store_true", help="skip the big-body flood")
    parser.add_argument("--properties", type=Path, default=defaults.properties,
                        help="the config the floods derive from")
    parser.add_argument("--output-dir", type=Path, default=defaults.output_dir)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the servers' run dirs (logs, derived config) here (default: a temporary folder)")
    args = parser.parse_args(argv)
    config = OverflowConfig(model_store=args.model_store, images=args.images, job_queue_size=args.job_queue_size,
                            concurrency=args.concurrency, flood_seconds=args.flood_seconds, timeout=args.timeout,
                            big_bodies=not args.no_big_bodies, big_concurrency=args.big_concurrency,
                            properties=args.properties, output_dir=args.output_dir)
    with tempfile.TemporaryDirectory(prefix="queue-overflow-") as scratch:
        results = run_queue_overflow(config, args.work_dir or Path(scratch))
    checks, paths = write_overflow_report(results, config)
    for check in checks:
        print(f"{'pass' if check.passed else 'FAIL'}: {check.name}: {check.measured} (target {check.target})")
    print(f"wrote {', '.join(str(path) for path in paths)}")
    sys.exit(0 if all(check.passed for check in checks) else 1)


if __name__ == "__main__":
    main()
