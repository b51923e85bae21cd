"""Fuzzes what a worker does with untrusted bytes: request row → image bytes → decode → model inputs.

Command:
    python -m scripts.reliability.fuzz [--examples 20000] [--seed 0] [--output-dir benchmarks/results/reliability]

Every input goes through the calls DeepfakeHandler.regions makes for one request, with the shipped
settings: `handler.request_body.image_bytes_from_row` on a request row shaped as TorchServe delivers
them (raw body, multipart fields, parsed JSON with base64, option keys), then
`handler.scoring.decode_for_scoring` and `handler.scoring.regions_to_score` for a whole-image model
(input 160 or 224, reduced JPEG decoding on and off) or a face model (the exported face settings, and
extreme ones that stress the crop arithmetic), all at the default max_image_pixels (40 Mpx).

Allowed outcomes: model inputs [4, H, W] of dtype float32, all finite, cut from a uint8 RGB decode of
at most max_image_pixels pixels, or `handler.forensics.ImageDecodeError` (a 4xx for the client).
Anything else is a crash; an input still running after the time limit is a hang. Both are recorded
(the bytes saved as a reproducer) and fuzzing goes on, so one run lists every failure it meets.

Inputs come from hypothesis strategies (see STRATEGY_NAMES): random bytes (some behind a real
format's magic number); valid images generated in memory in the formats and modes uploads use (JPEG
baseline/progressive/4:2:0/4:2:2/4:4:4/grey/CMYK, PNG 1/8/16-bit, grey+alpha, RGBA, palette and
colour-key transparency, GIF single/transparent/animated, WebP lossy/lossless/alpha/animated, BMP,
TIFF raw/LZW/deflate/PackBits/JPEG/group 4/16-bit/float/CMYK/RGBA, ICO) and in the other formats
Pillow opens; their mutations (bit flips, interesting values, insertions, deletions, truncation,
byte ranges or whole PNG chunks / JPEG segments duplicated or repeated, two files spliced); header
fields claiming zero, huge or near-limit dimensions (PNG IHDR, JPEG SOF, GIF screen and frame, BMP,
TIFF tags, WebP canvas, ICO entries); EXIF orientations that are valid, out of range or of the wrong
type; and arbitrary JSON-like request rows.

Bounds. Each input runs under a wall-clock limit (default 10 s, SIGALRM; a decoder stuck inside C
code is caught when it returns, and any input that took longer than the limit counts as a hang).
Memory is the process's resident set: measured before (after a warm-up), after every input, and at
the end, and its high-water mark is reset before each input (Linux /proc/self/clear_refs) so the
peak of every single input is known, transient buffers included. The bound on that peak is the
baseline plus BYTES_PER_PIXEL_ALLOWANCE × max_image_pixels: 40 bytes for each pixel the decoder may
be asked to hold. That covers the decoded image in Pillow's widest mode (4 bytes per pixel:
RGBA, CMYK, 32-bit int or float), one converted copy of it (4), its export to numpy (4), the uint8
RGB result (3), the face detector's grey copy (1), and 24 bytes per pixel, two full-size 3-channel
32-bit intermediates, for the numpy conversions of 16-bit, float and transparent images. At the
default 40 Mpx that is 1.49 GiB over the worker's baseline, the most one upload of any format should cost
a worker. The run exits 1 on a crash, a hang, or a peak over the bound.
"""

from __future__ import annotations

import argparse
import base64
import functools
import gc
import hashlib
import io
import json
import platform
import re
import signal
import struct
import sys
import time
import traceback
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import hypothesis
import numpy as np
import psutil
import torch
import yaml
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from PIL import Image, features

from handler.cpu_threads import apply_cpu_threads, available_cores, most_concurrent_workers, threads_per_worker
from handler.faces import FaceConfig
from handler.forensics import LAPLACIAN_MEAN, LAPLACIAN_STD, ImageDecodeError, PreprocessConfig
from handler.request_body import PREFERRED_FIELDS, image_bytes_from_row, refuse_oversized
from handler.request_options import UNCALIBRATED
from handler.scoring import REGION_FACES, REGION_NO_FACE, REGION_WHOLE_IMAGE, decode_for_scoring, regions_to_score
from handler.settings import HandlerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT_DIR = REPO_ROOT / "benchmarks" / "results" / "reliability"
SHIPPED_MODEL_CONFIG = REPO_ROOT / "config" / "model-config.yaml"
JSON_NAME, MARKDOWN_NAME, REPRODUCERS_DIR = "fuzz.json", "fuzz.md", "fuzz_reproducers"
# See the module docstring for the derivation: 1.49 GiB over the baseline at the default 40 Mpx.
BYTES_PER_PIXEL_ALLOWANCE = 40
HEX_PREFIX_BYTES = 48
GIB = 1024**3
MIB = 1024**2

# ----------------------------------------------------------------------------------------------------------------
# What a worker runs: preprocessing as the demo export's (tf_efficientnet_lite0: mean/std 0.5) at the input sizes
# models are trained at, and face settings as exported plus extreme ones (margin 2, detection at 64 px, any box size).
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pipeline:
    """One way a worker turns bytes into model inputs: a model's preprocessing and, for a face model, its faces."""

    name: str
    preprocess: PreprocessConfig
    faces: FaceConfig | None


@functools.cache
def shipped_settings() -> HandlerSettings:
    """The handler settings of the shipped config/model-config.yaml (upload and pixel limits, threads)."""
    return HandlerSettings.from_model_config(yaml.safe_load(SHIPPED_MODEL_CONFIG.read_text()))


def shipped_max_image_pixels() -> int:
    """The pixel limit a worker applies: model-config.yaml's, else the exported default."""
    return shipped_settings().max_image_pixels or PreprocessConfig.max_image_pixels


def _preprocess(size: int, reduced: bool) -> PreprocessConfig:
    return PreprocessConfig(input_size=(size, size), mean=(0.5, 0.5, 0.5, LAPLACIAN_MEAN),
                            std=(0.5, 0.5, 0.5, LAPLACIAN_STD), max_image_pixels=shipped_max_image_pixels(),
                            jpeg_reduced_decode=reduced)


EDGE_FACES = FaceConfig(margin=2.0, min_face_fraction=0.0, min_face_pixels=1, detection_size=64, min_neighbors=1)
PIPELINES = (
    Pipeline("whole_160_reduced", _preprocess(160, True), None),
    Pipeline("whole_160_full", _preprocess(160, False), None),
    Pipeline("whole_224_reduced", _preprocess(224, True), None),
    Pipeline("whole_224_full", _preprocess(224, False), None),
    Pipeline("faces_160", _preprocess(160, True), FaceConfig()),
    Pipeline("faces_224", _preprocess(224, True), FaceConfig()),
    Pipeline("faces_224_edge", _preprocess(224, False), EDGE_FACES),
)

# ----------------------------------------------------------------------------------------------------------------
# Byte mutators: pure functions; positions wrap around the data so any drawn integer is valid.
# ----------------------------------------------------------------------------------------------------------------


def flip_bit(data: bytes, position: int, bit: int) -> bytes:
    """`data` with bit `bit` (0–7) of byte `position` inverted."""
    if not data:
        return data
    position %= len(data)
    return data[:position] + bytes([data[position] ^ (1 << (bit % 8))]) + data[position + 1:]


def overwrite(data: bytes, position: int, chunk: bytes) -> bytes:
    """`data` with `chunk` written over it from `position` (cut at the end of the data)."""
    if not data:
        return data
    position %= len(data)
    chunk = chunk[: len(data) - position]
    return data[:position] + chunk + data[position + len(chunk):]


def insert_bytes(data: bytes, position: int, chunk: bytes) -> bytes:
    """`data` with `chunk` inserted before byte `position` (0..len)."""
    position %= len(data) + 1
    return data[:position] + chunk + data[position:]


def delete_bytes(data: bytes, position: int, length: int) -> bytes:
    """`data` without the `length` bytes (at least one) from `position`."""
    if not data:
        return data
    position %= len(data)
    return data[:position] + data[position + max(1, length):]


def truncate(data: bytes, length: int) -> bytes:
    """The first `length` bytes of `data`, always fewer than all of them (a cut upload)."""
    return data[: length % max(1, len(data))]


def splice(first: bytes, second: bytes, first_cut: int, second_cut: int) -> bytes:
    """The head of one file joined to the tail of another, e.g. a PNG header on WebP pixels."""
    return first[: first_cut % (len(first) + 1)] + second[second_cut % (len(second) + 1):]


