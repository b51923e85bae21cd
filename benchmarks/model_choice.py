"""Model choice under a budget: what each trained candidate detects beside what it costs to serve on this machine.

A candidate is a run of benchmarks.unseen_sources (a backbone, an input size, a recipe): its summary holds the
detection figures (unseen source, unseen fake family, in distribution), and its export is the model as served.
This benchmark measures every export the same way, one after another on an otherwise idle machine:

- forward images/s: the prepared TorchScript model (the workers' ServingOptions) on ready-made batches of 8,
  one single-thread process per core at once, which is what TorchServe's workers do on a CPU;
- pipeline images/s: decode + face detection + preprocessing + forward of real photos, in the same layout;

and puts them in one table, each candidate's serving rate also as a share of the reference candidate's (issue 20:
the chosen model must serve at no less than 80 % of today's images/s).

Usage:
    python -m benchmarks.model_choice [--summary PATH ...] [--reference baseline] [--photos DIR] [--images 32]
        [--out benchmarks/results/model_choice.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.inprocess import InProcessConfig, per_core_pipeline_throughput, per_core_throughput
from benchmarks.serving import machine_description
from handler.torchscript import ServingOptions

REPO_ROOT = Path(__file__).resolve().parent.parent
SUMMARIES = REPO_ROOT / "benchmarks" / "results" / "unseen_sources"
CONGRESS_PHOTOS = REPO_ROOT.parent / "shared" / "data" / "congress"
SERVING_FLOOR = 0.8  # issue 20: at least 80 % of today's model's images/s


@dataclass(frozen=True)
class ChoiceConfig:
    """What to compare and how to measure it.

    Attributes:
        summaries: benchmarks.unseen_sources summary JSONs, one per candidate (its export is read from work_dir).
        reference: the candidate whose serving rate is 100 % (today's model).
        photos: real photos sent through the pipeline (congress portraits: whole photos, one face each).
        images: how many of them.
        batch_size: forward and pipeline batch size (TorchServe's batch on this machine is up to 8).
        seconds: measuring time per run, after warm-up.
        repeats: runs per figure; the median is kept.
        cores: worker processes (one thread each).
        out: the results JSON; a markdown table is printed.

    """

    summaries: tuple[Path, ...]
    reference: str = "baseline"
    photos: Path = CONGRESS_PHOTOS
    images: int = 32
    batch_size: int = 8
    seconds: float = 3.0
    repeats: int = 3
    cores: int = 2
    out: Path = REPO_ROOT / "benchmarks" / "results" / "model_choice.json"


def candidate_export(summary: dict[str, Any]) -> Path:
    """The run's export folder (what scripts.package_model would archive)."""
    return Path(summary["work_dir"]) / "run" / "export"


def detection_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures issue 20 judges a model by, read from an unseen_sources summary."""
    targets = summary["targets"]

    def measured(name: str) -> float | None:
        return targets[name]["measured"] if name in targets else None

    strict = summary.get("operating_points", {}).get("fpr_2pct", {}).get("sets", {}).get("heldout", {})
    return {"heldout_fpr": measured("heldout_fpr"), "heldout_fpr_strict": strict.get("fpr"),
            "swap_roc_auc": measured("swap_roc_auc"), "in_distribution_roc_auc": measured("in_distribution_roc_auc"),
            "in_distribution_ece": measured("in_distribution_ece"),
            "train_minutes": summary["training"]["seconds"] / 60.0}


def read_photos(folder: Path, count: int) -> list[bytes]:
    """The first `count` images of `folder` (sorted, so every candidate gets the same ones), encoded as stored."""
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in {".jpg", ".jpeg", ".png"})[:count]
    if not paths:
        raise FileNotFoundError(f"no .jpg/.png photo in {folder}; pass --photos")
    return [path.read_bytes() for path in paths]


def serving_rates(export: Path, photos: list[bytes], config: ChoiceConfig) -> dict[str, float]:
    """Forward and pipeline images/s of one export, per-core layout, the workers' default ServingOptions."""
    measure = InProcessConfig(export, ServingOptions(), batch_sizes=(config.batch_size,), seconds=config.seconds,
                              repeats=config.repeats, cores=config.cores)
    return {"forward_images_per_s": per_core_throughput(measure)[config.batch_size],
            "pipeline_images_per_s": per_core_pipeline_throughput(measure, photos, config.batch_size)}


def architecture(export: Path) -> dict[str, Any]:
    """Backbone and input size, from the export's metadata (what the handler reads too)."""
    metadata = json.loads((export / "metadata.json").read_text())
    return {"architecture": metadata["architecture"], "input_size": metadata["preprocessing"]["input_size"][0]}


def compare(config: ChoiceConfig) -> dict[str, Any]:
    """One row per candidate whose export still exists; serving shares relative to the reference candidate."""
    photos = read_photos(config.photos, config.images)
    rows, missing = [], []
    for path in config.summaries:
        summary = json.loads(path.read_text())
        export = candidate_export(summary)
        if not (export / "metadata.json").is_file():
            missing.append({"summary": str(path), "export": str(export)})
            continue
        print(f"measuring {summary['name']} (without {summary['holdout']}): {export}", file=sys.stderr, flush=True)
        rows.append({"name": summary["name"], "holdout": summary["holdout"], **architecture(export),
                     **detection_figures(summary), **serving_rates(export, photos, config)})
    reference = next((row for row in rows if row["name"] == config.reference), None)
    for row in rows:
        for key in ("forward_images_per_s", "pipeline_images_per_s"):
            row[key.replace("images_per_s", "share")] = None if reference is None else row[key] / reference[key]
        row["serving_floor_met"] = None if reference is None else row["pipeline_share"] >= SERVING_FLOOR
    return {"machine": machine_description(), "reference": config.reference, "photos": str(config.photos),
            "images": len(photos), "batch_size": config.batch_size, "cores": config.cores,
            "serving_floor": SERVING_FLOOR, "candidates": rows, "exports_missing": missing}


def _cell(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per candidate, detection figures then serving rates."""
    lines = ["| candidate | backbone | input | held-out FPR youden / fpr_2pct | swap AUC | in-dist AUC | in-dist ECE | "
             "train min | forward img/s | pipeline img/s (share) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["candidates"]:
        share = "" if row["pipeline_share"] is None else f" ({row['pipeline_share']:.0%})"
        lines.append(
            f"| {row['name']} (without {row['holdout']}) | {row['architecture']} | {row['input_size']} | "
            f"{_cell(row['heldout_fpr'])} / {_cell(row['heldout_fpr_strict'])} | {_cell(row['swap_roc_auc'])} | "
            f"{_cell(row['in_distribution_roc_auc'])} | {_cell(row['in_distribution_ece'])} | "
            f"{row['train_minutes']:.1f} | {row['forward_images_per_s']:.1f} | "
            f"{row['pipeline_images_per_s']:.1f}{share} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measures every candidate, writes the JSON and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--summary", type=Path, action="append", dest="summaries",
                        help=f"an unseen_sources summary (repeatable; default every *-without-congress.json in "
                             f"{SUMMARIES.relative_to(REPO_ROOT)})")
    parser.add_argument("--reference", default=ChoiceConfig.reference, help="candidate whose rate is 100 %%")
    parser.add_argument("--photos", type=Path, default=CONGRESS_PHOTOS, help="folder of real photos for the pipeline")
    parser.add_argument("--images", type=int, default=ChoiceConfig.images)
    parser.add_argument("--seconds", type=float, default=ChoiceConfig.seconds, help="measuring time per run")
    parser.add_argument("--repeats", type=int, default=ChoiceConfig.repeats, help="runs per figure (median kept)")
    parser.add_argument("--out", type=Path, default=ChoiceConfig.out)
    args = parser.parse_args(argv)
    summaries = tuple(args.summaries or sorted(SUMMARIES.glob("*-without-congress.json"),
                                               key=lambda path: path.stat().st_mtime))
    config = ChoiceConfig(summaries, args.reference, args.photos, args.images, seconds=args.seconds,
                          repeats=args.repeats, out=args.out)
    results = compare(config)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    for item in results["exports_missing"]:
        print(f"not measured (export gone; rerun benchmarks.unseen_sources): {item['summary']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
