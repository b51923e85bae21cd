"""training/prepare.py on real face photos (read in place through symlinks) and generated images and videos."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from handler.faces import FaceBox, FaceConfig, crop_face, detect_faces
from handler.forensics import decode_rgb
from tests.shared_faces import face_photo
from training import prepare as prepare_module
from training.dataset import scan_dataset
from training.prepare import (
    FACES_FILENAME,
    MANIFEST_COLUMNS,
    PrepareConfig,
    PrepareError,
    choose_faces,
    derive_subject,
    face_config_from_pairs,
    main,
    plan_output_stems,
    prepare,
    read_face_config,
    read_video_frames,
    sample_frame_indices,
)

PHOTOS = ("london/L001_neutral.jpg", "london/L001_smiling.jpg", "london/L002_neutral.jpg", "amfd/A1001_neutral.jpg")
MARGIN = 0.25  # not the default, so the tests see that the configured margin is the one used
VIDEO_FRAMES, VIDEO_SAMPLES = 12, 4


def link(target: Path, source: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)
    return target


def small_rgb(name: str, side: int) -> np.ndarray:
    return cv2.resize(decode_rgb(face_photo(name).read_bytes()), (side, side), interpolation=cv2.INTER_AREA)


def write_pair(path: Path) -> Path:
    """Two different people side by side: two faces of about the same size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.hstack([small_rgb(PHOTOS[0], 384), small_rgb(PHOTOS[3], 384)])).save(path)
    return path


def write_video(path: Path) -> Path:
    """An MJPG .avi whose frames show three people in turn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (256, 256))
    assert writer.isOpened()
    for index in range(VIDEO_FRAMES):
        writer.write(cv2.cvtColor(small_rgb(PHOTOS[index % 3], 256), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_manifest(output: Path) -> list[dict[str, str]]:
    with (output / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Real/ and FAKE/ folders (letter case as found in the wild) at several depths, with problem files."""
    root = tmp_path_factory.mktemp("prepare_source")
    link(root / "Real" / "L001_neutral.jpg", face_photo(PHOTOS[0]))
    link(root / "Real" / "people" / "L001_smiling.jpg", face_photo(PHOTOS[1]))
    link(root / "Real" / "people" / "L002_neutral.jpg", face_photo(PHOTOS[2]))
    link(root / "FAKE" / "x" / "y" / "A1001_neutral.jpg", face_photo(PHOTOS[3]))
    Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(root / "Real" / "blank.png")
    write_pair(root / "FAKE" / "pair.png")
    write_video(root / "FAKE" / "clip.avi")
    (root / "FAKE" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    (root / "Real" / "notes.txt").write_text("not an image")
    link(root / "stray.jpg", face_photo(PHOTOS[0]))  # outside real/ and fake/: not part of the dataset
    subjects = root.parent / "subjects.csv"
    with subjects.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "subject", "dataset", "expression", "split", "label"])
        for relative, person, expression in [("Real/L001_neutral.jpg", "L001", "neutral"),
                                             ("Real/people/L001_smiling.jpg", "L001", "smiling"),
                                             ("./Real/people/L002_neutral.jpg", "L002", "neutral"),
                                             ("FAKE/x/y/A1001_neutral.jpg", "A1001", "neutral")]:
            writer.writerow([relative, person, relative.split("/")[-1][0], expression, "test", "fake"])
    return root


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory) -> tuple[PrepareConfig, dict]:
    output = tmp_path_factory.mktemp("prepared") / "out"
    config = PrepareConfig(source, output, subjects_csv=source.parent / "subjects.csv",
                           frames_per_video=VIDEO_SAMPLES, faces=FaceConfig(margin=MARGIN))
    return config, prepare(config)


def test_labels_come_from_real_and_fake_folders_at_any_depth(prepared):
    config, _ = prepared
    rows = {row["source"]: row for row in read_manifest(config.output_dir)}
    assert rows["Real/people/L002_neutral.jpg"]["path"] == "real/people/L002_neutral.png"
    assert rows["FAKE/x/y/A1001_neutral.jpg"]["path"] == "fake/x/y/A1001_neutral.png"
    assert {row["label"] for source, row in rows.items() if source.startswith("Real/")} == {"real"}
    assert {row["label"] for source, row in rows.items() if source.startswith("FAKE/")} == {"fake"}
    assert "stray.jpg" not in rows


