import io
import tracemalloc

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from handler.forensics import (
    ImageDecodeError,
    PreprocessConfig,
    decode_for_model,
    decode_rgb,
    jpeg_scale,
    laplacian_channel,
    model_input_from_bytes,
    model_input_from_rgb,
    resize_rgb,
    rgb_from_image,
)
from tests.handler.hostile_images import png_header_claiming


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient_rgb(height: int = 90, width: int = 120) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 2 % 256, yy * 2 % 256, (xx + yy) % 256], axis=2).astype(np.uint8)


def test_model_input_has_four_normalised_channels_of_the_configured_size():
    config = PreprocessConfig(input_size=(64, 48))
    tensor = model_input_from_bytes(encode(Image.fromarray(gradient_rgb())), config)
    assert tensor.shape == (4, 64, 48)
    assert tensor.dtype == torch.float32
    # Channel 0 is red, normalised with the configured mean/std: undo it and compare with the resized image.
    resized = resize_rgb(gradient_rgb(), (64, 48))
    red = tensor[0].numpy() * config.std[0] + config.mean[0]
    np.testing.assert_allclose(red, resized[..., 0] / 255.0, atol=1e-5)


def test_laplacian_channel_is_zero_on_flat_image_and_high_on_edges():
    flat = np.full((32, 32, 3), 128, np.uint8)
    assert laplacian_channel(flat).max() == 0.0
    edge = flat.copy()
    edge[:, 16:] = 255
    response = laplacian_channel(edge)
    assert response[:, 15:17].min() > 0.4  # both sides of the step
    assert response[:, :14].max() == 0.0 and response[:, 18:].max() == 0.0


