"""The model input: image bytes → RGB → resize → RGB + Laplacian channel → normalised [4, H, W] tensor.

This is the single preprocessing path of the project. The training dataset and the TorchServe
handler both call :func:`model_input_from_bytes`, so a model is always served with exactly the
tensor it was trained on. It needs only numpy, OpenCV, Pillow and torch, because it runs inside
the .mar.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# ImageNet statistics for RGB (what timm backbones were pretrained with). The Laplacian channel is
# |∇²gray| of a [0, 1] image: near 0 on smooth skin, up to ~1 on sharp edges and sensor noise.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAPLACIAN_MEAN = 0.05
LAPLACIAN_STD = 0.08


# File signatures: bytes that start like a known format but fail to decode are "corrupt", not "not an image".
# The formats Pillow may open. Pillow reads two dozen more (EPS runs Ghostscript on the upload; JPEG 2000, AVIF, TGA,
# PCX, ... add decoder attack surface no camera or phone needs), so anything else is refused as not_an_image.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MAGIC_NUMBERS = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def sniff_format(data: bytes) -> str | None:
    """The format a file's first bytes announce (WebP: RIFF....WEBP), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in MAGIC_NUMBERS.items() if data.startswith(magic)), None)


class ImageDecodeError(ValueError):
    """The request item cannot be scored; the message says why, for the client.

    Attributes:
        code: a stable, machine-readable reason (handler.verdict maps it to the HTTP status).
        field: where in the request the fault is: "body" for a raw body, the multipart field or JSON key the
            image came from, an option's name, or the "X-Uncalibrated" header. None where the raiser cannot
            know (a decoder sees bytes, not a request): the handler then names the field it took the bytes from.

    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field

    def located(self, field: str | None) -> ImageDecodeError:
        """Names `field` unless a field is named already (the raiser knew better); returns the error itself."""
        if self.field is None:
            self.field = field
        return self


@dataclass(frozen=True)
class PreprocessConfig:
    """How bytes become a model input. Exported in metadata.json so serving reads it from the model.

    Attributes:
        input_size: (height, width) the model expects.
        mean: per-channel mean for R, G, B, Laplacian.
        std: per-channel standard deviation for R, G, B, Laplacian.
        max_image_pixels: images with more pixels are refused before decoding (decompression bombs).
        jpeg_reduced_decode: a whole-image input decodes JPEGs at the smallest 1/2, 1/4 or 1/8 scale that
            still covers input_size (see :func:`decode_for_model`): 3–4× less decoding and resizing for
            photos far larger than the input. Training and serving both follow this flag from metadata.json;
            models exported before it existed lack it and keep full-size decoding.

    """

    input_size: tuple[int, int] = (128, 128)
    mean: tuple[float, float, float, float] = (*IMAGENET_MEAN, LAPLACIAN_MEAN)
    std: tuple[float, float, float, float] = (*IMAGENET_STD, LAPLACIAN_STD)
    max_image_pixels: int = 40_000_000
    channels: tuple[str, ...] = field(default=("red", "green", "blue", "laplacian"))
    jpeg_reduced_decode: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly form, for metadata.json."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error so a typo cannot pass silently."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; known: {sorted(known)}")
        converted = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
        return cls(**converted)


# Modes that hold more than 8 bits per sample. Pillow's convert("RGB") clips them at 255 instead of
# scaling, so a mid-grey 16-bit PNG would come out white. "I" (32-bit int) is how older Pillow
# versions opened 16-bit greyscale PNGs, so its samples are read as 16-bit too.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Transparent pixels are shown over this colour, as an image viewer on a white page shows them.
ALPHA_BACKGROUND = 255


def _sixteen_to_eight_bits(samples: np.ndarray) -> np.ndarray:
    """0..65535 → 0..255 by keeping the high byte: what Pillow itself does for 16-bit RGB PNGs and TIFFs.

    The same shift for greyscale keeps a 16-bit grey file and the 16-bit RGB file of the same pixels identical.
    """
    return (np.clip(samples.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def _float_to_eight_bits(samples: np.ndarray) -> np.ndarray:
    """Floating-point TIFFs ("F"): [0, 1] when the file keeps to that range, else read as 0..255."""
    samples = np.nan_to_num(samples.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    scale = 255.0 if samples.size and samples.max() <= 1.0 else 1.0
    return np.clip(np.rint(samples * scale), 0, 255).astype(np.uint8)


# Pixels composited at a time: the temporaries stay a few MB whatever the image size.
COMPOSITE_CHUNK_PIXELS = 1 << 20


def _over_background(rgba: np.ndarray) -> np.ndarray:
    """Composites RGBA over ALPHA_BACKGROUND: what a person sees, not the colour left under transparent pixels.

    Row blocks in uint16 (colour * alpha + 255 * (255 - alpha) + 127 <= 65152): a 45-byte GIF can claim a
    40 Mpx transparent canvas, and full-size uint32 temporaries cost 1.9 GB for it where these cost 0.5 GB
    (found by scripts/reliability/fuzz.py).
    """
    height, width = rgba.shape[:2]
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, COMPOSITE_CHUNK_PIXELS // max(1, width))
    for top in range(0, height, rows):
        block = rgba[top: top + rows]
        alpha = block[..., 3:].astype(np.uint16)
        blended = block[..., :3] * alpha
        blended += ALPHA_BACKGROUND * (255 - alpha) + 127
        out[top: top + rows] = blended // 255
    return out


def rgb_from_image(image: Image.Image) -> np.ndarray:
    """Any Pillow mode → uint8 RGB [H, W, 3] with the values a person would see.

    16-bit and float samples are scaled to 8 bits (not clipped); alpha and palette transparency are
    composited over white; greyscale is repeated into three channels; CMYK, YCbCr, 1-bit and the
    rest go through Pillow's own conversion.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        grey = _sixteen_to_eight_bits(np.asarray(image))
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "F":
        grey = _float_to_eight_bits(np.asarray(image))
        return np.repeat(grey[..., None], 3, axis=2)
    if image.has_transparency_data:
        return _over_background(np.asarray(image.convert("RGBA")))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