def test_manifest_columns_and_subjects_from_csv(prepared):
    config, report = prepared
    with (config.output_dir / "manifest.csv").open(newline="") as handle:
        header = next(csv.reader(handle))
    assert header == [*MANIFEST_COLUMNS, "dataset", "expression"]  # split and label of the CSV are not copied
    rows = {row["source"]: row for row in read_manifest(config.output_dir)}
    assert rows["Real/people/L001_smiling.jpg"]["subject"] == "L001"
    assert rows["Real/people/L001_smiling.jpg"]["expression"] == "smiling"
    assert rows["Real/people/L002_neutral.jpg"]["subject"] == "L002"  # "./" in the CSV path is normalised
    assert rows["FAKE/x/y/A1001_neutral.jpg"]["label"] == "fake"  # the folder decides, not the CSV's label
    assert rows["FAKE/pair.png"]["subject"] == "" and rows["FAKE/pair.png"]["dataset"] == ""
    assert sorted(report["problems"]["no_subject"]) == ["FAKE/broken.jpg", "FAKE/pair.png", "Real/blank.png"]
    assert report["counts"]["no_subject"] == 3


def test_crops_are_bit_identical_to_crop_face_on_the_decoded_source(prepared):
    config, _ = prepared
    rows = [row for row in read_manifest(config.output_dir) if row["frame"] == ""]
    assert len(rows) == 5  # four portraits and the largest face of the pair
    for row in rows:
        box = FaceBox(*(int(row[key]) for key in ("face_x", "face_y", "face_width", "face_height")))
        expected = crop_face(decode_rgb((config.source / row["source"]).read_bytes()), box, MARGIN)
        written = decode_rgb((config.output_dir / row["path"]).read_bytes())
        assert written.shape == expected.shape and np.array_equal(written, expected), row["path"]
        assert expected.shape[0] > 128  # written at the crop's own resolution, not resized


def test_video_frames_are_sampled_uniformly_and_share_the_video_as_subject(prepared):
    config, report = prepared
    rows = [row for row in read_manifest(config.output_dir) if row["source"] == "FAKE/clip.avi"]
    assert [int(row["frame"]) for row in rows] == sample_frame_indices(VIDEO_FRAMES, VIDEO_SAMPLES) == [1, 4, 7, 10]
    assert {row["subject"] for row in rows} == {"FAKE/clip.avi"}
    assert rows[0]["path"] == "fake/clip_f000001.png"
    frames = dict(read_video_frames(config.source / "FAKE" / "clip.avi", VIDEO_SAMPLES))
    for row in rows:  # the frame crop keeps RGB order and every pixel
        box = FaceBox(*(int(row[key]) for key in ("face_x", "face_y", "face_width", "face_height")))
        assert np.array_equal(decode_rgb((config.output_dir / row["path"]).read_bytes()),
                              crop_face(frames[int(row["frame"])], box, MARGIN))
    assert report["files"] == {"images": 7, "videos": 1, "other_files_ignored": 1}
    assert report["frames_read"] == 6 + VIDEO_SAMPLES  # the broken file gives no frame


def test_unreadable_and_faceless_files_are_reported_not_fatal(prepared):
    config, report = prepared
    assert report["counts"]["unreadable"] == 1 and report["problems"]["unreadable"][0].startswith("FAKE/broken.jpg: ")
    assert report["problems"]["no_face"] == ["Real/blank.png"]
    assert report["problems"]["multiple_faces"] == ["FAKE/pair.png (2 faces)"]
    assert report["crops_written"] == len(read_manifest(config.output_dir)) == 5 + VIDEO_SAMPLES
    assert json.loads((config.output_dir / "prepare_report.json").read_text())["counts"] == report["counts"]


def test_faces_json_round_trips_through_read_face_config(prepared, tmp_path):
    config, _ = prepared
    assert json.loads((config.output_dir / FACES_FILENAME).read_text())["schema_version"] == 1
    assert read_face_config(config.output_dir) == FaceConfig(margin=MARGIN)
    assert read_face_config(config.output_dir / "manifest.csv") == FaceConfig(margin=MARGIN)
    assert read_face_config(tmp_path) is None
    (tmp_path / FACES_FILENAME).write_text(json.dumps({"schema_version": 1, "faces": {"margn": 0.3}}))
    with pytest.raises(PrepareError, match="margn"):
        read_face_config(tmp_path)


