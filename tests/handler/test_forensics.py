import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from handler.forensics import (
    ImageDecodeError,
    PreprocessConfig,
    decode_rgb,
    laplacian_channel,
    model_input_from_bytes,
    model_input_from_rgb,
    resize_rgb,
)


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
