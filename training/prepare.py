"""Photos and videos → square face crops in the training layout, with a manifest of subjects.

    python -m training.prepare SOURCE --output-dir OUT [--label real|fake] [--subject-regex REGEX]
        [--subjects-csv CSV] [--multi-face largest|all|skip] [--frames-per-video N] [--set KEY=VALUE ...]

Crops are found and cut by handler.faces with the same FaceConfig the model is later exported with
(OUT/faces.json), so the trainer sees faces exactly as the handler will cut them at serving time.
They are written losslessly at their own resolution: the trainer resizes them as the handler does.
Train on OUT/manifest.csv (it carries the subjects that keep a person on one side of the split).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from handler.faces import DETECTORS, FaceBox, FaceConfig, crop_face, detect_faces
from handler.forensics import ImageDecodeError, decode_rgb
from training.dataset import CLASS_NAMES, IMAGE_SUFFIXES

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
FACES_FILENAME = "faces.json"
FACES_SCHEMA_VERSION = 1
MANIFEST_FILENAME = "manifest.csv"
REPORT_FILENAME = "prepare_report.json"
MANIFEST_COLUMNS = ("path", "label", "subject", "source", "frame", "face_index",
                    "face_x", "face_y", "face_width", "face_height")
# Columns of --subjects-csv that are not copied: ours, and `split`, which the trainer decides by subject.
RESERVED_COLUMNS = {*MANIFEST_COLUMNS, "split"}
REASONS = ("unreadable", "no_face", "multiple_faces", "no_subject")
MULTI_FACE_POLICIES = {
    "largest": "write the largest face only (the subject of a portrait; bystanders are smaller)",
    "all": "write every face, as NAME_face0.png, NAME_face1.png, ... (largest first)",
    "skip": "write no crop of an image with several faces (which face was manipulated is unknown)",
}


class PrepareError(ValueError):
    """The source, output folder or a settings file cannot be used as given; the message says what to change."""


@dataclass(frozen=True)
class PrepareConfig:
    """Everything one prepare run needs.

    Attributes:
        source: folder of photos/videos; real/ and fake/ sub-folders (any letter case) give the labels.
        output_dir: where crops, manifest.csv, faces.json and prepare_report.json are written.
        label: the label of every file when source has no real/ or fake/ folder.
        subject_regex: applied to each file's path relative to source; the named group `subject`, else group 1,
            else the whole match is the subject.
        subjects_csv: CSV with columns path,subject (paths relative to source) and any extra columns to copy.
        multi_face: a name in :data:`MULTI_FACE_POLICIES`.
        frames_per_video: frames sampled uniformly over each video.
        faces: how faces are found and cut (exported to faces.json).
        workers: processes detecting in parallel (1: in this process).
        overwrite: replace what an earlier run wrote to output_dir instead of refusing.

    """

    source: Path
    output_dir: Path
    label: str = "real"
    subject_regex: str | None = None
    subjects_csv: Path | None = None
    multi_face: str = "largest"
    frames_per_video: int = 8
    faces: FaceConfig = field(default_factory=FaceConfig)
    workers: int = 1
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.label not in CLASS_NAMES:
            raise ValueError(f"label must be one of {CLASS_NAMES}, got {self.label!r}")
        if self.multi_face not in MULTI_FACE_POLICIES:
            raise ValueError(f"multi_face must be one of {sorted(MULTI_FACE_POLICIES)}, got {self.multi_face!r}")
        if self.frames_per_video < 1 or self.workers < 1:
            raise ValueError("frames_per_video and workers must be at least 1")
        if self.subject_regex is not None:
            try:
                re.compile(self.subject_regex)
            except re.error as error:
                raise ValueError(f"subject regex {self.subject_regex!r} is invalid: {error}") from error


@dataclass(frozen=True)
class SourceFile:
    """One photo or video to crop, with everything decided about it before any pixel is read."""

    path: Path
    relative: str
    label: str
    output_stem: str
    is_video: bool
    subject: str
    extra: tuple[tuple[str, str], ...] = ()


@dataclass
class SourceResult:
    """What processing one source file produced: manifest rows, frames read and problems by reason."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    frames_read: int = 0
    problems: dict[str, list[str]] = field(default_factory=lambda: {reason: [] for reason in REASONS})


# ---------------------------------------------------------------------------------------------------------------------
# Pure decisions


