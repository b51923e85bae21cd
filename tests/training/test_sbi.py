import cv2
import numpy as np
import pytest

from handler.faces import FaceBox, FaceConfig, crop_box, detect_faces
from handler.forensics import decode_rgb
from tests.shared_faces import face_crop, face_photo
from training.config import dotted_override, load_config
from training.landmarks import face_landmarks
from training.sbi import (
    BLEND_RATIOS,
    HULL_PARTS,
    MASK_MAKERS,
    SbiConfig,
    extended_brows,
    face_mask,
    forehead_points,
    hull_polygons,
    inner_face_box,
    landmark_mask,
    plausible_landmarks,
    rng_for,
    self_blend,
    self_blend_with_mask,
)

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


# ---------------------------------------------------------------------------------------------------------------------
# Landmark masks

INNER_POINTS = [27, 28, 29, 30, 33, 39, 42, 62, 66]  # nose, inner eye corners, inner lips: inside every hull variant


@pytest.fixture(scope="module")
def points(crop) -> np.ndarray:
    return face_landmarks(crop, inner_face_box(crop.shape, FaceConfig().margin))


def test_the_mask_is_chosen_by_name_from_yaml_or_the_command_line_and_exported():
    assert SbiConfig().mask == "ellipse" and set(MASK_MAKERS) >= {"ellipse", "landmarks", "face_hull"}
    config = load_config(None, {"dataset": "d", "output_dir": "o", **dotted_override("sbi.mask", "landmarks")})
    assert config.sbi.mask == "landmarks" and config.to_dict()["sbi"]["mask"] == "landmarks"
    assert SbiConfig.from_dict(config.sbi.to_dict()) == config.sbi
    with pytest.raises(ValueError, match=r"sbi setting 'mask' is unknown: 'hull'; known: \['ellipse', 'face_hull'"):
        SbiConfig.from_dict({"mask": "hull"})


def test_the_landmark_mask_covers_the_face_points_and_is_zero_far_outside(crop, points):
    extent = float(np.ptp(points, axis=0).max())
    outline = np.concatenate([points, forehead_points(points, SbiConfig().forehead_lift)])
    hull = np.zeros(crop.shape[:2], np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.rint(outline).astype(np.int32)), 1)
    beyond = cv2.distanceTransform(1 - hull, cv2.DIST_L2, 5) / extent  # distance outside the hull, in face sizes
    rows, columns = np.rint(points[INNER_POINTS, 1]).astype(int), np.rint(points[INNER_POINTS, 0]).astype(int)
    for seed in range(10):
        mask = landmark_mask(crop.shape, points, SbiConfig(mask="landmarks"), rng_for("hull", seed))
        assert mask.dtype == np.float32 and mask.shape == crop.shape[:2]
        assert min(BLEND_RATIOS) - 1e-6 <= mask.max() <= 1.0
        assert mask[rows, columns].min() >= 0.8 * mask.max()  # the blend ratio holds over the inner face
        assert mask[beyond > 0.15].max() < 0.03


def test_the_forehead_rises_from_the_brows_away_from_the_chin_and_turns_with_the_head(points):
    forehead = forehead_points(points, 0.4)
    assert forehead.shape == (10, 2) and (forehead[:, 1] < points[17:27, 1].min()).all()
    assert (extended_brows(points)[17:27, 1] < points[17:27, 1]).all()
    centre = points.mean(axis=0)
    turn = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), 30.0, 1.0)
    turned = points @ turn[:, :2].T + turn[:, 2]
    np.testing.assert_allclose(forehead_points(turned, 0.4), forehead @ turn[:, :2].T + turn[:, 2], atol=1e-3)


def test_every_hull_variant_holds_the_nose(points):
    nose = tuple(float(value) for value in points[30])
    for variant in HULL_PARTS:
        polygons = hull_polygons(points, variant, forehead_lift=0.4)
        assert any(cv2.pointPolygonTest(polygon.reshape(-1, 1, 2), nose, False) > 0 for polygon in polygons)


def test_landmark_blends_are_fixed_by_the_generator_and_differ_from_the_ellipse(crop, points):
    box = inner_face_box(crop.shape, FaceConfig().margin)
    config = SbiConfig(enabled=True, mask="landmarks")
    fake, mask = self_blend_with_mask(crop, box, config, rng_for("a.png", 0), points)
    again, same_mask = self_blend_with_mask(crop, box, config, rng_for("a.png", 0), points)
    assert np.array_equal(fake, again) and np.array_equal(mask, same_mask)
    assert not np.array_equal(fake, self_blend(crop, box, config, rng_for("a.png", 1), points))
    ellipse = self_blend(crop, box, SbiConfig(enabled=True), rng_for("a.png", 0))
    assert not np.array_equal(fake, ellipse)


def test_a_landmark_mask_without_landmarks_falls_back_to_the_ellipse(crop):
    box = inner_face_box(crop.shape, FaceConfig().margin)
    for name in ("landmarks", "face_hull"):
        fallback = self_blend(crop, box, SbiConfig(enabled=True, mask=name), rng_for("b.png", 0), None)
        assert np.array_equal(fallback, self_blend(crop, box, SbiConfig(enabled=True), rng_for("b.png", 0)))


def test_blending_an_unchanged_copy_through_a_landmark_mask_gives_the_image_back(crop, points):
    box = inner_face_box(crop.shape, FaceConfig().margin)
    identity = SbiConfig(**{**IDENTITY.to_dict(), "mask": "landmarks"})
    assert np.array_equal(self_blend(crop, box, identity, rng_for("x", 3), points), crop)


def test_implausible_landmarks_are_refused(points):
    (x, y), (width, height) = points.min(axis=0), np.ptp(points, axis=0)
    box = FaceBox(int(x), int(y), int(width), int(height))
    assert plausible_landmarks(points, box)
    assert not plausible_landmarks(None, box)
    assert not plausible_landmarks(points + 5 * box.width, box)  # somewhere else
    assert not plausible_landmarks(points * 0.1 + points.mean(axis=0) * 0.9, box)  # a dot, not a face
    assert not plausible_landmarks(points[:5], box)
