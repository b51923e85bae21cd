"""Grad-CAM on an evaluation's errors: the selection, the rebuilt inputs, the region shares and the montages."""

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from handler.faces import FaceConfig
from training.error_cams import (
    CAUGHT_FAKES,
    CONTRAST_PNG,
    CORRECT_REALS,
    ERROR_CAMS_JSON,
    FALSE_POSITIVES,
    FALSE_POSITIVES_PNG,
    HALVES,
    REGIONS,
    ErrorCamConfig,
    ErrorCamError,
    MontageConfig,
    RegionConfig,
    ScoreRow,
    error_cams,
    main,
    region_masks,
    region_shares,
    select_groups,
)
from training.evaluate import EvaluationConfig, evaluate
from training.prepare import FACES_FILENAME
from training.sbi import SbiConfig

from ..shared_faces import face_crop
from .dataset_helpers import images, write_csv

HEADER = ["path", "label", "sbi", "condition", "probability_fake", "subject"]


def row(path: str, label: str, probability: float, sbi: bool = False, condition: str = "clean") -> ScoreRow:
    return ScoreRow(path, label, sbi, condition, probability, "")


def test_select_groups_keeps_only_reals_at_or_above_threshold_highest_first():
    rows = [row("a", "real", 0.7), row("b", "real", 0.95), row("c", "real", 0.2), row("d", "real", 0.5),
            row("e", "fake", 0.99, sbi=True), row("f", "real", 0.99, sbi=True),  # a pseudo-fake is never a real
            row("g", "real", 0.99, condition="jpeg_q50"), row("h", "fake", 0.6), row("i", "fake", 0.1),
            row("j", "real", 0.05), row("k", "real", 0.8)]
    groups = select_groups(rows, threshold=0.5, top=3)
    assert [item.path for item in groups[FALSE_POSITIVES]] == ["b", "k", "a"]  # "d" (0.5, at threshold) cut by top
    assert [item.path for item in select_groups(rows, 0.5, top=10)[FALSE_POSITIVES]] == ["b", "k", "a", "d"]
    assert [item.path for item in groups[CORRECT_REALS]] == ["j", "c"]
    assert [item.path for item in groups[CAUGHT_FAKES]] == ["e", "h"]  # "i" is a missed fake
    perturbed = select_groups(rows, 0.5, top=3, condition="jpeg_q50")
    assert [item.path for item in perturbed[FALSE_POSITIVES]] == ["g"] and not perturbed[CAUGHT_FAKES]


def test_region_shares_partition_the_heat_and_find_where_it_sits():
    masks = region_masks((64, 64), 0.3, SbiConfig(), RegionConfig())
    partition = np.sum([masks[name] for name in REGIONS], axis=0)
    assert (partition == 1).all() and (np.sum([masks[name] for name in HALVES], axis=0) == 1).all()
    heat = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    shares = region_shares(heat, masks)
    assert math.isclose(sum(shares[name] for name in REGIONS), 1.0, abs_tol=1e-6)
    assert math.isclose(sum(shares[name] for name in HALVES), 1.0, abs_tol=1e-6)
    centre = np.zeros((64, 64), np.float32)
    centre[30:36, 29:35] = 1.0  # the middle of the face ellipse, just below the crop's centre
    assert region_shares(centre, masks)["inner_face"] == 1.0
    corner = np.zeros((64, 64), np.float32)
    corner[:4, :4] = 1.0
    assert region_shares(corner, masks)["outside"] == 1.0 and region_shares(corner, masks)["top_half"] == 1.0
    assert all(math.isnan(value) for value in region_shares(np.zeros((64, 64), np.float32), masks).values())


@pytest.fixture(scope="module")
def hand_scores(tiny_dataset, tmp_path_factory) -> Path:
    """A hand-written scores.csv (no evaluation.json beside it) naming demo images by absolute path."""
    reals, fakes = images(tiny_dataset, "real"), images(tiny_dataset, "fake")
    probabilities = [0.61, 0.97, 0.74, 0.30, 0.02]
    rows = [[str(path), "real", 0, "clean", value, f"s{index}"]
            for index, (path, value) in enumerate(zip(reals, probabilities, strict=False))]
    rows += [[str(fakes[0]), "fake", 0, "clean", 0.9, "f0"], [str(fakes[1]), "fake", 0, "clean", 0.1, "f1"]]
    return write_csv(tmp_path_factory.mktemp("hand") / "scores.csv", HEADER, rows)