def derive_subject(relative: str, is_video: bool, csv_subjects: Mapping[str, str] | None,
                   pattern: re.Pattern[str] | None) -> str:
    """The person a file shows: CSV entry, else regex match, else the video itself, else "" (unknown).

    All frames of a video fall back to one subject so that no video straddles the train/test split.
    """
    if csv_subjects is not None and csv_subjects.get(relative):
        return csv_subjects[relative]
    if pattern is not None and (match := pattern.search(relative)):
        group: str | int = "subject" if "subject" in pattern.groupindex else (1 if pattern.groups else 0)
        if match.group(group):
            return match.group(group)
    return relative if is_video else ""


def plan_output_stems(items: Sequence[tuple[str, str]]) -> list[str]:
    """(label, path below the label folder) → "label/sub/name" without suffix, one distinct stem per item.

    Files differing only in suffix (a.jpg, a.png) would share a name, so those keep it: a_jpg, a_png.
    """
    plain = [f"{label}/{PurePosixPath(relative).with_suffix('')}" for label, relative in items]
    uses = Counter(plain)
    stems = [
        f"{stem}_{PurePosixPath(relative).suffix.lstrip('.').lower()}" if uses[stem] > 1 else stem
        for stem, (_, relative) in zip(plain, items, strict=True)
    ]
    repeated = sorted(stem for stem, count in Counter(stems).items() if count > 1)
    if repeated:
        raise PrepareError(f"source files map to the same crop names {repeated}; rename one of each pair")
    return stems


def crop_name(stem: str, frame: int | None, face_index: int | None) -> str:
    """The crop's path relative to the output folder: STEM[_fFRAME][_faceK].png."""
    frame_part = "" if frame is None else f"_f{frame:06d}"
    face_part = "" if face_index is None else f"_face{face_index}"
    return f"{stem}{frame_part}{face_part}.png"


def choose_faces(boxes: Sequence[FaceBox], policy: str) -> list[tuple[int, FaceBox]]:
    """(face index, box) to write under a multi-face policy; boxes come largest first from detect_faces."""
    if policy == "all" or len(boxes) <= 1:
        return list(enumerate(boxes))
    return [(0, boxes[0])] if policy == "largest" else []


def sample_frame_indices(frame_count: int, wanted: int) -> list[int]:
    """`wanted` frame indices spread uniformly: the centre of each of `wanted` equal stretches of the video.

    Centres rather than ends, because first and last frames are often fades or titles.
    """
    if frame_count <= wanted:
        return list(range(max(0, frame_count)))
    return [int((index + 0.5) * frame_count / wanted) for index in range(wanted)]


def face_config_from_pairs(pairs: Sequence[str]) -> FaceConfig:
    """["margin=0.4", ...] → FaceConfig; values take the type of the setting's default."""
    defaults = FaceConfig()
    values: dict[str, Any] = {}
    for pair in pairs:
        key, separator, text = (part.strip() for part in pair.partition("="))
        if not separator or not hasattr(defaults, key):
            raise ValueError(f"--set expects FACE_SETTING=VALUE with a setting in "
                             f"{[f.name for f in fields(FaceConfig)]}, got {pair!r}")
        try:
            values[key] = type(getattr(defaults, key))(text)
        except ValueError as error:
            raise ValueError(f"face setting '{key}' must be a {type(getattr(defaults, key)).__name__}, "
                             f"got {text!r}") from error
    return FaceConfig.from_dict(values)


# ---------------------------------------------------------------------------------------------------------------------
# Reading sources


def read_face_config(dataset: Path) -> FaceConfig | None:
    """The FaceConfig a prepared dataset was cropped with, or None for a whole-image dataset.

    Args:
        dataset: the dataset folder, or its manifest CSV (faces.json lies next to it).

    Raises:
        PrepareError: faces.json exists but is not a file prepare wrote.

    """
    dataset = Path(dataset)
    path = (dataset.parent if dataset.is_file() else dataset) / FACES_FILENAME
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
        if content.get("schema_version") != FACES_SCHEMA_VERSION:
            raise ValueError(f"schema_version is {content.get('schema_version')!r}, expected {FACES_SCHEMA_VERSION}")
        return FaceConfig.from_dict(content["faces"])
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise PrepareError(f"{path} is not a faces file written by training.prepare ({error}); "
                           f"run `python -m training.prepare` again or delete it for a whole-image dataset") from error


def _class_folders(source: Path) -> dict[str, Path]:
    """real/ and fake/ sub-folders in any letter case; two spellings of one class are refused, not guessed."""
    found: dict[str, list[Path]] = {}
    for child in sorted(source.iterdir()):
        if child.is_dir() and child.name.lower() in CLASS_NAMES:
            found.setdefault(child.name.lower(), []).append(child)
    for name, folders in found.items():
        if len(folders) > 1:
            raise PrepareError(f"{source} has several '{name}' folders ({', '.join(f.name for f in folders)}); "
                               f"merge them into one")
    return {name: folders[0] for name, folders in found.items()}


