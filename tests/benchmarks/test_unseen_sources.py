from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from benchmarks.unseen_sources import (
    TABLE_HEADER,
    UnseenConfig,
    operating_points,
    operating_table,
    probe_table,
    split_manifests,
    summarise,
    table_row,
)
from training.prepare import FACES_FILENAME

COLUMNS = ["path", "label", "subject", "dataset"]


def write_crops(folder: Path, rows: list[tuple[str, str, str]]) -> None:
    folder.mkdir(parents=True)
    (folder / FACES_FILENAME).write_text('{"schema_version": 1, "faces": {}}')
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows([path, "real", subject, dataset] for path, subject, dataset in rows)


@pytest.fixture
def config(tmp_path) -> UnseenConfig:
    work = tmp_path / "work"
    write_crops(work / "crops" / "faces", [("real/london/a.png", "L1", "london"), ("real/amfd/b.png", "A1", "amfd")])
    write_crops(work / "crops" / "congress", [("real/c.png", "C1", "congress"), ("real/d.png", "C2", "congress")])
    return UnseenConfig("baseline", "congress", tmp_path, work, tmp_path / "recipe.yaml", (), tmp_path / "out.json")


def read(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_the_held_out_source_is_left_out_of_training_and_is_all_of_the_held_out_data(config):
    train, heldout = split_manifests(config)
    train_rows, heldout_rows = read(train), read(heldout)
    assert {row["dataset"] for row in train_rows} == {"london", "amfd"}
    assert [row["subject"] for row in heldout_rows] == ["C1", "C2"]
    # absolute paths into the crops, read in place; the crops' faces.json travels so the export is a face model
    assert all(Path(row["path"]).is_absolute() for row in train_rows + heldout_rows)
    assert heldout_rows[0]["path"] == str((config.work_dir / "crops" / "congress" / "real" / "c.png").resolve())
    assert (train.parent / FACES_FILENAME).is_file() and (heldout.parent / FACES_FILENAME).is_file()
    assert train.parent.parent == config.run_dir and config.run_dir.name == "baseline-without-congress"


def test_a_source_that_is_not_in_the_crops_is_refused(config):
    with pytest.raises(SystemExit, match="sources: \\['amfd', 'congress', 'london'\\]"):
        split_manifests(UnseenConfig(**{**config.__dict__, "holdout": "flickr"}))


def evaluation(roc_auc: float, fpr: float, ece: float, rows: dict[str, float]) -> dict:
    interval = [max(0.0, fpr - 0.02), fpr + 0.03]
    return {
        "threshold": 0.5,
        "metrics": {"roc_auc": roc_auc, "ece": ece, "fpr_at_threshold": fpr, "tpr_at_threshold": 0.9,
                    "intervals": {"roc_auc": [roc_auc - 0.01, min(1.0, roc_auc + 0.01)], "fpr_at_threshold": interval}},
        "robustness": [{"condition": name, "fpr_at_threshold": value, "fpr_interval": interval, "roc_auc": roc_auc,
                        "tpr_at_threshold": 0.9} for name, value in rows.items()],
        "groups": {"family": [{"value": "faceswap_poisson", "roc_auc": roc_auc}]},
    }


def test_summary_judges_each_target_from_the_evaluations(config):
    folder = config.run_dir
    for name, content in {
        "eval-test": evaluation(0.995, 0.02, 0.025, {"clean": 0.02}),
        "eval-heldout": evaluation(0.97, 0.12, 0.05, {"clean": 0.12, "cast_warm": 0.3, "cast_cool": 0.4}),
        "eval-swaps-test": evaluation(0.96, 0.02, 0.04, {"clean": 0.02}),
        "eval-swaps-heldout": evaluation(0.91, 0.12, 0.05, {"clean": 0.12}),
    }.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "evaluation.json").write_text(json.dumps(content))
    for name in ("test", "heldout"):
        with (folder / f"eval-swaps-{name}" / "scores.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "condition", "probability_fake", "family"])
            writer.writerows([[f"r{i}", "real", "clean", 0.1 * i, "real"] for i in range(4)]
                             + [["p0", "fake", "clean", 0.9, "faceswap_poisson"], ["p1", "fake", "clean", 0.15,
                                                                                    "faceswap_poisson"],
                                ["f0", "fake", "clean", 0.05, "faceswap_feather"], ["x", "fake", "jpeg_q50", 0.0,
                                                                                    "faceswap_feather"]])
    (folder / "run").mkdir()
    (folder / "run" / "report.json").write_text(json.dumps(
        {"device": "cpu", "seconds_training": 600.0, "best_epoch": 9, "history": [{}] * 12, "data": {"split": {}}}))
    summary = summarise(config, {"train": 600.0})
    targets = summary["targets"]
    assert targets["heldout_fpr"]["measured"] == 0.12 and not targets["heldout_fpr"]["met"]
    assert targets["swap_roc_auc"]["measured"] == 0.91  # the worse swap set decides
    assert targets["in_distribution_roc_auc"]["met"] and targets["in_distribution_ece"]["met"]
    assert targets["heldout_fpr"]["interval"] == pytest.approx([0.1, 0.15])
    assert summary["heldout"]["cast_warm"]["fpr"] == 0.3
    families = summary["swaps"]["test"]["by_family"]
    # reals 0, .1, .2, .3 against the poisson fakes .9 and .15 (beats 2 of 4 reals): (4 + 2) / 8; clean rows only
    assert families["faceswap_poisson"]["roc_auc"] == pytest.approx(0.75) and families["faceswap_poisson"]["fakes"] == 2
    assert families["faceswap_feather"]["roc_auc"] == 0.25 and families["faceswap_feather"]["fakes"] == 1
    row = table_row(summary)
    assert row.startswith("| baseline | congress | 0.120 [0.100, 0.150] | 0.910 [0.900, 0.920] |")
    assert "0.30 / 0.40" in row and row.count("|") == TABLE_HEADER.splitlines()[0].count("|")


def test_summary_without_an_evaluation_says_what_is_missing(config):
    with pytest.raises(SystemExit, match="run without --skip"):
        summarise(config, {})


def test_probe_table_has_a_column_per_lever_and_a_row_per_condition():
    summaries = [{"name": name, "holdout": "congress",
                  "heldout": {"clean": {"fpr": fpr}, "cast_warm": {"fpr": fpr + 0.1}}}
                 for name, fpr in (("baseline", 0.9), ("colour", 0.2))]
    lines = probe_table(summaries).splitlines()
    assert lines[0] == "| condition | baseline (without congress) | colour (without congress) |"
    assert lines[2:] == ["| clean | 0.900 | 0.200 |", "| cast_warm | 1.000 | 0.300 |"]


def write_scores(path: Path, reals: list[float], fakes: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "condition", "probability_fake"])
        writer.writerows([f"r{i}", "real", "clean", score] for i, score in enumerate(reals))
        writer.writerows([f"f{i}", "fake", "clean", score] for i, score in enumerate(fakes))
        writer.writerow(["x", "real", "jpeg_q50", 0.99])  # only clean rows count