# EXIF orientation tag → the numpy view that makes the pixels upright: what ImageOps.exif_transpose does,
# without Pillow's copies (tests check each of the eight against Pillow).
EXIF_ORIENTATION_TAG = 0x0112
ORIENTATION_TRANSPOSES = {
    2: lambda rgb: rgb[:, ::-1],
    3: lambda rgb: rgb[::-1, ::-1],
    4: lambda rgb: rgb[::-1],
    5: lambda rgb: rgb.transpose(1, 0, 2),
    6: lambda rgb: rgb[::-1].transpose(1, 0, 2),
    7: lambda rgb: rgb[::-1, ::-1].transpose(1, 0, 2),
    8: lambda rgb: rgb[:, ::-1].transpose(1, 0, 2),
}
# libjpeg decodes at 1/2, 1/4 or 1/8 scale in the DCT domain, far faster than a full decode and a resize.
JPEG_SCALES = (8, 4, 2)
OPENCV_REDUCED_RGB = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}
# JPEG modes OpenCV decodes to exactly Pillow's RGB pixels (both use libjpeg-turbo with the same IDCT and upsampling;
# measured bit-identical on 623 photos, full and reduced). CMYK/YCCK and anything else stays with Pillow.
OPENCV_JPEG_MODES = ("RGB", "L")


