"""benchmarks/model_choice.py: candidates read from unseen_sources summaries, measured on their exports, compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.model_choice import ChoiceConfig, compare, detection_figures, main, read_photos, table
from tests.conftest import link_export

pytestmark = pytest.mark.usefixtures("restore_thread_counts")


def summary(name: str, work_dir: Path, heldout_fpr: float, strict_fpr: float | None = 0.03) -> dict:
    targets = {"heldout_fpr": {"measured": heldout_fpr}, "swap_roc_auc": {"measured": 0.7},
               "in_distribution_roc_auc": {"measured": 0.97}, "in_distribution_ece": {"measured": 0.05}}
    points = {} if strict_fpr is None else {"fpr_2pct": {"sets": {"heldout": {"fpr": strict_fpr}}}}
    return {"name": name, "holdout": "congress", "targets": targets, "operating_points": points,
            "training": {"seconds": 600.0}, "work_dir": str(work_dir)}


def write_summary(folder: Path, content: dict) -> Path:
    path = folder / f"{content['name']}-without-congress.json"
    path.write_text(json.dumps(content))
    return path


def test_detection_figures_take_the_served_and_the_strict_operating_point():
    figures = detection_figures(summary("a", Path("/nowhere"), 0.13, strict_fpr=0.034))
    assert figures["heldout_fpr"] == 0.13 and figures["heldout_fpr_strict"] == 0.034
    assert figures["train_minutes"] == 10.0
    assert detection_figures(summary("b", Path("/nowhere"), 0.2, strict_fpr=None))["heldout_fpr_strict"] is None


def test_photos_are_read_in_a_fixed_order_and_an_empty_folder_is_refused(tmp_path, tiny_dataset):
    photos = read_photos(tiny_dataset / "real", 3)
    assert photos == [path.read_bytes() for path in sorted((tiny_dataset / "real").glob("*.jpg"))[:3]]
    with pytest.raises(FileNotFoundError, match="no .jpg/.png photo"):
        read_photos(tmp_path, 3)


def test_every_candidate_with_an_export_is_measured_relative_to_the_reference(tmp_path, tiny_export, tiny_dataset):
    for name in ("reference", "candidate"):
        link_export(tiny_export, tmp_path / name / "run" / "export")
    paths = (write_summary(tmp_path, summary("reference", tmp_path / "reference", 0.9)),
             write_summary(tmp_path, summary("candidate", tmp_path / "candidate", 0.1)),
             write_summary(tmp_path, summary("gone", tmp_path / "gone", 0.5)))
    config = ChoiceConfig(paths, reference="reference", photos=tiny_dataset / "real", images=2, seconds=0.05,
                          repeats=1, out=tmp_path / "choice.json")
    results = compare(config)
    rows = {row["name"]: row for row in results["candidates"]}
    assert set(rows) == {"reference", "candidate"}
    assert results["exports_missing"] == [{"summary": str(paths[2]), "export": str(tmp_path / "gone" / "run" /
                                                                                 "export")}]
    for row in rows.values():
        assert row["forward_images_per_s"] > 0 and row["pipeline_images_per_s"] > 0
        assert row["input_size"] == json.loads((tiny_export / "metadata.json").read_text())[
            "preprocessing"]["input_size"][0]
    assert rows["reference"]["pipeline_share"] == 1.0 and rows["reference"]["serving_floor_met"]
    assert rows["candidate"]["pipeline_share"] == pytest.approx(
        rows["candidate"]["pipeline_images_per_s"] / rows["reference"]["pipeline_images_per_s"])
    markdown = table(results).splitlines()
    assert len(markdown) == 4 and markdown[2].startswith("| reference (without congress) |")
    assert "| 0.100 / 0.030 |" in markdown[3]


def test_without_the_reference_shares_are_left_open(tmp_path, tiny_export, tiny_dataset, capsys):
    link_export(tiny_export, tmp_path / "only" / "run" / "export")
    path = write_summary(tmp_path, summary("only", tmp_path / "only", 0.2))
    out = tmp_path / "choice.json"
    assert main(["--summary", str(path), "--photos", str(tiny_dataset / "real"), "--images", "2",
                 "--seconds", "0.05", "--repeats", "1", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["candidates"][0]
    assert row["pipeline_share"] is None and row["serving_floor_met"] is None
    assert "| only (without congress) |" in capsys.readouterr().out
