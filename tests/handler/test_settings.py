import re
from pathlib import Path

import pytest
import yaml

from handler.faces import FaceConfig
from handler.settings import DEFAULT_MAX_UPLOAD_BYTES, HandlerSettings
from scripts.serve import CONFIGS, read_properties

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_model_config_is_valid_and_read_as_written():
    model_config = yaml.safe_load((REPO_ROOT / "config" / "model-config.yaml").read_text())
    settings = HandlerSettings.from_model_config(model_config)
    section = model_config["handler"]
    assert settings.max_image_pixels == section["max_image_pixels"]
    assert settings.max_upload_bytes == section["max_upload_bytes"] == DEFAULT_MAX_UPLOAD_BYTES == 6 * 2**20
    assert settings.borderline_band == tuple(section["borderline_band"])
    assert (settings.torch_threads, settings.warmup_runs) == (section["torch_threads"], section["warmup_runs"])
    assert settings.threshold is None  # commented out: metadata.json's threshold applies
    assert settings.faces == section["faces"] == "auto"
    assert settings.no_face == section["no_face"] == HandlerSettings.no_face == "refuse"
    assert (settings.min_image_side, settings.max_aspect_ratio) == (section["min_image_side"],
                                                                    section["max_aspect_ratio"]) == (32, 4.0)


def test_every_setting_is_in_the_shipped_model_config():
    # model-config.yaml is where operators look for what they can set: every setting is there, set or commented out.
    text = (REPO_ROOT / "config" / "model-config.yaml").read_text()
    missing = [name for name in HandlerSettings.known()
               if not re.search(rf"^\s*#?\s*{name}:", text, flags=re.MULTILINE)]
    assert missing == []


@pytest.mark.parametrize("model_config", [None, {}, {"handler": None}, {"minWorkers": 1}])
def test_absent_section_gives_the_defaults(model_config):
    assert HandlerSettings.from_model_config(model_config) == HandlerSettings()


def test_unknown_setting_names_itself_and_the_known_ones():
    with pytest.raises(ValueError) as raised:
        HandlerSettings.from_model_config({"handler": {"treshold": 0.4, "warmup_runs": 1}})
    message = str(raised.value)
    assert "'treshold'" in message
    assert all(name in message for name in ("threshold", "max_image_pixels", "max_upload_bytes", "borderline_band",
                                            "torch_threads", "warmup_runs", "faces"))


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
    ({"max_upload_bytes": 0}, "'max_upload_bytes' must be a whole number >= 1"),
    ({"max_upload_bytes": "6MB"}, "'max_upload_bytes'"),
    ({"max_upload_bytes": None}, "'max_upload_bytes'"),
    ({"max_upload_bytes": True}, "'max_upload_bytes'"),
    ({"torch_threads": -1}, "'torch_threads'"),
    ({"warmup_runs": 1.5}, "'warmup_runs'"),
    ({"faces": "yes"}, "'faces' must be one of \\['auto', 'on', 'off'\\]"),
    ({"faces": "Auto"}, "'faces'"),
    ({"faces": 1}, "'faces'"),
    ({"faces": None}, "'faces'"),
    ({"no_face": "skip"}, "'no_face' must be one of \\['refuse', 'whole_image'\\]"),
    ({"no_face": None}, "'no_face'"),
    ({"no_face": False}, "'no_face'"),
    ({"min_image_side": 0}, "'min_image_side' must be a whole number >= 1"),
    ({"min_image_side": 31.5}, "'min_image_side'"),
    ({"max_aspect_ratio": 0.5}, "'max_aspect_ratio' must be a number >= 1"),
    ({"max_aspect_ratio": "4:1"}, "'max_aspect_ratio'"),
    ({"max_aspect_ratio": True}, "'max_aspect_ratio'"),
    ({"max_aspect_ratio": float("inf")}, "'max_aspect_ratio'"),
])
def test_invalid_values_are_refused_with_the_setting_named(settings, named):
    with pytest.raises(ValueError, match=named):
        HandlerSettings.from_model_config({"handler": settings})


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_a_base64_image_at_the_upload_limit_fits_the_frontends_request_limit(config):
    # Over max_request_size the frontend answers a bare 413 before the handler can name the limit, so every
    # shipped config must carry a JSON body of max_upload_bytes of base64 (4/3 of it) with room to spare.
    max_request_size = int(read_properties(CONFIGS[config])["max_request_size"])
    assert max_request_size == 9 * 2**20
    assert DEFAULT_MAX_UPLOAD_BYTES * 4 / 3 + 64 * 1024 < max_request_size


def test_the_upload_limit_is_read():
    assert HandlerSettings.from_model_config({"handler": {"max_upload_bytes": 1024}}).max_upload_bytes == 1024
    assert HandlerSettings.from_model_config({"handler": {}}).max_upload_bytes == DEFAULT_MAX_UPLOAD_BYTES


def test_valid_edges_are_accepted():
    settings = HandlerSettings.from_model_config({"handler": {"threshold": 0, "borderline_band": [0.5, 1],
                                                              "torch_threads": 3, "warmup_runs": 0}})
    assert settings == HandlerSettings(threshold=0.0, borderline_band=(0.5, 1.0), torch_threads=3, warmup_runs=0)


@pytest.mark.parametrize(("written", "mode"), [("auto", "auto"), ("on", "on"), ("off", "off"),
                                               (True, "on"), (False, "off")])
def test_face_mode_is_read_as_written_and_yaml_booleans_are_on_and_off(written, mode):
    assert HandlerSettings.from_model_config({"handler": {"faces": written}}).faces == mode


def test_unquoted_on_and_off_in_yaml_mean_on_and_off():
    # TorchServe reads model-config.yaml with PyYAML's safe_load, where a bare on / off is a boolean.
    for text, mode in (("faces: on", "on"), ("faces: off", "off"), ("faces: 'off'", "off")):
        assert HandlerSettings.from_model_config({"handler": yaml.safe_load(text)}).faces == mode


def test_face_config_in_force_per_mode():
    exported = FaceConfig(margin=0.5, max_faces=2)
    assert HandlerSettings(faces="auto").face_config(exported) is exported
    assert HandlerSettings(faces="auto").face_config(None) is None  # a whole-image model scores whole images
    assert HandlerSettings(faces="on").face_config(exported) is exported  # cut as in training
    assert HandlerSettings(faces="on").face_config(None) == FaceConfig()
    assert HandlerSettings(faces="off").face_config(exported) is None
    with pytest.raises(ValueError, match="'faces'"):
        HandlerSettings(faces="sometimes")


def test_no_face_and_geometry_settings_are_read_as_written():
    settings = HandlerSettings.from_model_config({"handler": {"no_face": "whole_image", "min_image_side": 1,
                                                              "max_aspect_ratio": 1}})
    assert (settings.no_face, settings.min_image_side, settings.max_aspect_ratio) == ("whole_image", 1, 1.0)
    limits = settings.geometry_limits()
    assert (limits.min_side, limits.max_aspect_ratio) == (1, 1.0)
    assert limits.refusal((5, 5)) is None and limits.refusal((6, 5)) is not None
    with pytest.raises(ValueError, match="'no_face'"):
        HandlerSettings(no_face="ignore")