def jpeg_scale(size: tuple[int, int], at_least: tuple[int, int] | None) -> int:
    """The JPEG reduction (1, 2, 4 or 8) that keeps both sides >= `at_least`, chosen exactly as Pillow's draft().

    Args:
        size: (width, height) of the stored image.
        at_least: (width, height) the caller needs; None for a full-size decode.

    """
    if at_least is None:
        return 1
    fits = min(size[0] // max(1, at_least[0]), size[1] // max(1, at_least[1]))
    return next((scale for scale in JPEG_SCALES if fits >= scale), 1)


def _decode_jpeg_opencv(data: bytes, scale: int, orientation: int) -> np.ndarray | None:
    """A well-formed JPEG's upright RGB pixels via OpenCV, or None to let Pillow decode it (and name the fault).

    Pillow's JPEG path costs three copies of the image (exif_transpose, convert, the array export): 9 ms for a
    768-px photo here, against 1.2 ms for OpenCV's imdecode straight into an RGB array. Data without its
    end-of-image marker goes to Pillow, which reports truncation as an error where libjpeg would fill in grey.
    """
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None
    flags = OPENCV_REDUCED_RGB[scale] & ~cv2.IMREAD_COLOR if scale > 1 else 0
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if rgb is None:
        return None
    upright = ORIENTATION_TRANSPOSES.get(orientation)
    return rgb if upright is None else upright(rgb)


def decode_rgb(data: bytes, max_image_pixels: int = PreprocessConfig.max_image_pixels,
               at_least: tuple[int, int] | None = None) -> np.ndarray:
    """Decodes any image Pillow reads into an upright uint8 RGB array of shape [H, W, 3].

    Pillow reads the header: it honours EXIF orientation, reads the first frame of GIFs, and reports
    the pixel count before decoding so oversized images are refused first. Plain JPEGs (the bulk of
    uploads) are then decoded by OpenCV, which gives Pillow's exact pixels several times faster.
    Training and serving both decode through here, so how modes become RGB (see
    :func:`rgb_from_image`) can never differ between them.

    Args:
        data: the file's bytes.
        max_image_pixels: larger images are refused before decoding.
        at_least: (width, height) the caller needs. A JPEG is then decoded at the smallest 1/2, 1/4 or 1/8
            scale that keeps both sides at least this large (see :func:`jpeg_scale`); other formats decode whole.

    Raises:
        ImageDecodeError: empty, unreadable, truncated or oversized input.

    """
    if not data:
        raise ImageDecodeError("empty_input", "the request body is empty; send the image file's bytes")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning is superseded by the explicit limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                width, height = image.size
                if width * height > max_image_pixels:
                    raise ImageDecodeError(
                        "image_too_large",
                        f"image is {width}x{height} = {width * height} pixels; the limit is {max_image_pixels}",
                    )
                orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
                if orientation in (5, 6, 7, 8) and at_least is not None:
                    at_least = (at_least[1], at_least[0])  # the stored image is the upright one turned by 90°
                scale = jpeg_scale((width, height), at_least) if image.format == "JPEG" else 1
                rgb = (_decode_jpeg_opencv(data, scale, orientation)
                       if image.format == "JPEG" and image.mode in OPENCV_JPEG_MODES else None)
                if rgb is None:
                    if scale > 1:
                        image.draft(image.mode, (width // scale, height // scale))
                    image.load()
                    ImageOps.exif_transpose(image, in_place=True)
                    rgb = rgb_from_image(image)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        # Pillow refuses absurd sizes (> ~179 Mpx) inside Image.open, before our own check can see the size.
        raise ImageDecodeError(
            "image_too_large", f"image is larger than the limit of {max_image_pixels} pixels ({error})"
        ) from error
    except UnidentifiedImageError as error:
        announced = sniff_format(data)
        if announced:
            raise ImageDecodeError(
                "corrupt_image", f"the data starts like a {announced} file but its content cannot be decoded"
            ) from error
        raise ImageDecodeError(
            "not_an_image", "the data is not an image in a known format (JPEG, PNG, WebP, BMP, TIFF, GIF)"
        ) from error
    except MemoryError as error:
        raise ImageDecodeError("image_too_large", "the image needs more memory to decode than is available") from error
    except Exception as error:  # noqa: BLE001 - any decoder failure on untrusted bytes is the input's fault
        raise ImageDecodeError("corrupt_image", f"the image could not be decoded: {error}") from error
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageDecodeError("corrupt_image", f"the image has no pixels ({rgb.shape[1]}x{rgb.shape[0]})")
    return np.ascontiguousarray(rgb)


def resize_rgb(rgb: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Resizes to the model's (height, width).

    INTER_AREA when shrinking keeps the high-frequency statistics the Laplacian channel measures
    without aliasing; bilinear when enlarging.
    """
    height, width = input_size
    if rgb.shape[:2] == (height, width):
        return np.ascontiguousarray(rgb)
    shrinking = rgb.shape[0] * rgb.shape[1] > height * width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interpolation)


def laplacian_channel(rgb: np.ndarray) -> np.ndarray:
    """Edge-inconsistency map: |Laplacian| of the grey image, float32 in [0, ~4], shape [H, W].

    Blending seams, resampled regions and denoised pastes change the local high-frequency energy;
    this channel makes that energy explicit so the CNN does not have to learn it from RGB alone.
    """
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    return np.abs(cv2.Laplacian(grey, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT_101))


def model_input_from_rgb(rgb: np.ndarray, config: PreprocessConfig) -> torch.Tensor:
    """Builds the normalised float32 tensor [4, H, W] from an RGB uint8 array of any size."""
    resized = resize_rgb(rgb, config.input_size)
    channels = np.empty((4, *config.input_size), dtype=np.float32)
    channels[:3] = resized.transpose(2, 0, 1).astype(np.float32) / 255.0
    channels[3] = laplacian_channel(resized)
    mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(config.std, dtype=np.float32)[:, None, None]
    channels -= mean
    channels /= std
    return torch.from_numpy(channels)


def decode_for_model(data: bytes, config: PreprocessConfig) -> np.ndarray:
    """Decodes an image that will be scored whole: reduced JPEG decoding when config.jpeg_reduced_decode.

    Face crops are cut from the full-size decode instead (handler.scoring), so a face keeps every pixel.
    """
    height, width = config.input_size
    return decode_rgb(data, config.max_image_pixels, (width, height) if config.jpeg_reduced_decode else None)


def model_input_from_bytes(data: bytes, config: PreprocessConfig) -> torch.Tensor:
    """Image file bytes → model input tensor [4, H, W]. The one function training and serving share."""
    return model_input_from_rgb(decode_for_model(data, config), config)