def test_the_trainer_reads_the_manifest(prepared):
    config, _ = prepared
    scanned = scan_dataset(config.output_dir / "manifest.csv", required_classes=("real",))
    assert len(scanned.samples) == 5 + VIDEO_SAMPLES and scanned.skipped == []
    assert {sample.subject for sample in scanned.samples} == {"L001", "L002", "A1001", "FAKE/clip.avi", None}
    assert all(sample.split is None for sample in scanned.samples)


@pytest.mark.parametrize(("policy", "names"), [
    ("largest", ["fake/pair.png"]), ("all", ["fake/pair_face0.png", "fake/pair_face1.png"]), ("skip", []),
])
def test_multi_face_policies(policy, names, tmp_path):
    write_pair(tmp_path / "src" / "pair.png")
    report = prepare(PrepareConfig(tmp_path / "src", tmp_path / "out", label="fake", multi_face=policy))
    assert report["problems"]["multiple_faces"] == ["pair.png (2 faces)"]
    rows = read_manifest(tmp_path / "out")
    assert [row["path"] for row in rows] == names
    assert [row["face_index"] for row in rows] == [str(index) for index in range(len(names))]
    if rows:
        largest = int(rows[0]["face_width"]) * int(rows[0]["face_height"])
        assert all(largest >= int(row["face_width"]) * int(row["face_height"]) for row in rows)


def test_label_option_labels_a_plain_folder_and_the_cli_prints_a_summary(tmp_path, capsys):
    link(tmp_path / "src" / "a" / "L002_neutral.jpg", face_photo(PHOTOS[2]))
    main([str(tmp_path / "src"), "--output-dir", str(tmp_path / "out"), "--label", "fake", "--set", "margin=0.4",
          "--subject-regex", r"(?P<subject>L\d+)_"])
    assert "1 images + 0 videos" in capsys.readouterr().out
    [row] = read_manifest(tmp_path / "out")
    assert (row["path"], row["label"], row["subject"]) == ("fake/a/L002_neutral.png", "fake", "L002")
    assert read_face_config(tmp_path / "out").margin == 0.4


def test_a_non_empty_output_is_refused_unless_overwrite(tmp_path):
    link(tmp_path / "src" / "L001.jpg", face_photo(PHOTOS[0]))
    config = PrepareConfig(tmp_path / "src", tmp_path / "out")
    (tmp_path / "out" / "real").mkdir(parents=True)
    (tmp_path / "out" / "real" / "stale.png").write_bytes(b"old")
    (tmp_path / "out" / "notes.md").write_text("mine")
    with pytest.raises(PrepareError, match="not empty.*--overwrite"):
        prepare(config)
    prepare(PrepareConfig(tmp_path / "src", tmp_path / "out", overwrite=True))
    assert sorted(p.name for p in (tmp_path / "out" / "real").iterdir()) == ["L001.png"]
    assert (tmp_path / "out" / "notes.md").read_text() == "mine"  # only what prepare writes is cleared
    with pytest.raises(PrepareError, match="overlaps"):
        prepare(PrepareConfig(tmp_path / "src", tmp_path / "src" / "out", overwrite=True))


@pytest.mark.slow  # each spawned worker imports torch (through handler.forensics): seconds on a busy machine
def test_a_process_pool_writes_the_same_manifest(tmp_path):
    for name in PHOTOS[:3]:
        link(tmp_path / "src" / name, face_photo(name))
    for workers in (1, 2):
        prepare(PrepareConfig(tmp_path / "src", tmp_path / f"out{workers}", workers=workers,
                              subject_regex=r"([LA]\d+)_"))
    assert read_manifest(tmp_path / "out2") == read_manifest(tmp_path / "out1")
    assert [row["subject"] for row in read_manifest(tmp_path / "out1")] == ["L001", "L001", "L002"]


def test_video_with_unknown_frame_count_is_read_through(source, monkeypatch):
    expected = [index for index, _ in read_video_frames(source / "FAKE" / "clip.avi", VIDEO_SAMPLES)]
    monkeypatch.setattr(prepare_module, "_reported_frame_count", lambda capture: -1)
    assert [index for index, _ in read_video_frames(source / "FAKE" / "clip.avi", VIDEO_SAMPLES)] == expected