def duplicate_range(data: bytes, start: int, length: int, copies: int = 1, at: int | None = None) -> bytes:
    """`data` with the byte range [start, start + length) repeated `copies` more times, inserted at `at`.

    `at` defaults to the end of the range, so the copies follow the original (a repeated chunk or segment).
    """
    if not data:
        return data
    start %= len(data)
    piece = data[start: start + max(1, length)]
    at = start + len(piece) if at is None else at % (len(data) + 1)
    return data[:at] + piece * copies + data[at:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_chunk_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every whole chunk of a PNG, in order; stops at the first chunk that runs past the data."""
    spans: list[tuple[int, int]] = []
    position = 8
    while position + 12 <= len(data):
        end = position + 12 + int.from_bytes(data[position: position + 4], "big")
        if end > len(data):
            break
        spans.append((position, end))
        position = end
    return spans


def _scan_end(data: bytes, position: int) -> int:
    """Where the entropy-coded data after a JPEG SOS header ends: the next marker other than a stuffed 0 or RSTn."""
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            return len(data)
        following = data[position + 1]
        if following != 0x00 and not 0xD0 <= following <= 0xD7 and following != 0xFF:
            return position
        position += 1


def jpeg_segment_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every marker segment of a JPEG after SOI, a scan (SOS with its data) as one segment."""
    spans: list[tuple[int, int]] = []
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xD9:
            break
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        end = position + 2 + int.from_bytes(data[position + 2: position + 4], "big")
        if marker == 0xDA:
            end = _scan_end(data, end)
        if end > len(data) or end <= position:
            break
        spans.append((position, end))
        position = end
    return spans


def segment_spans(data: bytes) -> list[tuple[int, int]]:
    """The structural pieces of a PNG (chunks) or JPEG (marker segments); [] for other formats."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return png_chunk_spans(data)
    if data.startswith(b"\xff\xd8"):
        return jpeg_segment_spans(data)
    return []


# ----------------------------------------------------------------------------------------------------------------
# Header mutators: set the dimensions a file claims. Values are cast to the field's width as C would (-1 → all ones).
# ----------------------------------------------------------------------------------------------------------------


def _unsigned(value: int, bits: int) -> int:
    return value % (1 << bits)


def _signed32(value: int) -> int:
    value = _unsigned(value, 32)
    return value - (1 << 32) if value >= 1 << 31 else value


def set_png_size(data: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR claiming width x height (32-bit fields) and a CRC that matches, so decoders believe it."""
    spans = png_chunk_spans(data)
    if not spans or data[spans[0][0] + 4: spans[0][0] + 8] != b"IHDR":
        return data
    start, end = spans[0]
    body = struct.pack(">II", _unsigned(width, 32), _unsigned(height, 32)) + data[start + 16: end - 4]
    return data[:start] + png_chunk(b"IHDR", body) + data[end:]


# SOFn markers (frame headers): C0–CF except DHT (C4), JPG (C8) and DAC (CC).
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def set_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with every frame header (SOFn) claiming width x height (16-bit fields)."""
    out = bytearray(data)
    for start, end in jpeg_segment_spans(data):
        if data[start + 1] in JPEG_SOF_MARKERS and end - start >= 9:
            out[start + 5: start + 9] = struct.pack(">HH", _unsigned(height, 16), _unsigned(width, 16))
    return bytes(out)


def _gif_first_frame(data: bytes) -> int | None:
    """Offset of the first image descriptor (0x2C) of a GIF, walking past the colour table and extensions."""
    if len(data) < 13:
        return None
    position = 13 + (3 * 2 ** ((data[10] & 0x07) + 1) if data[10] & 0x80 else 0)
    while position < len(data):
        if data[position] == 0x2C:
            return position
        if data[position] != 0x21 or position + 2 > len(data):
            return None
        position += 2
        while position < len(data) and data[position]:
            position += data[position] + 1
        position += 1
    return None


def set_gif_screen_size(data: bytes, width: int, height: int) -> bytes:
    """The GIF with its logical screen (the canvas Pillow allocates) claiming width x height (16-bit fields)."""
    if len(data) < 10:
        return data
    return data[:6] + struct.pack("<HH", _unsigned(width, 16), _unsigned(height, 16)) + data[10:]


def set_gif_frame_size(data: bytes, width: int, height: int) -> bytes:
    """The GIF with its screen and first frame both claiming width x height (the frame's LZW data is unchanged)."""
    data = set_gif_screen_size(data, width, height)
    frame = _gif_first_frame(data)
    if frame is None or frame + 9 > len(data):
        return data
    return data[: frame + 5] + struct.pack("<HH", _unsigned(width, 16), _unsigned(height, 16)) + data[frame + 9:]


def set_bmp_size(data: bytes, width: int, height: int) -> bytes:
    """The BMP claiming width x height: signed 32-bit fields (a negative height means top-down rows), or 16-bit."""
    if len(data) < 26 or not data.startswith(b"BM"):
        return data
    if int.from_bytes(data[14:18], "little") == 12:  # OS/2 BITMAPCOREHEADER
        return data[:18] + struct.pack("<HH", _unsigned(width, 16), _unsigned(height, 16)) + data[22:]
    return data[:18] + struct.pack("<ii", _signed32(width), _signed32(height)) + data[26:]


TIFF_WIDTH_TAG, TIFF_HEIGHT_TAG = 256, 257
TIFF_SHORT, TIFF_LONG = 3, 4


def set_tiff_size(data: bytes, width: int, height: int) -> bytes:
    """The TIFF with the ImageWidth/ImageLength tags of its first IFD set; a SHORT field too small becomes LONG."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return data
    order = "<" if data[:2] == b"II" else ">"
    out = bytearray(data)
    ifd = struct.unpack(order + "I", data[4:8])[0]
    if ifd + 2 > len(data):
        return data
    entries = struct.unpack(order + "H", data[ifd: ifd + 2])[0]
    claims = {TIFF_WIDTH_TAG: _unsigned(width, 32), TIFF_HEIGHT_TAG: _unsigned(height, 32)}
    for index in range(entries):
        entry = ifd + 2 + 12 * index
        if entry + 12 > len(data):
            break
        tag, kind, _count = struct.unpack(order + "HHI", data[entry: entry + 8])
        if tag not in claims:
            continue
        value = claims[tag]
        if kind == TIFF_SHORT and value <= 0xFFFF:
            out[entry + 2: entry + 12] = struct.pack(order + "HIHH", TIFF_SHORT, 1, value, 0)
        else:
            out[entry + 2: entry + 12] = struct.pack(order + "HII", TIFF_LONG, 1, value)
    return bytes(out)


def set_webp_size(data: bytes, width: int, height: int) -> bytes:
    """The WebP claiming width x height: VP8X canvas (24 bits, minus 1), VP8L (14 bits, minus 1) or VP8 (14 bits)."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return data
    chunk = data[12:16]
    if chunk == b"VP8X":
        fields = _unsigned(width - 1, 24).to_bytes(3, "little") + _unsigned(height - 1, 24).to_bytes(3, "little")
        return data[:24] + fields + data[30:]
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        bits = (bits & ~0x0FFFFFFF) | _unsigned(width - 1, 14) | (_unsigned(height - 1, 14) << 14)
        return data[:21] + bits.to_bytes(4, "little") + data[25:]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        fields = struct.pack("<HH", _unsigned(width, 14), _unsigned(height, 14))
        return data[:26] + fields + data[30:]
    return data


def set_ico_size(data: bytes, width: int, height: int) -> bytes:
    """The ICO with its first directory entry claiming width x height (8 bits; 0 means 256).

    When the entry holds a PNG, that PNG's IHDR claims the full values too.
    """
    if len(data) < 22 or data[:4] != b"\x00\x00\x01\x00":
        return data
    out = data[:6] + bytes([_unsigned(width, 8), _unsigned(height, 8)]) + data[8:]
    offset = int.from_bytes(out[18:22], "little")
    if out[offset: offset + 8] == b"\x89PNG\r\n\x1a\n":
        size = int.from_bytes(out[14:18], "little")
        embedded = set_png_size(out[offset: offset + size], width, height)
        out = out[:14] + struct.pack("<I", len(embedded)) + out[18:offset] + embedded + out[offset + size:]
    return out


@dataclass(frozen=True)
class HeaderSetter:
    """A header mutator and the container formats it applies to."""

    formats: tuple[str, ...]
    apply: Callable[[bytes, int, int], bytes]


HEADER_SETTERS = {
    "png_ihdr": HeaderSetter(("PNG",), set_png_size),
    "jpeg_sof": HeaderSetter(("JPEG",), set_jpeg_size),
    "gif_screen": HeaderSetter(("GIF",), set_gif_screen_size),
    "gif_frame": HeaderSetter(("GIF",), set_gif_frame_size),
    "bmp_info": HeaderSetter(("BMP",), set_bmp_size),
    "tiff_tags": HeaderSetter(("TIFF",), set_tiff_size),
    "webp_canvas": HeaderSetter(("WEBP",), set_webp_size),
    "ico_entry": HeaderSetter(("ICO",), set_ico_size),
}
# Sides that matter: nothing, one pixel, just under and over the 40 Mpx limit (6324² < 40e6 < 6325²; 8000 x 5000 is
# exactly the limit), a 20000² bomb, the largest 16-bit value, extreme aspect ratios, and values that wrap (-1).
CLAIMED_SIZES = (
    (0, 0), (0, 64), (64, 0), (1, 1), (1, 65535), (65535, 1), (6324, 6324), (8000, 5000), (5000, 8000),
    (6325, 6325), (20000, 20000), (65535, 65535), (65535, 610), (16383, 2441), (40_000_000, 1), (1, 40_000_000),
    (2**31 - 1, 2**31 - 1), (-1, -1), (64, -64),
)

# ----------------------------------------------------------------------------------------------------------------
# EXIF orientation blocks built by hand, so the entry can have any type, count and value.
# ----------------------------------------------------------------------------------------------------------------

EXIF_ORIENTATION_TAG = 0x0112
ORIENTATION_VALUES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 256, 65535, 2**31 - 1, 2**32 - 1)
# TIFF field types: SHORT, LONG, SLONG as the value; ASCII, RATIONAL, UNDEFINED, SSHORT, and invalid 0 and 99.
ORIENTATION_TYPES = (3, 3, 3, 4, 9, 2, 5, 7, 8, 0, 99)
ORIENTATION_COUNTS = (1, 1, 1, 0, 2, 2**32 - 1)


def exif_orientation_block(value: int, field_type: int = 3, count: int = 1, big_endian: bool = True) -> bytes:
    """An EXIF block (the "Exif" header, a TIFF header, IFD0) whose only entry is Orientation with the given field."""
    order = ">" if big_endian else "<"
    if field_type in (3, 8):
        inline = struct.pack(order + "HH", _unsigned(value, 16), 0)
    else:
        inline = struct.pack(order + "I", _unsigned(value, 32))
    header = (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(order + "I", 8)
    entry = struct.pack(order + "HHI", EXIF_ORIENTATION_TAG, field_type % 0x10000, _unsigned(count, 32)) + inline
    return b"Exif\x00\x00" + header + struct.pack(order + "H", 1) + entry + struct.pack(order + "I", 0)


# ----------------------------------------------------------------------------------------------------------------
# Seed images: pixels from a numpy generator (or a rendered demo face), encoded in memory.
# ----------------------------------------------------------------------------------------------------------------

PIXEL_SOURCES = ("noise", "smooth", "flat", "face")
DEMO_FACES = 8


@functools.cache
def _demo_face(index: int) -> np.ndarray:
    """A rendered demo face photo (training.demo_data), so face pipelines also crop real detections."""
    from training.demo_data import DemoDataConfig, demo_image  # the renderer is only needed for this source

    data = demo_image(DemoDataConfig(count=DEMO_FACES, image_size=192, seed=11), ("real", "fake")[index % 2], index)
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def pixels(source: str, width: int, height: int, seed: int) -> np.ndarray:
    """Deterministic uint8 RGB [height, width, 3] content of one kind (noise compresses badly, flat very well)."""
    rng = np.random.default_rng(seed)
    if source == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if source == "flat":
        return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (height, width, 3)).copy()
    if source == "face":
        face = _demo_face(int(rng.integers(DEMO_FACES)))
        return cv2.resize(face, (width, height), interpolation=cv2.INTER_AREA if width < 192 else cv2.INTER_LINEAR)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * x + np.sin(angle) * y) / max(width, height, 1)
    base = rng.uniform(0, 255, 3) * (0.5 + 0.5 * ramp[..., None]) + rng.normal(0, 6, (height, width, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def _alpha(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An alpha plane with fully transparent, fully opaque and partial areas."""
    alpha = rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    alpha[: max(1, rgb.shape[0] // 3)] = 0
    alpha[-max(1, rgb.shape[0] // 3):] = 255
    return alpha


def _save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _rgba(rgb: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(np.dstack([rgb, _alpha(rgb, rng)]), "RGBA")


def _grey16(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257


def _png_from_samples(samples: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow writes 16 bits per sample only for greyscale)."""
    height, width = samples.shape[:2]
    rows = np.ascontiguousarray(samples, dtype=">u2").reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw, 6))
            + png_chunk(b"IEND", b""))


