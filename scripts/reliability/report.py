"""What the load and fault checks share: request images, resource sampling, outcome timelines, checks, the report.

soak.py, worker_kill.py and queue_overflow.py each write <name>.json (everything measured), <name>.md
(the figures and a pass/fail line per target) and, where time matters, <name>.png, into one folder
(benchmarks/results/reliability/ by default). The machine and its load average go into every report:
these checks run beside other work and their timings mean little without it.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import psutil

from benchmarks.load_client import CONNECTION_FAILED, Outcome
from scripts.reliability.server import frontend_process, worker_processes
from scripts.serve import TorchServe

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results" / "reliability"
SHARED_FACES = REPO_ROOT.parent / "shared" / "data" / "faces"  # real photos, read in place (never copied)
DEMO_IMAGES = REPO_ROOT / "build" / "demo" / "data"  # make demo's generated faces
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


# --- request bodies ----------------------------------------------------------------------------------------------


def image_files(folder: Path | None = None, count: int = 8) -> list[Path]:
    """`count` image files spread evenly over a folder's sorted images (default: the shared faces, else the demo set).

    A few different images rather than one: a server that caches or whose cost depends on the
    image must see the variety real uploads have.

    Raises:
        FileNotFoundError: no candidate folder holds an image.

    """
    candidates = [folder] if folder is not None else [SHARED_FACES, DEMO_IMAGES]
    for candidate in candidates:
        if candidate is None or not candidate.is_dir():
            continue
        files = sorted(path for path in candidate.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            chosen = min(count, len(files))
            return [files[index * len(files) // chosen] for index in range(chosen)]
    raise FileNotFoundError(f"no images in {[str(c) for c in candidates]}; pass --images DIR (or run make demo)")


def request_payloads(folder: Path | None = None, count: int = 8) -> list[bytes]:
    """The bytes of image_files(folder, count)."""
    return [path.read_bytes() for path in image_files(folder, count)]


# --- what the machine is doing -----------------------------------------------------------------------------------


def machine_description() -> dict[str, Any]:
    """Cores, memory, load average and versions: the figures are valid for this only."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1_5_15": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "torchserve": package_metadata.version("torchserve"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def rss_mb(process: psutil.Process | None) -> float | None:
    """Resident memory in MiB (None for a process that is gone)."""
    if process is None:
        return None
    try:
        return process.memory_info().rss / 2**20
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


@dataclass(frozen=True)
class MemorySample:
    """Resident memory of the server's processes at one moment.

    Attributes:
        seconds: since the sampler started.
        workers: worker pid → RSS in MiB.
        frontend: the Java frontend's RSS in MiB (None when it is gone).

    """

    seconds: float
    workers: dict[int, float]
    frontend: float | None


class MemorySampler:
    """Samples worker and frontend RSS every `interval` seconds on a thread, from start() to stop().

    Use as a context manager; samples are taken at the start and at the stop as well, so even a short
    run has its two ends.
    """

    def __init__(self, server: TorchServe, interval: float = 5.0) -> None:
        self.server = server
        self.interval = interval
        self.samples: list[MemorySample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._started = 0.0

    def sample(self) -> MemorySample:
        """Takes one sample now and keeps it."""
        workers = {}
        for process in worker_processes(self.server):
            rss = rss_mb(process)
            if rss is not None:
                workers[process.pid] = rss
        sample = MemorySample(time.monotonic() - self._started, workers, rss_mb(frontend_process(self.server)))
        self.samples.append(sample)
        return sample

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):  # the interval between samples, not a readiness wait
            self.sample()

    def __enter__(self) -> MemorySampler:
        self._started = time.monotonic()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def started(self) -> float:
        """time.monotonic() when sampling began (sample.seconds counts from here)."""
        return self._started


def rss_growth(samples: Sequence[MemorySample], window: int | None = None) -> dict[str, Any]:
    """Peak RSS in the first and in the last `window` samples (default: a third of them each) and the growth in %.

    Peaks of windows rather than single readings: a worker's RSS breathes by a few percent with the
    batches it decodes (the allocator hands pages back and takes them again), so one reading at a
    peak against one in a trough would fake a trend either way. Under a steady load each window
    reaches the same high-water mark unless memory creeps. A worker present in only some samples
    (restarted) is listed under `restarted`: comparing its RSS would be meaningless.

    Returns:
        {"window_samples", "workers": {pid: {start_mb, end_mb, growth_percent}}, "max_worker_growth_percent",
        "frontend": {start_mb, end_mb, growth_percent}, "restarted": [pids]}.

    Raises:
        ValueError: no samples.

    """
    if not samples:
        raise ValueError("no memory samples")
    window = max(1, min(window or len(samples) // 3, len(samples)))
    head, tail = samples[:window], samples[-window:]
    pids = set().union(*(sample.workers for sample in samples))
    steady = sorted(pid for pid in pids if all(pid in sample.workers for sample in samples))
    workers = {pid: _growth([s.workers[pid] for s in head], [s.workers[pid] for s in tail]) for pid in steady}
    frontend_head = [s.frontend for s in head if s.frontend is not None]
    frontend_tail = [s.frontend for s in tail if s.frontend is not None]
    growths = [worker["growth_percent"] for worker in workers.values()]
    return {
        "window_samples": window,
        "workers": {str(pid): values for pid, values in workers.items()},
        "max_worker_growth_percent": max(growths) if growths else None,
        "frontend": _growth(frontend_head, frontend_tail) if frontend_head and frontend_tail else None,
        "restarted": sorted(pids - set(steady)),
    }


def _growth(start: Sequence[float], end: Sequence[float]) -> dict[str, float]:
    first, last = max(start), max(end)
    return {"start_mb": round(first, 1), "end_mb": round(last, 1), "growth_percent": round(100 * (last / first - 1), 2)}


# --- what the clients got ----------------------------------------------------------------------------------------


def latency_summary(values_ms: Iterable[float]) -> dict[str, float | int | None]:
    """count, p50, p99, max and mean of some latencies in ms (None for the figures of an empty set)."""
    values = list(values_ms)
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None, "mean": None}
    return {"count": len(values), "p50": round(float(np.percentile(values, 50)), 2),
            "p99": round(float(np.percentile(values, 99)), 2), "max": round(max(values), 2),
            "mean": round(float(np.mean(values)), 2)}


def status_counts(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """HTTP status → count ("0" for no answer), sorted by status."""
    counts = Counter(outcome.status for outcome in outcomes)
    return {str(status): count for status, count in sorted(counts.items())}


def answer_kinds(outcomes: Iterable[Outcome], limit: int = 300) -> list[dict[str, Any]]:
    """The distinct (status, body, error) of some answers with how often each came, most frequent first.

    Bodies are cut to `limit` characters; the request id TorchServe puts in some bodies is not
    removed, so answers that differ only there count apart (they are rare: failures, not 200s).
    """
    counts = Counter((outcome.status, outcome.body[:limit].decode("utf-8", "replace"), outcome.error)
                     for outcome in outcomes)
    return [{"status": status, "body": body, "error": error, "count": count}
            for (status, body, error), count in counts.most_common()]


def timeline(outcomes: Iterable[Outcome], origin: float, bin_seconds: float = 1.0) -> list[dict[str, Any]]:
    """Per `bin_seconds` bin of completion time since `origin`: answers by status (every bin, empty ones too)."""
    bins: dict[int, Counter[int]] = {}
    for outcome in outcomes:
        bins.setdefault(int((outcome.finished - origin) // bin_seconds), Counter())[outcome.status] += 1
    if not bins:
        return []
    return [{"seconds": index * bin_seconds, "statuses": {str(s): c for s, c in sorted(bins.get(index, {}).items())}}
            for index in range(min(bins), max(bins) + 1)]


def longest_gap_seconds(outcomes: Iterable[Outcome], start: float, end: float) -> float:
    """The longest time within [start, end] in which no successful answer arrived."""
    times = sorted(outcome.finished for outcome in outcomes if outcome.ok and start <= outcome.finished <= end)
    edges = [start, *times, end]
    return max(later - earlier for earlier, later in zip(edges, edges[1:], strict=False))


def is_server_failure(outcome: Outcome) -> bool:
    """A 5xx or no answer at all: the server's fault, never the client's."""
    return outcome.status >= 500 or outcome.status == CONNECTION_FAILED


# --- targets and the report --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One target: what was measured against what was required.

    Attributes:
        name: what is checked, e.g. "worker RSS growth after warm-up".
        passed: whether the measurement meets the target.
        measured: the figure, as text with its unit.
        target: the requirement, as text.

    """

    name: str
    passed: bool
    measured: str
    target: str


def checks_markdown(checks: Sequence[Check]) -> list[str]:
    """A table of the targets, one row per check."""
    lines = ["| check | measured | target | |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.measured} | {c.target} | {'pass' if c.passed else '**FAIL**'} |" for c in checks]
    return lines


def write_report(output_dir: Path, name: str, results: dict[str, Any], markdown_lines: Sequence[str]) -> list[Path]:
    """Writes <name>.json and <name>.md into output_dir; returns their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = output_dir / f"{name}.json", output_dir / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    markdown_path.write_text("\n".join(markdown_lines).rstrip() + "\n")
    return [json_path, markdown_path]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def machine_line(machine: dict[str, Any]) -> str:
    """One Markdown line naming the machine and how loaded it was."""
    load = ", ".join(f"{value:g}" for value in machine["load_average_1_5_15"])
    return (f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; load average at the "
            f"start {load}; Python {machine['python']}, TorchServe {machine['torchserve']}; {machine['date']}.")


def plot_memory_and_throughput(path: Path, samples: Sequence[MemorySample], bins: Sequence[dict[str, Any]],
                               title: str, offset_seconds: float = 0.0) -> Path:
    """RSS of each worker and of the frontend (top) and answers per second by outcome (bottom) over time.

    Args:
        path: the PNG to write.
        samples: from a MemorySampler.
        bins: from timeline() with 1-second bins.
        title: the figure's title.
        offset_seconds: added to the bins' times so both panels share the sampler's clock.

    """
    figure, (memory_axes, rate_axes) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    pids = sorted(set().union(*(sample.workers for sample in samples))) if samples else []
    for pid in pids:
        points = [(s.seconds, s.workers[pid]) for s in samples if pid in s.workers]
        memory_axes.plot(*zip(*points, strict=True), label=f"worker {pid}")
    frontend = [(s.seconds, s.frontend) for s in samples if s.frontend is not None]
    if frontend:
        memory_axes.plot(*zip(*frontend, strict=True), label="frontend (Java)", color="black")
    memory_axes.set_ylabel("RSS (MiB)")
    memory_axes.legend(loc="best", fontsize="small")
    memory_axes.grid(alpha=0.3)
    times = [entry["seconds"] + offset_seconds for entry in bins]
    ok = [sum(c for s, c in entry["statuses"].items() if 200 <= int(s) < 300) for entry in bins]
    failed = [sum(c for s, c in entry["statuses"].items() if not 200 <= int(s) < 300) for entry in bins]
    rate_axes.plot(times, ok, label="2xx / s", color="tab:green")
    if any(failed):
        rate_axes.plot(times, failed, label="other / s", color="tab:red")
    rate_axes.set_ylabel("answers per second")
    rate_axes.set_xlabel("seconds")
    rate_axes.legend(loc="best", fontsize="small")
    rate_axes.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