def _media_files(folder: Path) -> tuple[list[Path], int]:
    """Image and video files below folder (sorted) and how many other files were passed over."""
    files = [path for path in folder.rglob("*") if path.is_file()]
    media = sorted(path for path in files if path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
    return media, len(files) - len(media)


def read_subjects_csv(path: Path) -> tuple[dict[str, str], dict[str, dict[str, str]], list[str]]:
    """--subjects-csv → (subject by relative path, extra columns by relative path, extra column names)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in reader.fieldnames or []]
            if "path" not in columns or "subject" not in columns:
                raise PrepareError(f"subjects CSV {path} needs columns path,subject; found {columns}")
            extra = [name for name in columns if name not in RESERVED_COLUMNS]
            subjects, extras = {}, {}
            for row in reader:
                row = {(key or "").strip(): (value or "").strip() for key, value in row.items()}
                relative = PurePosixPath(os.path.normpath(row["path"].replace("\\", "/"))).as_posix()
                subjects[relative] = row["subject"]
                extras[relative] = {name: row.get(name, "") for name in extra}
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PrepareError(f"subjects CSV {path} cannot be read as a UTF-8 CSV file: {error}") from error
    return subjects, extras, extra


def plan_sources(config: PrepareConfig) -> tuple[list[SourceFile], list[str], int]:
    """Every photo and video to crop (label, output name, subject), the extra CSV columns, and other files' count."""
    source = Path(config.source)
    if not source.is_dir():
        raise PrepareError(f"source {source} is not a folder; give the folder holding the photos and videos")
    folders = _class_folders(source) or {config.label: source}
    found: list[tuple[Path, str, str]] = []
    other_files = 0
    for label, folder in sorted(folders.items()):
        media, other = _media_files(folder)
        other_files += other
        found += [(path, label, path.relative_to(folder).as_posix()) for path in media]
    if not found:
        suffixes = " ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        raise PrepareError(f"no image or video ({suffixes}) found below {', '.join(map(str, folders.values()))}")
    found.sort(key=lambda item: item[0].relative_to(source).as_posix())
    csv_subjects, csv_extras, extra_columns = (
        read_subjects_csv(Path(config.subjects_csv)) if config.subjects_csv else (None, {}, []))
    pattern = re.compile(config.subject_regex) if config.subject_regex else None
    stems = plan_output_stems([(label, below) for _, label, below in found])
    planned = []
    for (path, label, _), stem in zip(found, stems, strict=True):
        relative = path.relative_to(source).as_posix()
        is_video = path.suffix.lower() in VIDEO_SUFFIXES
        extra = csv_extras.get(relative, {})
        planned.append(SourceFile(path, relative, label, stem, is_video,
                                  derive_subject(relative, is_video, csv_subjects, pattern),
                                  tuple((name, extra.get(name, "")) for name in extra_columns)))
    return planned, extra_columns, other_files


def _reported_frame_count(capture: cv2.VideoCapture) -> int:
    """The container's frame count; 0 or less when the container does not say (some streams, webm)."""
    return int(capture.get(cv2.CAP_PROP_FRAME_COUNT))


def read_video_frames(path: Path, wanted: int) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, RGB frame) for `wanted` uniformly spread frames, read sequentially (seeking is inexact).

    Raises:
        ImageDecodeError: OpenCV cannot open the video or read a single frame from it.

    """
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ImageDecodeError("corrupt_video", "OpenCV cannot open the video (unknown codec or damaged file)")
        count = _reported_frame_count(capture)
        if count <= 0:  # unknown: count by reading through once, then start again
            count = 0
            while capture.grab():
                count += 1
            capture.release()
            capture = cv2.VideoCapture(str(path))
        chosen = set(sample_frame_indices(count, wanted))
        read = 0
        for index in range(max(chosen, default=-1) + 1):
            ok, frame = capture.read() if index in chosen else (capture.grab(), None)
            if not ok:
                break
            if frame is not None:
                read += 1
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if read == 0:
            raise ImageDecodeError("corrupt_video", "no frame of the video could be read")
    finally:
        capture.release()


# ---------------------------------------------------------------------------------------------------------------------
# Cropping (runs in worker processes)


def _init_worker() -> None:
    """One OpenCV thread per process: the pool already keeps every core busy."""
    cv2.setNumThreads(1)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Lossless, so the trainer decodes the crop's exact pixels; OpenCV's encoder is ~5x faster than Pillow's.

    Raises:
        PrepareError: the crop cannot be written (a full disk is not a problem of the source file).

    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        written = cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    except (OSError, cv2.error) as error:
        raise PrepareError(f"cannot write {path}: {error}; check the output folder is writable") from error
    if not written:
        raise PrepareError(f"OpenCV could not write {path}; check the output folder is writable and has space")


def process_source(item: SourceFile, config: PrepareConfig) -> SourceResult:
    """Detects faces in one photo (or sampled video frames) and writes the chosen crops as PNG."""
    result = SourceResult()
    try:
        frames = (read_video_frames(item.path, config.frames_per_video) if item.is_video
                  else iter([(None, decode_rgb(item.path.read_bytes()))]))
        for frame, rgb in frames:
            result.frames_read += 1
            where = item.relative if frame is None else f"{item.relative} frame {frame}"
            boxes = detect_faces(rgb, config.faces)
            if not boxes:
                result.problems["no_face"].append(where)
            elif len(boxes) > 1:
                result.problems["multiple_faces"].append(f"{where} ({len(boxes)} faces)")
            several = len(boxes) > 1 and config.multi_face == "all"
            for face_index, box in choose_faces(boxes, config.multi_face):
                name = crop_name(item.output_stem, frame, face_index if several else None)
                write_png(Path(config.output_dir) / name, crop_face(rgb, box, config.faces.margin))
                result.rows.append({
                    "path": name, "label": item.label, "subject": item.subject, "source": item.relative,
                    "frame": "" if frame is None else frame, "face_index": face_index, "face_x": box.x,
                    "face_y": box.y, "face_width": box.width, "face_height": box.height, **dict(item.extra)})
    except (ImageDecodeError, OSError) as error:
        result.problems["unreadable"].append(f"{item.relative}: {error}")
    return result


# ---------------------------------------------------------------------------------------------------------------------
# The run


def _prepare_output(config: PrepareConfig) -> None:
    """Refuses a non-empty output folder (or one overlapping the source); with overwrite, clears our own files."""
    output, source = Path(config.output_dir).resolve(), Path(config.source).resolve()
    if output == source or source in output.parents or output in source.parents:
        raise PrepareError(f"output folder {config.output_dir} overlaps source {config.source}; choose a folder "
                           f"outside it")
    if output.exists() and any(output.iterdir()):
        if not config.overwrite:
            raise PrepareError(f"output folder {config.output_dir} is not empty; pass --overwrite to replace an "
                               f"earlier prepare run, or choose another folder")
        for name in CLASS_NAMES:
            shutil.rmtree(output / name, ignore_errors=True)
        for name in (MANIFEST_FILENAME, FACES_FILENAME, REPORT_FILENAME):
            (output / name).unlink(missing_ok=True)
    output.mkdir(parents=True, exist_ok=True)


def _results(items: list[SourceFile], config: PrepareConfig) -> Iterator[SourceResult]:
    """Results in source order, from this process or a pool."""
    progress = {"total": len(items), "disable": None, "unit": "file", "desc": "prepare"}
    if config.workers == 1:
        yield from tqdm((process_source(item, config) for item in items), **progress)
        return
    # spawn, not fork: a forked child inherits OpenCV's thread pool in whatever state it was, and can deadlock in it.
    with ProcessPoolExecutor(config.workers, multiprocessing.get_context("spawn"), initializer=_init_worker) as pool:
        yield from tqdm(pool.map(process_source, items, [config] * len(items)), **progress)


def prepare(config: PrepareConfig) -> dict[str, Any]:
    """Writes crops, manifest.csv, faces.json and prepare_report.json; returns the report.

    Raises:
        PrepareError: the source is not a folder, the output folder is not empty (without overwrite) or overlaps
            the source, or the subjects CSV lacks path,subject.

    """
    started = time.perf_counter()
    items, extra_columns, other_files = plan_sources(config)
    _prepare_output(config)
    output = Path(config.output_dir)
    rows: list[dict[str, Any]] = []
    problems: dict[str, list[str]] = {reason: [] for reason in REASONS}
    problems["no_subject"] = [item.relative for item in items if not item.subject]
    frames_read = 0
    for result in _results(items, config):
        rows += result.rows
        frames_read += result.frames_read
        for reason in ("unreadable", "no_face", "multiple_faces"):
            problems[reason] += result.problems[reason]
    with (output / MANIFEST_FILENAME).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*MANIFEST_COLUMNS, *extra_columns])
        writer.writeheader()
        writer.writerows(rows)
    (output / FACES_FILENAME).write_text(
        json.dumps({"schema_version": FACES_SCHEMA_VERSION, "faces": config.faces.to_dict()}, indent=2) + "\n")
    videos = sum(item.is_video for item in items)
    report = {
        "source": str(config.source), "output_dir": str(config.output_dir),
        "settings": {"label": config.label, "subject_regex": config.subject_regex,
                     "subjects_csv": str(config.subjects_csv) if config.subjects_csv else None,
                     "multi_face": config.multi_face, "frames_per_video": config.frames_per_video,
                     "faces": config.faces.to_dict()},
        "files": {"images": len(items) - videos, "videos": videos, "other_files_ignored": other_files},
        "frames_read": frames_read, "crops_written": len(rows),
        "counts": {reason: len(entries) for reason, entries in problems.items()},
        "problems": problems, "seconds": round(time.perf_counter() - started, 2),
    }
    (output / REPORT_FILENAME).write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One paragraph for the terminal: what was read, what was written, what was skipped and why."""
    files, counts = report["files"], report["counts"]
    return (f"{files['images']} images + {files['videos']} videos ({files['other_files_ignored']} other files "
            f"ignored), {report['frames_read']} frames read → {report['crops_written']} crops in "
            f"{report['output_dir']} in {report['seconds']} s\n"
            + ", ".join(f"{reason} {count}" for reason, count in counts.items())
            + f" (details: {Path(report['output_dir']) / REPORT_FILENAME})")


