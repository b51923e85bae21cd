"""Generalisation to what training never saw: a whole real source left out, and an unseen fake family.

A face model scored on its own source's test people says little about a photo from another camera:
the first face recipe reached ROC AUC 0.97 on them and called 85 % of the congress portraits fake.
This benchmark measures what a user meets instead, with the project's own commands:

1. prepare: face crops of every shared source (../shared/data/faces: london + amfd; ../shared/data/congress),
   read in place, written under --work-dir (never into the repository);
2. train: on every source except --holdout (a subject split inside the training sources);
3. evaluate, through the exported model as served (threshold, calibration):
   - in distribution: the training sources' test people vs their self-blends (SBI);
   - the held-out source: all of its real photos (false-positive rate at the served threshold, the number a
     user of another camera sees) and their self-blends;
   - an unseen fake family: cross-identity face swaps (training.make_swaps, landmark warp + Poisson or feathered
     blending, never trained on) made from the test people and from the held-out source;
   every evaluation also runs the probe rows of training.perturbations (colour casts, framing, resolution);
4. summary: the targets of issue 20 with 95 % intervals, written to --out and printed as a table row.

Usage:
    python -m benchmarks.unseen_sources --name baseline [--holdout congress] [--recipe config/train-faces-sbi.yaml]
        [--set key=value ...] [--work-dir /tmp/deepfake-unseen] [--skip STAGE ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.faces_sbi import check, run_stage
from training.intervals import auc_interval, rate_intervals
from training.metrics import choose_threshold
from training.prepare import FACES_FILENAME

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# Source folders under ../shared/data, each with a manifest.csv whose `dataset` column names the source(s).
SOURCE_FOLDERS = ("faces", "congress")
TARGETS = {
    "heldout_fpr": ("<=", 0.05),
    "swap_roc_auc": (">=", 0.95),
    "in_distribution_roc_auc": (">=", 0.99),
    "in_distribution_ece": ("<=", 0.03),
}
STAGES = ("prepare", "train", "evaluate", "swaps", "operating_points")
# Threshold rules compared on the same model (training.metrics): each picks its threshold on the validation split.
OPERATING_RULES = ("youden", "fpr_5pct", "fpr_2pct")


@dataclass(frozen=True)
class UnseenConfig:
    """One lever measured against one held-out source.

    Attributes:
        name: the lever's name (a folder and a report row), e.g. baseline or colour_cast.
        holdout: the `dataset` value left out of training (congress, london or amfd).
        data_root: the folder holding the shared source folders.
        work_dir: crops and runs go here (derived from the shared data, so outside the repository).
        recipe: the training recipe.
        overrides: `--set` values passed on to training.train.
        out: the summary JSON.
        skip: stages whose output already in work_dir is reused.

    """

    name: str
    holdout: str
    data_root: Path
    work_dir: Path
    recipe: Path
    overrides: tuple[str, ...]
    out: Path
    skip: tuple[str, ...] = ()

    @property
    def run_dir(self) -> Path:
        """Everything of this lever and held-out source."""
        return self.work_dir / f"{self.name}-without-{self.holdout}"


def crops_dir(config: UnseenConfig, folder: str) -> Path:
    """Where a source folder's crops live; shared by every lever, so each source is cropped once."""
    return config.work_dir / "crops" / folder


def prepare_sources(config: UnseenConfig) -> None:
    """Crops every source folder that has no crops yet (training.prepare, the user's command)."""
    for folder in SOURCE_FOLDERS:
        crops = crops_dir(config, folder)
        if (crops / "manifest.csv").is_file():
            continue
        source = config.data_root / folder
        crops.parent.mkdir(parents=True, exist_ok=True)
        run_stage(f"prepare {folder}", [sys.executable, "-m", "training.prepare", str(source), "--output-dir",
                                        str(crops), "--subjects-csv", str(source / "manifest.csv"), "--workers", "2",
                                        "--overwrite"], config.work_dir / f"prepare-{folder}.log")


