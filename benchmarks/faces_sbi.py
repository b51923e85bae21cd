"""Real faces + SBI, end to end, against the targets: prepare → train → evaluate on the held-out test subjects.

Runs the three commands a user runs, as subprocesses, times each, and checks the measured figures
against the project's targets (docs/EVALUATION.md):

- ROC AUC >= 0.99 and ECE <= 0.03 (calibrated) on real test photos vs their self-blended pseudo-fakes;
- false-positive rate on the real test photos at the served threshold <= 5 %;
- AUC drop <= 0.03 under JPEG quality 50, 0.5x downscale and Gaussian blur sigma 1;
- training (the recipe, on this machine) in under 20 minutes.

The face photos are read in place; crops and the run go to --work-dir (outside the repository by
default, since the crops are derived from the shared data).

Usage:
    python -m benchmarks.faces_sbi [--faces ../shared/data/faces] [--work-dir /tmp/deepfake-faces-sbi]
        [--recipe config/train-faces-sbi.yaml] [--set key=value ...] [--skip prepare|train|evaluate]
        [--out benchmarks/results/faces_sbi.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.evaluate import CLEAN

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "roc_auc": (">=", 0.99),
    "ece": ("<=", 0.03),
    "fpr_at_threshold": ("<=", 0.05),
    "worst_robustness_auc_drop": ("<=", 0.03),
    "training_minutes": ("<", 20.0),
}


@dataclass(frozen=True)
class BenchmarkConfig:
    """Where the data is and where the work goes."""

    faces: Path
    work_dir: Path
    recipe: Path
    overrides: tuple[str, ...]
    out: Path


def run_stage(name: str, command: list[str], log: Path) -> float:
    """Runs one command with its output in `log`; returns wall seconds. A failure stops the benchmark."""
    print(f"[{name}] {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    with log.open("w") as handle:
        completed = subprocess.run(command, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"[{name}] failed with exit code {completed.returncode}; see {log}")
    print(f"[{name}] {seconds:.0f} s", flush=True)
    return seconds


def commands(config: BenchmarkConfig) -> dict[str, list[str]]:
    """The three user commands, in order."""
    crops, run, evaluation = (config.work_dir / name for name in ("crops", "run", "evaluation"))
    python = sys.executable
    train = [python, "-m", "training.train", "--config", str(config.recipe), "--dataset", str(crops / "manifest.csv"),
             "--output-dir", str(run)]
    for override in config.overrides:
        train += ["--set", override]
    return {
        "prepare": [python, "-m", "training.prepare", str(config.faces), "--output-dir", str(crops),
                    "--subjects-csv", str(config.faces / "manifest.csv"), "--workers", "2", "--overwrite"],
        "train": train,
        "evaluate": [python, "-m", "training.evaluate", "--model", str(run / "export"), "--dataset",
                     str(run / "splits.csv"), "--split", "test", "--sbi", "--faces", "precropped",
                     "--group-by", "dataset", "expression", "--output-dir", str(evaluation)],
    }


def check(measured: dict[str, float], targets: dict[str, tuple[str, float]] = TARGETS) -> dict[str, dict[str, Any]]:
    """Each target with its measured value and whether it is met."""
    results = {}
    for name, (relation, limit) in targets.items():
        value = measured[name]
        met = {">=": value >= limit, "<=": value <= limit, "<": value < limit}[relation]
        results[name] = {"measured": value, "target": f"{relation} {limit}", "met": bool(met)}
    return results


def headline(evaluation: dict[str, Any], training_seconds: float) -> dict[str, float]:
    """The figures the targets are about, from evaluation.json."""
    clean = evaluation["metrics"]
    drops = [row["roc_auc_change"] for row in evaluation["robustness"] if row["condition"] != CLEAN]
    return {
        "roc_auc": clean["roc_auc"],
        "ece": clean["ece"],
        "fpr_at_threshold": clean["fpr_at_threshold"],
        "worst_robustness_auc_drop": max(0.0, -min(drops)),
        "training_minutes": training_seconds / 60.0,
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; exits 1 when a target is missed (the report is written either way)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--faces", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "faces")
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "deepfake-faces-sbi")
    parser.add_argument("--recipe", type=Path, default=REPO_ROOT / "config" / "train-faces-sbi.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="training override, passed on to training.train")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "faces_sbi.json")
    parser.add_argument("--skip", action="append", default=[], choices=["prepare", "train", "evaluate"],
                        help="reuse that stage's output already in --work-dir (repeatable)")
    args = parser.parse_args(argv)
    config = BenchmarkConfig(args.faces.resolve(), args.work_dir.resolve(), args.recipe.resolve(),
                             tuple(args.overrides), args.out)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    stages = commands(config)
    seconds = {}
    for name, command in stages.items():
        if name in args.skip:
            continue
        seconds[name] = run_stage(name, command, config.work_dir / f"{name}.log")
    evaluation = json.loads((config.work_dir / "evaluation" / "evaluation.json").read_text())
    report = json.loads((config.work_dir / "run" / "report.json").read_text())
    measured = headline(evaluation, report["seconds_training"])
    results = check(measured)
    summary = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "device": report["device"]},
        "commands": {name: shlex.join(command) for name, command in stages.items()},
        "stage_seconds": seconds,
        "best_epoch": report["best_epoch"],
        "epochs_run": len(report["history"]),
        "split": report["data"]["split"],
        "targets": results,
        "evaluation": evaluation,
    }
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(summary, indent=2) + "\n")
    print("\n| figure | measured | target | met |\n|---|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {result['measured']:.4f} | {result['target']} | {'yes' if result['met'] else 'NO'} |")
    print(f"\nreport: {config.out}; evaluation tables: {config.work_dir / 'evaluation' / 'evaluation.md'}")
    return 0 if all(result["met"] for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