def _png_rgb16(rgb: np.ndarray, rng: np.random.Generator) -> bytes:
    return _png_from_samples(rgb.astype(np.uint16) * 257 + rng.integers(0, 257, rgb.shape, dtype=np.uint16), 2)


def _png_rgba16(rgb: np.ndarray, rng: np.random.Generator) -> bytes:
    return _png_from_samples(np.dstack([rgb, _alpha(rgb, rng)]).astype(np.uint16) * 257, 6)


def _palette(rgb: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rgb).quantize(int(rng.integers(2, 257)))


def _palette_with_alpha(rgb: np.ndarray, rng: np.random.Generator) -> bytes:
    image = _palette(rgb, rng)
    alphas = bytes(int(a) for a in rng.integers(0, 256, len(image.getpalette() or ()) // 3))
    return _save(image, "PNG", transparency=alphas)


def _gif_animated(rgb: np.ndarray, rng: np.random.Generator) -> bytes:
    frames = [_palette(np.roll(rgb, shift, axis=1), rng) for shift in (0, 3, 7)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0,
                 disposal=int(rng.integers(0, 4)), transparency=0)


def _webp_animated(rgb: np.ndarray, rng: np.random.Generator) -> bytes:
    frames = [_rgba(np.roll(rgb, shift, axis=0), rng) for shift in (0, 5)]
    return _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50,
                 lossless=bool(rng.integers(0, 2)))


def _tiff_float(rgb: np.ndarray, rng: np.random.Generator) -> bytes:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0 * rng.choice([1.0, 1.0, 300.0])
    special = rng.random(grey.shape) < 0.02
    grey[special] = rng.choice([np.nan, np.inf, -np.inf, -5.0], int(special.sum()))
    return _save(Image.fromarray(grey, "F"), "TIFF")


def _ico(rgb: np.ndarray, rng: np.random.Generator) -> bytes:
    image = _rgba(rgb[:256, :256], rng)
    return _save(image, "ICO", sizes=[image.size], bitmap_format=("png", "bmp")[int(rng.integers(0, 2))])


def _quality(rng: np.random.Generator) -> int:
    return int(rng.integers(20, 97))


Encoder = Callable[[np.ndarray, np.random.Generator], bytes]


@dataclass(frozen=True)
class SeedKind:
    """One way to encode a seed image: its container format, the encoder, and the largest side worth generating."""

    container: str
    encode: Encoder
    max_side: int = 96


SEED_KINDS: dict[str, SeedKind] = {
    "jpeg_baseline": SeedKind("JPEG", lambda rgb, rng: _save(Image.fromarray(rgb), "JPEG", quality=_quality(rng)),
                              1400),
    "jpeg_progressive": SeedKind("JPEG", lambda rgb, rng: _save(Image.fromarray(rgb), "JPEG", quality=_quality(rng),
                                                                progressive=True), 1400),
    "jpeg_420": SeedKind("JPEG", lambda rgb, rng: _save(Image.fromarray(rgb), "JPEG", subsampling=2), 1400),
    "jpeg_422_optimized": SeedKind("JPEG", lambda rgb, rng: _save(Image.fromarray(rgb), "JPEG", subsampling=1,
                                                                  optimize=True), 700),
    "jpeg_444": SeedKind("JPEG", lambda rgb, rng: _save(Image.fromarray(rgb), "JPEG", subsampling=0), 1400),
    "jpeg_grey": SeedKind("JPEG", lambda rgb, rng: _save(Image.fromarray(rgb).convert("L"), "JPEG"), 1400),
    "jpeg_cmyk": SeedKind("JPEG", lambda rgb, rng: _save(Image.fromarray(rgb).convert("CMYK"), "JPEG"), 700),
    "png_1bit": SeedKind("PNG", lambda rgb, rng: _save(Image.fromarray(rgb).convert("1"), "PNG")),
    "png_grey8": SeedKind("PNG", lambda rgb, rng: _save(Image.fromarray(rgb).convert("L"), "PNG")),
    "png_rgb8": SeedKind("PNG", lambda rgb, rng: _save(Image.fromarray(rgb), "PNG"), 700),
    "png_grey16": SeedKind("PNG", lambda rgb, rng: _save(Image.fromarray(_grey16(rgb)), "PNG")),
    "png_rgb16": SeedKind("PNG", _png_rgb16),
    "png_rgba16": SeedKind("PNG", _png_rgba16),
    "png_grey_alpha": SeedKind("PNG", lambda rgb, rng: _save(_rgba(rgb, rng).convert("LA"), "PNG")),
    "png_rgba": SeedKind("PNG", lambda rgb, rng: _save(_rgba(rgb, rng), "PNG")),
    "png_palette_trns": SeedKind("PNG", _palette_with_alpha),
    "png_grey_trns": SeedKind("PNG", lambda rgb, rng: _save(Image.fromarray(rgb).convert("L"), "PNG",
                                                            transparency=int(rgb[0, 0, 0]))),
    "png_rgb_trns": SeedKind("PNG", lambda rgb, rng: _save(Image.fromarray(rgb), "PNG",
                                                           transparency=tuple(int(v) for v in rgb[0, 0]))),
    "gif_single": SeedKind("GIF", lambda rgb, rng: _save(_palette(rgb, rng), "GIF")),
    "gif_transparent": SeedKind("GIF", lambda rgb, rng: _save(_palette(rgb, rng), "GIF", transparency=0)),
    "gif_animated": SeedKind("GIF", _gif_animated),
    "webp_lossy": SeedKind("WEBP", lambda rgb, rng: _save(Image.fromarray(rgb), "WEBP", quality=_quality(rng)), 700),
    "webp_lossless": SeedKind("WEBP", lambda rgb, rng: _save(Image.fromarray(rgb), "WEBP", lossless=True)),
    "webp_alpha": SeedKind("WEBP", lambda rgb, rng: _save(_rgba(rgb, rng), "WEBP")),
    "webp_animated": SeedKind("WEBP", _webp_animated),
    "bmp_rgb": SeedKind("BMP", lambda rgb, rng: _save(Image.fromarray(rgb), "BMP")),
    "bmp_rgba": SeedKind("BMP", lambda rgb, rng: _save(_rgba(rgb, rng), "BMP")),
    "bmp_1bit": SeedKind("BMP", lambda rgb, rng: _save(Image.fromarray(rgb).convert("1"), "BMP")),
    "bmp_palette": SeedKind("BMP", lambda rgb, rng: _save(_palette(rgb, rng), "BMP")),
    "tiff_raw": SeedKind("TIFF", lambda rgb, rng: _save(Image.fromarray(rgb), "TIFF")),
    "tiff_lzw": SeedKind("TIFF", lambda rgb, rng: _save(Image.fromarray(rgb), "TIFF", compression="tiff_lzw")),
    "tiff_deflate": SeedKind("TIFF", lambda rgb, rng: _save(Image.fromarray(rgb), "TIFF",
                                                            compression="tiff_adobe_deflate")),
    "tiff_packbits": SeedKind("TIFF", lambda rgb, rng: _save(Image.fromarray(rgb), "TIFF", compression="packbits")),
    "tiff_jpeg": SeedKind("TIFF", lambda rgb, rng: _save(Image.fromarray(rgb), "TIFF", compression="jpeg")),
    "tiff_group4": SeedKind("TIFF", lambda rgb, rng: _save(Image.fromarray(rgb).convert("1"), "TIFF",
                                                           compression="group4")),
    "tiff_grey16": SeedKind("TIFF", lambda rgb, rng: _save(Image.fromarray(_grey16(rgb)), "TIFF")),
    "tiff_float": SeedKind("TIFF", _tiff_float),
    "tiff_cmyk": SeedKind("TIFF", lambda rgb, rng: _save(Image.fromarray(rgb).convert("CMYK"), "TIFF")),
    "tiff_rgba": SeedKind("TIFF", lambda rgb, rng: _save(_rgba(rgb, rng), "TIFF", compression="tiff_lzw")),
    "ico": SeedKind("ICO", _ico),
}
# Formats no client should send but Pillow opens anyway: what reaches the decoder if nothing refuses them first.
OTHER_KINDS: dict[str, SeedKind] = {
    "avif": SeedKind("AVIF", lambda rgb, rng: _save(Image.fromarray(rgb), "AVIF", speed=10), 32),
    "jpeg2000": SeedKind("JPEG2000", lambda rgb, rng: _save(Image.fromarray(rgb), "JPEG2000"), 64),
    "dds": SeedKind("DDS", lambda rgb, rng: _save(Image.fromarray(rgb), "DDS"), 64),
    "qoi": SeedKind("QOI", lambda rgb, rng: _save(Image.fromarray(rgb), "QOI"), 64),
    "blp": SeedKind("BLP", lambda rgb, rng: _save(_palette(rgb, rng), "BLP"), 64),
    "eps": SeedKind("EPS", lambda rgb, rng: _save(Image.fromarray(rgb), "EPS"), 32),
    "spider": SeedKind("SPIDER", lambda rgb, rng: _save(Image.fromarray(rgb).convert("F"), "SPIDER"), 64),
    "xbm": SeedKind("XBM", lambda rgb, rng: _save(Image.fromarray(rgb).convert("1"), "XBM"), 64),
    "pcx": SeedKind("PCX", lambda rgb, rng: _save(Image.fromarray(rgb), "PCX"), 64),
    "sgi": SeedKind("SGI", lambda rgb, rng: _save(Image.fromarray(rgb), "SGI"), 64),
    "tga_rle": SeedKind("TGA", lambda rgb, rng: _save(_rgba(rgb, rng), "TGA", compression="tga_rle"), 64),
    "pgm16": SeedKind("PPM", lambda rgb, rng: _save(Image.fromarray(_grey16(rgb)), "PPM"), 64),
    "msp": SeedKind("MSP", lambda rgb, rng: _save(Image.fromarray(rgb).convert("1"), "MSP"), 64),
}
ALL_KINDS = {**SEED_KINDS, **OTHER_KINDS}


def encode_seed(kind: str, width: int, height: int, source: str, seed: int) -> bytes:
    """A valid file of the given kind and size with pixels from `source` (see :func:`pixels`), deterministic."""
    rgb = pixels(source, width, height, seed)
    return ALL_KINDS[kind].encode(rgb, np.random.default_rng(seed + 1))


# ----------------------------------------------------------------------------------------------------------------
# Hypothesis strategies.
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """Bytes a client could upload and how they were made.

    Attributes:
        strategy: the name in STRATEGY_NAMES that made them.
        kind: the seed kind they started from ("" for random bytes and arbitrary rows).
        description: the seed and every mutation, for the report.
        data: the bytes.

    """

    strategy: str
    kind: str
    description: str
    data: bytes


@dataclass(frozen=True)
class FuzzCase:
    """One request as TorchServe hands it to a worker (row and headers), the bytes it carries, and its pipeline.

    Attributes:
        payload: the bytes placed in the row (empty for an arbitrary row) and how they were made.
        layout: how the row carries them (see ROW_LAYOUTS).
        row: the request row.
        headers: the request's headers as context.get_all_request_header gives them (None: a Context without them).
        pipeline: the model preprocessing and face settings the request goes through.

    """

    payload: Payload
    layout: str
    row: dict[str, Any]
    headers: dict[str, Any] | None
    pipeline: Pipeline


MAGIC_PREFIXES = (b"", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"BM",
                  b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\x00\x01\x00\x00WEBPVP8X",
                  b"\x00\x00\x01\x00", b"%!PS-Adobe-3.0 EPSF-3.0\n", b"\x00\x00\x00\x0cjP  \r\n\x87\n")
INTERESTING_VALUES = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x80\x00",
                      b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
                      b"\xff\xd9", b"\xff\xd8", b"\xff\xda", b"\xff\xc0", b"IEND", b"IDAT")
