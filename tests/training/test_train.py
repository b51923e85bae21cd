import json

import torch

from handler.metadata import ModelMetadata
from training.train import main


def test_tiny_run_writes_checkpoint_export_config_and_report(tiny_training):
    run_dir = tiny_training.report_path.parent
    report = json.loads(tiny_training.report_path.read_text())
    assert report["best"]["epoch"] == 1 and len(report["history"]) == 1
    assert set(report["history"][0]) == {"epoch", "train_loss", "accuracy", "roc_auc"}
    assert report["versions"]["torch"].startswith("2.15.0")
    assert len(report["data"]["fingerprint"]) == 64
    assert (run_dir / "config.yaml").is_file()
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and "conv1.weight" in checkpoint["state_dict"]
    assert checkpoint["state_dict"]["conv1.weight"].shape[1] == 4  # RGB + Laplacian stem
    metadata = ModelMetadata.load(tiny_training.export.metadata_path)
    assert metadata.preprocessing.input_size == (64, 64)
    assert metadata.training["validation"] == {k: v for k, v in report["best"].items() if k != "epoch"}


def test_cli_reports_and_skips_a_corrupt_file(tiny_dataset, tmp_path, capsys):
    data = tmp_path / "data"
    for label in ("real", "fake"):
        (data / label).mkdir(parents=True)
        for path in sorted((tiny_dataset / label).glob("*.jpg"))[:6]:
            (data / label / path.name).write_bytes(path.read_bytes())
    (data / "fake" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    main(["--data-dir", str(data), "--output-dir", str(tmp_path / "run"), "--epochs", "2", "--input-size", "64",
          "--batch-size", "4", "--set", "val_fraction=0.34", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "broken.jpg" in out and "1 skipped" in out
    report = json.loads((tmp_path / "run" / "run_report.json").read_text())
    assert report["data"]["skipped_count"] == 1
    assert report["data"]["skipped"][0]["path"].endswith("broken.jpg")
    assert [h["epoch"] for h in report["history"]] == [1, 2]
