from pathlib import Path

import pytest
import yaml

from training.augment import AugmentConfig
from training.config import TrainConfig, dotted_override, load_config, save_config

CONFIG_DIR = Path(__file__).parents[2] / "config"


def test_yaml_recipe_then_overrides(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("epochs: 3\nmodel_name: efficientnet_b0\nclass_weights: [1.0, 3.0]\n")
    config = load_config(yaml_file, {"dataset": "d", "output_dir": "o", "epochs": 5, "batch_size": None})
    assert config.epochs == 5 and config.model_name == "efficientnet_b0" and config.batch_size == 32
    assert config.class_weights == (1.0, 3.0) and config.dataset == Path("d")


def test_nested_augment_settings_merge_key_by_key(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("augment:\n  jpeg_probability: 0.0\n  rotation_degrees: 5\n")
    overrides = {"dataset": "d", "output_dir": "o", **dotted_override("augment.rotation_degrees", 7)}
    config = load_config(yaml_file, overrides)
    assert config.augment.jpeg_probability == 0.0 and config.augment.rotation_degrees == 7
    assert config.augment.blur_probability == AugmentConfig().blur_probability


def test_unknown_key_names_the_file(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("epoch: 3\n")
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['epoch'\] in .*train.yaml"):
        load_config(yaml_file, {"dataset": "d", "output_dir": "o"})


def test_invalid_values_are_reported_with_their_source(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("amp: fp8\n")
    with pytest.raises(ValueError, match=r"invalid training setting in .*train.yaml: amp must be one of"):
        load_config(yaml_file, {"dataset": "d", "output_dir": "o"})
    with pytest.raises(ValueError, match="must leave something to train on"):
        load_config(None, {"dataset": "d", "output_dir": "o", "val_fraction": 0.5, "test_fraction": 0.5})


def test_missing_paths_are_reported():
    with pytest.raises(ValueError, match="dataset"):
        load_config(None, {"output_dir": "o"})


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, {"dataset": "d", "output_dir": "o", "learning_rate": "3e-4", "channels_last": "no",
                                "faults": ["label_noise:0.2"], "augment": {"enabled": False}})
    assert config.learning_rate == 3e-4 and config.channels_last is False and config.faults == ("label_noise:0.2",)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml", {}) == config


def test_config_train_yaml_lists_exactly_the_code_defaults():
    documented = load_config(CONFIG_DIR / "train.yaml", {"dataset": "d", "output_dir": "o"})
    assert documented == TrainConfig(dataset=Path("d"), output_dir=Path("o"))
    listed = set(yaml.safe_load((CONFIG_DIR / "train.yaml").read_text()))
    assert listed | {"dataset", "output_dir"} == set(TrainConfig.__dataclass_fields__)


@pytest.mark.parametrize("recipe", sorted(CONFIG_DIR.glob("train_*.yaml")), ids=lambda path: path.name)
def test_committed_recipes_are_valid(recipe):
    config = load_config(recipe, {"dataset": "d", "output_dir": "o"})
    assert config != TrainConfig(dataset=Path("d"), output_dir=Path("o"))  # a recipe that changes nothing is noise


def test_a_blend_map_needs_self_blends_and_a_known_target(tmp_path):
    with pytest.raises(ValueError, match="needs sbi.enabled"):
        load_config(None, {"dataset": tmp_path, "output_dir": tmp_path, "blend_map_weight": 1.0})
    with pytest.raises(ValueError, match=r"blend_map_target must be one of \['boundary', 'region'\]"):
        load_config(None, {"dataset": tmp_path, "output_dir": tmp_path, "blend_map_target": "seams"})
    config = load_config(None, {"dataset": tmp_path, "output_dir": tmp_path, "blend_map_weight": "0.5",
                                "sbi": {"enabled": True}})
    assert config.blend_map_weight == 0.5 and config.blend_map_target == "boundary"
