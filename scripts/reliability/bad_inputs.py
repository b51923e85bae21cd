"""The bad-input corpus: every odd or hostile request a detector in front of user uploads should expect.

Generated, never stored: each entry is built from one good image (passed in as bytes) and fixed seeds, so
the same call gives the same bytes on every machine and nothing hostile sits in the repository. Each entry
is a request (the keyword arguments of `requests.post` plus the route) and the answer a client should get:
the HTTP status, the error code and the request field the error names (see handler/verdict.py), or a 200
verdict for the odd files that are real images. Two kinds are answered by TorchServe's frontend before the
handler sees them (a body over `max_request_size`): a bare 413 with an empty body.

    from scripts.reliability.bad_inputs import CorpusLimits, bad_inputs, sample_jpeg
    corpus = bad_inputs(sample_jpeg(), CorpusLimits())

scripts/reliability/corpus_check.py sends it to a server; `python -m scripts.reliability.bad_inputs` lists it.
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import random
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# The route each entry is posted to, relative to the inference API; {model} is the model's name.
PREDICTIONS = "/predictions/{model}"
PREDICT = "/{model}/predict"  # the route that passes query parameters (options) on to the handler
MIB = 1024 * 1024
SEED = 7
# A size no decoder should be asked to allocate: 60000 x 60000 = 3.6 gigapixels (10.8 GB as RGB).
CLAIMED_SIDE = 60_000


@dataclass(frozen=True)
class CorpusLimits:
    """The server's limits the size entries are built around (defaults: the shipped configs).

    Attributes:
        max_upload_bytes: the handler's image-file limit (model-config.yaml `handler: max_upload_bytes`).
        max_request_size: the frontend's request-body limit (`max_request_size` in the .properties files).
        max_image_pixels: the handler's decoded-size limit (model-config.yaml `handler: max_image_pixels`).

    """

    max_upload_bytes: int = 6 * MIB
    max_request_size: int = 9 * MIB
    max_image_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        # An image over the upload limit must still fit the request limit as base64 JSON, or the handler's 413
        # could never be reached through JSON; and the bomb entries must claim more pixels than the limit.
        if self.max_upload_bytes * 4 // 3 + 64 * 1024 > self.max_request_size:
            raise ValueError(f"max_request_size {self.max_request_size} cannot carry a base64 image of "
                             f"max_upload_bytes {self.max_upload_bytes}: raise it to at least 4/3 of that plus 64 KiB")
        if self.max_image_pixels >= 20_000 * 20_000:
            raise ValueError("max_image_pixels must be below 400 megapixels for the decompression bombs to exceed it")


@dataclass(frozen=True)
class BadInput:
    """One request of the corpus and the answer a client should get.

    Attributes:
        name: the kind, unique in the corpus (a slug: shown in reports, used in test ids).
        category: which part of the contract it tests: transport, format, size, json, form, option, served.
        description: what is sent, in a few words.
        request: keyword arguments of `requests.post`: data, files, json and/or headers (the sender adds its
            Authorization header to these).
        status: the HTTP status a client should get.
        code: the error code of the JSON body; None for a 200 verdict or a frontend answer.
        field: where the error JSON says the fault is (None when it has none).
        path: the route, relative to the inference API's base URL; {model} is replaced by the model's name.
        frontend: answered by TorchServe's frontend before any worker sees the request (a bare status, empty
            body); such a request never joins a batch.

    """

    name: str
    category: str
    description: str
    request: Mapping[str, Any]
    status: int
    code: str | None = None
    field: str | None = None
    path: str = PREDICTIONS
    frontend: bool = False

    @property
    def reaches_handler(self) -> bool:
        """Whether a worker answers it, so it takes a place in a TorchServe batch."""
        return not self.frontend

    def url(self, base_url: str, model: str) -> str:
        """Where to post it on the server at `base_url` for `model`."""
        return base_url.rstrip("/") + self.path.format(model=model)


# --- hand-made files ---------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    """An image saved in `fmt` with Pillow's encoder (deterministic for a given Pillow version)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.cache
def png_of_zeros(width: int, height: int, bit_depth: int, colour_type: int, channels: int) -> bytes:
    """A complete, valid PNG of black pixels whose IDAT is zlib of zeros: a few KB for hundreds of megapixels.

    This is a real decompression bomb: a decoder that trusts it inflates every row. Cached: compressing the
    zeros takes a few tenths of a second and the bytes never change.
    """
    row_bytes = 1 + (width * channels * bit_depth + 7) // 8  # the filter byte (0: none) and the samples
    compressor = zlib.compressobj(6)  # as small as level 9 for zeros, and faster
    row = bytes(row_bytes)
    chunks = [compressor.compress(row * 500) for _ in range(height // 500)]
    chunks += [compressor.compress(row * (height % 500)), compressor.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(chunks))
            + png_chunk(b"IEND", b""))


def png_claiming(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose IHDR announces width x height RGB pixels; its pixel data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(bytes(64)))
            + png_chunk(b"IEND", b""))


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose screen and only frame announce width x height, with one byte of LZW data."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x4c\x01\x00"
    return screen + frame + b"\x3b"


def tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian greyscale TIFF whose IFD announces width x height, with 16 bytes of strip data."""
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
        (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 16),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    strip_offset = 8 + ifd_size
    entries[5] = (273, 4, 1, strip_offset)
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHII", tag, kind, count, value) if kind == 4 else struct.pack("<HHIHH", tag, kind,
                                                                                          count, value, 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(16)


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose start-of-frame marker is rewritten to announce width x height (each below 65536)."""
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = jpeg.find(marker)
        if at > 0:
            # SOFn: marker, length (2), precision (1), height (2), width (2)
            return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]
    raise ValueError("the good image is not a baseline or progressive JPEG: no SOF0/1/2 marker")


def png_with_chunk(png: bytes, chunk: bytes) -> bytes:
    """`png` with one extra chunk inserted right after its IHDR chunk (before the pixel data)."""
    ihdr_end = 8 + 4 + 4 + 13 + 4
    return png[:ihdr_end] + chunk + png[ihdr_end:]


@functools.cache
def ztxt_bomb(inflated: int = 64 * MIB) -> bytes:
    """A PNG zTXt chunk (compressed text) that inflates to `inflated` bytes: a bomb hidden in the metadata."""
    return png_chunk(b"zTXt", b"bomb\x00\x00" + zlib.compress(bytes(inflated), 6))


def png_with_bad_ihdr_crc(png: bytes) -> bytes:
    """`png` with its IHDR chunk's CRC flipped: the header fails its checksum."""
    crc_at = 8 + 4 + 4 + 13
    (crc,) = struct.unpack(">I", png[crc_at:crc_at + 4])
    return png[:crc_at] + struct.pack(">I", crc ^ 0xFFFFFFFF) + png[crc_at + 4:]


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG re-encoded with an EXIF orientation tag of `orientation` (valid ones are 1-8)."""
    with Image.open(io.BytesIO(jpeg)) as image:
        exif = Image.Exif()
        exif[0x0112] = orientation
        return encode(image.convert("RGB"), "JPEG", quality=90, exif=exif.tobytes())


def jpeg_with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """The JPEG with an APP1 segment (where EXIF lives) holding `payload` right after its start marker."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def multipart(parts: list[tuple[str, str, bytes]], boundary: str, terminated: bool = True) -> bytes:
    """A multipart/form-data body written by hand, so it can be wrong in ways HTTP libraries refuse to write.

    Args:
        parts: (field name, file name, content) of each file part.
        boundary: the delimiter used in the body (the Content-Type header may announce another one).
        terminated: end with the closing delimiter `--boundary--`.

    """
    body = b""
    for name, filename, content in parts:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n"
    return body + (f"--{boundary}--\r\n".encode() if terminated else b"")