MUTATIONS = ("flip_bit", "overwrite", "insert", "delete", "truncate", "duplicate_range", "duplicate_segment",
             "repeat_segment")


@st.composite
def _side(draw: st.DrawFn, max_side: int) -> int:
    """Mostly small sides (cheap, and edge cases live there); one in four up to the kind's largest."""
    if max_side > 48 and draw(st.integers(0, 3)) == 0:
        return draw(st.integers(49, max_side))
    return draw(st.integers(1, min(48, max_side)))


@st.composite
def seeds(draw: st.DrawFn, kinds: tuple[str, ...], max_side: int | None = None) -> Payload:
    """A valid file of one of `kinds`."""
    kind = draw(st.sampled_from(kinds))
    limit = ALL_KINDS[kind].max_side if max_side is None else min(max_side, ALL_KINDS[kind].max_side)
    width, height = draw(_side(limit)), draw(_side(limit))
    source = draw(st.sampled_from(PIXEL_SOURCES))
    seed = draw(st.integers(0, 2**32 - 1))
    return Payload("", kind, f"{kind} {width}x{height} {source}#{seed}", encode_seed(kind, width, height, source, seed))


def _position(length: int) -> st.SearchStrategy[int]:
    """A byte offset, often inside the first 64 bytes where the headers are."""
    return st.integers(0, min(length, 64)) | st.integers(0, max(0, length))


@st.composite
def mutation(draw: st.DrawFn, data: bytes) -> tuple[bytes, str]:
    """One byte-level mutation of `data` and its description."""
    name = draw(st.sampled_from(MUTATIONS))
    length = len(data)
    if name == "flip_bit":
        position, bit = draw(_position(length)), draw(st.integers(0, 7))
        return flip_bit(data, position, bit), f"flip_bit@{position}.{bit}"
    if name == "overwrite":
        position = draw(_position(length))
        chunk = draw(st.sampled_from(INTERESTING_VALUES) | st.binary(min_size=1, max_size=8))
        return overwrite(data, position, chunk), f"overwrite@{position}={chunk.hex()}"
    if name == "insert":
        position = draw(_position(length))
        chunk = draw(st.sampled_from(INTERESTING_VALUES) | st.binary(min_size=1, max_size=64))
        return insert_bytes(data, position, chunk), f"insert@{position}+{len(chunk)}"
    if name == "delete":
        position, size = draw(_position(length)), draw(st.integers(1, 64))
        return delete_bytes(data, position, size), f"delete@{position}-{size}"
    if name == "truncate":
        size = draw(st.integers(0, max(0, length - 1)))
        return truncate(data, size), f"truncate@{size}"
    spans = segment_spans(data)
    if name == "duplicate_range" or not spans:
        start, size, at = draw(_position(length)), draw(st.integers(1, 256)), draw(_position(length))
        return duplicate_range(data, start, size, at=at), f"duplicate_range@{start}+{size}->{at}"
    start, end = draw(st.sampled_from(spans))
    copies = 1 if name == "duplicate_segment" else draw(st.integers(2, 300))
    return duplicate_range(data, start, end - start, copies), f"{name}@{start}:{end}x{copies}"