def split_manifests(config: UnseenConfig) -> tuple[Path, Path]:
    """(training manifest without the held-out source, held-out manifest), with absolute paths and faces.json.

    Raises:
        SystemExit: the held-out source is not a `dataset` value of any crop manifest.

    """
    rows: list[dict[str, str]] = []
    fields: list[str] = []
    for folder in SOURCE_FOLDERS:
        crops = crops_dir(config, folder)
        with (crops / "manifest.csv").open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields += [name for name in reader.fieldnames or [] if name not in fields]
            for row in reader:
                rows.append({**row, "path": str((crops / row["path"]).resolve())})
    sources = sorted({row["dataset"] for row in rows})
    if config.holdout not in sources:
        raise SystemExit(f"--holdout {config.holdout!r} is not a source of the crops; sources: {sources}")
    written = []
    for name, keep in (("train-data", lambda row: row["dataset"] != config.holdout),
                       ("heldout-data", lambda row: row["dataset"] == config.holdout)):
        folder = config.run_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        # The crops' faces.json beside the manifest makes training export a face model, as from one crops folder.
        shutil.copyfile(crops_dir(config, SOURCE_FOLDERS[0]) / FACES_FILENAME, folder / FACES_FILENAME)
        with (folder / "manifest.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(row for row in rows if keep(row))
        written.append(folder / "manifest.csv")
    return written[0], written[1]


def swaps_dir(config: UnseenConfig, name: str) -> Path:
    """The swap set of the test people or the held-out source: shared by every lever with the same held-out source.

    The swaps depend on the data and the subject split alone (both fixed by the held-out source and the
    seed), not on the model, so levers are compared on the very same fakes and the set is made once.
    """
    return config.work_dir / "swaps" / f"without-{config.holdout}" / name


def evaluate_command(export: Path, dataset: Path, output: Path, *extra: str) -> list[str]:
    """training.evaluate on face crops, every probe row, broken down by source (and family, for swaps)."""
    return [sys.executable, "-m", "training.evaluate", "--model", str(export), "--dataset", str(dataset),
            "--faces", "precropped", "--perturbation", "all", "--output-dir", str(output), *extra]


def run_all(config: UnseenConfig) -> dict[str, Any]:
    """The stages in order; returns the seconds each took."""
    seconds: dict[str, float] = {}
    if "prepare" not in config.skip:
        prepare_sources(config)
    train_manifest, heldout_manifest = split_manifests(config)
    run, log = config.run_dir / "run", config.run_dir
    export = run / "export"
    if "train" not in config.skip:
        command = [sys.executable, "-m", "training.train", "--config", str(config.recipe), "--dataset",
                   str(train_manifest), "--output-dir", str(run)]
        for override in config.overrides:
            command += ["--set", override]
        seconds["train"] = run_stage("train", command, log / "train.log")
    if "evaluate" not in config.skip:
        seconds["evaluate_test"] = run_stage("evaluate test people", evaluate_command(
            export, run / "splits.csv", config.run_dir / "eval-test", "--split", "test", "--sbi",
            "--group-by", "dataset"), log / "eval-test.log")
        seconds["evaluate_heldout"] = run_stage("evaluate held-out source", evaluate_command(
            export, heldout_manifest, config.run_dir / "eval-heldout", "--sbi", "--group-by", "dataset"),
            log / "eval-heldout.log")
    if "swaps" not in config.skip:
        for name, manifest, extra in (("test", run / "splits.csv", ["--split", "test"]),
                                      ("heldout", heldout_manifest, [])):
            swaps = swaps_dir(config, name)
            if not (swaps / "manifest.csv").is_file():
                seconds[f"make_swaps_{name}"] = run_stage(f"make swaps ({name})", [
                    sys.executable, "-m", "training.make_swaps", "--dataset", str(manifest), *extra,
                    "--output-dir", str(swaps)], log / f"make-swaps-{name}.log")
            seconds[f"evaluate_swaps_{name}"] = run_stage(f"evaluate swaps ({name})", evaluate_command(
                export, swaps / "manifest.csv", config.run_dir / f"eval-swaps-{name}", "--group-by", "family",
                "dataset", "--no-robustness"), log / f"eval-swaps-{name}.log")
    if "operating_points" not in config.skip and not (config.run_dir / "eval-val" / "scores.csv").is_file():
        seconds["evaluate_val"] = run_stage("evaluate validation", evaluate_command(
            export, run / "splits.csv", config.run_dir / "eval-val", "--split", "val", "--sbi", "--no-robustness"),
            log / "eval-val.log")
    return seconds


def _clean_rows(scores_csv: Path) -> list[dict[str, str]]:
    """The rows of an evaluation's scores.csv scored without perturbation."""
    with scores_csv.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["condition"] == "clean"]


