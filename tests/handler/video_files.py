"""Short videos the video tests write themselves with OpenCV's VideoWriter, from demo images or face photos.

Every container the handler accepts is written with a codec this OpenCV's FFmpeg has (checked on
opencv-python-headless 4.14): MP4 and MOV with mp4v, AVI with MJPG (or lossless PNG for the
"same as the image" test), WebM with VP8.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from handler.forensics import decode_rgb


@dataclass(frozen=True)
class VideoFormat:
    """A container and the codec (FourCC) a test writes it with."""

    container: str
    suffix: str
    fourcc: str


MP4 = VideoFormat("mp4", ".mp4", "mp4v")
MOV = VideoFormat("mov", ".mov", "mp4v")
AVI = VideoFormat("avi", ".avi", "MJPG")
WEBM = VideoFormat("webm", ".webm", "VP80")
LOSSLESS_AVI = VideoFormat("avi", ".avi", "PNG ")  # stored as MPNG: every frame decodes to the pixels written
FORMATS = (MP4, MOV, AVI, WEBM)


def write_video(frames: Sequence[np.ndarray], fmt: VideoFormat = MP4, fps: float = 10.0,
                folder: Path | None = None) -> bytes:
    """The bytes of a video of `frames` (uint8 RGB, all the same size) at `fps` frames per second.

    Raises:
        RuntimeError: OpenCV could not open a writer for this container and codec.

    """
    height, width = frames[0].shape[:2]
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        path = Path(scratch) / f"video{fmt.suffix}"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fmt.fourcc), fps, (width, height))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write {fmt.container} with {fmt.fourcc}")
        try:
            for rgb in frames:
                writer.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        return path.read_bytes()


def image_rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file's RGB pixels, resized to (width, height) when given (codecs want even sides)."""
    rgb = decode_rgb(path.read_bytes())
    return rgb if size is None else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def demo_frames(dataset: Path, kind: str, count: int, size: tuple[int, int] = (128, 128)) -> list[np.ndarray]:
    """`count` different demo images of `kind` ("real" or "fake") from a training.demo_data folder, as frames."""
    paths = sorted((dataset / kind).glob("*.jpg"))[:count]
    if len(paths) < count:
        raise FileNotFoundError(f"{dataset / kind} has {len(paths)} images; {count} wanted")
    return [image_rgb(path, size) for path in paths]


def numbered_frames(count: int, size: tuple[int, int] = (160, 64)) -> list[np.ndarray]:
    """Black frames with a white band at columns 4i..4i+3 (i: the frame's index), for frame_number to read back.

    A band's position survives lossy codecs, where a brightness level would not (mp4v shifts flat greys by 3).
    """
    width, height = size
    if 4 * count > width:
        raise ValueError(f"{count} numbered frames need a width of at least {4 * count}")
    frames = []
    for index in range(count):
        rgb = np.zeros((height, width, 3), np.uint8)
        rgb[:, 4 * index: 4 * index + 4] = 255
        frames.append(rgb)
    return frames


def frame_number(rgb: np.ndarray) -> int:
    """The index a numbered frame was written with: where its brightest 4-column band is."""
    columns = rgb.astype(np.float32).mean(axis=(0, 2))
    bands = columns[: len(columns) // 4 * 4].reshape(-1, 4).sum(axis=1)
    return int(np.argmax(bands))


def avi_claiming(data: bytes, frames: int) -> bytes:
    """An AVI whose headers (avih dwTotalFrames, the video strh dwLength) claim `frames` frames, whatever it holds."""
    patched = bytearray(data)
    struct.pack_into("<I", patched, patched.index(b"avih") + 8 + 16, frames)
    struct.pack_into("<I", patched, patched.index(b"strh") + 8 + 32, frames)
    return bytes(patched)
