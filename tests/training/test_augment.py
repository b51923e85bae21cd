from __future__ import annotations

import pickle
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from training.augment import AugmentConfig, RgbAugmenter, build_augmenter, identity_rgb

# Every op off: the starting point for testing one op at a time.
ALL_OFF = AugmentConfig(horizontal_flip_probability=0, rotation_degrees=0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                        brightness=0, contrast=0, saturation=0, hue=0, blur_probability=0, jpeg_probability=0)


def noisy_gradient(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like test image: smooth colour gradients plus sensor-like noise, every value in 20..235."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([60 + 150 * x, 60 + 150 * y, 200 - 120 * x * y], axis=-1)
    return np.clip(base + rng.normal(0, 10, (height, width, 3)), 20, 235).astype(np.uint8)


def augment(config: AugmentConfig, rgb: np.ndarray, seed: int = 0, output_size=None) -> np.ndarray:
    torch.manual_seed(seed)
    return build_augmenter(config, output_size)(rgb)


def laplacian_variance(rgb: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


@pytest.mark.parametrize(("height", "width"), [(160, 160), (16, 16), (400, 600), (600, 400), (37, 91), (2, 3)])
@pytest.mark.parametrize("output_size", [(128, 128), (96, 64), None])
def test_output_is_contiguous_uint8_rgb_of_the_requested_size(height, width, output_size):
    rgb = noisy_gradient(height, width)
    everything = AugmentConfig(horizontal_flip_probability=1, rotation_probability=1, blur_probability=1,
                               jpeg_probability=1)
    for config in (AugmentConfig(), everything):
        for seed in range(3):
            out = augment(config, rgb, seed, output_size)
            assert out.dtype == np.uint8
            assert out.shape == (*(output_size or (height, width)), 3)
            assert out.flags.c_contiguous


def test_non_contiguous_input_is_accepted():
    rgb = noisy_gradient(64, 64)[:, ::-1]
    out = augment(AugmentConfig(), rgb, output_size=(32, 32))
    assert out.shape == (32, 32, 3) and out.flags.c_contiguous


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8),
                                 np.zeros((8, 8, 3), np.float32), np.zeros((0, 8, 3), np.uint8)])
def test_rejects_what_is_not_rgb_uint8(bad):
    with pytest.raises(ValueError, match="RGB uint8"):
        build_augmenter(AugmentConfig())(bad)


def test_input_is_never_modified():
    rgb = noisy_gradient(64, 64)
    before = rgb.copy()
    for seed in range(5):
        augment(replace(ALL_OFF, horizontal_flip_probability=1, brightness=0.5), rgb, seed)
    np.testing.assert_array_equal(rgb, before)


def test_disabled_config_returns_the_image_untouched():
    rgb = noisy_gradient(50, 70)
    augmenter = build_augmenter(AugmentConfig(enabled=False), (128, 128))
    assert augmenter is identity_rgb
    assert augmenter(rgb) is rgb


def test_every_op_off_returns_the_same_pixels():
    rgb = noisy_gradient(50, 70)
    np.testing.assert_array_equal(augment(ALL_OFF, rgb), rgb)


def test_every_op_off_with_an_output_size_is_the_serving_resize():
    from handler.forensics import resize_rgb

    rgb = noisy_gradient(160, 120)
    np.testing.assert_array_equal(augment(ALL_OFF, rgb, output_size=(128, 128)), resize_rgb(rgb, (128, 128)))


def test_flip_alone_is_an_exact_mirror():
    rgb = noisy_gradient(40, 60)
    out = augment(replace(ALL_OFF, horizontal_flip_probability=1), rgb)
    np.testing.assert_array_equal(out, rgb[:, ::-1])


def test_jpeg_at_low_quality_adds_block_edges():
    rgb = noisy_gradient(128, 128)
    out = augment(replace(ALL_OFF, jpeg_probability=1, jpeg_quality=(10, 10)), rgb)

    def blockiness(image: np.ndarray) -> float:
        steps = np.abs(np.diff(image.astype(np.float64).mean(axis=2), axis=1)).mean(axis=0)
        at_block_borders = np.arange(steps.size) % 8 == 7
        return steps[at_block_borders].mean() / steps[~at_block_borders].mean()

    assert np.abs(out.astype(int) - rgb).mean() > 2
    assert blockiness(rgb) < 1.1
    assert blockiness(out) > 1.3