@pytest.mark.parametrize(("pattern", "relative", "subject"), [
    (r"id(?P<subject>\d+)_(\d+)", "fake/id7_003.mp4", "7"),  # the named group wins over group 1
    (r"(\w+)/(\d+)", "real/L001/1.jpg", "L001"),  # group 1
    (r"L\d{3}", "real/L001_neutral.jpg", "L001"),  # the whole match
    (r"L\d{3}", "real/A1001.jpg", ""),  # no match: unknown
    (r"L\d{3}", "real/clip.mp4", "real/clip.mp4"),  # a video is its own subject when nothing else says
])
def test_derive_subject_from_regex(pattern, relative, subject):
    assert derive_subject(relative, relative.endswith(".mp4"), None, re.compile(pattern)) == subject


def test_derive_subject_prefers_the_csv():
    subjects = {"real/a.jpg": "p1"}
    assert derive_subject("real/a.jpg", False, subjects, re.compile(r"a")) == "p1"
    assert derive_subject("real/b.jpg", False, subjects, None) == ""


def test_plan_output_stems_keeps_names_distinct():
    items = [("real", "a.jpg"), ("real", "a.png"), ("fake", "a.jpg"), ("real", "sub/b.webp")]
    assert plan_output_stems(items) == ["real/a_jpg", "real/a_png", "fake/a", "real/sub/b"]


def test_sample_frame_indices_and_choose_faces():
    assert sample_frame_indices(3, 8) == [0, 1, 2] and sample_frame_indices(0, 8) == []
    assert len(set(sample_frame_indices(9, 8))) == 8
    boxes = [FaceBox(0, 0, 90, 90), FaceBox(100, 0, 50, 50)]
    assert choose_faces(boxes, "largest") == [(0, boxes[0])]
    assert choose_faces(boxes[:1], "skip") == [(0, boxes[0])]


def test_face_settings_are_typed_and_validated():
    assert face_config_from_pairs(["margin=0.4", "min_neighbors=3"]) == FaceConfig(margin=0.4, min_neighbors=3)
    with pytest.raises(ValueError, match="margn"):
        face_config_from_pairs(["margn=0.4"])
    with pytest.raises(ValueError, match="min_neighbors.*int"):
        face_config_from_pairs(["min_neighbors=many"])
    with pytest.raises(ValueError, match="margin"):
        face_config_from_pairs(["margin=5"])
    with pytest.raises(SystemExit):
        main(["src", "--output-dir", "out", "--set", "margin"])


def test_the_detector_is_a_face_setting_and_crops_are_cut_with_it(tmp_path):
    assert face_config_from_pairs(["detector=mtcnn", "min_confidence=0.95"]) == FaceConfig(detector="mtcnn",
                                                                                          min_confidence=0.95)
    with pytest.raises(ValueError, match=r"face setting 'detector' must be one of \['haar', 'mtcnn'\]"):
        face_config_from_pairs(["detector=dlib"])
    link(tmp_path / "src" / "real" / "L001.jpg", face_photo(PHOTOS[0]))
    main([str(tmp_path / "src"), "--output-dir", str(tmp_path / "out"), "--set", "detector=mtcnn"])
    assert read_face_config(tmp_path / "out") == FaceConfig(detector="mtcnn")  # what the export will serve with
    [row] = read_manifest(tmp_path / "out")
    rgb = decode_rgb(face_photo(PHOTOS[0]).read_bytes())
    [mtcnn_box], [haar_box] = detect_faces(rgb, FaceConfig(detector="mtcnn")), detect_faces(rgb, FaceConfig())
    written = FaceBox(*(int(row[key]) for key in ("face_x", "face_y", "face_width", "face_height")))
    assert written == mtcnn_box != haar_box


def test_the_photos_used_have_one_face_each():
    # Guards the fixtures: the counts asserted above rely on the detector finding each portrait once.
    assert [len(detect_faces(decode_rgb(face_photo(name).read_bytes()), FaceConfig())) for name in PHOTOS] == [1] * 4


def test_unusable_sources_are_refused_with_the_reason(tmp_path):
    (tmp_path / "empty" / "real").mkdir(parents=True)
    (tmp_path / "empty" / "real" / "notes.txt").write_text("no pictures")
    with pytest.raises(PrepareError, match="no image or video"):
        prepare(PrepareConfig(tmp_path / "empty", tmp_path / "out"))
    link(tmp_path / "src" / "L001.jpg", face_photo(PHOTOS[0]))
    (tmp_path / "bad.csv").write_text("file,person\nL001.jpg,p1\n")
    with pytest.raises(PrepareError, match="needs columns path,subject"):
        prepare(PrepareConfig(tmp_path / "src", tmp_path / "out", subjects_csv=tmp_path / "bad.csv"))
    assert not (tmp_path / "out").exists()  # refused before anything was written
