"""The README's main command, end to end, on the embedded default recipe (minutes: marked slow)."""

import json

import pytest

from scripts.demo import run_demo
from scripts.serve import Ports

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_demo_learns_serves_and_classifies_unseen_real_and_fake_images(tmp_path, capsys):
    answers = run_demo(workdir=tmp_path / "demo", model_store=tmp_path / "model_store", run_dir=tmp_path / "serve",
                       ports=Ports.free(), stop=True)
    report = json.loads((tmp_path / "demo" / "run" / "report.json").read_text())
    assert report["validation"]["roc_auc"] >= 0.95, report["history"]  # it learned, not just ran
    assert report["evaluation"]["split"] == "test" and report["evaluation"]["calibrated"]["roc_auc"] >= 0.95
    assert report["data"]["split"]["method"] == "subject"  # the demo manifest carries subject ids
    assert report["export"]["max_abs_diff"] <= 1e-4
    assert answers["real"]["calibrated"] and answers["real"]["threshold"] == report["threshold"]["value"]
    assert (tmp_path / "model_store" / "deepfake.mar").is_file()
    assert answers["real"]["label"] == "real", answers["real"]
    assert answers["fake"]["label"] == "fake", answers["fake"]
    out = capsys.readouterr().out
    assert "[6/6] Done" in out and "TorchServe stopped." in out
    assert not (tmp_path / "serve" / "server.json").exists()
