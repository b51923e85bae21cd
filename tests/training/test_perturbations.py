from __future__ import annotations

import cv2
import numpy as np
import pytest

from handler.forensics import decode_rgb
from training.perturbations import (
    DEFAULT_PERTURBATIONS,
    PERTURBATION_GROUPS,
    PERTURBATIONS,
    centre_crop,
    channel_gains,
    down_up,
    downscale,
    expand_perturbations,
    gamma,
    gaussian_blur,
    jpeg_recompress,
    rotate,
    saturation,
)


@pytest.fixture(scope="module")
def photo_rgb(face_photos_dir) -> np.ndarray:
    """One shared real photo (London set), halved: a real face with real skin texture, read in place."""
    rgb = decode_rgb((face_photos_dir / "london" / "L001_neutral.jpg").read_bytes())
    return cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)


def _laplacian_variance(rgb: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def test_jpeg_q50_changes_pixels_but_not_size(photo_rgb):
    recompressed = PERTURBATIONS["jpeg_q50"].apply(photo_rgb)
    assert recompressed.shape == photo_rgb.shape and recompressed.dtype == np.uint8
    difference = np.abs(recompressed.astype(int) - photo_rgb.astype(int))
    assert difference.mean() > 0.5
    # a lower quality loses more than a higher one: the quality setting is really applied
    assert np.abs(jpeg_recompress(photo_rgb, 95).astype(int) - photo_rgb.astype(int)).mean() < difference.mean()


def test_downscale_halves_the_size(photo_rgb):
    smaller = PERTURBATIONS["downscale_0.5"].apply(photo_rgb)
    assert smaller.shape == (photo_rgb.shape[0] // 2, photo_rgb.shape[1] // 2, 3)
    assert downscale(np.zeros((5, 3, 3), np.uint8), 0.5).shape == (2, 2, 3)  # round half to even, never 0
    mean_colour = photo_rgb.reshape(-1, 3).mean(axis=0)
    assert np.allclose(smaller.reshape(-1, 3).mean(axis=0), mean_colour, atol=1.0)  # INTER_AREA averages


def test_blur_lowers_the_laplacian_variance(photo_rgb):
    blurred = PERTURBATIONS["blur_sigma1"].apply(photo_rgb)
    assert blurred.shape == photo_rgb.shape
    assert _laplacian_variance(blurred) < 0.6 * _laplacian_variance(photo_rgb)
    assert _laplacian_variance(gaussian_blur(photo_rgb, 2.0)) < _laplacian_variance(blurred)


def test_warm_cast_scales_red_up_and_blue_down_by_its_gains(photo_rgb):
    warm = PERTURBATIONS["cast_warm"].apply(photo_rgb).astype(float)
    before = photo_rgb.astype(float)
    unclipped = (before[..., 0] < 200) & (before[..., 2] > 10)
    assert np.allclose(warm[..., 0][unclipped], before[..., 0][unclipped] * 1.15, atol=0.51)
    assert np.allclose(warm[..., 2][unclipped], before[..., 2][unclipped] * 0.8, atol=0.51)
    assert np.array_equal(warm[..., 1], before[..., 1])
    assert channel_gains(np.full((2, 2, 3), 250, np.uint8), red=2.0)[..., 0].max() == 255  # clipped, not wrapped


def test_gamma_darkens_or_brightens_mid_tones_and_keeps_the_ends():
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    dark, bright = gamma(ramp, 1.6), gamma(ramp, 0.7)
    assert dark[0, 128, 0] < 128 < bright[0, 128, 0]
    assert dark[0, 0, 0] == bright[0, 0, 0] == 0 and dark[0, 255, 0] == bright[0, 255, 0] == 255


def test_saturation_keeps_greys_and_scales_colour_distance(photo_rgb):
    grey = np.full((4, 4, 3), 90, np.uint8)
    assert np.array_equal(saturation(grey, 1.5), grey)
    spread = lambda rgb: float(np.abs(rgb.astype(float) - rgb.mean(axis=2, keepdims=True)).mean())  # noqa: E731
    assert spread(saturation(photo_rgb, 0.5)) < spread(photo_rgb) < spread(saturation(photo_rgb, 1.5))


def test_centre_crop_keeps_the_middle():
    rgb = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    cropped = centre_crop(rgb, 0.5)
    assert cropped.shape == (5, 10, 3) and np.array_equal(cropped, rgb[2:7, 5:15]) and cropped.flags.c_contiguous


def test_rotation_keeps_size_and_fills_corners_from_the_image(photo_rgb):
    rolled = rotate(photo_rgb, 15.0)
    assert rolled.shape == photo_rgb.shape
    assert rolled[0, 0].max() > 0 and not np.array_equal(rolled, photo_rgb)  # reflected corners, not black
    assert np.abs(rotate(photo_rgb, 0.0).astype(int) - photo_rgb.astype(int)).max() <= 1


def test_down_up_keeps_size_and_loses_detail(photo_rgb):
    softened = down_up(photo_rgb, 0.3)
    assert softened.shape == photo_rgb.shape
    assert _laplacian_variance(softened) < 0.5 * _laplacian_variance(photo_rgb)


def test_every_registered_perturbation_is_deterministic_uint8_rgb(photo_rgb):
    small = photo_rgb[:96, :80]
    for name, entry in PERTURBATIONS.items():
        first, second = entry.apply(small), entry.apply(small)
        assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3, name
        assert np.array_equal(first, second), name
        assert entry.group in PERTURBATION_GROUPS and entry.group != "all", name


def test_groups_expand_to_their_members_in_registry_order():
    assert DEFAULT_PERTURBATIONS == ("jpeg_q50", "downscale_0.5", "blur_sigma1")
    assert expand_perturbations(["robustness"]) == DEFAULT_PERTURBATIONS
    assert expand_perturbations(["all"]) == tuple(PERTURBATIONS)
    colour = expand_perturbations(["colour", "cast_warm"])
    assert colour[0] == "cast_warm" and len(colour) == len(set(colour))
    assert all(PERTURBATIONS[name].group == "colour" for name in colour)
    assert expand_perturbations(["rotate_15", "jpeg_q50"]) == ("jpeg_q50", "rotate_15")
    with pytest.raises(KeyError, match="sepia"):
        expand_perturbations(["sepia"])