@st.composite
def mutated(draw: st.DrawFn, payload: Payload, most: int = 6) -> Payload:
    """`payload` after 1 to `most` mutations."""
    data, steps = payload.data, []
    for _ in range(draw(st.integers(1, most))):
        data, step = draw(mutation(data))
        steps.append(step)
    return Payload(payload.strategy, payload.kind, f"{payload.description} | {', '.join(steps)}", data)


@st.composite
def random_payloads(draw: st.DrawFn) -> Payload:
    """Random bytes, sometimes behind a known format's magic number so parsers go past the first check."""
    prefix = draw(st.sampled_from(MAGIC_PREFIXES))
    body = draw(st.binary(max_size=2048))
    return Payload("random_bytes", "", f"magic {prefix[:12]!r} + {len(body)} random bytes", prefix + body)


@st.composite
def valid_payloads(draw: st.DrawFn) -> Payload:
    """Well-formed files of every kind uploads use."""
    payload = draw(seeds(tuple(SEED_KINDS)))
    return Payload("valid_images", payload.kind, payload.description, payload.data)


@st.composite
def mutated_payloads(draw: st.DrawFn) -> Payload:
    """Valid files after byte-level mutations."""
    payload = draw(seeds(tuple(SEED_KINDS), max_side=256))
    return draw(mutated(Payload("mutated_images", payload.kind, payload.description, payload.data)))


@st.composite
def spliced_payloads(draw: st.DrawFn) -> Payload:
    """The head of one file on the tail of another (same or other format), sometimes mutated further."""
    first = draw(seeds(tuple(SEED_KINDS), max_side=128))
    second = draw(seeds(tuple(SEED_KINDS), max_side=128))
    first_cut, second_cut = draw(_position(len(first.data))), draw(_position(len(second.data)))
    payload = Payload("spliced_images", first.kind, f"{first.description}[:{first_cut}] + "
                      f"{second.description}[{second_cut}:]", splice(first.data, second.data, first_cut, second_cut))
    return draw(mutated(payload, most=2)) if draw(st.booleans()) else payload


@st.composite
def at_the_pixel_limit(draw: st.DrawFn) -> tuple[int, int]:
    """A size of any aspect whose pixel count is at or just under max_image_pixels.

    The most memory a worker may spend on one image: a small file claiming it still decodes, to a filled
    canvas (GIF, animated WebP) or a grey-filled frame (JPEG through OpenCV, fax TIFF).
    """
    side = draw(st.integers(1, 65535))
    other = shipped_max_image_pixels() // side - draw(st.integers(0, 3))
    return (side, other) if draw(st.booleans()) else (other, side)


@st.composite
def header_payloads(draw: st.DrawFn) -> Payload:
    """Valid small files whose header claims other dimensions: zero, huge, near the pixel limit, wrapping."""
    setter_name = draw(st.sampled_from(tuple(HEADER_SETTERS)))
    setter = HEADER_SETTERS[setter_name]
    kinds = tuple(name for name, kind in SEED_KINDS.items() if kind.container in setter.formats)
    payload = draw(seeds(kinds, max_side=64))
    if draw(st.integers(0, 7)) == 0:  # rarely: these decode for seconds, and CLAIMED_SIZES holds limit sizes too
        width, height = draw(at_the_pixel_limit())
    else:
        width, height = draw(st.sampled_from(CLAIMED_SIZES) | st.tuples(st.integers(0, 70000), st.integers(0, 70000)))
    data = setter.apply(payload.data, width, height)
    result = Payload("header_claims", payload.kind, f"{payload.description} | {setter_name}={width}x{height}", data)
    return draw(mutated(result, most=1)) if draw(st.integers(0, 3)) == 0 else result


EXIF_KINDS = {"jpeg_baseline": ("JPEG", "RGB"), "jpeg_grey": ("JPEG", "L"), "jpeg_cmyk": ("JPEG", "CMYK"),
              "png_rgb8": ("PNG", "RGB"), "png_rgba": ("PNG", "RGBA"), "webp_lossy": ("WEBP", "RGB"),
              "webp_alpha": ("WEBP", "RGBA")}


@st.composite
def exif_payloads(draw: st.DrawFn) -> Payload:
    """JPEG, PNG and WebP files carrying an EXIF orientation, valid or bogus, some large enough for reduced decoding."""
    kind = draw(st.sampled_from(tuple(EXIF_KINDS)))
    fmt, mode = EXIF_KINDS[kind]
    limit = 1400 if fmt == "JPEG" else 256
    width, height = draw(_side(limit)), draw(_side(limit))
    value = draw(st.sampled_from(ORIENTATION_VALUES))
    field_type, count = draw(st.sampled_from(ORIENTATION_TYPES)), draw(st.sampled_from(ORIENTATION_COUNTS))
    big_endian = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rgb = pixels(draw(st.sampled_from(PIXEL_SOURCES)), width, height, seed)
    image = _rgba(rgb, np.random.default_rng(seed)) if mode == "RGBA" else Image.fromarray(rgb).convert(mode)
    exif = exif_orientation_block(value, field_type, count, big_endian)
    description = f"{kind} {width}x{height} orientation={value} type={field_type} count={count}"
    return Payload("exif_orientation", kind, description, _save(image, fmt, exif=exif))


@st.composite
def other_format_payloads(draw: st.DrawFn) -> Payload:
    """Files in formats Pillow opens besides the six accepted ones, half of them mutated."""
    payload = draw(seeds(tuple(OTHER_KINDS)))
    payload = Payload("other_formats", payload.kind, payload.description, payload.data)
    return draw(mutated(payload, most=3)) if draw(st.booleans()) else payload


JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(PREFERRED_FIELDS) | st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
ROW_KEYS = (*PREFERRED_FIELDS, UNCALIBRATED, "model_name")


MEDIA_TYPES = ("application/octet-stream", "image/jpeg", "image/png", "application/json", "application/ld+json",
               "text/plain", "text/plain; charset=utf-8", "", "multipart/form-data; boundary=x",
               "application/x-www-form-urlencoded", "APPLICATION/JSON ; q=1", ";;", "\x00")