def _clean_scores(scores_csv: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels 1 = fake, calibrated probability of fake) of the clean rows of an evaluation's scores.csv."""
    rows = _clean_rows(scores_csv)
    return (np.array([row["label"] == "fake" for row in rows], dtype=int),
            np.array([float(row["probability_fake"]) for row in rows]))


def operating_points(folder: Path) -> dict[str, dict[str, Any]]:
    """The same model at each threshold rule of OPERATING_RULES, chosen on its validation split (no held-out data).

    The served threshold is one rule's choice; a deployment that must keep unseen cameras' reals real can pick a
    stricter rule at no training cost. Per rule: the threshold, then FPR (Wilson interval) and TPR of each set.
    """
    validation = folder / "eval-val" / "scores.csv"
    if not validation.is_file():
        return {}
    labels, scores = _clean_scores(validation)
    points = {}
    for rule in OPERATING_RULES:
        threshold = choose_threshold(labels, scores, rule)
        sets = {}
        for name in ("eval-test", "eval-heldout", "eval-swaps-test", "eval-swaps-heldout"):
            if not (folder / name / "scores.csv").is_file():
                continue
            set_labels, set_scores = _clean_scores(folder / name / "scores.csv")
            called = set_scores >= threshold
            sets[name.removeprefix("eval-")] = {
                "fpr": float(np.mean(called[set_labels == 0])) if np.any(set_labels == 0) else 0.0,
                "fpr_interval": rate_intervals(set_labels, set_scores, threshold)["fpr_at_threshold"],
                "tpr": float(np.mean(called[set_labels == 1])) if np.any(set_labels == 1) else 0.0,
            }
        points[rule] = {"threshold": threshold, "sets": sets}
    return points


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def family_aucs(scores_csv: Path) -> dict[str, dict[str, Any]]:
    """ROC AUC and 95 % interval of the reals against each swap family alone, from an evaluation's scores.csv.

    The evaluation's own per-family table cannot give it: a family's group holds only its fakes.
    """
    rows = _clean_rows(scores_csv)
    reals = [float(row["probability_fake"]) for row in rows if row["label"] == "real"]
    families = sorted({row["family"] for row in rows if row["label"] == "fake"})
    results = {}
    for family in families:
        fakes = [float(row["probability_fake"]) for row in rows if row["label"] == "fake" and row["family"] == family]
        labels, scores = np.r_[np.zeros(len(reals)), np.ones(len(fakes))], np.r_[reals, fakes]
        results[family] = {"fakes": len(fakes), "roc_auc": float(roc_auc_score(labels, scores)),
                           "roc_auc_interval": auc_interval(labels, scores)}
    return results


