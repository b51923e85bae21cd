"""DDP: the same training entry point under torchrun with 2 CPU processes (gloo)."""

import json
import subprocess
import sys

import pytest
import torch

from training.model import create_detector

pytestmark = pytest.mark.slow


def test_two_process_torchrun_trains_one_epoch_and_only_rank0_reports(tiny_dataset, tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "training.train", "--dataset", str(tiny_dataset / "manifest.csv"), "--output-dir", str(tmp_path / "run"),
        "--epochs", "1", "--batch-size", "3", "--input-size", "48", "--device", "cpu",
        "--set", "val_fraction=0.25", "--set", "test_fraction=0.25",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["world_size"] == 2
    # DDP averaged the gradients: both ranks, though they saw different images, hold identical weights…
    assert report["ddp_parameters_in_sync"] is True
    # …and those weights moved away from the common initialisation.
    torch.manual_seed(0)
    initial = create_detector("resnet18").state_dict()
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert not torch.equal(trained["fc.weight"], initial["fc.weight"])
    # 12 training images, 3 per process per step, 2 processes: 2 steps each, every image seen once.
    assert report["faults"]["optimizer_steps_taken"] == 2
    assert len(report["history"]) == 1 and report["export"]["max_abs_diff"] <= 1e-4
    assert completed.stdout.count("best epoch 1") == 1  # one process reports, not two