@st.composite
def arbitrary_rows(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Request rows of any shape, with headers of any shape.

    Rows hold JSON-like values, text and bytes under image, option and arbitrary keys; headers may give
    per-field content types that contradict the values, or values of the wrong type.
    """
    values = JSON_VALUES | st.binary(max_size=64) | st.text(max_size=64)
    row = draw(st.dictionaries(st.sampled_from(ROW_KEYS) | st.text(max_size=10), values, max_size=4))
    header_values = (st.sampled_from(MEDIA_TYPES) | st.text(max_size=20) | st.binary(max_size=20) | st.none()
                     | st.dictionaries(st.sampled_from(("content-type", "Content-Type")) | st.text(max_size=5),
                                       st.sampled_from(MEDIA_TYPES) | st.text(max_size=20) | st.integers() | st.none(),
                                       max_size=2))
    keys = st.sampled_from((*ROW_KEYS, "content-type", "Content-Type", *row)) | st.text(max_size=10)
    headers = draw(st.none() | st.dictionaries(keys, header_values, max_size=5))
    return row, headers


STRATEGIES: dict[str, st.SearchStrategy[Payload]] = {
    "random_bytes": random_payloads(),
    "valid_images": valid_payloads(),
    "mutated_images": mutated_payloads(),
    "spliced_images": spliced_payloads(),
    "header_claims": header_payloads(),
    "exif_orientation": exif_payloads(),
    "other_formats": other_format_payloads(),
}
ARBITRARY_ROWS = "request_rows"
STRATEGY_NAMES = (*STRATEGIES, ARBITRARY_ROWS)
ROW_LAYOUTS = ("raw_body", "raw_data", "bytearray_body", "multipart", "with_options", "json_base64",
               "json_data_url", "json_wrapped_base64", "json_bad_base64")


@st.composite
def headers_for(draw: st.DrawFn, layout: str, row: dict[str, Any]) -> dict[str, Any] | None:
    """Headers as TorchServe records them for `row`: the request's Content-Type and one {"content-type"} per key.

    Mostly what a client of that layout sends, sometimes any media type (a JPEG labelled JSON, a form labelled
    text), and sometimes none at all (a Context built by hand).
    """
    if draw(st.integers(0, 3)) == 0:
        return None
    if layout.startswith("json"):
        natural = "application/json"
    elif layout in ("multipart", "with_options"):
        natural = "multipart/form-data; boundary=x"
    else:
        natural = "application/octet-stream"
    request_type = draw(st.just(natural) | st.sampled_from(MEDIA_TYPES))
    headers: dict[str, Any] = {"content-type": request_type}
    for name, value in row.items():
        if request_type.startswith("multipart"):
            part = "application/octet-stream" if isinstance(value, (bytes, bytearray)) else ""
        else:
            part = request_type.split(";")[0]
        headers[name] = {"content-type": draw(st.just(part) | st.sampled_from(MEDIA_TYPES))}
    return headers


@st.composite
def row_carrying(draw: st.DrawFn, data: bytes) -> tuple[str, dict[str, Any]]:
    """A request row holding `data` the ways clients send an image (and one way that breaks its base64)."""
    layout = draw(st.sampled_from(ROW_LAYOUTS))
    text = base64.b64encode(data).decode("ascii")
    key = draw(st.sampled_from(PREFERRED_FIELDS))
    if layout == "raw_body":
        return layout, {"body": data}
    if layout == "raw_data":
        return layout, {"data": data}
    if layout == "bytearray_body":
        return layout, {"body": bytearray(data)}
    if layout == "multipart":
        return layout, {draw(st.sampled_from(PREFERRED_FIELDS) | st.text(min_size=1, max_size=12)): data}
    if layout == "with_options":
        option = draw(st.sampled_from((b"true", b"0", b"maybe", "yes", True, 7, None)))
        return layout, {UNCALIBRATED: option, "model_name": b"deepfake", key: data}
    if layout == "json_base64":
        return layout, {"body": {key: text}}
    if layout == "json_data_url":
        return layout, {"body": {key: f"data:image/{draw(st.sampled_from(('png', 'jpeg', 'x-y+z')))};base64,{text}"}}
    if layout == "json_wrapped_base64":
        wrapped = "\n".join(text[i: i + 76] for i in range(0, len(text), 76))
        return layout, {"body": {key: f"  {wrapped}\r\n"}}
    position = draw(st.integers(0, len(text)))
    damage = draw(st.sampled_from(("!", "é", "=", "-_", "\x00", "")))
    return layout, {"body": {key: text[:position] + damage + text[position + 1:]}}


@st.composite
def fuzz_cases(draw: st.DrawFn, strategy_names: tuple[str, ...] = STRATEGY_NAMES) -> FuzzCase:
    """One request for one pipeline, from one of the named strategies (drawn evenly)."""
    pipeline = draw(st.sampled_from(PIPELINES))
    name = draw(st.sampled_from(strategy_names))
    if name == ARBITRARY_ROWS:
        row, headers = draw(arbitrary_rows())
        return FuzzCase(Payload(name, "", "arbitrary request row", b""), "arbitrary", row, headers, pipeline)
    payload = draw(STRATEGIES[name])
    layout, row = draw(row_carrying(payload.data))
    return FuzzCase(payload, layout, row, draw(headers_for(layout, row)), pipeline)


# ----------------------------------------------------------------------------------------------------------------
# Running one input: the worker's calls, the allowed outcomes, a wall-clock limit and the memory it took.
# ----------------------------------------------------------------------------------------------------------------


class InputHang(BaseException):
    """Raised by the alarm when an input runs past its time limit.

    A BaseException, not a TimeoutError: decode_rgb turns any Exception from a decoder into an
    ImageDecodeError, which would hide the hang as an ordinary refusal.
    """


class ContractViolation(Exception):
    """The pipeline returned something other than what the worker relies on (wrong type, shape, dtype, values)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raises InputHang in the block after `seconds` of wall time (main thread only; SIGALRM).

    An alarm already armed (pytest-timeout uses SIGALRM too) is saved and re-armed with what is left of it.
    """

    def on_alarm(signum: int, frame: Any) -> None:
        raise InputHang(f"still running after {seconds:g} s")

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay > 0:
            remaining = previous_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 0.001), previous_interval)


def contract_problems(rgb: Any, regions: Any, pipeline: Pipeline) -> list[str]:
    """What is wrong with a decode and its regions, by the contract the rest of the worker relies on; [] if nothing."""
    problems: list[str] = []
    limit = pipeline.preprocess.max_image_pixels
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        problems.append(f"decode returned {type(rgb).__name__} {getattr(rgb, 'dtype', '')} "
                        f"{getattr(rgb, 'shape', '')}, not uint8 [H, W, 3]")
    elif min(rgb.shape[:2]) < 1 or rgb.shape[0] * rgb.shape[1] > limit:
        problems.append(f"decode returned {rgb.shape[1]}x{rgb.shape[0]} pixels (limit {limit})")
    expected = (4, *pipeline.preprocess.input_size)
    inputs = tuple(getattr(regions, "inputs", ()))
    if not inputs:
        problems.append("no model input")
    for index, tensor in enumerate(inputs):
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != expected or tensor.dtype != torch.float32:
            problems.append(f"input {index} is {type(tensor).__name__} {getattr(tensor, 'dtype', '')} "
                            f"{tuple(getattr(tensor, 'shape', ()))}, not float32 {expected}")
        elif not np.isfinite(tensor.numpy()).all():  # numpy: torch's thread pool costs ~60 ms a call on a busy CPU
            problems.append(f"input {index} has non-finite values")
    scored, boxes = getattr(regions, "scored", None), tuple(getattr(regions, "boxes", ()))
    if pipeline.faces is None and (scored != REGION_WHOLE_IMAGE or boxes):
        problems.append(f"a whole-image model got regions '{scored}' with {len(boxes)} boxes")
    if pipeline.faces is not None:
        if scored == REGION_FACES and not 1 <= len(boxes) == len(inputs) <= pipeline.faces.max_faces:
            problems.append(f"{len(boxes)} face boxes for {len(inputs)} inputs (max_faces {pipeline.faces.max_faces})")
        elif scored == REGION_NO_FACE and (boxes or len(inputs) != 1):
            problems.append(f"no face but {len(boxes)} boxes and {len(inputs)} inputs")
        elif scored not in (REGION_FACES, REGION_NO_FACE):
            problems.append(f"a face model got regions '{scored}'")
    return problems


def process_row(row: dict[str, Any], headers: dict[str, Any] | None, pipeline: Pipeline) -> None:
    """What DeepfakeHandler.regions does with one request, checked against the contract.

    Raises:
        ImageDecodeError: the request is refused (an allowed outcome).
        ContractViolation: the pipeline returned something the worker cannot use.

    """
    image = refuse_oversized(image_bytes_from_row(row, headers), shipped_settings().max_upload_bytes)
    if not isinstance(image.data, bytes) or not image.data:
        raise ContractViolation(f"image_bytes_from_row returned {type(image.data).__name__} of "
                                f"{len(image.data)} bytes, not non-empty bytes")
    rgb = decode_for_scoring(image.data, pipeline.preprocess, pipeline.faces)
    problems = contract_problems(rgb, regions_to_score(rgb, pipeline.preprocess, pipeline.faces), pipeline)
    if problems:
        raise ContractViolation("; ".join(problems))


OK, REFUSED, CRASH, HANG = "ok", "refused", "crash", "hang"


@dataclass(frozen=True)
class Outcome:
    """How one input ended: ok, refused (with its error code), crash (with the exception) or hang."""

    kind: str
    seconds: float
    code: str = ""
    message: str = ""
    where: str = ""

    @property
    def label(self) -> str:
        """"ok", "refused:<code>", "crash" or "hang": what the report counts."""
        return f"{REFUSED}:{self.code}" if self.kind == REFUSED else self.kind


def _where(error: BaseException) -> str:
    """file:line of the innermost frame of the project's code (else the innermost frame) that raised `error`."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [frame for frame in frames
            if str(REPO_ROOT) in frame.filename and "scripts/reliability" not in frame.filename]
    if not frames:
        return ""
    frame = (ours or frames)[-1]
    path = Path(frame.filename)
    return f"{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}:{frame.lineno}"


def run_case(case: FuzzCase, time_limit_s: float) -> Outcome:
    """Runs one request through its pipeline under the time limit; never raises except for KeyboardInterrupt."""
    started = time.perf_counter()
    try:
        # Decoders warn about what they repair in broken files; on fuzzed input that is noise, not a finding.
        with warnings.catch_warnings(), time_limit(time_limit_s):
            warnings.simplefilter("ignore")
            process_row(case.row, case.headers, case.pipeline)
    except InputHang as hang:
        return Outcome(HANG, time.perf_counter() - started, "timeout", str(hang), _where(hang))
    except ImageDecodeError as error:
        outcome = Outcome(REFUSED, time.perf_counter() - started, error.code, str(error)[:300])
    except Exception as error:  # noqa: BLE001 - every other exception is the finding this fuzzer exists for
        message = f"{type(error).__name__}: {error}"[:500]
        return Outcome(CRASH, time.perf_counter() - started, type(error).__name__, message, _where(error))
    else:
        outcome = Outcome(OK, time.perf_counter() - started)
    if outcome.seconds >= time_limit_s:  # a decoder stuck in C code only sees the alarm once it returns
        return Outcome(HANG, outcome.seconds, "timeout", f"took {outcome.seconds:.1f} s (limit {time_limit_s:g} s)")
    return outcome


class MemoryProbe:
    """The process's resident set now, and its peak since the last reset (VmHWM, reset through clear_refs on Linux).

    Where the peak cannot be reset, the peak is the RSS sampled after each input, which misses buffers freed
    before the input returned; `exact_peaks` says which one the report holds.
    """

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.exact_peaks = self._reset()

    @staticmethod
    def _reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def rss(self) -> int:
        """Resident set size in bytes."""
        return int(self.process.memory_info().rss)

    def reset_peak(self) -> None:
        """Starts a new peak measurement at the current RSS."""
        if self.exact_peaks:
            self._reset()

    def peak(self) -> int:
        """The highest RSS since reset_peak, in bytes."""
        if not self.exact_peaks:
            return self.rss()
        match = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
        return int(match.group(1)) * 1024 if match else self.rss()


