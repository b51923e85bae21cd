import cv2
import numpy as np
import pytest

from handler.faces import FaceConfig, crop_box, detect_faces
from handler.forensics import decode_rgb
from tests.shared_faces import face_crop, face_photo
from training.sbi import SbiConfig, face_mask, inner_face_box, rng_for, self_blend

PHOTO = "london/L001_neutral.jpg"
# Every transform off: the copy equals the frame, so the blend must give the image back exactly.
IDENTITY = SbiConfig(enabled=True, color_shift=0.0, hue_shift=0.0, saturation=0.0, brightness_contrast=0.0,
                     downscale=(1.0, 1.0), downscale_probability=1.0, scale_jitter=0.0, shift_jitter=0.0)


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return face_crop(PHOTO)


def test_settings_come_from_yaml_or_command_line_strings():
    config = SbiConfig.from_dict({"enabled": "true", "downscale": "0.3,0.6", "color_shift": "12"})
    assert config.enabled is True and config.downscale == (0.3, 0.6) and config.color_shift == 12.0
    assert SbiConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("values, message", [
    ({"colour_shift": 3}, r"unknown sbi setting\(s\) \['colour_shift'\]; known: .*color_shift"),
    ({"mask_blur": [0.1, 0.05]}, r"sbi setting 'mask_blur' is out of range"),
    ({"fake_share": 0}, r"sbi setting 'fake_share' is out of range"),
    ({"downscale": "0.3"}, r"sbi setting 'downscale': cannot use '0.3' \(expected 2 numbers\)"),
])
def test_bad_settings_are_refused_by_name(values, message):
    with pytest.raises(ValueError, match=message):
        SbiConfig.from_dict(values)


def test_inner_face_box_finds_the_detected_face_inside_a_prepared_crop():
    config = FaceConfig()
    rgb = decode_rgb(face_photo(PHOTO).read_bytes())
    face = detect_faces(rgb, config)[0]
    region = crop_box(face, rgb.shape, config.margin)
    inner = inner_face_box((region.height, region.width, 3), config.margin)
    assert abs(inner.x - (face.x - region.x)) <= 2 and abs(inner.y - (face.y - region.y)) <= 2
    assert abs(inner.width - face.width) <= 2


def test_same_generator_same_fake_and_another_seed_another_fake(crop):
    box = inner_face_box(crop.shape, FaceConfig().margin)
    config = SbiConfig(enabled=True)
    first = self_blend(crop, box, config, rng_for("a.png", 0))
    assert np.array_equal(first, self_blend(crop, box, config, rng_for("a.png", 0)))
    assert not np.array_equal(first, self_blend(crop, box, config, rng_for("a.png", 1)))
    assert not np.array_equal(first, self_blend(crop, box, config, rng_for("b.png", 0)))
    assert first.dtype == np.uint8 and first.shape == crop.shape and not np.array_equal(first, crop)


def test_blending_an_unchanged_copy_gives_the_image_back(crop):
    box = inner_face_box(crop.shape, FaceConfig().margin)
    assert np.array_equal(self_blend(crop, box, IDENTITY, rng_for("x", 3)), crop)


def test_the_mask_covers_the_face_and_leaves_the_frame(crop):
    box = inner_face_box(crop.shape, FaceConfig().margin)
    for seed in range(10):
        mask = face_mask(crop.shape, box, SbiConfig(enabled=True), rng_for("mask", seed))
        centre = mask[box.y + box.height // 2, box.x + box.width // 2]
        assert 0.25 - 1e-6 <= centre <= 1.0  # the smallest blend ratio of the paper is 0.25
        band = crop.shape[0] // 10  # the crop's outer tenth is context around the face: the frame stays
        for edge in (mask[:band], mask[-band:], mask[:, :band], mask[:, -band:]):
            assert edge.mean() < 0.01 and edge.max() < 0.25


def test_only_the_pasted_region_changes_when_the_copy_is_shifted(crop):
    box = inner_face_box(crop.shape, FaceConfig().margin)
    shifted = SbiConfig(**{**IDENTITY.to_dict(), "shift_jitter": 0.05, "scale_jitter": 0.05})
    fake = self_blend(crop, box, shifted, rng_for("shift", 0))
    difference = np.abs(fake.astype(int) - crop).sum(axis=2)
    inside = difference[box.y: box.y + box.height, box.x: box.x + box.width].mean()
    outside = np.concatenate([difference[: box.y // 2].ravel(), difference[:, : box.x // 2].ravel()]).mean()
    assert inside > 5 and outside == 0


def test_the_blend_leaves_an_edge_trace_the_laplacian_channel_can_see(crop):
    # Averaged over many fakes, the Laplacian energy at the mask boundary differs from the real image's there.
    box = inner_face_box(crop.shape, FaceConfig().margin)
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
    changed = 0
    for seed in range(8):
        fake = self_blend(crop, box, SbiConfig(enabled=True), rng_for("edge", seed))
        fake_grey = cv2.cvtColor(fake, cv2.COLOR_RGB2GRAY).astype(np.float32)
        face = (slice(box.y, box.y + box.height), slice(box.x, box.x + box.width))
        energy_real = np.abs(cv2.Laplacian(grey, cv2.CV_32F))[face].mean()
        energy_fake = np.abs(cv2.Laplacian(fake_grey, cv2.CV_32F))[face].mean()
        changed += abs(energy_fake - energy_real) / energy_real > 0.02
    assert changed >= 4


def test_refuses_what_is_not_a_uint8_rgb_image(crop):
    box = inner_face_box(crop.shape, 0.3)
    with pytest.raises(ValueError, match="uint8 RGB"):
        self_blend(crop.astype(np.float32), box, SbiConfig(), rng_for("x", 0))