def heldout_reals(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The held-out source's real photos: FPR at the served threshold (Wilson interval) per condition."""
    return {row["condition"]: {"fpr": row["fpr_at_threshold"], "fpr_interval": row["fpr_interval"],
                               "roc_auc_vs_sbi": row["roc_auc"]} for row in evaluation["robustness"]}


def summarise(config: UnseenConfig, seconds: dict[str, float]) -> dict[str, Any]:
    """The figures the targets are about, from the evaluations' JSON, plus every probe row."""
    folder = config.run_dir
    test, heldout = _read(folder / "eval-test" / "evaluation.json"), _read(folder / "eval-heldout" / "evaluation.json")
    report = _read(folder / "run" / "report.json")
    if test is None or heldout is None or report is None:
        raise SystemExit(f"missing evaluation or training report under {folder}; run without --skip")
    swaps = {name: _read(folder / f"eval-swaps-{name}" / "evaluation.json") for name in ("test", "heldout")}
    measured = {
        "heldout_fpr": heldout["metrics"]["fpr_at_threshold"],
        "in_distribution_roc_auc": test["metrics"]["roc_auc"],
        "in_distribution_ece": test["metrics"]["ece"],
    }
    intervals = {
        "heldout_fpr": heldout["metrics"]["intervals"]["fpr_at_threshold"],
        "in_distribution_roc_auc": test["metrics"]["intervals"]["roc_auc"],
    }
    swap_rows = {}
    for name, evaluation in swaps.items():
        if evaluation is None:
            continue
        swap_rows[name] = {"roc_auc": evaluation["metrics"]["roc_auc"],
                           "roc_auc_interval": evaluation["metrics"]["intervals"]["roc_auc"],
                           "tpr_at_threshold": evaluation["metrics"]["tpr_at_threshold"],
                           "by_family": family_aucs(folder / f"eval-swaps-{name}" / "scores.csv")}
    if swap_rows:
        # The worse of the two swap sets is the figure the target is judged by.
        worst = min(swap_rows, key=lambda name: swap_rows[name]["roc_auc"])
        measured["swap_roc_auc"] = swap_rows[worst]["roc_auc"]
        intervals["swap_roc_auc"] = swap_rows[worst]["roc_auc_interval"]
    targets = check(measured, {name: target for name, target in TARGETS.items() if name in measured})
    for name, result in targets.items():
        result["interval"] = intervals.get(name)
    return {
        "name": config.name, "holdout": config.holdout, "recipe": str(config.recipe),
        "overrides": list(config.overrides),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "device": report["device"]},
        "training": {"seconds": report["seconds_training"], "best_epoch": report["best_epoch"],
                     "epochs_run": len(report["history"]), "split": report["data"]["split"]},
        "stage_seconds": seconds,
        "threshold": test["threshold"],
        "targets": targets,
        "in_distribution": {row["condition"]: {"roc_auc": row["roc_auc"], "fpr": row["fpr_at_threshold"],
                                               "tpr": row["tpr_at_threshold"]} for row in test["robustness"]},
        "heldout": heldout_reals(heldout),
        "swaps": swap_rows,
        "operating_points": operating_points(folder),
        "work_dir": str(folder),
    }


def _interval(values: Any) -> str:
    return "" if not values else f" [{values[0]:.3f}, {values[1]:.3f}]"


def table_row(summary: dict[str, Any]) -> str:
    """One markdown row: lever, held-out FPR, swap AUC, in-distribution AUC/ECE, held-out FPR under warm/cool casts."""
    targets, heldout = summary["targets"], summary["heldout"]

    def figure(name: str) -> str:
        result = targets.get(name)
        return "n/a" if result is None else f"{result['measured']:.3f}{_interval(result.get('interval'))}"

    casts = " / ".join(f"{heldout[name]['fpr']:.2f}" for name in ("cast_warm", "cast_cool") if name in heldout)
    return (f"| {summary['name']} | {summary['holdout']} | {figure('heldout_fpr')} | {figure('swap_roc_auc')} | "
            f"{figure('in_distribution_roc_auc')} | {figure('in_distribution_ece')} | {casts} | "
            f"{summary['training']['seconds'] / 60:.1f} |")


TABLE_HEADER = ("| lever | held out | held-out FPR [95 %] | swap AUC [95 %] | in-dist AUC [95 %] | in-dist ECE | "
                "held-out FPR warm / cool cast | train min |\n|---|---|---|---|---|---|---|---|")


