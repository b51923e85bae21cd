"""Cross-identity face swaps of a dataset's real images: the 'unseen family' evaluation set.

For every real image of the chosen split, a donor of a *different* subject of the same split is drawn
(fixed by the seed), preferring donors that share the target's `dataset` and `expression` values, so a
swap stays within one photo source and an open mouth meets an open mouth; donors whose brows are under a
fringe are passed over (the hair would come along with the face). Each family of
training.face_swap makes one fake of it, written as PNG like training.prepare's crops (the file format
carries no label). OUT/manifest.csv lists the fakes and the real images they were made from (read in
place by absolute path, never copied), with the columns training.dataset reads plus `family`, `donor`
and the source's `dataset`, so

    python -m training.evaluate --model EXPORT --dataset OUT/manifest.csv --faces precropped
        --group-by family --output-dir EVAL

reports the detector on swaps it never trained on; its overall ROC AUC is the 'unseen family' AUC, and
OUT/manifest_FAMILY.csv (the same reals with one family's fakes) gives one family's AUC. Never train on
these manifests.

Usage:
    python -m training.make_swaps --dataset crops/manifest.csv --output-dir build/swaps [--split test]
        [--seed 0] [--families faceswap_poisson faceswap_feather] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from handler.forensics import decode_rgb
from training.dataset import CLASS_NAMES, DatasetError, Sample, scan_dataset
from training.evaluate import read_manifest_columns
from training.face_swap import (
    FAMILIES,
    MIN_FOREHEAD_VISIBILITY,
    SwapConfig,
    SwapError,
    forehead_visibility,
    swap_with_landmarks,
)
from training.landmarks import face_landmarks
from training.prepare import FACES_FILENAME, PrepareError, write_png
from training.sbi import rng_for

MANIFEST_FILENAME = "manifest.csv"
REPORT_FILENAME = "swaps.json"
FAKE_FOLDER = "fake"
REAL_FAMILY = "real"
# Columns of the written manifests: what training.dataset reads, then what evaluation groups by.
MANIFEST_COLUMNS = ("path", "label", "subject", "split", "family", "donor", "dataset", "target_path", "donor_path")
DEFAULT_MATCH = ("dataset", "expression")


class SwapsError(ValueError):
    """The dataset or a flag cannot give swaps; the message names the file or flag and what to do."""


@dataclass(frozen=True)
class MakeSwapsConfig:
    """One run of the command.

    Attributes:
        dataset: anything training.dataset.scan_dataset reads with subjects (a manifest CSV, a run's splits.csv).
        output_dir: where the swaps, manifest.csv, manifest_FAMILY.csv and swaps.json go.
        split: keep only the real images of this split (train, val, test); None: all of them.
        seed: fixes each target's donor.
        families: names in training.face_swap.FAMILIES, one fake per target each.
        limit: at most this many targets (a seed-fixed subset); None: all.
        match: manifest columns a donor should share with its target, most important first; dropped from
            the end when no donor of another subject shares them all.
        swap: mask and colour settings of the swaps.
        overwrite: replace the files of an earlier run in output_dir.

    """

    dataset: Path
    output_dir: Path
    split: str | None = None
    seed: int = 0
    families: tuple[str, ...] = tuple(FAMILIES)
    limit: int | None = None
    match: tuple[str, ...] = DEFAULT_MATCH
    swap: SwapConfig = field(default_factory=SwapConfig)
    overwrite: bool = False

    def __post_init__(self) -> None:
        unknown = [name for name in self.families if name not in FAMILIES]
        if unknown or not self.families:
            raise SwapsError(f"--families {' '.join(unknown) or '(none)'}: choose from {sorted(FAMILIES)}")
        if self.limit is not None and self.limit < 1:
            raise SwapsError(f"--limit must be at least 1, got {self.limit}")
        if self.split is not None and self.split not in ("train", "val", "test"):
            raise SwapsError(f"--split must be train, val or test, got {self.split!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Planning (pure)


def donor_order(target: Sample, pool: Sequence[Sample], values: Mapping[Path, Mapping[str, str]],
                match: Sequence[str], seed: int) -> list[Sample]:
    """Donor candidates for `target`, best first: other subjects only, the most `match` columns shared first.

    Within one level of matching the order is a permutation fixed by (target path, seed), so a target
    keeps its donor whatever --limit or the other targets are.
    """
    others = [sample for sample in pool if sample.subject != target.subject]
    rng = rng_for(target.path.as_posix(), seed)
    shuffled = [others[index] for index in rng.permutation(len(others))]
    mine = values.get(target.path, {})

    def shared(candidate: Sample) -> int:
        theirs = values.get(candidate.path, {})
        count = 0
        for column in match:
            if not mine.get(column) or mine.get(column) != theirs.get(column):
                break
            count += 1
        return count

    return sorted(shuffled, key=shared, reverse=True)  # stable: the permutation orders equals


def choose_targets(reals: Sequence[Sample], limit: int | None, seed: int) -> list[Sample]:
    """All reals, or a seed-fixed subset of `limit` of them in their original order."""
    if limit is None or limit >= len(reals):
        return list(reals)
    chosen = np.random.default_rng(seed).choice(len(reals), size=limit, replace=False)
    return [reals[index] for index in sorted(chosen.tolist())]


def swap_name(target: Sample, root: Path, family: str, taken: set[str]) -> str:
    """FAKE_FOLDER/FAMILY/<the target's path in its dataset, without a leading real/>.png, unique in `taken`."""
    try:
        parts = list(target.path.relative_to(root).with_suffix("").parts)
    except ValueError:
        parts = [target.path.stem]
    if len(parts) > 1 and parts[0].lower() == REAL_FAMILY:
        parts = parts[1:]
    stem = "/".join([FAKE_FOLDER, family, *parts])
    name, number = f"{stem}.png", 1
    while name in taken:
        number += 1
        name = f"{stem}_{number}.png"
    taken.add(name)
    return name


# ---------------------------------------------------------------------------------------------------------------------
# I/O


def read_rgb(path: Path) -> np.ndarray:
    """An image as the trainer decodes it (handler.forensics.decode_rgb)."""
    return decode_rgb(path.read_bytes())


def _prepare_output(config: MakeSwapsConfig) -> None:
    output = Path(config.output_dir)
    ours = [output / FAKE_FOLDER, output / MANIFEST_FILENAME, output / REPORT_FILENAME, output / FACES_FILENAME,
            *output.glob("manifest_*.csv")]
    existing = [path for path in ours if path.exists()]
    if existing and not config.overwrite:
        raise SwapsError(f"{output} already holds swaps ({existing[0].name}); pass --overwrite or another --output-dir")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    output.mkdir(parents=True, exist_ok=True)


def _copy_faces_file(config: MakeSwapsConfig, samples: Sequence[Sample]) -> str | None:
    """The source's faces.json beside the new manifest: the swaps are crops cut exactly like their targets."""
    from training.evaluate import dataset_face_config  # evaluation code, only needed here

    _, found = dataset_face_config(Path(config.dataset), samples)
    if found is None:
        return None
    shutil.copyfile(found, Path(config.output_dir) / FACES_FILENAME)
    return str(found)


def _write_manifest(path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(MANIFEST_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def _real_row(sample: Sample, values: Mapping[str, str]) -> dict[str, str]:
    return {"path": str(sample.path.resolve()), "label": CLASS_NAMES[0], "subject": sample.subject or "",
            "split": sample.split or "", "family": REAL_FAMILY, "donor": "", "dataset": values.get("dataset", ""),
            "target_path": "", "donor_path": ""}


@dataclass(frozen=True)
class FaceFacts:
    """What the planning needs to know about one image's face.

    Attributes:
        points: its 68 landmarks, or None when it has no face.
        forehead_visibility: training.face_swap.forehead_visibility (0 without landmarks).

    """

    points: np.ndarray | None
    forehead_visibility: float

    @property
    def donor_problem(self) -> str | None:
        """Why the image cannot give its face, or None when it can."""
        if self.points is None:
            return "no_landmarks"
        return "forehead_under_hair" if self.forehead_visibility < MIN_FOREHEAD_VISIBILITY else None


class FaceCache:
    """Each image's landmarks and forehead check, found once: an image is a target once and a donor often.

    Only these facts are kept, not the pixels: hundreds of decoded crops would cost gigabytes.
    """

    def __init__(self, finder: Callable[[np.ndarray], np.ndarray | None] = face_landmarks) -> None:
        self._finder = finder
        self._facts: dict[Path, FaceFacts] = {}

    def facts(self, path: Path, rgb: np.ndarray | None = None) -> FaceFacts:
        """The facts of the image at `path` (decoded unless `rgb` is given)."""
        if path not in self._facts:
            rgb = read_rgb(path) if rgb is None else rgb
            points = self._finder(rgb)
            visibility = forehead_visibility(rgb, points) if points is not None else 0.0
            self._facts[path] = FaceFacts(points, visibility)
        return self._facts[path]

    def donor_problems(self) -> dict[str, int]:
        """How many of the images looked at so far cannot be donors, by reason."""
        return dict(Counter(facts.donor_problem for facts in self._facts.values() if facts.donor_problem))


def command_line(config: MakeSwapsConfig) -> str:
    """The command that repeats this run, for swaps.json."""
    parts = ["python", "-m", "training.make_swaps", "--dataset", str(config.dataset),
             "--output-dir", str(config.output_dir), "--seed", str(config.seed), "--families", *config.families,
             "--match", *config.match]
    parts += ["--split", config.split] if config.split else []
    parts += ["--limit", str(config.limit)] if config.limit else []
    return " ".join(parts)


def make_swaps(config: MakeSwapsConfig) -> dict[str, Any]:
    """Writes the swaps, the manifests, faces.json (when the source has one) and swaps.json; returns the report.

    A target without landmarks, or with no usable donor of another subject, is skipped and counted. A donor
    must have landmarks and a forehead not under a fringe (training.face_swap.forehead_visibility); the
    images that fail as donors are counted too (among those the planning looked at).

    Raises:
        SwapsError: the dataset has no subjects, no reals in the split, or output_dir holds an earlier run.

    """
    started = time.perf_counter()
    source = Path(config.dataset)
    try:
        scanned = scan_dataset(source, required_classes=("real",))
    except DatasetError as error:
        raise SwapsError(str(error)) from error
    reals = [sample for sample in scanned.samples if sample.label == CLASS_NAMES.index("real")]
    if config.split is not None:
        if not any(sample.split for sample in reals):
            raise SwapsError(f"--split {config.split}: {source} has no split column; drop --split or pass a run's "
                             "splits.csv")
        reals = [sample for sample in reals if sample.split == config.split]
    if not reals:
        raise SwapsError(f"{source} has no readable real image{f' in split {config.split}' if config.split else ''}")
    if any(sample.subject is None for sample in reals):
        raise SwapsError(f"{source} has real images without a subject; a cross-identity swap needs subject ids "
                         "(a manifest with a subject column, e.g. training.prepare's manifest.csv)")
    _prepare_output(config)
    values = read_manifest_columns(source, ["dataset", *config.match], required=False) if source.is_file() else {}
    pools: dict[str | None, list[Sample]] = {}
    for sample in reals:
        pools.setdefault(sample.split, []).append(sample)
    cache = FaceCache()
    output = Path(config.output_dir)
    taken: set[str] = set()
    real_rows: list[dict[str, str]] = []
    fake_rows: dict[str, list[dict[str, str]]] = {family: [] for family in config.families}
    skipped: list[dict[str, str]] = []
    targets = choose_targets(reals, config.limit, config.seed)
    for target in targets:
        target_rgb = read_rgb(target.path)
        target_points = cache.facts(target.path, target_rgb).points
        if target_points is None:
            skipped.append({"path": str(target.path), "reason": "no_target_landmarks"})
            continue
        candidates = donor_order(target, pools[target.split], values, config.match, config.seed)
        donor = next((candidate for candidate in candidates if cache.facts(candidate.path).donor_problem is None), None)
        if donor is None:
            skipped.append({"path": str(target.path), "reason": "no_usable_donor"})
            continue
        donor_rgb, donor_points = read_rgb(donor.path), cache.facts(donor.path).points
        made: dict[str, np.ndarray] = {}
        try:
            for family in config.families:
                made[family] = swap_with_landmarks(target_rgb, target_points, donor_rgb, donor_points, family,
                                                   config.swap)
        except SwapError as error:
            skipped.append({"path": str(target.path), "reason": error.reason})
            continue
        target_values = values.get(target.path, {})
        real_rows.append(_real_row(target, target_values))
        for family, fake in made.items():
            name = swap_name(target, scanned.root, family, taken)
            write_png(output / name, fake)
            fake_rows[family].append({
                "path": name, "label": CLASS_NAMES[1], "subject": target.subject or "", "split": target.split or "",
                "family": family, "donor": donor.subject or "", "dataset": target_values.get("dataset", ""),
                "target_path": str(target.path.resolve()), "donor_path": str(donor.path.resolve()),
            })
    if not real_rows:
        raise SwapsError(f"no swap could be made from {len(targets)} target(s): "
                         f"{dict(Counter(entry['reason'] for entry in skipped))}")
    _write_manifest(output / MANIFEST_FILENAME, [*real_rows, *(row for rows in fake_rows.values() for row in rows)])
    for family, rows in fake_rows.items():
        _write_manifest(output / f"manifest_{family}.csv", [*real_rows, *rows])
    faces_source = _copy_faces_file(config, reals)
    report = {
        "command": command_line(config),
        "dataset": str(source), "output_dir": str(output), "split": config.split, "seed": config.seed,
        "families": {family: FAMILIES[family][1] for family in config.families}, "match": list(config.match),
        "swap_settings": asdict(config.swap), "faces_json_from": faces_source,
        "counts": {"targets": len(targets), "reals": len(real_rows),
                   "swaps": {family: len(rows) for family, rows in fake_rows.items()},
                   "skipped": len(skipped), "skipped_by_reason": dict(Counter(entry["reason"] for entry in skipped)),
                   "images_not_used_as_donors": cache.donor_problems()},
        "skipped": skipped, "seconds": round(time.perf_counter() - started, 2),
    }
    (output / REPORT_FILENAME).write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary_line(report: Mapping[str, Any]) -> str:
    """One line for the terminal."""
    counts = report["counts"]
    swaps = ", ".join(f"{family} {count}" for family, count in counts["swaps"].items())
    reasons = ", ".join(f"{reason} {count}" for reason, count in counts["skipped_by_reason"].items()) or "none"
    return (f"{counts['targets']} targets → {counts['reals']} reals + swaps ({swaps}) in {report['output_dir']} "
            f"in {report['seconds']} s; skipped {counts['skipped']} ({reasons}); manifest: "
            f"{Path(report['output_dir']) / MANIFEST_FILENAME}")


def parse_args(argv: list[str] | None = None) -> MakeSwapsConfig:
    """Command line → MakeSwapsConfig; invalid values end with a usage message naming them."""
    families = "\n".join(f"  {name}: {description}" for name, (_, description) in FAMILIES.items())
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"swap families (--families):\n{families}\n\nthen: python -m training.evaluate --model EXPORT "
               "--dataset OUT/manifest.csv --faces precropped --group-by family --output-dir EVAL")
    parser.add_argument("--dataset", type=Path, required=True,
                        help="a manifest with subjects: training.prepare's manifest.csv or a run's splits.csv")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder for the swaps and manifest.csv")
    parser.add_argument("--split", choices=["train", "val", "test"], help="only the reals of this split")
    parser.add_argument("--seed", type=int, default=0, help="fixes each target's donor (default 0)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), metavar="NAME",
                        help=f"swap families to make (default: all: {' '.join(FAMILIES)})")
    parser.add_argument("--limit", type=int, help="at most this many targets (a seed-fixed subset)")
    parser.add_argument("--match", nargs="*", default=list(DEFAULT_MATCH), metavar="COLUMN",
                        help="manifest columns a donor should share with its target, most important first "
                             f"(default: {' '.join(DEFAULT_MATCH)})")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --output-dir")
    args = parser.parse_args(argv)
    try:
        return MakeSwapsConfig(dataset=args.dataset, output_dir=args.output_dir, split=args.split, seed=args.seed,
                               families=tuple(args.families), limit=args.limit, match=tuple(args.match),
                               overwrite=args.overwrite)
    except SwapsError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    config = parse_args(argv)
    try:
        report = make_swaps(config)
    except (SwapsError, PrepareError) as error:
        sys.exit(f"make_swaps: {error}")
    print(summary_line(report))


if __name__ == "__main__":
    main()