EPILOG = """examples:
  # shared real photos, subjects (and dataset/expression groups) from their manifest, 2 processes
  python -m training.prepare ../shared/data/faces --output-dir build/faces_real \\
      --subjects-csv ../shared/data/faces/manifest.csv --workers 2
  # FaceForensics++-style folder with real/ and fake/ videos, 16 frames each, the video id as subject
  python -m training.prepare ff_videos/ --output-dir build/ff --frames-per-video 16 \\
      --subject-regex '(?P<subject>\\d{3})(_\\d{3})?\\.mp4$'
  # Kaggle real/fake photos, wider margin, every face of group photos
  python -m training.prepare kaggle/ --output-dir build/kaggle --set margin=0.4 --multi-face all
  # turned and tilted faces too: the MTCNN detector (the exported model is then served with it)
  python -m training.prepare kaggle/ --output-dir build/kaggle_mtcnn --set detector=mtcnn --set min_confidence=0.9
then train on the manifest:  python -m training.train --dataset OUT/manifest.csv --output-dir build/runs/r1

multi-face policies (--multi-face):
""" + "\n".join(f"  {name}: {text}" for name, text in MULTI_FACE_POLICIES.items()) + f"""
face settings (--set KEY=VALUE): {', '.join(f'{k}={v}' for k, v in FaceConfig().to_dict().items())}
  detector: {' or '.join(DETECTORS)} (docs/FACE_DETECTION.md); cascade, scale_factor and min_neighbors are haar's,
  min_confidence is mtcnn's"""