def test_command_writes_montages_of_the_expected_size_and_shares_that_sum_to_one(tiny_export, hand_scores, tmp_path,
                                                                                 capsys):
    output = tmp_path / "cams"
    main(["--model", str(tiny_export), "--scores", str(hand_scores), "--output-dir", str(output),
          "--threshold", "0.5", "--top", "2", "--faces", "off"])
    assert "false positives among 5 reals" in capsys.readouterr().out
    report = json.loads((output / ERROR_CAMS_JSON).read_text())
    groups = report["groups"]
    assert [item["probability_fake"] for item in groups[FALSE_POSITIVES]["items"]] == [0.97, 0.74]
    assert report["counts"]["false_positives"] == 3
    assert [item["probability_fake"] for item in groups[CORRECT_REALS]["items"]] == [0.02, 0.30]
    assert [item["probability_fake"] for item in groups[CAUGHT_FAKES]["items"]] == [0.9]
    layout = MontageConfig()
    row_height = layout.tile + layout.caption
    assert Image.open(output / FALSE_POSITIVES_PNG).size == (layout.columns * 2 * layout.tile,
                                                             layout.header + row_height)
    width = layout.columns * 2 * layout.tile
    assert Image.open(output / CONTRAST_PNG).size == (width, 2 * (layout.header + row_height))
    for name in (FALSE_POSITIVES, CORRECT_REALS, CAUGHT_FAKES):
        shares = groups[name]["mean_heat_shares"]
        assert groups[name]["zero_maps"] < groups[name]["count"], "the tiny model found some evidence somewhere"
        assert math.isclose(sum(shares[key] for key in REGIONS), 1.0, abs_tol=1e-6)
        assert math.isclose(sum(shares[key] for key in HALVES), 1.0, abs_tol=1e-6)
        for item in groups[name]["items"]:
            assert 0.0 <= item["probability_fake_recomputed"] <= 1.0
    assert math.isclose(sum(report["area_shares"][key] for key in REGIONS), 1.0, abs_tol=1e-9)


def test_a_relative_path_without_evaluation_json_asks_for_dataset(tiny_export, tiny_dataset, tmp_path):
    scores = write_csv(tmp_path / "scores.csv", HEADER, [["real/missing.jpg", "real", 0, "clean", 0.9, ""]])
    with pytest.raises(ErrorCamError, match="--dataset"):
        error_cams(ErrorCamConfig(model=tiny_export, scores=scores, output_dir=tmp_path / "out", threshold=0.5))


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    """Two real face crops of the shared photos (as training.prepare cuts them), a manifest and faces.json."""
    root = tmp_path_factory.mktemp("cam_crops")
    (root / "real").mkdir()
    rows = []
    for name in ("london/L001_neutral.jpg", "amfd/A1001_neutral.jpg"):
        target = f"real/{Path(name).stem}.png"
        cv2.imwrite(str(root / target), cv2.cvtColor(face_crop(name), cv2.COLOR_RGB2BGR))
        rows.append([target, "real", Path(name).stem])
    (root / FACES_FILENAME).write_text(json.dumps({"schema_version": 1, "faces": FaceConfig().to_dict()}))
    return write_csv(root / "manifest.csv", ["path", "label", "subject"], rows)


def test_inputs_are_rebuilt_as_the_evaluation_scored_them(face_export, crops, tmp_path):
    """Reals and their SBI twins, by relative path through evaluation.json, score again what scores.csv says.

    Precropped (faces.json + a face model), as the leave-one-source-out runs evaluate; seed 3, not the default 0,
    so a twin rebuilt with the wrong seed would score differently.
    """
    evaluation = tmp_path / "eval"
    evaluate(EvaluationConfig(model=face_export, dataset=crops, output_dir=evaluation, sbi=True, perturbations=(),
                              seed=3))
    report = error_cams(ErrorCamConfig(model=face_export, scores=evaluation / "scores.csv", output_dir=tmp_path / "c",
                                       threshold=0.0))  # everything is called fake: every row is explained
    assert report["faces"]["mode"] == "precropped"
    assert report["groups"][FALSE_POSITIVES]["count"] == 2 and report["groups"][CORRECT_REALS]["count"] == 0
    assert [item["sbi"] for item in report["groups"][CAUGHT_FAKES]["items"]] == [True, True]
    assert report["reproduction"]["max_abs_diff"] < 1e-6