def test_jpeg_quality_orders_the_damage():
    rgb = noisy_gradient(96, 96)
    errors = [np.abs(augment(replace(ALL_OFF, jpeg_probability=1, jpeg_quality=(q, q)), rgb).astype(int) - rgb).mean()
              for q in (10, 50, 95)]
    assert errors[0] > errors[1] > errors[2] > 0


def test_blur_alone_lowers_laplacian_variance():
    rgb = noisy_gradient(96, 96)
    out = augment(replace(ALL_OFF, blur_probability=1, blur_sigma=(1.0, 1.0)), rgb)
    assert laplacian_variance(out) < 0.3 * laplacian_variance(rgb)
    assert abs(out.astype(float).mean() - rgb.mean()) < 1  # blur moves no brightness


def test_brightness_alone_scales_every_pixel_by_one_factor():
    rgb = noisy_gradient(64, 64)
    factors = []
    for seed in range(6):
        out = augment(replace(ALL_OFF, brightness=0.4), rgb, seed).astype(float)
        factor = out.sum() / rgb.sum()
        assert 0.6 - 0.01 < factor < 1.4 + 0.01
        unclipped = rgb * factor < 254.5
        assert np.abs(out - rgb * factor)[unclipped].max() <= 1.0
        factors.append(factor)
    assert max(factors) - min(factors) > 0.1


def test_contrast_alone_changes_spread_around_the_grey_mean():
    rgb = noisy_gradient(64, 64)
    grey_mean = (rgb @ np.array([0.2989, 0.587, 0.114])).mean()
    stds = []
    for seed in range(6):
        out = augment(replace(ALL_OFF, contrast=0.4), rgb, seed).astype(float)
        assert abs(out @ np.array([0.2989, 0.587, 0.114])).mean() - grey_mean < 1.5
        stds.append(out.std())
    assert min(stds) < rgb.std() - 2 and max(stds) > rgb.std() + 2


def test_saturation_and_hue_keep_greys_grey_and_change_colours():
    grey = np.repeat(noisy_gradient(32, 32)[..., :1], 3, axis=2)
    colourful = noisy_gradient(32, 32)
    for config in (replace(ALL_OFF, saturation=0.5), replace(ALL_OFF, hue=0.1)):
        changed = 0.0
        for seed in range(4):
            assert np.abs(augment(config, grey, seed).astype(int) - grey).max() <= 1
            out = augment(config, colourful, seed).astype(int)
            changed = max(changed, np.abs(out - colourful).mean())
        assert changed > 3


def test_hue_turn_keeps_each_pixels_channel_sum():
    rgb = noisy_gradient(32, 32)
    out = augment(replace(ALL_OFF, hue=0.1), rgb, seed=3).astype(int)
    assert np.abs(out.sum(axis=2) - rgb.astype(int).sum(axis=2)).max() <= 3
    assert np.abs(out - rgb).mean() > 3


def test_contrast_pivots_on_the_current_mean_whatever_ran_before_it():
    # On a flat grey image contrast, saturation and hue are no-ops, in any order after brightness; only
    # brightness may act. A contrast pivoting on the un-brightened mean would move the level.
    flat = np.full((8, 8, 3), 100, np.uint8)
    brightness_only = replace(ALL_OFF, brightness=0.4)
    full_jitter = replace(brightness_only, contrast=0.4, saturation=0.4, hue=0.1)
    for seed in range(8):
        np.testing.assert_array_equal(augment(full_jitter, flat, seed), augment(brightness_only, flat, seed))


def test_default_colour_jitter_changes_mean_and_std():
    rgb = noisy_gradient(64, 64)
    colour_only = replace(ALL_OFF, brightness=0.2, contrast=0.2, saturation=0.1, hue=0.02)
    outs = [augment(colour_only, rgb, seed).astype(float) for seed in range(5)]
    assert max(abs(out.mean() - rgb.mean()) for out in outs) > 5
    assert max(abs(out.std() - rgb.std()) for out in outs) > 2


def test_rotation_fills_corners_from_the_image_not_black():
    bright = np.clip(noisy_gradient(96, 96).astype(int) + 60, 0, 255).astype(np.uint8)  # every pixel ≥ 80
    config = replace(ALL_OFF, rotation_degrees=30, rotation_probability=1)
    for seed in range(5):
        out = augment(config, bright, seed)
        assert np.abs(out.astype(int) - bright).mean() > 5  # it did rotate
        assert out.min() >= 80  # black (constant) fill would put zeros in the corners


