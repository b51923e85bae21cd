"""Serving benchmark: how close this deployment gets to the hardware, and how far it beats the obvious server.

One run on one machine measures, for an exported model and a fixed set of real photos:

1. the limit: the prepared TorchScript model driven in process (benchmarks.inprocess);
2. this deployment: TorchServe with dynamic batching, at each client concurrency (closed loop,
   warm-up excluded, a fixed number of requests, errors counted), plus cold start to READY and
   the memory of the frontend and each worker;
3. the naive alternative: a Flask app scoring one request at a time (benchmarks.naive_server),
   measured the same way;

and writes serving.json, serving.md and serving_latency.png with the ratios and targets.

    python -m benchmarks.serving                                   # the demo model (make demo), on CPU or GPU
    python -m benchmarks.serving --workers 1 --torch-threads 2 --max-batch-delay 10 --output-dir /tmp/b
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import psutil
import requests
import torch
import yaml

from benchmarks.inprocess import (
    InProcessConfig,
    forward_throughput,
    per_core_pipeline_throughput,
    per_core_throughput,
    pipeline_latency_ms,
    pipeline_throughput,
)
from benchmarks.load_client import LoadConfig, LoadResult, run_closed_loop
from benchmarks.naive_server import NAIVE_OPTIMIZATION
from benchmarks.serving_report import write_report
from handler.cpu_threads import available_cores
from handler.torchscript import OPTIMIZATIONS, PRECISIONS, ServingOptions
from scripts.package_model import DEFAULT_MODEL_CONFIG, PackageConfig, package_model
from scripts.serve import CONFIGS, Ports, ServeConfig, TorchServe, auth_headers

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXPORT = REPO_ROOT / "build" / "demo" / "run" / "export"
SHARED_FACES = REPO_ROOT.parent / "shared" / "data" / "faces"
DEMO_IMAGES = REPO_ROOT / "build" / "demo" / "data"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# The targets of the serving issue, on a 2-core CPU machine.
TARGETS = {"deployment_over_limit_c16": 0.9, "deployment_over_naive_c16": 3.0, "p50_c1_over_in_process": 1.15,
           "cold_start_seconds": 5.0}


@dataclass(frozen=True)
class ServingBenchConfig:
    """One benchmark run.

    Attributes:
        export_dir: the training run's export/ folder to serve.
        images: folder of request images (searched recursively); default: the shared face photos, else the demo set.
        image_count: how many of them, spread evenly over the sorted list.
        concurrencies: closed-loop client counts.
        requests: measured requests per concurrency (at least 8 per client).
        warmup: unmeasured requests before each concurrency (at least 2 per client).
        server_warmup: unmeasured requests at concurrency 16 once a server is ready, before any level: TorchServe's
            Java frontend serves 113 requests/s at c=16 after 40 requests and 164 after 1,000 (JIT compilation),
            so a short warm-up measures the JVM's start-up, not the deployment. The naive server gets the same.
        cold_starts: TorchServe starts timed from launch to every worker READY (the median is reported).
        workers: TorchServe workers (minWorkers = maxWorkers); None keeps config/model-config.yaml's.
        torch_threads: per CPU worker; 0 = cores // workers; None keeps model-config.yaml's.
        batch_size: TorchServe's batchSize; None keeps model-config.yaml's.
        max_batch_delay: TorchServe's maxBatchDelay in ms; None keeps model-config.yaml's.
        serving: model preparation and precision, for the workers and the in-process limit alike.
        device: cpu or cuda (auto: cuda when torch sees a GPU).
        limit: measure the in-process limit (skip it only to compare deployment settings quickly).
        limit_batch_sizes: forward batch sizes the limit tries.
        limit_seconds: measuring time per in-process point.
        limit_repeats: measurements per in-process point (the median is kept).
        naive: measure the Flask baseline (as reference systems ship it) and, with naive_optimized, again
            with the workers' model preparation.
        output_dir: where serving.json, serving.md and serving_latency.png go.
        properties: TorchServe's config (scripts.serve.CONFIGS): production by default, the deployment
            measured (token authorization on, no log line per request).

    """

    export_dir: Path = DEFAULT_EXPORT
    images: Path | None = None
    image_count: int = 64
    concurrencies: tuple[int, ...] = (1, 4, 16, 64)
    requests: int = 400
    warmup: int = 40
    server_warmup: int = 1000
    cold_starts: int = 3
    workers: int | None = None
    torch_threads: int | None = None
    batch_size: int | None = None
    max_batch_delay: int | None = None
    serving: ServingOptions = field(default_factory=ServingOptions)
    device: str = "auto"
    limit: bool = True
    limit_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    limit_seconds: float = 1.0
    limit_repeats: int = 3
    naive: bool = True
    naive_optimized: bool = True
    output_dir: Path = REPO_ROOT / "benchmarks" / "results" / "serving"
    properties: str = "production"

    def __post_init__(self) -> None:
        if self.cold_starts < 1 or self.image_count < 1 or not self.concurrencies:
            raise ValueError("cold_starts and image_count must be >= 1 and at least one concurrency is needed "
                             "(the last cold start is the server that gets measured)")

    @property
    def resolved_device(self) -> str:
        """Cpu or cuda."""
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


def request_images(config: ServingBenchConfig) -> tuple[Path, list[Path]]:
    """The folder and the fixed, evenly spread selection of image files the clients send.

    Raises:
        FileNotFoundError: no folder with images was found.

    """
    candidates = [config.images] if config.images else [SHARED_FACES, DEMO_IMAGES]
    for folder in candidates:
        if folder is None or not folder.is_dir():
            continue
        files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            count = min(config.image_count, len(files))
            return folder, [files[index * len(files) // count] for index in range(count)]
    raise FileNotFoundError(f"no images in {[str(c) for c in candidates]}; pass --images DIR")


def machine_description() -> dict[str, Any]:
    """CPU, cores, memory, GPU and package versions: what the figures are only valid for."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
        cpu_features = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {flag}" in flags]
    else:
        cpu_features = []
    return {
        "cpu": cpu,
        "cpu_features": cpu_features,
        "cores": available_cores(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchserve": package_metadata.version("torchserve"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def deployment_settings(config: ServingBenchConfig) -> dict[str, Any]:
    """config/model-config.yaml with this run's overrides: what the .mar is built with and the report shows."""
    values = yaml.safe_load(DEFAULT_MODEL_CONFIG.read_text())
    overrides = {"minWorkers": config.workers, "maxWorkers": config.workers, "batchSize": config.batch_size,
                 "maxBatchDelay": config.max_batch_delay}
    values.update({key: value for key, value in overrides.items() if value is not None})
    values["deviceType"] = "gpu" if config.resolved_device == "cuda" else "cpu"
    handler = values.setdefault("handler", {})
    if config.torch_threads is not None:
        handler["torch_threads"] = config.torch_threads
    handler.update(optimization=config.serving.optimization, precision=config.serving.precision)
    return values


def model_config_file(config: ServingBenchConfig, folder: Path) -> Path:
    """The run's model-config.yaml (see deployment_settings), written into `folder`."""
    path = folder / "model-config.yaml"
    path.write_text(yaml.safe_dump(deployment_settings(config), sort_keys=False))
    return path


def process_memory_mb(server: TorchServe) -> dict[str, Any]:
    """Resident memory of the Java frontend and of each worker, in MB."""
    root = psutil.Process(server.pid)
    frontend, workers = None, []
    for process in root.children(recursive=True):
        try:
            command = " ".join(process.cmdline())
            rss = round(process.memory_info().rss / 2**20, 1)
        except psutil.NoSuchProcess:
            continue
        if "model_service_worker" in command:
            workers.append(rss)
        elif process.name() == "java":
            frontend = rss
    return {"frontend": frontend, "workers": sorted(workers)}


def measure_levels(url: str, payloads: list[bytes], config: ServingBenchConfig, label: str,
                   headers: dict[str, str] | None = None) -> list[LoadResult]:
    """The server warm-up, then closed-loop runs at every concurrency, printed as they finish."""
    if config.server_warmup:
        run_closed_loop(LoadConfig(url, concurrency=16, requests=config.server_warmup, warmup=0,
                                   headers=tuple((headers or {}).items())), payloads)
    results = []
    for concurrency in config.concurrencies:
        load = LoadConfig(url, concurrency=concurrency, requests=max(config.requests, 8 * concurrency),
                          warmup=max(config.warmup, 2 * concurrency), headers=tuple((headers or {}).items()))
        result = run_closed_loop(load, payloads)
        results.append(result)
        print(f"  {label} c={concurrency}: {result.throughput:.1f} req/s, p50 {result.percentile(50):.1f} ms, "
              f"p99 {result.percentile(99):.1f} ms, errors {result.errors}", flush=True)
    return results


def measure_torchserve(config: ServingBenchConfig, payloads: list[bytes], work: Path) -> dict[str, Any]:
    """Cold starts, load at every concurrency and memory of a TorchServe serving the export with this layout."""
    store = work / "model_store"
    store.mkdir()
    package_model(PackageConfig(export_dir=config.export_dir, model_store=store,
                                model_config=model_config_file(config, work)))
    cold_starts: list[float] = []
    for attempt in range(config.cold_starts):
        serve = ServeConfig(run_dir=work / f"serve{attempt}", model_store=store, ports=Ports.free(),
                            properties=CONFIGS[config.properties], ready_poll_seconds=0.02)
        server = TorchServe(serve).start()
        assert server.ready_seconds is not None
        cold_starts.append(server.ready_seconds)
        print(f"  TorchServe ready in {server.ready_seconds:.2f} s", flush=True)
        if attempt < config.cold_starts - 1:
            server.stop()
    try:
        levels = measure_levels(f"{serve.inference_url}/predictions/deepfake", payloads, config, "torchserve",
                                auth_headers(serve.run_dir, "inference"))
        memory = process_memory_mb(server)
    finally:
        server.stop()
    return {"cold_start_seconds": cold_starts, "levels": [level.to_dict() for level in levels], "memory_mb": memory}


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_naive(config: ServingBenchConfig, payloads: list[bytes], optimization: str, work: Path) -> dict[str, Any]:
    """The Flask baseline: launch until /ping answers, load at every concurrency, memory."""
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.naive_server", "--export-dir", str(config.export_dir),
               "--port", str(port), "--optimization", optimization, "--device", config.resolved_device]
    started = time.monotonic()
    with (work / f"naive-{optimization}.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the naive server exited ({process.returncode}); see {log.name}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() - started > 120:
                raise RuntimeError("the naive server did not answer /ping within 120 s")
            time.sleep(0.02)  # polling interval of the readiness check
        ready = time.monotonic() - started
        print(f"  naive ({optimization}) ready in {ready:.2f} s", flush=True)
        levels = measure_levels(f"http://127.0.0.1:{port}/predict", payloads, config, f"naive-{optimization}")
        memory = round(psutil.Process(process.pid).memory_info().rss / 2**20, 1)
    finally:
        process.terminate()
        process.wait(30)
    return {"optimization": optimization, "cold_start_seconds": [ready],
            "levels": [level.to_dict() for level in levels], "memory_mb": {"process": memory}}


def measure_limit(config: ServingBenchConfig, payloads: list[bytes]) -> dict[str, Any]:
    """The in-process figures (benchmarks.inprocess) for this export and model preparation."""
    cores = available_cores()
    inprocess = InProcessConfig(config.export_dir, config.serving, config.resolved_device, config.limit_batch_sizes,
                                config.limit_seconds, config.limit_repeats, cores)
    single = forward_throughput(inprocess, threads=cores)
    per_core = per_core_throughput(inprocess) if config.resolved_device == "cpu" and cores > 1 else {}
    layouts = {"one_process": single, **({"per_core_processes": per_core} if per_core else {})}
    best_layout, best_batch = max(((name, batch) for name, rates in layouts.items() for batch in rates),
                                  key=lambda key: layouts[key[0]][key[1]])
    latency = pipeline_latency_ms(inprocess, payloads)
    best_batches = {name: max(rates, key=rates.get) for name, rates in layouts.items()}
    pipelines = {"one_process": pipeline_throughput(inprocess, payloads, best_batches["one_process"])}
    if per_core:
        pipelines["per_core_processes"] = per_core_pipeline_throughput(inprocess, payloads,
                                                                       best_batches["per_core_processes"])
    pipeline_layout = max(pipelines, key=pipelines.get)
    pipeline = pipelines[pipeline_layout]
    print(f"  limit: {layouts[best_layout][best_batch]:.1f} images/s ({best_layout}, batch {best_batch}); "
          f"batch-1 pipeline p50 {latency['p50']:.2f} ms; pipeline {pipeline:.1f} images/s ({pipeline_layout})",
          flush=True)
    return {
        "forward_images_per_second": {name: {str(batch): round(rate, 2) for batch, rate in rates.items()}
                                      for name, rates in layouts.items()},
        "limit_images_per_second": round(layouts[best_layout][best_batch], 2),
        "limit_layout": best_layout,
        "limit_batch_size": best_batch,
        "pipeline_latency_ms_batch1": {key: round(value, 3) for key, value in latency.items()},
        "pipeline_images_per_second": round(pipeline, 2),
        "pipeline_layout": pipeline_layout,
        "pipeline_by_layout": {name: round(rate, 2) for name, rate in pipelines.items()},
        "pipeline_batch_size": best_batches[pipeline_layout],
    }


def level_at(section: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    """The load result of `section` at this concurrency, if it was measured."""
    return next((level for level in section["levels"] if level["concurrency"] == concurrency), None)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    """The quotient, or None when either side was not measured (or the denominator is 0)."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """The headline ratios (None where a part was not measured)."""
    limit, deployment = results.get("limit") or {}, results["torchserve"]
    c16, c1 = level_at(deployment, 16) or {}, level_at(deployment, 1) or {}
    naive = results.get("naive", {}).get(NAIVE_OPTIMIZATION)
    naive_c16 = (level_at(naive, 16) if naive else None) or {}
    starts = sorted(deployment["cold_start_seconds"])
    throughput = c16.get("throughput_rps")
    return {
        "deployment_over_limit_c16": _ratio(throughput, limit.get("limit_images_per_second")),
        "deployment_over_pipeline_c16": _ratio(throughput, limit.get("pipeline_images_per_second")),
        "deployment_over_naive_c16": _ratio(throughput, naive_c16.get("throughput_rps")),
        "p50_c1_over_in_process": _ratio(c1.get("latency_ms", {}).get("p50"),
                                         limit.get("pipeline_latency_ms_batch1", {}).get("p50")),
        "cold_start_seconds": round(starts[len(starts) // 2], 3) if starts else None,
    }


def targets_met(values: dict[str, float | None]) -> dict[str, bool | None]:
    """Each target: met (True), missed (False) or not measured (None)."""
    at_most = {"p50_c1_over_in_process", "cold_start_seconds"}
    return {key: None if values.get(key) is None else
            (values[key] <= bound if key in at_most else values[key] >= bound) for key, bound in TARGETS.items()}


def run_benchmark(config: ServingBenchConfig) -> dict[str, Any]:
    """Measures everything, writes the report files, returns the results."""
    if not (config.export_dir / "model.torchscript.pt").is_file():
        raise FileNotFoundError(f"{config.export_dir} has no model.torchscript.pt; run `make demo` first "
                                f"or pass --export-dir")
    folder, files = request_images(config)
    payloads = [path.read_bytes() for path in files]
    print(f"{len(payloads)} request images from {folder}; device {config.resolved_device}", flush=True)
    deployment = deployment_settings(config)
    results: dict[str, Any] = {
        "machine": machine_description(),
        "deployment": {key: deployment.get(key) for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay",
                                                            "deviceType")} | {"handler": deployment["handler"]},
        "config": {**asdict(config), "export_dir": str(config.export_dir), "output_dir": str(config.output_dir),
                   "images": str(folder), "serving": asdict(config.serving), "device": config.resolved_device},
        "images": {"count": len(payloads), "folder": str(folder),
                   "mean_bytes": round(sum(map(len, payloads)) / len(payloads))},
    }
    if config.limit:
        print("[1/3] in-process limit", flush=True)
        results["limit"] = measure_limit(config, payloads)
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as temporary:
        work = Path(temporary)
        print("[2/3] TorchServe", flush=True)
        results["torchserve"] = measure_torchserve(config, payloads, work)
        if config.naive:
            print("[3/3] naive Flask server", flush=True)
            variants = [NAIVE_OPTIMIZATION] + ([config.serving.optimization] if config.naive_optimized and
                                               config.serving.optimization != NAIVE_OPTIMIZATION else [])
            results["naive"] = {variant: measure_naive(config, payloads, variant, work) for variant in variants}
    results["ratios"] = ratios(results)
    results["targets"] = {"bounds": TARGETS, "met": targets_met(results["ratios"])}
    write_report(results, config.output_dir)
    return results


def parse_args(argv: list[str] | None) -> ServingBenchConfig:
    """The command line as a ServingBenchConfig."""
    defaults = ServingBenchConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export-dir", type=Path, default=defaults.export_dir)
    parser.add_argument("--images", type=Path, default=None, help="request images (default: shared faces, else demo)")
    parser.add_argument("--image-count", type=int, default=defaults.image_count)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(defaults.concurrencies))
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="unmeasured requests before each level")
    parser.add_argument("--server-warmup", type=int, default=defaults.server_warmup,
                        help="unmeasured requests at c=16 once each server is ready (JIT warm-up)")
    parser.add_argument("--cold-starts", type=int, default=defaults.cold_starts)
    shipped = "default: config/model-config.yaml's"
    parser.add_argument("--workers", type=int, default=None, help=f"TorchServe workers ({shipped})")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help=f"per CPU worker, 0 = cores/workers ({shipped})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"batchSize ({shipped})")
    parser.add_argument("--max-batch-delay", type=int, default=None, help=f"maxBatchDelay in ms ({shipped})")
    parser.add_argument("--optimization", choices=OPTIMIZATIONS, default=defaults.serving.optimization)
    parser.add_argument("--precision", choices=list(PRECISIONS), default=defaults.serving.precision)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device)
    parser.add_argument("--no-naive", action="store_true", help="skip the Flask baseline")
    parser.add_argument("--no-naive-optimized", action="store_true",
                        help="measure the Flask baseline only as reference systems ship it (plain TorchScript)")
    parser.add_argument("--no-limit", action="store_true", help="skip the in-process limit (no ratios)")
    parser.add_argument("--limit-batch-sizes", type=int, nargs="+", default=list(defaults.limit_batch_sizes))
    parser.add_argument("--limit-seconds", type=float, default=defaults.limit_seconds,
                        help="measuring time per in-process point")
    parser.add_argument("--limit-repeats", type=int, default=defaults.limit_repeats)
    parser.add_argument("--output-dir", type=Path, default=defaults.output_dir)
    parser.add_argument("--config", choices=list(CONFIGS), default=defaults.properties,
                        help="TorchServe config (default: production: token auth on, no per-request log lines)")
    args = parser.parse_args(argv)
    return replace(defaults, export_dir=args.export_dir, images=args.images, image_count=args.image_count,
                   concurrencies=tuple(args.concurrency), requests=args.requests, warmup=args.warmup,
                   server_warmup=args.server_warmup,
                   cold_starts=args.cold_starts, workers=args.workers, torch_threads=args.torch_threads,
                   batch_size=args.batch_size, max_batch_delay=args.max_batch_delay,
                   serving=ServingOptions(args.optimization, args.precision), device=args.device,
                   naive=not args.no_naive, naive_optimized=not args.no_naive_optimized, limit=not args.no_limit,
                   limit_batch_sizes=tuple(args.limit_batch_sizes), limit_seconds=args.limit_seconds,
                   limit_repeats=args.limit_repeats, output_dir=args.output_dir, properties=args.config)


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark; exits 1 when a target is missed."""
    results = run_benchmark(parse_args(argv))
    print(json.dumps({"ratios": results["ratios"], "targets_met": results["targets"]["met"]}, indent=2))
    print(f"report: {results['config']['output_dir']}/serving.md")
    sys.exit(0 if all(results["targets"]["met"].values()) else 1)


if __name__ == "__main__":
    main()
