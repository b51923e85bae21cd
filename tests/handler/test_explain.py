"""handler/explain.py: Grad-CAM on the exported explain model against timm's eager model, and the heat map's geometry.

The reference Grad-CAM is computed here on the eager model with a forward hook on the layer metadata.json names, so
a wrong layer, a wrong class, a wrong gradient or a misaligned paste makes a test fail.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handler.explain import (
    ExplainConfig,
    explanation,
    grad_cam,
    heatmap_rgba,
    heatmap_size,
    load_explain_model,
    normalised,
    paste_heat,
    raw_grad_cam,
    refuse_video,
    region_boxes,
    upright_size,
)
from handler.faces import FaceBox, FaceConfig, crop_box
from handler.forensics import decode_rgb, model_input_from_rgb
from handler.metadata import METADATA_FILENAME, ModelMetadata
from handler.request_body import ImageBytes
from handler.scoring import REGION_FACES, REGION_NO_FACE, REGION_WHOLE_IMAGE, ScoredRegions, regions_to_score
from handler.verdict import ItemScores
from tests.handler.face_images import encode, exif_rotated
from training.export import export_torchscript
from training.model import create_detector
from training.train import CHECKPOINT_FILENAME

CPU = torch.device("cpu")


def eager_grad_cam(model: torch.nn.Module, layer: str, batch: torch.Tensor, fake_index: int) -> torch.Tensor:
    """Grad-CAM the textbook way: a forward hook keeps the layer's output, autograd gives its gradient."""
    captured: dict[str, torch.Tensor] = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, output: captured.__setitem__("features", output))
    try:
        logits = model.eval()(batch)
    finally:
        handle.remove()
    features = captured["features"]
    (gradients,) = torch.autograd.grad(logits[:, fake_index].sum(), features)
    return torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1)).detach()


@pytest.mark.parametrize("architecture", ["resnet18", "tf_efficientnet_lite0"])
def test_exported_grad_cam_equals_eager_grad_cam(architecture, tmp_path):
    torch.manual_seed(0)
    model = create_detector(architecture)
    batch = torch.randn(3, 4, 64, 64)
    result = export_torchscript(model, ModelMetadata(architecture=architecture), batch, tmp_path)
    layer = ModelMetadata.load(result.metadata_path).explain["layer"]
    explain_model = load_explain_model(tmp_path, CPU)
    assert explain_model is not None
    logits, cams = raw_grad_cam(explain_model, batch, fake_index=1)
    expected = eager_grad_cam(model, layer, batch, fake_index=1)
    assert cams.shape == expected.shape == (3, 2, 2)
    assert float(expected.max()) > 0  # the comparison is not between two zero maps
    torch.testing.assert_close(cams, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, model(batch).detach(), atol=1e-4, rtol=0)
    # The target is the fake class: the real class's map differs.
    assert not torch.allclose(eager_grad_cam(model, layer, batch, fake_index=0), expected)


def test_tiny_export_explains_like_its_checkpoint(tiny_export):
    """The trained tiny model: the export's explain model gives the cam of the checkpoint's eager weights."""
    metadata = ModelMetadata.load(tiny_export / METADATA_FILENAME)
    checkpoint = torch.load(tiny_export.parent / CHECKPOINT_FILENAME, map_location="cpu", weights_only=True)
    model = create_detector(metadata.architecture)
    model.load_state_dict(checkpoint["state_dict"])
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 80, 3), dtype=np.uint8) for _ in range(4)]
    inputs = [model_input_from_rgb(rgb, metadata.preprocessing) for rgb in images]
    explain_model = load_explain_model(tiny_export, CPU)
    assert explain_model is not None and metadata.explain["layer"] == "layer4"
    cams = grad_cam(explain_model, inputs, metadata.fake_index, CPU, chunk_size=3)  # two chunks: 3 + 1
    expected = normalised(eager_grad_cam(model, "layer4", torch.stack(inputs), metadata.fake_index).numpy())
    np.testing.assert_allclose(cams, expected, atol=1e-5)
    assert cams.min() >= 0 and np.allclose(cams.reshape(4, -1).max(axis=1)[expected.reshape(4, -1).max(1) > 0], 1)


def test_normalised_keeps_an_all_zero_map_zero():
    cams = np.stack([np.zeros((2, 2)), np.array([[0.0, 2.0], [1.0, 4.0]])]).astype(np.float32)
    result = normalised(cams)
    np.testing.assert_array_equal(result[0], np.zeros((2, 2)))
    np.testing.assert_allclose(result[1], [[0.0, 0.5], [0.25, 1.0]])


def test_heatmap_keeps_the_aspect_and_caps_the_long_side():
    assert heatmap_size((2000, 1000), 512) == (512, 256)
    assert heatmap_size((300, 1200), 512) == (128, 512)
    assert heatmap_size((200, 100), 512) == (200, 100)  # small images keep their size


def test_a_region_map_lands_on_its_box_and_nowhere_else():
    """A map hot only in its top-left cell, pasted on a box in a 1000x500 image drawn at 512x256."""
    cam = np.zeros((1, 4, 4), np.float32)
    cam[0, 0, 0] = 1.0
    box = FaceBox(500, 100, 400, 300)
    heat = paste_heat(cam, [box], (1000, 500), (512, 256))
    assert heat.shape == (256, 512)
    rows, cols = np.nonzero(heat)
    scale = 512 / 1000
    assert cols.min() >= round(500 * scale) and cols.max() < round(900 * scale)
    assert rows.min() >= round(100 * scale) and rows.max() < round(400 * scale)
    # The top-left cell covers the box's top-left 100x75 pixels: hot at its centre, cold in the opposite cell.
    assert heat[round((100 + 37.5) * scale), round((500 + 50) * scale)] > 0.95
    assert heat[round((400 - 37.5) * scale), round((900 - 50) * scale)] == 0.0
    hot_rows, hot_cols = np.nonzero(heat > 0.5)
    assert hot_cols.max() < round((500 + 200) * scale) and hot_rows.max() < round((100 + 150) * scale)


