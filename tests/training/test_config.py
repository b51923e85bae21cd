from pathlib import Path

import pytest

from training.config import load_config, save_config


def test_yaml_defaults_then_overrides(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("epochs: 3\nmodel_name: efficientnet_b0\nclass_weights: [1.0, 5.0]\n")
    config = load_config(yaml_file, {"data_dir": "d", "output_dir": "o", "epochs": 5, "batch_size": None})
    assert config.epochs == 5 and config.model_name == "efficientnet_b0" and config.batch_size == 32
    assert config.class_weights == (1.0, 5.0) and config.data_dir == Path("d")


def test_unknown_key_names_the_file(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("epoch: 3\n")
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['epoch'\] in .*train.yaml"):
        load_config(yaml_file, {"data_dir": "d", "output_dir": "o"})


def test_missing_paths_are_reported():
    with pytest.raises(ValueError, match="data_dir"):
        load_config(None, {"output_dir": "o"})


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, {"data_dir": "d", "output_dir": "o", "learning_rate": "3e-4", "horizontal_flip": "no"})
    assert config.learning_rate == 3e-4 and config.horizontal_flip is False
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml", {}) == config


def test_committed_demo_recipe_is_valid():
    config = load_config(Path(__file__).parents[2] / "config" / "train_demo.yaml", {"data_dir": "d", "output_dir": "o"})
    assert config.model_name == "resnet18"