# ----------------------------------------------------------------------------------------------------------------
# The run and its report.
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzConfig:
    """One fuzzing run.

    Attributes:
        examples: inputs hypothesis generates (each one request through one pipeline).
        seed: hypothesis's seed; the same seed and versions give the same inputs.
        output_dir: where fuzz.json, fuzz.md and the reproducers of failures go.
        time_limit_s: an input running longer is a hang.
        rss_allowance_bytes: the most the peak RSS may rise over the baseline; None derives it from max_image_pixels
            (BYTES_PER_PIXEL_ALLOWANCE per pixel, see the module docstring).
        strategies: the strategies to draw from (default: all of STRATEGY_NAMES).
        worker_threads: torch/OpenCV threads, as a worker sets them; None leaves the process as it is.
        progress_every: print a progress line every this many inputs (0: quiet).
        max_reproducers: failures whose bytes are saved (all are counted).

    """

    examples: int = 20_000
    seed: int = 0
    output_dir: Path = DEFAULT_OUTPUT_DIR
    time_limit_s: float = 10.0
    rss_allowance_bytes: int | None = None
    strategies: tuple[str, ...] = STRATEGY_NAMES
    worker_threads: int | None = None
    progress_every: int = 0
    max_reproducers: int = 50

    def allowance(self) -> int:
        """The RSS allowance in bytes."""
        if self.rss_allowance_bytes is not None:
            return self.rss_allowance_bytes
        return BYTES_PER_PIXEL_ALLOWANCE * shipped_max_image_pixels()


def shipped_worker_threads() -> int:
    """Torch/OpenCV threads a CPU worker of the shipped model-config.yaml gives itself on this machine."""
    cores = available_cores()
    model_config = yaml.safe_load(SHIPPED_MODEL_CONFIG.read_text())
    return threads_per_worker(cores, most_concurrent_workers(model_config, cores), shipped_settings().torch_threads)


def warm_up() -> None:
    """Runs every pipeline once on small valid images, so codec and cascade set-up is not charged to the first input."""
    for kind in ("jpeg_baseline", "png_rgba", "gif_transparent", "webp_alpha", "tiff_lzw", "bmp_rgb"):
        data = encode_seed(kind, 64, 48, "face", 0)
        for pipeline in PIPELINES:
            process_row({"body": data}, None, pipeline)