def probe_table(summaries: list[dict[str, Any]], section: str = "heldout") -> str:
    """Markdown: one row per probe condition, one column per lever: FPR of the reals at the served threshold."""
    conditions = list(summaries[0][section]) if summaries else []
    header = "| condition | " + " | ".join(f"{s['name']} (without {s['holdout']})" for s in summaries) + " |"
    lines = [header, "|" + "---|" * (len(summaries) + 1)]
    for condition in conditions:
        cells = [f"{s[section][condition]['fpr']:.3f}" if condition in s[section] else "n/a" for s in summaries]
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def operating_table(summaries: list[dict[str, Any]]) -> str:
    """Markdown: each lever at each threshold rule, the false-positive and detection rates of every set."""
    lines = ["| lever | rule | threshold | test FPR | held-out FPR [95 %] | held-out SBI TPR | "
             "swap TPR test / held-out |", "|---|---|---|---|---|---|---|"]
    for summary in summaries:
        for rule, point in summary.get("operating_points", {}).items():
            sets = point["sets"]

            def rate(name: str, key: str, sets: dict = sets) -> str:
                return f"{sets[name][key]:.3f}" if name in sets else "n/a"

            heldout = sets.get("heldout", {})
            lines.append(f"| {summary['name']} | {rule} | {point['threshold']:.3f} | {rate('test', 'fpr')} | "
                         f"{rate('heldout', 'fpr')}{_interval(heldout.get('fpr_interval'))} | "
                         f"{rate('heldout', 'tpr')} | {rate('swaps-test', 'tpr')} / {rate('swaps-heldout', 'tpr')} |")
    return "\n".join(lines)


def render_tables(folder: Path) -> str:
    """Every summary in `folder` (oldest first) as the ablation table and the held-out probe table."""
    paths = sorted(folder.glob("*.json"), key=lambda path: path.stat().st_mtime)
    summaries = [json.loads(path.read_text()) for path in paths]
    rows = "\n".join(table_row(summary) for summary in summaries)
    return (f"{TABLE_HEADER}\n{rows}\n\nFalse-positive rate of the held-out source's real photos at the served "
            f"threshold, per probe:\n\n{probe_table(summaries)}\n\nThe same for the test people of the training "
            f"sources:\n\n{probe_table(summaries, 'in_distribution')}\n\nThe same models at each threshold rule, "
            f"chosen on their validation split:\n\n{operating_table(summaries)}")


def main(argv: list[str] | None = None) -> int:
    """Runs the stages and writes the summary; exits 1 when a target is missed (the summary is written either way)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--name", default="baseline", help="the lever's name: a folder and a report row")
    parser.add_argument("--holdout", default="congress", help="the source left out of training (congress, london, "
                                                              "amfd: the crops' `dataset` values)")
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA, help="folder holding faces/ and congress/")
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "deepfake-unseen")
    parser.add_argument("--recipe", type=Path, default=REPO_ROOT / "config" / "train-faces-sbi.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="training override, passed on to training.train")
    parser.add_argument("--skip", action="append", default=[], choices=STAGES,
                        help="reuse that stage's output already in --work-dir (repeatable)")
    parser.add_argument("--out", type=Path, help="summary JSON (default benchmarks/results/unseen_sources/"
                                                 "NAME-without-HOLDOUT.json)")
    parser.add_argument("--tables", action="store_true", help="only print the tables of every summary already in "
                                                              "benchmarks/results/unseen_sources/ and exit")
    args = parser.parse_args(argv)
    if args.tables:
        print(render_tables(REPO_ROOT / "benchmarks" / "results" / "unseen_sources"))
        return 0
    config = UnseenConfig(args.name, args.holdout, args.data_root.resolve(), args.work_dir.resolve(),
                          args.recipe.resolve(), tuple(args.overrides),
                          args.out or REPO_ROOT / "benchmarks" / "results" / "unseen_sources" /
                          f"{args.name}-without-{args.holdout}.json", tuple(args.skip))
    config.run_dir.mkdir(parents=True, exist_ok=True)
    seconds = run_all(config)
    summary = summarise(config, seconds)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{TABLE_HEADER}\n{table_row(summary)}\n\nsummary: {config.out}")
    return 0 if all(result["met"] for result in summary["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