def test_rotation_by_a_tiny_angle_is_the_unrotated_crop():
    # The warp path and the resize path must agree about pixel centres, or rotation would also shift the image.
    rgb = noisy_gradient(64, 80)
    crop_flip = replace(ALL_OFF, horizontal_flip_probability=0.5, crop_scale=(0.5, 0.9), crop_ratio=(0.8, 1.2))
    tiny_rotation = replace(crop_flip, rotation_degrees=1e-6, rotation_probability=1)
    for seed in range(6):
        for output_size in ((128, 128), (64, 80), None):
            unrotated = augment(crop_flip, rgb, seed, output_size).astype(int)
            rotated = augment(tiny_rotation, rgb, seed, output_size).astype(int)
            # Only the outermost pixels may differ: the warp reads the real pixels just outside the crop,
            # a resize of the crop alone repeats its edge.
            assert np.abs(unrotated - rotated)[3:-3, 3:-3].max() <= 2
            assert np.abs(unrotated - rotated).mean() < 0.5


def test_rotation_while_shrinking_matches_the_unrotated_crop_closely():
    rgb = noisy_gradient(200, 180)
    crop = replace(ALL_OFF, crop_scale=(0.8, 0.8))
    for seed in range(4):
        unrotated = augment(crop, rgb, seed, (128, 128)).astype(int)
        rotated = augment(replace(crop, rotation_degrees=1e-6, rotation_probability=1), rgb, seed, (128, 128))
        assert np.abs(unrotated - rotated).mean() < 4  # only sub-pixel resampling differs


def coordinate_image(size: int = 200) -> np.ndarray:
    """Red = column, green = row: a crop's extent can be read off its pixel values."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([x, y, np.zeros_like(x)], axis=-1).astype(np.uint8)


def crop_extent(out: np.ndarray) -> tuple[float, float]:
    """Fraction of the source's width and height the output shows."""
    width = (int(out[..., 0].max()) - int(out[..., 0].min()) + 1) / 200
    height = (int(out[..., 1].max()) - int(out[..., 1].min()) + 1) / 200
    return width, height


def test_crop_of_fixed_scale_covers_that_share_of_the_image():
    config = replace(ALL_OFF, crop_scale=(0.5, 0.5))
    for seed in range(5):
        width, height = crop_extent(augment(config, coordinate_image(), seed))
        assert width * height == pytest.approx(0.5, abs=0.02)
        assert width == pytest.approx(height, abs=0.02)


def test_crop_scale_and_ratio_ranges_are_respected():
    config = replace(ALL_OFF, crop_scale=(0.6, 0.9), crop_ratio=(0.8, 1.25))
    areas, aspects = [], []
    for seed in range(30):
        width, height = crop_extent(augment(config, coordinate_image(), seed))
        areas.append(width * height)
        aspects.append(width / height)
    assert 0.6 - 0.02 < min(areas) and max(areas) < 0.9 + 0.02
    assert max(areas) - min(areas) > 0.15
    assert 0.8 - 0.03 < min(aspects) and max(aspects) < 1.25 + 0.03
    assert min(aspects) < 0.95 and max(aspects) > 1.05


def test_crop_ratio_is_relative_to_the_image_aspect():
    # A 2:1 image cropped with ratio (1, 1) keeps its 2:1 framing, as serving's resize of the whole image does;
    # torchvision's absolute ratio would cut a square out of it.
    wide = np.ascontiguousarray(coordinate_image()[:100])
    for seed in range(3):
        out = augment(replace(ALL_OFF, crop_scale=(0.7, 0.7)), wide, seed, output_size=(64, 64))
        columns = int(out[..., 0].max()) - int(out[..., 0].min()) + 1
        rows = int(out[..., 1].max()) - int(out[..., 1].min()) + 1
        assert columns / rows == pytest.approx(2.0, abs=0.08)
        assert columns * rows / (200 * 100) == pytest.approx(0.7, abs=0.03)