def test_overlapping_regions_keep_the_hotter_value():
    cams = np.stack([np.full((2, 2), 0.2), np.full((2, 2), 0.9)]).astype(np.float32)
    heat = paste_heat(cams, [FaceBox(0, 0, 60, 60), FaceBox(40, 40, 60, 60)], (100, 100), (100, 100))
    assert heat[10, 10] == pytest.approx(0.2) and heat[50, 50] == pytest.approx(0.9) and heat[90, 90] == 0.9
    assert heat[90, 10] == 0.0


def test_overlay_png_is_rgba_with_alpha_growing_with_the_heat():
    heat = np.tile(np.linspace(0, 1, 256, dtype=np.float32), (4, 1))
    rgba = heatmap_rgba(heat, max_alpha=0.6)
    assert rgba.shape == (4, 256, 4) and rgba.dtype == np.uint8
    assert rgba[0, 0, 3] == 0 and rgba[0, -1, 3] == round(0.6 * 255)
    assert np.all(np.diff(rgba[0, :, 3].astype(int)) >= 0)
    assert rgba[0, -1, 0] > 100 and rgba[0, -1, 2] < 50  # hot is (dark) red
    assert rgba[0, 0, 2] > 100 and rgba[0, 0, 0] < 50  # cold is blue


def test_explanation_fields_and_png_match_the_image(tmp_path):
    cams = np.ones((1, 2, 2), np.float32)
    scores = [ItemScores(0.25, 0.3)]
    result = explanation(cams, [FaceBox(0, 0, 1200, 600)], scores, (1200, 600), "layer4", ExplainConfig())
    assert result["method"] == "grad-cam" and result["target"] == "fake" and result["layer"] == "layer4"
    assert result["image_size"] == [1200, 600] and result["heatmap_size"] == [512, 256]
    with Image.open(io.BytesIO(base64.b64decode(result["heatmap_png"]))) as png:
        assert png.format == "PNG" and png.mode == "RGBA" and png.size == (512, 256)
        assert np.asarray(png)[..., 3].max() == round(0.6 * 255)
    assert result["regions"] == [{"box": [0, 0, 1200, 600], "probability_fake": 0.25, "grid": [[1.0, 1.0],
                                                                                                 [1.0, 1.0]]}]


def test_face_regions_are_the_face_crops_and_whole_images_cover_the_image():
    config = FaceConfig()
    inputs = (torch.zeros(4, 8, 8), torch.zeros(4, 8, 8))
    faces = ScoredRegions(REGION_FACES, (FaceBox(10, 20, 100, 120), FaceBox(600, 5, 50, 50)), inputs)
    boxes = region_boxes(faces, (640, 480), config.margin)
    assert boxes == [crop_box(box, (480, 640), config.margin) for box in faces.boxes]
    assert boxes[1].x + boxes[1].width == 640 and boxes[1].y == 0  # shifted inside the image, as cut
    for scored in (REGION_NO_FACE, REGION_WHOLE_IMAGE):
        assert region_boxes(ScoredRegions(scored, (), inputs[:1]), (640, 480), 0.3) == [FaceBox(0, 0, 640, 480)]


def test_region_boxes_of_real_faces_are_where_the_model_input_came_from(face_photos_dir: Path):
    """The crop a face model scores is the box's pixels: re-cutting the box gives the same model input."""
    data = (face_photos_dir / "london/L001_neutral.jpg").read_bytes()
    rgb = decode_rgb(data)
    metadata_preprocess = ModelMetadata(architecture="resnet18").preprocessing
    scored = regions_to_score(rgb, metadata_preprocess, FaceConfig())
    assert scored.scored == REGION_FACES
    (box,) = region_boxes(scored, upright_size(data), FaceConfig().margin)
    again = model_input_from_rgb(rgb[box.y:box.y + box.height, box.x:box.x + box.width], metadata_preprocess)
    torch.testing.assert_close(again, scored.inputs[0], atol=0, rtol=0)


def test_upright_size_applies_exif_orientation():
    rgb = np.zeros((30, 70, 3), np.uint8)
    assert upright_size(encode(rgb, "PNG")) == (70, 30)
    assert upright_size(exif_rotated(rgb)) == (70, 30)  # stored 30 wide and 70 tall, shown 70 wide


@pytest.mark.parametrize(("head", "container"), [
    (b"\x00\x00\x00\x18ftypisom", "mp4"), (b"\x00\x00\x00\x14ftypqt  ", "mov"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "webm"), (b"RIFF\x00\x00\x00\x00AVI LIST", "avi")])
def test_videos_are_refused_by_name(head, container):
    error = refuse_video(ImageBytes(head + b"\x00" * 32, "data"))
    assert error is not None and error.code == "explanation_needs_image" and error.field == "data"
    assert container in str(error)
    assert refuse_video(ImageBytes(encode(np.zeros((4, 4, 3), np.uint8)), "body")) is None


def test_no_explain_file_means_no_explain_model(tmp_path):
    assert load_explain_model(tmp_path, CPU) is None


def test_config_is_checked():
    with pytest.raises(ValueError, match="max_alpha"):
        ExplainConfig(max_alpha=0.0)