def test_operating_points_choose_on_validation_and_apply_to_every_set(tmp_path):
    # validation: 50 reals at 0.00..0.49 plus two at 0.8 and 0.85; fakes spread above
    write_scores(tmp_path / "eval-val" / "scores.csv", [i / 100 for i in range(50)] + [0.8, 0.85],
                 [0.3, 0.6, 0.7, 0.9])
    write_scores(tmp_path / "eval-heldout" / "scores.csv", [0.2, 0.5, 0.65, 0.85], [0.95, 0.6])
    points = operating_points(tmp_path)
    assert list(points) == ["youden", "fpr_5pct", "fpr_2pct"]
    strict = points["fpr_2pct"]
    assert strict["threshold"] == pytest.approx(0.85)  # one validation real of 52 (2 %) may be called fake
    assert strict["sets"]["heldout"]["fpr"] == 0.25 and strict["sets"]["heldout"]["tpr"] == 0.5
    assert points["youden"]["threshold"] < strict["threshold"]
    assert points["youden"]["sets"]["heldout"]["fpr"] >= strict["sets"]["heldout"]["fpr"]
    assert "| x | fpr_2pct | 0.850 |" in operating_table([{"name": "x", "operating_points": points}])
    assert operating_points(tmp_path / "nothing") == {}