def _jsonable(value: Any) -> Any:
    """A request row as JSON: bytes become {"base64": ...}, so a reproducer keeps the exact row."""
    if isinstance(value, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii"), "type": type(value).__name__}
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return repr(value)
    return value


def case_summary(case: FuzzCase, outcome: Outcome) -> dict[str, Any]:
    """What the report shows of one input."""
    data = case.payload.data
    return {
        "strategy": case.payload.strategy,
        "kind": case.payload.kind,
        "description": case.payload.description[:400],
        "layout": case.layout,
        "pipeline": case.pipeline.name,
        "bytes": len(data),
        "hex_prefix": data[:HEX_PREFIX_BYTES].hex(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "outcome": outcome.label,
        "seconds": round(outcome.seconds, 4),
        "message": outcome.message,
        "where": outcome.where,
    }


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p99/max of per-input seconds."""
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    array = np.asarray(values)
    return {"p50": float(np.percentile(array, 50)), "p99": float(np.percentile(array, 99)),
            "max": float(array.max()), "mean": float(array.mean())}


@dataclass
class Recorder:
    """Runs inputs and keeps what the report needs: counts, failures, timings, and the memory they took."""

    config: FuzzConfig
    probe: MemoryProbe
    baseline_rss: int
    examples: int = 0
    seconds: list[float] = field(default_factory=list)
    by_strategy: Counter = field(default_factory=Counter)
    by_pipeline: Counter = field(default_factory=Counter)
    by_layout: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    outcomes_by_strategy: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {CRASH: [], HANG: [], "memory": []})
    slowest: list[dict[str, Any]] = field(default_factory=list)
    hungriest: list[dict[str, Any]] = field(default_factory=list)
    peak_rss: int = 0
    sampled_peak_rss: int = 0
    saved: int = 0

    @property
    def rss_bound(self) -> int:
        """The highest RSS allowed: baseline + allowance."""
        return self.baseline_rss + self.config.allowance()

    def run(self, case: FuzzCase) -> Outcome:
        """Runs one input and records it; saves a reproducer when it crashed, hung, or went over the memory bound."""
        self.probe.reset_peak()
        outcome = run_case(case, self.config.time_limit_s)
        peak, after = self.probe.peak(), self.probe.rss()
        self.examples += 1
        self.seconds.append(outcome.seconds)
        self.by_strategy[case.payload.strategy] += 1
        self.by_pipeline[case.pipeline.name] += 1
        self.by_layout[case.layout] += 1
        if case.payload.kind:
            self.by_kind[case.payload.kind] += 1
        self.outcomes[outcome.label] += 1
        self.outcomes_by_strategy[case.payload.strategy][outcome.label] += 1
        self.peak_rss, self.sampled_peak_rss = max(self.peak_rss, peak), max(self.sampled_peak_rss, after)
        summary = case_summary(case, outcome)
        summary["peak_rss_mib"] = round(peak / MIB, 1)
        if outcome.kind in (CRASH, HANG):
            self._fail(outcome.kind, case, summary)
        if peak > self.rss_bound:
            self._fail("memory", case, summary)
        self._keep_top(self.slowest, summary, "seconds")
        self._keep_top(self.hungriest, summary, "peak_rss_mib")
        return outcome

    @staticmethod
    def _keep_top(items: list[dict[str, Any]], summary: dict[str, Any], key: str, size: int = 10) -> None:
        if len(items) < size or summary[key] > items[-1][key]:
            items.append(summary)
            items.sort(key=lambda item: -item[key])
            del items[size:]

    def _fail(self, kind: str, case: FuzzCase, summary: dict[str, Any]) -> None:
        entry = dict(summary)
        if self.saved < self.config.max_reproducers:
            self.saved += 1
            folder = self.config.output_dir / REPRODUCERS_DIR
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"{kind}-{summary['sha256'][:16]}-{case.pipeline.name}"
            (folder / f"{stem}.bin").write_bytes(case.payload.data)
            row = {"row": _jsonable(case.row), "headers": _jsonable(case.headers), **summary}
            (folder / f"{stem}.json").write_text(json.dumps(row, indent=1))
            entry["reproducer"] = str((folder / f"{stem}.bin").relative_to(self.config.output_dir))
        self.failures[kind].append(entry)

    def progress_line(self, elapsed: float) -> str:
        """One line for the console while a long run goes on."""
        return (f"{self.examples}/{self.config.examples} inputs, {self.examples / max(elapsed, 1e-9):.0f}/s, "
                f"crashes {len(self.failures[CRASH])}, hangs {len(self.failures[HANG])}, "
                f"peak RSS {self.peak_rss / MIB:.0f} MiB")


@dataclass
class FuzzReport:
    """Everything fuzz.json holds; `passed` is False on a crash, a hang or a peak RSS over the bound."""

    results: dict[str, Any]

    @property
    def passed(self) -> bool:
        """No crash, no hang, peak RSS within the bound."""
        return bool(self.results["passed"])


def versions() -> dict[str, str]:
    """Library versions the outcome depends on: the decoders are the attack surface."""
    return {"python": platform.python_version(), "hypothesis": hypothesis.__version__, "pillow": Image.__version__,
            "opencv": cv2.__version__, "numpy": np.__version__, "torch": torch.__version__,
            "libjpeg_turbo": str(features.version("jpg")), "libwebp": str(features.version("webp")),
            "libtiff": str(features.version("libtiff")), "zlib": str(features.version("zlib"))}


def build_report(recorder: Recorder, config: FuzzConfig, wall_seconds: float, final_rss: int) -> FuzzReport:
    """The results of a finished run, with the pass/fail verdict and its reasons."""
    pipeline_seconds = sum(recorder.seconds)
    reasons = []
    if recorder.failures[CRASH]:
        reasons.append(f"{len(recorder.failures[CRASH])} crash(es)")
    if recorder.failures[HANG]:
        reasons.append(f"{len(recorder.failures[HANG])} hang(s)")
    if recorder.peak_rss > recorder.rss_bound:
        reasons.append(f"peak RSS {recorder.peak_rss / MIB:.0f} MiB over the bound {recorder.rss_bound / MIB:.0f} MiB")
    results = {
        "command": (f"python -m scripts.reliability.fuzz --examples {config.examples} --seed {config.seed} "
                    f"--time-limit {config.time_limit_s:g}"),
        "passed": not reasons,
        "failed_because": reasons,
        "config": {"examples": config.examples, "seed": config.seed, "time_limit_s": config.time_limit_s,
                   "rss_allowance_mib": round(config.allowance() / MIB, 1),
                   "max_image_pixels": shipped_max_image_pixels(),
                   "max_upload_bytes": shipped_settings().max_upload_bytes, "strategies": list(config.strategies),
                   "worker_threads": config.worker_threads,
                   "pipelines": {p.name: {"input_size": list(p.preprocess.input_size),
                                          "jpeg_reduced_decode": p.preprocess.jpeg_reduced_decode,
                                          "faces": None if p.faces is None else asdict(p.faces)} for p in PIPELINES}},
        "machine": {"platform": platform.platform(), "cores": available_cores(),
                    "torch_threads": torch.get_num_threads(), "opencv_threads": cv2.getNumThreads()},
        "versions": versions(),
        "examples": {"total": recorder.examples, "by_strategy": dict(recorder.by_strategy),
                     "by_pipeline": dict(recorder.by_pipeline), "by_layout": dict(recorder.by_layout),
                     "by_seed_kind": dict(sorted(recorder.by_kind.items()))},
        "outcomes": dict(recorder.outcomes.most_common()),
        "outcomes_by_strategy": {name: dict(counts.most_common())
                                 for name, counts in sorted(recorder.outcomes_by_strategy.items())},
        "crashes": recorder.failures[CRASH],
        "hangs": recorder.failures[HANG],
        "over_memory_bound": recorder.failures["memory"],
        "seconds_per_input": percentiles(recorder.seconds),
        "throughput": {"inputs_per_second": recorder.examples / max(wall_seconds, 1e-9),
                       "pipeline_inputs_per_second": recorder.examples / max(pipeline_seconds, 1e-9),
                       "wall_seconds": wall_seconds, "pipeline_seconds": pipeline_seconds},
        "memory": {"exact_peaks": recorder.probe.exact_peaks, "baseline_rss_mib": round(recorder.baseline_rss / MIB, 1),
                   "peak_rss_mib": round(recorder.peak_rss / MIB, 1),
                   "peak_sampled_after_inputs_mib": round(recorder.sampled_peak_rss / MIB, 1),
                   "final_rss_mib": round(final_rss / MIB, 1), "bound_mib": round(recorder.rss_bound / MIB, 1),
                   "allowance_mib": round(config.allowance() / MIB, 1)},
        "slowest_inputs": recorder.slowest,
        "most_memory": recorder.hungriest,
    }
    return FuzzReport(results)


def fuzz(config: FuzzConfig) -> FuzzReport:
    """Runs `config.examples` hypothesis-generated requests through the worker's decode path and reports them.

    Hypothesis drives generation only (`Phase.generate`, no database, no shrinking): every input is
    run and recorded here rather than raised, so one run lists all failures instead of stopping at the first.
    """
    unknown = set(config.strategies) - set(STRATEGY_NAMES)
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)}; known: {list(STRATEGY_NAMES)}")
    if config.worker_threads is not None:
        apply_cpu_threads(config.worker_threads)
    probe = MemoryProbe()
    warm_up()
    gc.collect()
    recorder = Recorder(config, probe, probe.rss())
    started = time.perf_counter()

    @hypothesis_seed(config.seed)
    @settings(max_examples=config.examples, deadline=None, database=None, phases=(Phase.generate,),
              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
    @given(case=fuzz_cases(tuple(config.strategies)))
    def fuzz_one(case: FuzzCase) -> None:
        recorder.run(case)
        if config.progress_every and recorder.examples % config.progress_every == 0:
            print(recorder.progress_line(time.perf_counter() - started), file=sys.stderr, flush=True)

    fuzz_one()
    wall = time.perf_counter() - started
    gc.collect()
    return build_report(recorder, config, wall, probe.rss())


def markdown(results: dict[str, Any]) -> str:
    """fuzz.md: the verdict, counts per strategy and outcome, failures, timings, memory."""
    memory, timing, rate = results["memory"], results["seconds_per_input"], results["throughput"]
    verdict = "**PASSED**" if results["passed"] else f"**FAILED**: {', '.join(results['failed_because'])}"
    lines = [
        "# Fuzzing the decode + preprocess path", "",
        f"`{results['command']}`: {results['examples']['total']} inputs, {verdict}.", "",
        f"- Throughput: {rate['inputs_per_second']:.1f} inputs/s overall (generation included), "
        f"{rate['pipeline_inputs_per_second']:.1f} inputs/s in the worker's calls; {rate['wall_seconds']:.0f} s.",
        f"- Seconds per input: p50 {timing['p50'] * 1000:.1f} ms, p99 {timing['p99'] * 1000:.1f} ms, "
        f"max {timing['max']:.2f} s (hang limit {results['config']['time_limit_s']:g} s).",
        f"- RSS: baseline {memory['baseline_rss_mib']:.0f} MiB, peak {memory['peak_rss_mib']:.0f} MiB "
        f"({'high-water mark per input' if memory['exact_peaks'] else 'sampled after each input'}), "
        f"final {memory['final_rss_mib']:.0f} MiB; bound {memory['bound_mib']:.0f} MiB "
        f"(baseline + {memory['allowance_mib']:.0f} MiB).",
        f"- Machine: {results['machine']['cores']} cores; Pillow {results['versions']['pillow']}, "
        f"OpenCV {results['versions']['opencv']}, hypothesis {results['versions']['hypothesis']}.",
        "", "## Inputs and outcomes", "", "| strategy | inputs | outcomes |", "|---|---|---|",
    ]
    for name, count in results["examples"]["by_strategy"].items():
        outcomes = ", ".join(f"{label} {n}" for label, n in results["outcomes_by_strategy"].get(name, {}).items())
        lines.append(f"| {name} | {count} | {outcomes} |")
    lines += ["", "| outcome | inputs |", "|---|---|"]
    lines += [f"| {label} | {count} |" for label, count in results["outcomes"].items()]
    for title, key in (("Crashes", "crashes"), ("Hangs", "hangs"), ("Over the memory bound", "over_memory_bound")):
        entries = results[key]
        lines += ["", f"## {title}: {len(entries)}", ""]
        lines += [f"- `{e.get('reproducer', e['sha256'][:16])}` ({e['pipeline']}, {e['layout']}): {e['message']} "
                  f"at {e['where'] or '?'}; {e['description'][:160]}" for e in entries[:20]]
    lines += ["", "## Slowest inputs", "", "| seconds | peak RSS MiB | outcome | pipeline | input |",
              "|---|---|---|---|---|"]
    lines += [f"| {e['seconds']:.3f} | {e['peak_rss_mib']:.0f} | {e['outcome']} | {e['pipeline']} | "
              f"{e['description'][:120]} |" for e in results["slowest_inputs"]]
    lines += ["", "## Most memory", "", "| peak RSS MiB | seconds | outcome | pipeline | input |",
              "|---|---|---|---|---|"]
    lines += [f"| {e['peak_rss_mib']:.0f} | {e['seconds']:.3f} | {e['outcome']} | {e['pipeline']} | "
              f"{e['description'][:120]} |" for e in results["most_memory"]]
    return "\n".join(lines) + "\n"


def write_report(report: FuzzReport, output_dir: Path) -> tuple[Path, Path]:
    """Writes fuzz.json and fuzz.md into `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = output_dir / JSON_NAME, output_dir / MARKDOWN_NAME
    json_path.write_text(json.dumps(report.results, indent=1) + "\n")
    markdown_path.write_text(markdown(report.results))
    return json_path, markdown_path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--examples", type=int, default=FuzzConfig.examples, help="inputs to generate")
    parser.add_argument("--seed", type=int, default=FuzzConfig.seed, help="hypothesis seed")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="where fuzz.json/fuzz.md go")
    parser.add_argument("--time-limit", type=float, default=FuzzConfig.time_limit_s, help="seconds before a hang")
    parser.add_argument("--rss-allowance-mib", type=float, default=None,
                        help=f"peak RSS allowed over the baseline (default {BYTES_PER_PIXEL_ALLOWANCE} B x "
                             "max_image_pixels)")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGY_NAMES, default=list(STRATEGY_NAMES))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch/OpenCV threads (default: what a worker of config/model-config.yaml uses here)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Runs the fuzzer, writes the report, exits 1 on a crash, a hang, or a peak RSS over the bound."""
    args = _parser().parse_args(argv)
    allowance = None if args.rss_allowance_mib is None else int(args.rss_allowance_mib * MIB)
    config = FuzzConfig(examples=args.examples, seed=args.seed, output_dir=args.output_dir,
                        time_limit_s=args.time_limit, rss_allowance_bytes=allowance, strategies=tuple(args.strategies),
                        worker_threads=args.threads if args.threads is not None else shipped_worker_threads(),
                        progress_every=1000)
    report = fuzz(config)
    json_path, markdown_path = write_report(report, args.output_dir)
    results = report.results
    print(f"{results['examples']['total']} inputs at {results['throughput']['inputs_per_second']:.1f}/s: "
          f"{dict(results['outcomes'])}")
    print(f"wrote {json_path} and {markdown_path}: {'passed' if report.passed else 'FAILED'} "
          f"{'; '.join(results['failed_because'])}")
    sys.exit(0 if report.passed else 1)


if __name__ == "__main__":
    main()
