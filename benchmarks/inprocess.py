"""The limit a server is measured against: the exported model driven directly, with no server in the way.

- Forward throughput: images/s of the prepared TorchScript model on ready-made input batches, for
  each batch size, in two layouts of the same cores: one process using every core, and one process
  per core with one thread each (what TorchServe's workers do). The limit is the best of all.
- Pipeline latency: decode + preprocess + forward of one image at batch 1, every core on it, the
  way the handler would do it for a lone request.
- Pipeline throughput: decode + preprocess + forward at the best batch size, in one process using every
  core and in one single-thread process per core; the better of the two is the pipeline limit.

The model is prepared with the same ServingOptions as the workers, so the ratio charges the server
for its overhead only, never for a different model.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import torch

from handler.scoring import ExportedDetector, decode_for_scoring, regions_to_score
from handler.torchscript import ServingOptions


@dataclass(frozen=True)
class InProcessConfig:
    """What to measure in process.

    Attributes:
        export_dir: the training run's export/ folder.
        serving: how the model is prepared (the workers' settings).
        device: cpu or cuda.
        batch_sizes: forward batch sizes tried.
        seconds: minimum measuring time per batch size and layout (after warm-up).
        repeats: measurements per point; the median is kept.
        cores: CPU cores to use (threads of the single process, processes of the per-core layout).

    """

    export_dir: Path
    serving: ServingOptions = ServingOptions()
    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    seconds: float = 1.0
    repeats: int = 3
    cores: int = 2


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def _timed_forwards(detector: ExportedDetector, batch: torch.Tensor, seconds: float) -> tuple[int, float]:
    """(images, seconds) of back-to-back forward passes for at least `seconds` (at least 3 passes)."""
    passes = 0
    started = time.perf_counter()
    with torch.inference_mode():
        while passes < 3 or time.perf_counter() - started < seconds:
            detector.model(batch)
            passes += 1
        if batch.is_cuda:
            torch.cuda.synchronize()
    return passes * len(batch), time.perf_counter() - started


def _input_batch(detector: ExportedDetector, batch_size: int) -> torch.Tensor:
    height, width = detector.metadata.preprocessing.input_size
    inputs = [torch.randn(4, height, width) for _ in range(batch_size)]
    return detector.serving.batch(inputs, detector.device)


def forward_throughput(config: InProcessConfig, threads: int) -> dict[int, float]:
    """Images/s per batch size in this process with `threads` torch threads (median of config.repeats)."""
    _set_threads(threads)
    detector = ExportedDetector.load(config.export_dir, config.device, config.serving)
    results: dict[int, float] = {}
    for batch_size in config.batch_sizes:
        batch = _input_batch(detector, batch_size)
        _timed_forwards(detector, batch, config.seconds / 4)  # warm-up: profiling executor, allocator, caches
        rates = []
        for _ in range(config.repeats):
            images, seconds = _timed_forwards(detector, batch, config.seconds)
            rates.append(images / seconds)
        results[batch_size] = statistics.median(rates)
    return results


def _per_core_worker(config: InProcessConfig, batch_size: int, start: Any, queue: Any) -> None:
    _set_threads(1)
    detector = ExportedDetector.load(config.export_dir, config.device, config.serving)
    batch = _input_batch(detector, batch_size)
    _timed_forwards(detector, batch, config.seconds / 4)
    start.wait()  # every process measures over the same stretch of time
    began = time.monotonic()
    images, _ = _timed_forwards(detector, batch, config.seconds)
    queue.put((images, began, time.monotonic()))


def _per_core_rate(config: InProcessConfig, target: Callable[..., None], *args: Any) -> float:
    """Images/s of config.cores spawned one-thread processes running `target(config, *args, start, queue)` at once.

    Each process waits at the barrier, measures, and puts (images, began, ended); the rate is all images over the
    span from the first start to the last end, the median of config.repeats such runs.
    """
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited torch thread pools
    rates = []
    for _ in range(config.repeats):
        start, queue = context.Barrier(config.cores), context.Queue()
        processes = [context.Process(target=target, args=(config, *args, start, queue)) for _ in range(config.cores)]
        for process in processes:
            process.start()
        outcomes = [queue.get(timeout=600) for _ in processes]
        for process in processes:
            process.join()
        span = max(end for _, _, end in outcomes) - min(began for _, began, _ in outcomes)
        rates.append(sum(images for images, _, _ in outcomes) / span)
    return statistics.median(rates)


def per_core_throughput(config: InProcessConfig) -> dict[int, float]:
    """Forward images/s per batch size of config.cores processes with one thread each, running at the same time."""
    return {batch_size: _per_core_rate(config, _per_core_worker, batch_size) for batch_size in config.batch_sizes}


def pipeline_latency_ms(config: InProcessConfig, images: list[bytes], passes: int = 3) -> dict[str, float]:
    """Decode + preprocess + forward of each image alone (batch 1, every core): p50/p95/mean in ms over all passes.

    The first pass over the images is a warm-up and not counted.
    """
    _set_threads(config.cores)
    detector = ExportedDetector.load(config.export_dir, config.device, config.serving)
    preprocessing, faces = detector.metadata.preprocessing, detector.metadata.faces
    latencies = []
    for index in range(passes + 1):
        for data in images:
            started = time.perf_counter()
            regions = regions_to_score(decode_for_scoring(data, preprocessing, faces), preprocessing, faces)
            detector.score(detector.serving.batch(list(regions.inputs), detector.device))
            if index:
                latencies.append((time.perf_counter() - started) * 1000.0)
    ordered = sorted(latencies)
    return {"p50": statistics.median(ordered), "p95": ordered[int(0.95 * (len(ordered) - 1))],
            "mean": statistics.fmean(ordered)}


def _pipeline_pass(detector: ExportedDetector, images: list[bytes], batch_size: int) -> int:
    """Decodes, preprocesses and scores every image once, in batches; returns how many."""
    preprocessing, faces = detector.metadata.preprocessing, detector.metadata.faces
    for start in range(0, len(images), batch_size):
        inputs = [tensor for data in images[start:start + batch_size] for tensor in
                  regions_to_score(decode_for_scoring(data, preprocessing, faces), preprocessing, faces).inputs]
        detector.score(detector.serving.batch(inputs, detector.device))
    return len(images)


def pipeline_throughput(config: InProcessConfig, images: list[bytes], batch_size: int) -> float:
    """Images/s of decode + preprocess + forward in batches of `batch_size`, one process using every core."""
    _set_threads(config.cores)
    detector = ExportedDetector.load(config.export_dir, config.device, config.serving)
    _pipeline_pass(detector, images, batch_size)
    rates = []
    for _ in range(config.repeats):
        started = time.perf_counter()
        count = _pipeline_pass(detector, images, batch_size)
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates)


def _per_core_pipeline_worker(config: InProcessConfig, images: list[bytes], batch_size: int, start: Any,
                              queue: Any) -> None:
    _set_threads(1)
    detector = ExportedDetector.load(config.export_dir, config.device, config.serving)
    _pipeline_pass(detector, images, batch_size)
    start.wait()
    began = time.monotonic()
    count = 0
    while count == 0 or time.monotonic() - began < config.seconds:
        count += _pipeline_pass(detector, images, batch_size)
    queue.put((count, began, time.monotonic()))


def per_core_pipeline_throughput(config: InProcessConfig, images: list[bytes], batch_size: int) -> float:
    """Images/s of decode + preprocess + forward in config.cores one-thread processes at once (what workers do)."""
    return _per_core_rate(config, _per_core_pipeline_worker, images, batch_size)
