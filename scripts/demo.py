"""The main job on its embedded default: demo data → train → TorchScript → .mar → TorchServe → predictions.

Leaves TorchServe running (stop it with `make stop`) unless --stop is given.

Usage:
    python -m scripts.demo [--workdir build/demo] [--stop]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from scripts.package_model import PackageConfig, package_model
from scripts.predict import predict_file
from scripts.serve import (
    DEFAULT_RUN_DIR,
    Ports,
    ServeConfig,
    ServeError,
    TorchServe,
    read_properties,
    security_warnings,
)
from training.config import load_config
from training.demo_data import DemoDataConfig, demo_image, write_demo_dataset
from training.train import train

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_TRAIN_CONFIG = REPO_ROOT / "config" / "train_demo.yaml"
SAMPLE_SEED = 1000  # held-out people: the training set is drawn from seed 0


def _step(number: int, title: str) -> None:
    print(f"\n[{number}/6] {title}", flush=True)


def ensure_demo_data(data_dir: Path, config: DemoDataConfig) -> None:
    """Generates the dataset unless the same config already produced it (generation is deterministic)."""
    stamp = data_dir / ".demo_data.json"
    wanted = json.dumps(asdict(config), sort_keys=True)
    if stamp.is_file() and stamp.read_text() == wanted:
        print(f"reusing {data_dir} (same seed and size as before)")
        return
    write_demo_dataset(data_dir, config)
    stamp.write_text(wanted)
    print(f"wrote {config.count} real + {config.count} fake images ({config.image_size} px) to {data_dir}")


def write_samples(samples_dir: Path) -> list[Path]:
    """One real and one fake image of people not in the training data."""
    samples_dir.mkdir(parents=True, exist_ok=True)
    config = DemoDataConfig(seed=SAMPLE_SEED)
    paths = []
    for label in ("real", "fake"):
        path = samples_dir / f"{label}_sample.jpg"
        path.write_bytes(demo_image(config, label, 0))
        paths.append(path)
    return paths


def run_demo(workdir: Path, model_store: Path, run_dir: Path, ports: Ports, stop: bool) -> dict[str, dict]:
    """Runs every step; returns the JSON answer per sample label."""
    started = time.monotonic()
    previous = TorchServe(ServeConfig(run_dir=run_dir))
    if previous.is_running():  # the server an earlier demo left running: it serves the .mar about to be rebuilt
        print(f"stopping the TorchServe an earlier demo left running (pid {previous.pid_of_running()})")
        previous.stop()
    busy = ports.busy()
    if busy:  # fail now, not after minutes of training
        raise ServeError(f"port(s) {', '.join(busy)} already in use; a TorchServe may still be running: "
                         f"stop it with `make stop`")

    _step(1, "Generating the demo dataset (procedural faces; fakes are face swaps with blending traces)")
    data_dir = workdir / "data"
    ensure_demo_data(data_dir, DemoDataConfig())

    _step(2, "Training a 4-channel (RGB + Laplacian) detector, calibrating it and exporting TorchScript")
    train_config = load_config(DEMO_TRAIN_CONFIG, {"dataset": data_dir / "manifest.csv", "output_dir": workdir / "run"})
    result = train(train_config)

    _step(3, "Archiving TorchScript + handler + metadata with torch-model-archiver")
    mar = package_model(PackageConfig(export_dir=result.export.model_path.parent, model_store=model_store))
    print(f"built {mar} ({mar.stat().st_size / 1e6:.1f} MB)")

    _step(4, "Starting TorchServe and waiting until the model's workers are READY")
    server = TorchServe(ServeConfig(run_dir=run_dir, model_store=model_store, ports=ports)).start()
    print(f"ready in {server.ready_seconds:.1f} s: {server.config.inference_url}/predictions/deepfake")
    for warning in security_warnings(read_properties(server.config.properties)):  # the dev config: say it loudly
        print(f"WARNING ({server.config.properties.name}): {warning}")

    _step(5, "Predicting one real and one fake image the model has never seen")
    answers: dict[str, dict] = {}
    try:
        for path in write_samples(workdir / "samples"):
            status, body = predict_file(path, server.config.inference_url)
            print(f"POST /predictions/deepfake < {path}  → HTTP {status}\n{json.dumps(body, indent=2)}")
            answers[path.stem.removesuffix("_sample")] = body
    except BaseException:
        server.stop()
        raise

    _step(6, "Done")
    print(f"best epoch {result.best_epoch}: validation ROC AUC {result.best_metrics['roc_auc']:.4f}; "
          f"{result.final.summary_line()}")
    print(f"report, plots and metrics: {result.report_path.parent}; total {time.monotonic() - started:.0f} s")
    if stop:
        server.stop()
        print("TorchServe stopped.")
    else:
        sample = workdir / "samples" / "fake_sample.jpg"
        print(f"TorchServe keeps running (pid {server.pid}). Try:\n"
              f"  curl -X POST {server.config.inference_url}/predictions/deepfake -T {sample}\n"
              f"Stop it with: make stop")
    return answers


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "build" / "demo")
    parser.add_argument("--model-store", type=Path, default=REPO_ROOT / "model_store")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="TorchServe's logs, tmp and state")
    parser.add_argument("--free-ports", action="store_true", help="listen on free ports instead of 8080-8082/7070-7071")
    parser.add_argument("--stop", action="store_true", help="stop TorchServe after the predictions")
    args = parser.parse_args(argv)
    try:
        run_demo(args.workdir, args.model_store, args.run_dir, Ports.free() if args.free_ports else Ports(), args.stop)
    except ServeError as error:
        sys.exit(f"demo: {error}")


if __name__ == "__main__":
    main()