def test_same_seed_same_output_and_different_seeds_differ():
    rgb = noisy_gradient(160, 160)
    augmenter = build_augmenter(AugmentConfig(), (128, 128))
    torch.manual_seed(11)
    first = [augmenter(rgb) for _ in range(3)]
    torch.manual_seed(11)
    again = [augmenter(rgb) for _ in range(3)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    outputs = [augment(AugmentConfig(), rgb, seed, (128, 128)) for seed in range(4)]
    assert all(not np.array_equal(outputs[i], outputs[j]) for i in range(4) for j in range(i + 1, 4))


def test_randomness_comes_only_from_torch():
    np.random.seed(5)
    expected = np.random.rand()
    np.random.seed(5)
    augment(AugmentConfig(), noisy_gradient(32, 32))
    assert np.random.rand() == expected


@pytest.mark.parametrize(
    ("config", "probability"),
    [(replace(ALL_OFF, horizontal_flip_probability=0.5), 0.5),
     (replace(ALL_OFF, jpeg_probability=0.3), 0.3),
     (replace(ALL_OFF, blur_probability=0.3), 0.3),
     (replace(ALL_OFF, rotation_degrees=20, rotation_probability=0.7), 0.7)],
)
def test_ops_fire_at_their_probability(config, probability):
    rgb = noisy_gradient(16, 16)
    augmenter = build_augmenter(config)
    torch.manual_seed(0)
    fired = sum(not np.array_equal(augmenter(rgb), rgb) for _ in range(200))
    assert abs(fired - 200 * probability) < 30  # > 4 standard deviations


def test_zero_strength_turns_an_op_off():
    rgb = noisy_gradient(32, 32)
    for config in (replace(ALL_OFF, rotation_degrees=0, rotation_probability=1),
                   replace(ALL_OFF, blur_probability=1, blur_sigma=(0, 0)),
                   replace(ALL_OFF, rotation_degrees=30, rotation_probability=0)):
        for seed in range(3):
            np.testing.assert_array_equal(augment(config, rgb, seed), rgb)


def test_augmenter_pickles_for_dataloader_workers():
    augmenter = build_augmenter(AugmentConfig(), (64, 64))
    restored = pickle.loads(pickle.dumps(augmenter))
    assert isinstance(restored, RgbAugmenter) and restored == augmenter
    rgb = noisy_gradient(80, 80)
    np.testing.assert_array_equal(augment(AugmentConfig(), rgb, 3, (64, 64)),
                                  (torch.manual_seed(3), restored(rgb))[1])


def test_build_rejects_an_empty_output_size():
    with pytest.raises(ValueError, match="output_size"):
        build_augmenter(AugmentConfig(), (0, 128))


def test_config_round_trips_through_a_plain_dict():
    config = AugmentConfig(jpeg_quality=(30, 70), crop_scale=(0.7, 0.95), hue=0.0)
    as_dict = config.to_dict()
    assert as_dict["jpeg_quality"] == [30, 70]
    assert AugmentConfig.from_dict(as_dict) == config
    assert AugmentConfig.from_dict({}) == AugmentConfig()


def test_from_dict_rejects_unknown_keys_naming_them_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['flip_prob', 'jpg_quality'\]") as caught:
        AugmentConfig.from_dict({"flip_prob": 0.5, "jpg_quality": [50, 90], "hue": 0.01})
    assert "horizontal_flip_probability" in str(caught.value) and "jpeg_quality" in str(caught.value)


def test_from_dict_converts_command_line_strings():
    config = AugmentConfig.from_dict({"enabled": "false", "jpeg_probability": "0", "jpeg_quality": "50,90",
                                      "blur_sigma": [0.5, 1]})
    assert config == replace(AugmentConfig(), enabled=False, jpeg_probability=0.0, jpeg_quality=(50, 90),
                             blur_sigma=(0.5, 1.0))


@pytest.mark.parametrize(
    ("values", "field"),
    [({"jpeg_probability": 1.5}, "jpeg_probability"), ({"crop_scale": [0.9, 0.8]}, "crop_scale"),
     ({"crop_scale": [0, 1]}, "crop_scale"), ({"jpeg_quality": [0, 90]}, "jpeg_quality"),
     ({"hue": 0.7}, "hue"), ({"brightness": -0.1}, "brightness"), ({"jpeg_quality": [50.5, 90]}, "jpeg_quality"),
     ({"enabled": "maybe"}, "enabled"), ({"crop_ratio": [1.0]}, "crop_ratio")],
)
def test_from_dict_rejects_invalid_values_naming_the_key(values, field):
    with pytest.raises(ValueError, match=field):
        AugmentConfig.from_dict(values)


def test_colour_cast_alone_scales_red_and_blue_oppositely_and_keeps_pixels_in_proportion():
    rgb = np.full((16, 16, 3), 100, np.uint8)
    config = replace(ALL_OFF, colour_cast_probability=1.0, colour_cast=0.25)
    ratios = []
    for seed in range(20):
        out = augment(config, rgb, seed).astype(float)
        red, green, blue = out[..., 0].mean(), out[..., 1].mean(), out[..., 2].mean()
        assert np.ptp(out.reshape(-1, 3), axis=0).max() <= 1  # one gain per channel: a flat image stays flat
        assert abs(np.log(red / 100)) <= 0.25 + 0.01 and abs(np.log(green / 100)) <= 0.125 + 0.01
        assert np.log(red / 100) == pytest.approx(-np.log(blue / 100), abs=0.02)  # warm/cool axis
        ratios.append(red / blue)
    assert min(ratios) < 0.8 and max(ratios) > 1.25  # both warm and cool casts are drawn


def test_colour_cast_off_by_default_and_at_probability_zero():
    rgb = noisy_gradient(32, 32)
    assert np.array_equal(augment(ALL_OFF, rgb), rgb)
    assert np.array_equal(augment(replace(ALL_OFF, colour_cast=0.3), rgb), rgb)
    assert AugmentConfig().colour_cast_probability == 0.0


def test_colour_cast_fires_at_its_probability():
    rgb = np.full((4, 4, 3), 100, np.uint8)
    config = replace(ALL_OFF, colour_cast_probability=0.3, colour_cast=0.3)
    changed = sum(not np.array_equal(augment(config, rgb, seed), rgb) for seed in range(400))
    assert 0.22 < changed / 400 < 0.38


def test_resampling_alone_keeps_size_and_softens_the_image():
    rgb = noisy_gradient(64, 64)
    config = replace(ALL_OFF, resample_probability=1.0, resample_scale=(0.3, 0.3))
    out = augment(config, rgb)
    assert out.shape == rgb.shape
    assert laplacian_variance(out) < 0.3 * laplacian_variance(rgb)
    assert abs(out.astype(float).mean() - rgb.astype(float).mean()) < 2.0  # area averaging keeps the tone
    assert np.array_equal(augment(replace(config, resample_probability=0.0), rgb), rgb)


def test_resample_scale_must_be_a_shrink():
    with pytest.raises(ValueError, match="resample_scale"):
        AugmentConfig(resample_scale=(0.5, 1.5))


@pytest.mark.parametrize(("config", "draws"), [
    (AugmentConfig(), 19),  # as before the cast and resampling existed: old runs reproduce their models
    (AugmentConfig(colour_cast_probability=0.5, colour_cast=0.2), 24),
    (AugmentConfig(resample_probability=0.5), 24),
])
def test_the_new_ops_draw_random_numbers_only_when_turned_on(config, draws):
    torch.manual_seed(0)
    build_augmenter(config)(noisy_gradient(32, 32))
    after = torch.rand(1).item()
    torch.manual_seed(0)
    torch.rand(draws, dtype=torch.float64)
    assert torch.rand(1).item() == after


def test_a_blend_map_moves_with_the_image_through_crop_flip_and_rotation():
    # A grey image whose every channel is the map: only geometry runs, so the moved map is the moved image.
    config = replace(ALL_OFF, horizontal_flip_probability=0.5, rotation_degrees=20, rotation_probability=1.0,
                     crop_scale=(0.6, 1.0), crop_ratio=(0.8, 1.2))
    grey = noisy_gradient(90, 120)[:, :, 0]
    image = np.repeat(grey[:, :, None], 3, axis=2)
    augmenter = build_augmenter(config, (64, 64))
    for seed in range(5):
        torch.manual_seed(seed)
        moved, blend_map = augmenter.with_map(image, grey.astype(np.float32) / 255.0)
        assert blend_map.shape == (64, 64) and blend_map.dtype == np.float32
        assert np.abs(blend_map * 255.0 - moved[:, :, 0]).max() <= 1.0


def test_with_a_map_the_image_and_the_random_stream_are_those_of_a_plain_call():
    config = replace(AugmentConfig(), colour_cast_probability=0.5, colour_cast=0.2, resample_probability=0.5)
    rgb = noisy_gradient(80, 80)
    augmenter = build_augmenter(config, (48, 48))
    torch.manual_seed(3)
    plain, after_plain = augmenter(rgb), torch.rand(1)
    torch.manual_seed(3)
    (mapped, blend_map), after_mapped = augmenter.with_map(rgb, np.zeros((80, 80), np.float32)), torch.rand(1)
    assert np.array_equal(plain, mapped) and torch.equal(after_plain, after_mapped)
    assert not blend_map.any()
    with pytest.raises(ValueError, match="does not match the image"):
        augmenter.with_map(rgb, np.zeros((40, 80), np.float32))