def test_laplacian_channel_is_computed_after_resizing():
    # Noise that vanishes when a large image is shrunk must not survive into the 4th channel.
    rng = np.random.default_rng(0)
    noisy = np.clip(128 + rng.normal(0, 20, (512, 512, 3)), 0, 255).astype(np.uint8)
    config = PreprocessConfig(input_size=(32, 32), mean=(0, 0, 0, 0), std=(1, 1, 1, 1))
    tensor = model_input_from_rgb(noisy, config)
    expected = laplacian_channel(cv2.resize(noisy, (32, 32), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(tensor[3].numpy(), expected)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_any_colour_mode_becomes_rgb(mode):
    image = Image.fromarray(gradient_rgb()).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    rgb = decode_rgb(encode(image, fmt))
    assert rgb.shape == (90, 120, 3) and rgb.dtype == np.uint8


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_common_formats_decode(fmt):
    rgb = decode_rgb(encode(Image.fromarray(gradient_rgb()), fmt))
    assert rgb.shape == (90, 120, 3)


def test_exif_orientation_is_honoured():
    image = Image.fromarray(gradient_rgb(40, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    rgb = decode_rgb(encode(image, "JPEG", exif=exif.tobytes()))
    assert rgb.shape == (100, 40, 3)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_input"),
        (b"this is plain text, not a picture", "not_an_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt_image"),
    ],
)
def test_bad_bytes_raise_a_named_error(data, code):
    with pytest.raises(ImageDecodeError) as raised:
        decode_rgb(data)
    assert raised.value.code == code
    assert str(raised.value)


def test_truncated_jpeg_is_refused():
    data = encode(Image.fromarray(gradient_rgb(200, 200)), "JPEG")
    with pytest.raises(ImageDecodeError) as raised:
        decode_rgb(data[: len(data) // 2])
    assert raised.value.code == "corrupt_image"


def test_pixel_limit_refuses_before_decoding():
    big = encode(Image.new("L", (3000, 3000)), "PNG")  # tiny on disk, 9 Mpx decoded
    with pytest.raises(ImageDecodeError) as raised:
        decode_rgb(big, max_image_pixels=1_000_000)
    assert raised.value.code == "image_too_large"
    assert "3000x3000" in str(raised.value)


def test_preprocess_config_round_trips_through_json_form():
    config = PreprocessConfig(input_size=(96, 80), max_image_pixels=123)
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        PreprocessConfig.from_dict({**config.to_dict(), "input_sise": [1, 1]})


@pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")  # Pillow narrates the corrupt TIFFs
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_mutated_files_either_decode_or_raise_image_decode_error(fmt):
    # Untrusted bytes: whatever the decoder trips over must surface as a per-item ImageDecodeError,
    # never as another exception type that would fail the whole batch.
    original = encode(Image.fromarray(gradient_rgb(48, 64)), fmt)
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(150):
        data = bytearray(original)
        for position in rng.integers(0, len(data), size=rng.integers(1, 12)):
            data[position] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            data = data[: int(rng.integers(1, len(data)))]
        try:
            rgb = decode_rgb(bytes(data))
        except ImageDecodeError as error:
            outcomes.add(error.code)
        else:
            assert rgb.ndim == 3 and rgb.shape[2] == 3
            outcomes.add("decoded")
    assert outcomes - {"decoded"}  # the mutations did break some files


# --- every format and colour mode a client may send, decoded to the RGB a person would see ---------------------


@pytest.mark.parametrize(("fmt", "options", "tolerance"), [
    ("PNG", {}, 0), ("BMP", {}, 0), ("TIFF", {}, 0), ("WEBP", {"lossless": True}, 0),
    ("JPEG", {"quality": 95}, 12), ("WEBP", {"quality": 95}, 16),
])
def test_formats_decode_to_the_encoded_pixels(fmt, options, tolerance):
    original = gradient_rgb()
    rgb = decode_rgb(encode(Image.fromarray(original), fmt, **options))
    assert rgb.shape == original.shape and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - original.astype(int)).mean() <= tolerance


def test_gif_first_frame_is_decoded():
    frames = [Image.new("RGB", (30, 20), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 3  # really an animation
    rgb = decode_rgb(buffer.getvalue())
    assert rgb.shape == (20, 30, 3)
    assert (rgb == (255, 0, 0)).all()


@pytest.mark.parametrize(("orientation", "marker_corner"), [(1, (0, 0)), (3, (-1, -1)), (6, (0, -1)), (8, (-1, 0))])
def test_exif_orientation_gives_an_upright_image(orientation, marker_corner):
    # A landscape image with a red top-left corner, stored as a camera would before rotating for display.
    stored = np.zeros((40, 100, 3), np.uint8)
    stored[:10, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    rgb = decode_rgb(encode(Image.fromarray(stored), "PNG", exif=exif.tobytes()))
    assert rgb.shape == ((100, 40, 3) if orientation in (6, 8) else (40, 100, 3))
    row, column = marker_corner
    assert tuple(rgb[row, column]) == (255, 0, 0)  # the marker is where a viewer shows it
    assert tuple(rgb[20, 20]) == (0, 0, 0)


def test_greyscale_and_greyscale_alpha_become_grey_rgb():
    grey = decode_rgb(encode(Image.new("L", (8, 6), 77)))
    assert grey.shape == (6, 8, 3) and (grey == 77).all()
    half_transparent = decode_rgb(encode(Image.new("LA", (8, 6), (0, 128))))
    assert (half_transparent == 127).all()  # black at alpha 128/255 over white


def test_alpha_is_composited_over_white_and_opaque_pixels_are_kept():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = gradient_rgb(4, 4)
    rgba[:2, ..., 3] = 255  # top half opaque
    rgba[2:, ..., :3] = (200, 0, 0)  # bottom half: red the viewer never sees, fully transparent
    rgb = decode_rgb(encode(Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(rgb[:2], gradient_rgb(4, 4)[:2])
    assert (rgb[2:] == 255).all()


def test_palette_images_with_and_without_transparency():
    palette = Image.new("P", (6, 4), 1)
    palette.putpalette([255, 0, 0, 0, 128, 255] + [0] * 762)
    assert (decode_rgb(encode(palette)) == (0, 128, 255)).all()
    palette.paste(0, (0, 0, 3, 4))  # left half: palette entry 0, declared transparent below
    rgb = decode_rgb(encode(palette, transparency=0))
    assert (rgb[:, :3] == 255).all() and (rgb[:, 3:] == (0, 128, 255)).all()


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_becomes_rgb(fmt):
    rgb = decode_rgb(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), fmt))  # pure red in CMYK
    assert np.abs(rgb.astype(int) - (255, 0, 0)).max() <= 2


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    # Pillow's own convert("RGB") clips 16-bit samples at 255: this mid-grey would come out white.
    grey16 = np.full((6, 8), 32768, np.uint16)
    grey16[0, 0], grey16[0, 1] = 0, 65535
    data = cv2.imencode(".png", grey16)[1].tobytes()
    assert Image.open(io.BytesIO(data)).mode == "I;16"  # the mode this test is about
    rgb = decode_rgb(data)
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[3, 3]) == (128, 128, 128)
    assert tuple(rgb[0, 0]) == (0, 0, 0) and tuple(rgb[0, 1]) == (255, 255, 255)


def test_sixteen_bit_grey_and_rgb_of_the_same_pixels_decode_identically():
    eight_bit = gradient_rgb(30, 40)[..., 0]
    grey16 = eight_bit.astype(np.uint16) * 257  # v → v·257 spans 0..65535 exactly
    from_grey = decode_rgb(cv2.imencode(".png", grey16)[1].tobytes())
    from_rgb = decode_rgb(cv2.imencode(".png", np.stack([grey16] * 3, axis=2))[1].tobytes())
    from_tiff = decode_rgb(cv2.imencode(".tiff", grey16)[1].tobytes())
    np.testing.assert_array_equal(from_grey[..., 0], eight_bit)
    np.testing.assert_array_equal(from_grey, from_rgb)
    np.testing.assert_array_equal(from_grey, from_tiff)


def test_sixteen_bit_rgb_png_keeps_its_colours():
    bgr16 = np.zeros((5, 7, 3), np.uint16)
    bgr16[...] = (65535, 32768, 0)  # OpenCV writes BGR: blue full, green half, red none
    rgb = decode_rgb(cv2.imencode(".png", bgr16)[1].tobytes())
    assert (rgb == (0, 128, 255)).all()


@pytest.mark.parametrize(("mode", "value", "expected"), [
    ("1", 1, 255), ("I", 32768, 128), ("I", 70000, 255), ("F", 0.5, 128), ("F", 200.0, 200), ("I;16B", 65535, 255),
])
def test_tiff_in_unusual_modes_becomes_rgb(mode, value, expected):
    rgb = decode_rgb(encode(Image.new(mode, (5, 3), value), "TIFF"))
    assert rgb.shape == (3, 5, 3) and rgb.dtype == np.uint8
    assert (rgb == expected).all()


@pytest.mark.parametrize("mode", ["LAB", "YCbCr", "PA", "CMYK"])
def test_tiff_in_exotic_modes_decodes_to_rgb_or_a_named_error(mode):
    try:
        rgb = decode_rgb(encode(Image.new(mode, (5, 3)), "TIFF"))
    except ImageDecodeError as error:
        assert error.code == "corrupt_image"
    else:
        assert rgb.shape == (3, 5, 3) and rgb.dtype == np.uint8


# --- hostile inputs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(100_000, 100_000), (10_000, 10_000), (1, 50_000_000)])
def test_header_claiming_a_huge_image_is_refused_before_decoding(size):
    # 100000x100000 trips Pillow's own bomb check inside Image.open; 10000x10000 only ours. Either way: 413's code.
    data = png_header_claiming(*size)
    assert len(data) < 200
    with pytest.raises(ImageDecodeError) as raised:
        decode_rgb(data)
    assert raised.value.code == "image_too_large"
    assert "limit" in str(raised.value)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 5000), (5000, 1), (3, 2)])
def test_tiny_and_extremely_thin_images_become_model_inputs(height, width):
    rgb = np.full((height, width, 3), 90, np.uint8)
    config = PreprocessConfig(input_size=(64, 64))
    tensor = model_input_from_bytes(encode(Image.fromarray(rgb)), config)
    assert tensor.shape == (4, 64, 64) and torch.isfinite(tensor).all()


def test_random_bytes_are_not_an_image():
    data = np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ImageDecodeError) as raised:
        decode_rgb(data)
    assert raised.value.code == "not_an_image"


def pillow_upright_rgb(data: bytes, draft: tuple[int, int] | None = None) -> np.ndarray:
    """What Pillow alone makes of a file (draft() for reduced decoding, exif_transpose): the reference."""
    with Image.open(io.BytesIO(data)) as image:
        if draft is not None:
            image.draft("RGB", draft)
        image.load()
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def photo_like_rgb(height: int = 300, width: int = 420) -> np.ndarray:
    """A noisy gradient: JPEG blocks with real high-frequency content, so decoders that differ would show it."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 40, (height, width, 3))
    return np.clip(np.concatenate([gradient_rgb(height, width)[..., :2], noise[..., :1] * 4], axis=2) + noise,
                   0, 255).astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_every_exif_orientation_matches_pillows_exif_transpose(orientation, fmt):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(photo_like_rgb(60, 90)), fmt, exif=exif.tobytes())
    assert np.array_equal(decode_rgb(data), pillow_upright_rgb(data))


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"subsampling": 0}], ids=["baseline", "progressive",
                                                                                           "4:4:4"])
def test_jpegs_decode_to_exactly_pillows_pixels(mode, options):
    data = encode(Image.fromarray(photo_like_rgb()).convert(mode), "JPEG", quality=90, **options)
    assert np.array_equal(decode_rgb(data), pillow_upright_rgb(data))


def test_cmyk_jpeg_still_decodes_through_pillow():
    data = encode(Image.fromarray(photo_like_rgb()).convert("CMYK"), "JPEG")
    assert np.array_equal(decode_rgb(data), pillow_upright_rgb(data))


@pytest.mark.parametrize(("size", "at_least", "scale"), [
    ((768, 540), None, 1), ((768, 540), (128, 128), 4), ((768, 540), (200, 200), 2), ((768, 540), (400, 400), 1),
    ((2048, 2048), (128, 128), 8), ((100, 100), (128, 128), 1), ((1000, 130), (128, 128), 1)])
def test_jpeg_scale_keeps_both_sides_at_least_the_size_asked_for(size, at_least, scale):
    assert jpeg_scale(size, at_least) == scale
    if scale > 1:  # a reduction never goes below the size asked for
        assert all(-(-side // scale) >= need for side, need in zip(size, at_least, strict=True))


@pytest.mark.parametrize("orientation", [1, 6])
def test_reduced_decoding_is_pillows_draft_and_covers_the_size_asked_for(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(photo_like_rgb(540, 768)), "JPEG", exif=exif.tobytes())
    reduced = decode_rgb(data, at_least=(128, 128))
    full = decode_rgb(data)
    assert reduced.shape[:2] == tuple(-(-side // 4) for side in full.shape[:2])  # 1/4 scale, turned upright
    assert np.array_equal(reduced, pillow_upright_rgb(data, draft=(192, 135)))


def test_reduced_decoding_applies_to_jpegs_only():
    data = encode(Image.fromarray(photo_like_rgb(540, 768)), "PNG")
    assert np.array_equal(decode_rgb(data, at_least=(128, 128)), decode_rgb(data))


def test_truncated_jpeg_with_reduced_decoding_is_still_refused():
    data = encode(Image.fromarray(photo_like_rgb(540, 768)), "JPEG")
    with pytest.raises(ImageDecodeError) as error:
        decode_rgb(data[: len(data) // 2], at_least=(128, 128))
    assert error.value.code == "corrupt_image"


def test_model_input_follows_the_reduced_decoding_flag():
    data = encode(Image.fromarray(photo_like_rgb(540, 768)), "JPEG")
    full, reduced = PreprocessConfig(), PreprocessConfig(jpeg_reduced_decode=True)
    assert torch.equal(model_input_from_bytes(data, full), model_input_from_rgb(decode_rgb(data), full))
    expected = model_input_from_rgb(decode_rgb(data, at_least=(128, 128)), reduced)
    assert torch.equal(model_input_from_bytes(data, reduced), expected)
    assert np.array_equal(decode_for_model(data, reduced), decode_rgb(data, at_least=(128, 128)))
    assert not torch.equal(expected, model_input_from_bytes(data, full))  # the flag really changes the decode


def test_metadata_written_before_the_flag_existed_keeps_full_decoding():
    values = PreprocessConfig().to_dict()
    del values["jpeg_reduced_decode"]
    assert PreprocessConfig.from_dict(values).jpeg_reduced_decode is False
    assert PreprocessConfig.from_dict(PreprocessConfig(jpeg_reduced_decode=True).to_dict()).jpeg_reduced_decode


@pytest.mark.parametrize("fmt", ["TGA", "PCX", "PPM", "ICO", "SGI"])
def test_formats_outside_the_accepted_six_are_refused_as_not_an_image(fmt):
    # Pillow would decode these; the service accepts JPEG, PNG, WebP, GIF, BMP and TIFF only (less decoder surface).
    data = encode(Image.fromarray(gradient_rgb()), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself reads the file
    with pytest.raises(ImageDecodeError) as raised:
        decode_rgb(data)
    assert raised.value.code == "not_an_image"


def test_a_small_gif_claiming_a_huge_transparent_canvas_is_composited_in_bounded_memory():
    # 45 bytes: a 1x1 transparent GIF whose logical screen claims 8000x5000 (found by scripts/reliability/fuzz.py).
    data = bytes.fromhex("474946383961401f881380000000000000000021f90401000000002c000000000100010000080400010404003b")
    tracemalloc.start()
    try:
        rgb = decode_rgb(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rgb.shape == (5000, 8000, 3) and (rgb == 255).all()  # transparent over white
    # The RGBA canvas (160 MB) and the RGB result (120 MB) are unavoidable; full-size uint32 temporaries were not.
    assert peak < 600 * 2**20, peak / 2**20


def test_compositing_in_blocks_matches_the_formula_for_every_colour_and_alpha():
    colour, alpha = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8), indexing="ij")
    rgba = np.dstack([colour, colour, colour, alpha])
    expected = (colour.astype(np.uint32) * alpha + 255 * (255 - alpha.astype(np.uint32)) + 127) // 255
    assert (rgb_from_image(Image.fromarray(rgba, "RGBA"))[..., 0] == expected).all()