def parse_args(argv: list[str] | None = None) -> PrepareConfig:
    """Command line → PrepareConfig; invalid values end with a usage message naming them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="folder of photos/videos (real/ and fake/ inside give labels)")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder for crops and manifest.csv")
    parser.add_argument("--label", choices=CLASS_NAMES, default="real",
                        help="label of every file when SOURCE has no real/ or fake/ folder (default real)")
    parser.add_argument("--subject-regex", help="regex on the path relative to SOURCE; group 'subject' or 1 = person")
    parser.add_argument("--subjects-csv", type=Path,
                        help="CSV with path,subject (paths relative to SOURCE); extra columns are copied")
    parser.add_argument("--multi-face", choices=sorted(MULTI_FACE_POLICIES), default="largest",
                        help="what to write for an image with several faces (default largest; see below)")
    parser.add_argument("--frames-per-video", type=int, default=PrepareConfig.frames_per_video,
                        help="frames sampled uniformly over each video (default 8)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="face setting, see below")
    parser.add_argument("--workers", type=int, default=1, help="processes detecting in parallel (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier prepare run")
    args = parser.parse_args(argv)
    try:
        return PrepareConfig(args.source, args.output_dir, args.label, args.subject_regex, args.subjects_csv,
                             args.multi_face, args.frames_per_video, face_config_from_pairs(args.set), args.workers,
                             args.overwrite)
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    config = parse_args(argv)
    try:
        report = prepare(config)
    except PrepareError as error:
        raise SystemExit(f"error: {error}") from error
    print(summary_line(report))


if __name__ == "__main__":
    main()
