"""Fault injection as test oracles: each fault's effect on a real training run on demo data is predictable.

A clean run must learn (ROC AUC ≥ 0.95); labels that carry no information (shuffled, or flipped
with probability 0.5) must leave the held-out AUC near chance, which proves no label information
leaks into the inputs; a loss aimed at the opposite class must teach the inverse. About 30 s per
run on 2 cores, hence slow.
"""

import json
from pathlib import Path

import pytest

from training.augment import AugmentConfig
from training.config import TrainConfig
from training.demo_data import DemoDataConfig, write_demo_dataset
from training.train import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 real + 200 fake demo images; each image is its own subject."""
    root = tmp_path_factory.mktemp("oracle_data")
    return write_demo_dataset(root, DemoDataConfig(count=200, image_size=128, seed=11))


def _run(manifest: Path, output_dir: Path, *faults: str) -> dict:
    # From scratch at 64 px without augmentation: the fastest recipe that learns the demo set (~0.97 AUC).
    config = TrainConfig(dataset=manifest, output_dir=output_dir, input_size=64, epochs=6, batch_size=32,
                         learning_rate=2e-3, val_fraction=0.2, test_fraction=0.2, early_stopping_patience=0,
                         device="cpu", augment=AugmentConfig(enabled=False), faults=faults)
    return json.loads(train(config).report_path.read_text())


def test_clean_training_learns_the_demo_set(demo_data, tmp_path):
    report = _run(demo_data, tmp_path / "clean")
    assert max(epoch["roc_auc"] for epoch in report["history"]) >= 0.95, report["history"]
    assert report["evaluation"]["calibrated"]["roc_auc"] >= 0.93  # and it generalises to unseen test subjects
    assert report["faults"]["specs"] == []


@pytest.mark.parametrize("fault", ["shuffle_labels", "label_noise:0.5"])
def test_labels_without_information_leave_held_out_auc_at_chance(demo_data, tmp_path, fault):
    report = _run(demo_data, tmp_path / "run", fault)
    assert report["faults"]["specs"] == [fault]
    changed = report["faults"].get("labels_changed_by_shuffle", report["faults"].get("labels_flipped"))
    assert changed >= 0.4 * report["data"]["split"]["splits"]["train"]["images"]
    # The test split was never used for selection, so its AUC is an unbiased chance-level check (80 images: ±0.07).
    assert abs(report["evaluation"]["uncalibrated"]["roc_auc"] - 0.5) < 0.2, report["evaluation"]


def test_wrong_loss_teaches_the_inverse(demo_data, tmp_path):
    report = _run(demo_data, tmp_path / "wrong", "wrong_loss")
    # Selection keeps the epoch with the best AUC (the least inverted), so judge the last epoch's model.
    assert report["history"][-1]["roc_auc"] < 0.2, report["history"]