def sample_jpeg(seed: int = 0, size: tuple[int, int] = (256, 192)) -> bytes:
    """A photo-like JPEG (smooth gradients plus sensor-like noise), for when no real photo is at hand."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 200 + 30, y / height * 180 + 40, (x + y) / (width + height) * 150 + 60], axis=2)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


def good_variants(good: bytes) -> list[bytes]:
    """Four different, valid images made from the good one (JPEG as given, PNG, mirrored JPEG, WebP).

    The mixed-batch check sends these between the bad requests and compares each answer with the one the
    same image got alone.
    """
    with Image.open(io.BytesIO(good)) as opened:
        image = opened.convert("RGB")
    return [good, encode(image, "PNG"), encode(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "JPEG", quality=90),
            encode(image, "WEBP", quality=90)]


# --- the corpus ----------------------------------------------------------------------------------------------

JSON_TYPE = {"Content-Type": "application/json"}
OCTET = {"Content-Type": "application/octet-stream"}


def _random_bytes(count: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(count)


def _entries(good: bytes, limits: CorpusLimits) -> list[BadInput]:
    with Image.open(io.BytesIO(good)) as opened:
        image = opened.convert("RGB")
    png = encode(image, "PNG")
    b64 = base64.b64encode(png).decode()
    frames = [image, image.transpose(Image.Transpose.FLIP_TOP_BOTTOM), Image.new("RGB", image.size, (0, 90, 200))]
    gif_frames = [frame.convert("P") for frame in frames]  # the web palette: no slow per-frame quantisation
    sixteen = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    over_upload = limits.max_upload_bytes + MIB // 2  # fits the frontend's limit, raw and as base64 JSON
    over_request = limits.max_request_size + MIB
    bomb_side = int((limits.max_image_pixels * 1.2) ** 0.5)  # 20 % over the limit, under Pillow's own refusal
    text_field = {"other": (None, "not a file, a text field")}

    def entry(name: str, category: str, description: str, status: int, code: str | None = None,
              field: str | None = None, **kwargs: Any) -> BadInput:
        path = kwargs.pop("path", PREDICTIONS)
        frontend = kwargs.pop("frontend", False)
        return BadInput(name, category, description, kwargs, status, code, field, path, frontend)

    return [
        # Transport: what the body is, whatever it claims to be.
        entry("empty_body", "transport", "POST with no body at all", 400, "empty_input", "body", data=b""),
        entry("random_bytes", "transport", "5000 random bytes", 415, "not_an_image", "body",
              data=_random_bytes(5000, SEED)),
        entry("text_plain", "transport", "a sentence sent as text/plain", 415, "not_an_image", "body",
              data=b"this is not an image", headers={"Content-Type": "text/plain"}),
        entry("text_octet_stream", "transport", "a sentence sent as application/octet-stream", 415, "not_an_image",
              "body", data=b"this is not an image either", headers=OCTET),
        entry("html_page", "transport", "an HTML page (text/html)", 415, "not_an_image", "body",
              data=b"<!doctype html><html><body><img src=x></body></html>", headers={"Content-Type": "text/html"}),
        entry("svg_image", "transport", "an SVG drawing (image/svg+xml: a vector format, not read)", 415,
              "not_an_image", "body", headers={"Content-Type": "image/svg+xml"},
              data=b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><circle r="9"/></svg>'),
        entry("pdf_document", "transport", "the start of a PDF file", 415, "not_an_image", "body",
              data=b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", headers=OCTET),
        entry("png_sent_as_jpeg", "transport", "a PNG labelled Content-Type: image/jpeg", 200,
              data=png, headers={"Content-Type": "image/jpeg"}),
        entry("image_sent_as_json", "transport", "JPEG bytes labelled Content-Type: application/json", 200,
              data=good, headers=JSON_TYPE),
        entry("unknown_route_option", "transport", "a good image with an unknown query parameter", 200,
              data=good, path=PREDICT + "?colour=blue"),
        # Damaged or disguised image files.
        entry("truncated_jpeg", "format", "the first third of a JPEG", 400, "corrupt_image", "body",
              data=good[:len(good) // 3]),
        entry("truncated_png", "format", "the first 300 bytes of a PNG", 400, "corrupt_image", "body", data=png[:300]),
        entry("jpeg_header_garbage", "format", "a JPEG's first 20 bytes, then 4000 random bytes", 400,
              "corrupt_image", "body", data=good[:20] + _random_bytes(4000, SEED + 1)),
        entry("png_header_garbage", "format", "the PNG signature, then 4000 random bytes", 400, "corrupt_image",
              "body", data=png[:8] + _random_bytes(4000, SEED + 2)),
        entry("png_bad_crc", "format", "a PNG whose IHDR checksum is wrong", 400, "corrupt_image", "body",
              data=png_with_bad_ihdr_crc(png)),
        entry("jpeg_without_scan", "format", "a JPEG cut right after its headers, with an end marker", 400,
              "corrupt_image", "body", data=good[:good.find(b"\xff\xda")] + b"\xff\xd9"),
        entry("png_ztxt_bomb", "format", "a PNG with a zTXt chunk inflating to 64 MB", 400, "corrupt_image", "body",
              data=png_with_chunk(png, ztxt_bomb())),
        # Odd but real images: served.
        # Readable, but shaped like no photo (handler settings min_image_side, max_aspect_ratio): refused.
        entry("one_pixel", "size", "a 1x1 PNG", 422, "degenerate_image", "body",
              data=encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")),
        entry("one_by_5000", "size", "a 1x5000 PNG strip", 422, "degenerate_image", "body",
              data=encode(Image.new("RGB", (1, 5000), (10, 200, 10)), "PNG")),
        entry("png_16_bit", "served", "a 16-bit greyscale PNG", 200, data=encode(Image.fromarray(sixteen), "PNG")),
        entry("jpeg_cmyk", "served", "a CMYK JPEG", 200, data=encode(image.convert("CMYK"), "JPEG", quality=90)),
        entry("png_palette_transparency", "served", "a palette PNG with a transparent colour", 200,
              data=encode(image.convert("P"), "PNG", transparency=0)),
        entry("gif_animated", "served", "a 3-frame animated GIF (the first frame is scored)", 200,
              data=encode(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:], duration=100, loop=0)),
        entry("webp_animated", "served", "a 3-frame animated WebP (the first frame is scored)", 200,
              data=encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, quality=80)),
        entry("exif_orientation_bogus", "served", "a JPEG whose EXIF orientation is 9 (valid: 1-8)", 200,
              data=with_exif_orientation(good, 9)),
        entry("exif_damaged", "served", "a JPEG whose EXIF block is 200 random bytes", 200,
              data=jpeg_with_app1(good, b"Exif\x00\x00" + _random_bytes(200, SEED + 4))),
        entry("png_huge_text_chunk", "served", "a PNG carrying a 4 MB tEXt chunk", 200,
              data=png_with_chunk(png, png_chunk(b"tEXt", b"Comment\x00" + b"A" * (4 * MIB)))),
        # Sizes: decompression bombs, headers that claim gigapixels, bodies over the limits.
        entry("png_bomb_20000", "size", "a valid 20000x20000 1-bit PNG of zeros (~50 KB, 400 megapixels)", 413,
              "image_too_large", "body", data=png_of_zeros(20_000, 20_000, 1, 0, 1)),
        entry("png_bomb_over_limit", "size",
              f"a valid {bomb_side}x{bomb_side} greyscale PNG of zeros: 20 % over max_image_pixels", 413,
              "image_too_large", "body", data=png_of_zeros(bomb_side, bomb_side, 8, 0, 1)),
        entry("png_claims_60000", "size", "a 100-byte PNG whose header claims 60000x60000", 413, "image_too_large",
              "body", data=png_claiming(CLAIMED_SIDE, CLAIMED_SIDE)),
        entry("gif_claims_60000", "size", "a 30-byte GIF whose header claims 60000x60000", 413, "image_too_large",
              "body", data=gif_claiming(CLAIMED_SIDE, CLAIMED_SIDE)),
        entry("tiff_claims_60000", "size", "a 140-byte TIFF whose header claims 60000x60000", 413,
              "image_too_large", "body", data=tiff_claiming(CLAIMED_SIDE, CLAIMED_SIDE)),
        entry("jpeg_sof_claims_60000", "size", "a real JPEG whose SOF marker claims 60000x60000", 413,
              "image_too_large", "body", data=jpeg_claiming(good, CLAIMED_SIDE, CLAIMED_SIDE)),
        entry("raw_over_upload_limit", "size", f"a {over_upload} B body: over max_upload_bytes, under the "
              "request limit", 413, "payload_too_large", "body", data=good + bytes(over_upload - len(good))),
        entry("json_over_upload_limit", "size", f"a {over_upload} B image as base64 JSON", 413, "payload_too_large",
              "data", json={"data": base64.b64encode(good + bytes(over_upload - len(good))).decode()}),
        entry("raw_over_request_limit", "size", f"a {over_request} B body: over the frontend's max_request_size",
              413, data=good + bytes(over_request - len(good)), frontend=True),
        entry("multipart_over_request_limit", "size", f"a {over_request} B multipart file", 413,
              files={"data": ("big.jpg", good + bytes(over_request - len(good)), "image/jpeg")}, frontend=True),
        # JSON bodies.
        entry("json_bad_base64", "json", 'JSON {"data": "%%% not base64 %%%"}', 400, "bad_base64", "data",
              json={"data": "%%% not base64 %%%"}),
        entry("json_truncated", "json", "a JSON body cut in the middle of its string", 400, "invalid_json", "body",
              data=('{"data": "' + b64[:200]).encode(), headers=JSON_TYPE),
        entry("json_list", "json", "a JSON list", 400, "invalid_json", "body", json=[b64]),
        entry("json_number", "json", "a JSON number", 400, "invalid_json", "body", data=b"42", headers=JSON_TYPE),
        entry("json_null", "json", "JSON null", 400, "invalid_json", "body", data=b"null", headers=JSON_TYPE),
        entry("json_string", "json", "a JSON string holding the base64", 400, "invalid_json", "body",
              data=f'"{b64[:100]}"'.encode(), headers=JSON_TYPE),
        entry("json_with_charset", "served", "JSON sent as application/json; charset=utf-8", 200,
              data=json.dumps({"data": b64}).encode(), headers={"Content-Type": "application/json; charset=utf-8"}),
        entry("json_data_empty", "json", 'JSON {"data": ""}', 400, "empty_input", "data", json={"data": ""}),
        entry("json_wrong_key", "json", 'JSON {"picture": "<base64>"}: no accepted key', 400, "missing_image",
              "data", json={"picture": b64}),
        entry("json_data_not_string", "json", 'JSON {"data": 12345}', 400, "invalid_json", "data",
              json={"data": 12345}),
        entry("json_data_url_not_image", "json", "a data: URL of a text file", 415, "not_an_image", "data",
              json={"data": "data:text/plain;base64," + base64.b64encode(b"hello, world").decode()}),
        entry("json_base64_random", "json", "base64 of 3000 random bytes", 415, "not_an_image", "image",
              json={"image": base64.b64encode(_random_bytes(3000, SEED + 3)).decode()}),
        entry("json_data_url_image", "served", "a data: URL of a PNG (what a browser's FileReader gives)", 200,
              json={"data": "data:image/png;base64," + b64}),
        # Forms: multipart and URL-encoded.
        entry("multipart_empty_file", "form", "a multipart file part of zero bytes", 400, "empty_input", "data",
              files={"data": ("empty.jpg", b"", "image/jpeg")}),
        entry("multipart_without_file", "form", "a multipart form with a text field and no file", 415,
              "not_an_image", "other", files=text_field),
        entry("multipart_only_option", "form", "a multipart form with only uncalibrated=true", 400,
              "missing_image", "data", files={"uncalibrated": (None, "true")}),
        entry("multipart_bad_boundary", "form", "a multipart body whose boundary differs from the header's",
              400, "missing_image", "body", data=multipart([("data", "a.jpg", good)], "real-boundary"),
              headers={"Content-Type": "multipart/form-data; boundary=announced-boundary"}),
        entry("multipart_unterminated", "form", "a multipart body without its closing delimiter", 400,
              "missing_image", "body", data=multipart([("data", "a.jpg", good)], "b0undary", terminated=False),
              headers={"Content-Type": "multipart/form-data; boundary=b0undary"}),
        entry("urlencoded_base64", "form", "a URL-encoded form with base64 text in 'data' (base64 is read from "
              "JSON only)", 415, "not_an_image", "data", data={"data": b64[:500]}),
        entry("urlencoded_image", "served", "a URL-encoded form with the image's bytes in 'data'", 200,
              data={"data": good}),
        entry("multipart_part_without_filename", "served", "the image in a form field without a file name "
              "(curl -F \"data=<face.jpg\")", 200, files={"data": (None, good)}),
        entry("multipart_emoji_filename", "served", "a file named with emoji", 200,
              files={"data": ("\U0001f600\U0001f4f8 selfie \u2728.jpg", good, "image/jpeg")}),
        entry("multipart_rtl_filename", "served", "a file named in Hebrew and Arabic with an RTL override", 200,
              files={"data": ("\u05ea\u05de\u05d5\u05e0\u05d4 \u0635\u0648\u0631\u0629 \u202egpj.exe.jpg", good,
                              "image/jpeg")}),
        entry("multipart_unicode_field", "served", "the file in a field named in Chinese", 200,
              files={"\u56fe\u50cf": ("photo.jpg", good, "image/jpeg")}),
        # Options.
        entry("option_query_invalid", "option", "?uncalibrated=maybe on /{model}/predict", 400, "invalid_option",
              "uncalibrated", data=good, path=PREDICT + "?uncalibrated=maybe"),
        entry("option_header_invalid", "option", "X-Uncalibrated: ture", 400, "invalid_option", "X-Uncalibrated",
              data=good, headers={"X-Uncalibrated": "ture"}),
        entry("option_json_invalid", "option", 'JSON {"data": ..., "uncalibrated": 2}', 400, "invalid_option",
              "uncalibrated", json={"data": b64, "uncalibrated": 2}),
        entry("option_form_invalid", "option", "a multipart field uncalibrated=perhaps beside the file", 400,
              "invalid_option", "uncalibrated",
              files={"data": ("a.jpg", good, "image/jpeg"), "uncalibrated": (None, "perhaps")}),
    ]


def bad_inputs(good: bytes, limits: CorpusLimits | None = None) -> list[BadInput]:
    """The corpus, built from one good JPEG (the source of the damaged, disguised and odd variants).

    Raises:
        ValueError: `good` is not a baseline or progressive JPEG, or the limits cannot be tested together.

    """
    corpus = _entries(good, limits or CorpusLimits())
    names = [item.name for item in corpus]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"corpus names must be unique: {duplicates}")
    return corpus


def describe_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request with its payloads summarised (sizes, not bytes), for reports."""

    def size(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray)):
            return f"<{len(value)} bytes>"
        if isinstance(value, str) and len(value) > 80:
            return f"<{len(value)} characters>"
        if isinstance(value, Mapping):
            return {key: size(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [size(item) for item in value]
        return value

    return size(dict(request))


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> None:
    """Lists the corpus (built from a generated sample JPEG, or --image) with the answers expected."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=argparse.FileType("rb"), help="a good JPEG to derive from (default: generated)")
    args = parser.parse_args(argv)
    corpus = bad_inputs(args.image.read() if args.image else sample_jpeg())
    for item in corpus:
        expected = f"{item.status} {item.code or ('(frontend, empty body)' if item.frontend else 'verdict')}"
        out(f"{item.name:30s} {item.category:10s} {expected:36s} field={item.field}  {item.description}")
    out(f"{len(corpus)} kinds")


if __name__ == "__main__":
    main()
