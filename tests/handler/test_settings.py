from pathlib import Path

import pytest
import yaml

from handler.settings import HandlerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_model_config_is_valid_and_read_as_written():
    model_config = yaml.safe_load((REPO_ROOT / "config" / "model-config.yaml").read_text())
    settings = HandlerSettings.from_model_config(model_config)
    section = model_config["handler"]
    assert settings.max_image_pixels == section["max_image_pixels"]
    assert settings.borderline_band == tuple(section["borderline_band"])
    assert (settings.torch_threads, settings.warmup_runs) == (section["torch_threads"], section["warmup_runs"])
    assert settings.threshold is None  # commented out: metadata.json's threshold applies


@pytest.mark.parametrize("model_config", [None, {}, {"handler": None}, {"minWorkers": 1}])
def test_absent_section_gives_the_defaults(model_config):
    assert HandlerSettings.from_model_config(model_config) == HandlerSettings()


def test_unknown_setting_names_itself_and_the_known_ones():
    with pytest.raises(ValueError) as raised:
        HandlerSettings.from_model_config({"handler": {"treshold": 0.4, "warmup_runs": 1}})
    message = str(raised.value)
    assert "'treshold'" in message
    assert all(name in message for name in ("threshold", "max_image_pixels", "borderline_band", "torch_threads",
                                            "warmup_runs"))


@pytest.mark.parametrize(("settings", "named"), [
    ({"threshold": 1.5}, "'threshold'"),
    ({"threshold": -0.1}, "'threshold'"),
    ({"threshold": "0.5"}, "'threshold'"),
    ({"threshold": True}, "'threshold'"),
    ({"threshold": float("nan")}, "'threshold'"),
    ({"borderline_band": [0.4, 0.7]}, "0.5 <= low < high <= 1"),
    ({"borderline_band": [0.7, 0.7]}, "0.5 <= low < high <= 1"),
    ({"borderline_band": [0.6, 1.2]}, "0.5 <= low < high <= 1"),
    ({"borderline_band": [0.6]}, "'borderline_band'"),
    ({"borderline_band": "0.5-0.7"}, "'borderline_band'"),
    ({"max_image_pixels": 0}, "'max_image_pixels'"),
    ({"max_image_pixels": 4e7}, "'max_image_pixels'"),
    ({"torch_threads": -1}, "'torch_threads'"),
    ({"warmup_runs": 1.5}, "'warmup_runs'"),
])
def test_invalid_values_are_refused_with_the_setting_named(settings, named):
    with pytest.raises(ValueError, match=named):
        HandlerSettings.from_model_config({"handler": settings})


def test_valid_edges_are_accepted():
    settings = HandlerSettings.from_model_config({"handler": {"threshold": 0, "borderline_band": [0.5, 1],
                                                              "torch_threads": 3, "warmup_runs": 0}})
    assert settings == HandlerSettings(threshold=0.0, borderline_band=(0.5, 1.0), torch_threads=3, warmup_runs=0)
