import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from handler.forensics import PreprocessConfig, decode_rgb, model_input_from_bytes, model_input_from_rgb
from tests.training.dataset_helpers import SPLITS, images, write_csv
from training.augment import AugmentConfig
from training.dataset import LAYOUTS, DatasetError, FaceImageDataset, scan_dataset
from training.splits import split_dataset

# ---------------------------------------------------------------------------------------------------------------------
# Layouts


def test_folders_layout_is_detected_and_ignores_non_images(tiny_dataset):
    scanned = scan_dataset(tiny_dataset)
    assert scanned.layout == "folders"
    assert sorted(s.label for s in scanned.samples) == [0] * 12 + [1] * 12
    assert all(s.subject is None and s.split is None for s in scanned.samples)
    assert scanned.skipped == []  # manifest.csv and the stamp are not images, not "skipped"


def test_folders_layout_is_case_insensitive_and_recursive(tiny_dataset, tmp_path):
    shutil.copytree(tiny_dataset / "real", tmp_path / "REAL" / "camera1")
    shutil.copytree(tiny_dataset / "fake", tmp_path / "Fake")
    scanned = scan_dataset(tmp_path)
    assert scanned.layout == "folders" and len(scanned.samples) == 24
    assert {s.path.parent.name for s in scanned.samples if s.label == 0} == {"camera1"}


def make_split_folders(tiny_dataset: Path, root: Path, names: dict[str, str], sizes: dict[str, int]) -> None:
    """Distributes the tiny dataset's images over root/<split name>/{Real,Fake}/, `sizes` images per class each."""
    start = 0
    for split, folder in names.items():
        for class_name, folder_class in (("real", "Real"), ("fake", "FAKE")):
            (root / folder / folder_class).mkdir(parents=True)
            for path in images(tiny_dataset, class_name)[start:start + sizes[split]]:
                shutil.copyfile(path, root / folder / folder_class / path.name)
        start += sizes[split]


@pytest.mark.parametrize("names", [("Train", "Validation", "Test"), ("train", "val", "test"), ("training", "valid",
                                                                                                 "TESTING")])
def test_split_folders_layout_gives_predefined_splits(tiny_dataset, tmp_path, names):
    make_split_folders(tiny_dataset, tmp_path, dict(zip(("train", "val", "test"), names, strict=True)),
                       {"train": 8, "val": 2, "test": 2})
    scanned = scan_dataset(tmp_path)
    assert scanned.layout == "split_folders"
    split = split_dataset(scanned.samples, val_fraction=0.3, test_fraction=0.3)  # fractions do not apply
    assert split.method == "predefined"
    for name, part in split.parts().items():
        assert all(s.split == name and s.path.parts[-3] == names[SPLITS.index(name)] for s in part)
        assert sorted(s.label for s in part) == [0] * (len(part) // 2) + [1] * (len(part) // 2)
    assert [len(split.train), len(split.val), len(split.test)] == [16, 4, 4]



def test_split_folders_without_test_carve_test_out_of_train(tiny_dataset, tmp_path):
    make_split_folders(tiny_dataset, tmp_path, {"train": "Train", "val": "Validation"}, {"train": 10, "val": 2})
    scanned = scan_dataset(tmp_path)
    given = {name: {s.path for s in scanned.samples if s.split == name} for name in SPLITS}
    assert scanned.layout == "split_folders" and not given["test"]

    split = split_dataset(scanned.samples, val_fraction=0.1, test_fraction=0.1)
    assert split.method == "predefined+stratified"
    assert {s.path for s in split.val} == given["val"]  # the dataset's own validation split is kept as it is
    assert {s.path for s in split.test} <= given["train"] and {s.path for s in split.train} <= given["train"]
    assert not {s.path for s in split.test} & {s.path for s in split.train}
    assert sorted(s.label for s in split.test) == [0, 1]  # 10% of 24 images, both classes

    no_test = split_dataset(scanned.samples, val_fraction=0.1, test_fraction=0.0)
    assert no_test.method == "predefined" and no_test.test == [] and len(no_test.train) == 20


def test_split_folders_need_class_folders_in_each_split(tiny_dataset, tmp_path):
    make_split_folders(tiny_dataset, tmp_path, {"train": "Train", "val": "Validation"}, {"train": 10, "val": 2})
    shutil.rmtree(tmp_path / "Validation" / "FAKE")
    with pytest.raises(DatasetError, match=r"Validation has no 'fake/' folder"):
        scan_dataset(tmp_path)


def test_manifest_with_relative_and_absolute_paths(dataset_copy):
    real, fake = images(dataset_copy, "real"), images(dataset_copy, "fake")
    rows = [[f"real/{p.name}", "REAL", f"r{i}"] for i, p in enumerate(real[:6])]
    rows += [[str(p.resolve()), "0", ""] for p in real[6:]]  # absolute, no subject
    rows += [[f"./fake/{p.name}", "Fake", f"f{i}"] for i, p in enumerate(fake[:6])]
    rows += [[str(p.resolve()), "1", f"f{i}"] for i, p in enumerate(fake[6:])]
    manifest = write_csv(dataset_copy / "list.csv", ["Path", "label", "subject"], rows)

    scanned = scan_dataset(manifest)
    assert scanned.layout == "manifest" and scanned.skipped == []
    by_name = {s.path.name: s for s in scanned.samples}
    assert len(by_name) == 24
    assert {by_name[p.name].label for p in real} == {0} and {by_name[p.name].label for p in fake} == {1}
    assert by_name[real[0].name].subject == "r0" and by_name[real[7].name].subject is None
    assert all(s.path.is_file() for s in scanned.samples)


def test_manifest_bad_rows_are_skipped_with_their_row_numbers(dataset_copy):
    real = images(dataset_copy, "real")
    (dataset_copy / "real" / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * 100)
    rows = [[f"real/{p.name}", "real", "train"] for p in real[:-1]]  # rows 2-12
    rows += [[f"fake/{p.name}", "fake", "val"] for p in images(dataset_copy, "fake")]  # rows 13-24
    rows += [
        ["real/missing.jpg", "real", "train"],  # row 25
        [f"real/{real[-1].name}", "maybe", "train"],  # row 26
        [f"real/{real[-1].name}", "real", "holdout"],  # row 27
        ["", "real", "train"],  # row 28
        ["real/broken.jpg", "real", "train"],  # row 29
        [rows[0][0], "real", "test"],  # row 30: the same file again
    ]
    manifest = write_csv(dataset_copy / "manifest.csv", ["path", "label", "split"], rows)

    scanned = scan_dataset(manifest)
    assert len(scanned.samples) == 23
    reasons = [s.reason for s in scanned.skipped]
    assert len(reasons) == 6 and all(r.startswith("manifest.csv row ") for r in reasons)
    assert "row 25: file real/missing.jpg not found" in reasons[0]
    assert "row 26" in reasons[1] and "'maybe'" in reasons[1]
    assert "row 27" in reasons[2] and "'holdout'" in reasons[2]
    assert "row 28" in reasons[3] and "empty" in reasons[3]
    assert "row 29" in reasons[4] and "JPEG" in reasons[4] and scanned.skipped[4].path.name == "broken.jpg"
    assert "row 30" in reasons[5] and "row 2" in reasons[5]


def test_manifest_without_label_column_names_file_and_columns(dataset_copy):
    manifest = write_csv(dataset_copy / "bad.csv", ["path", "class"], [["real/real_00000.jpg", "real"]])
    with pytest.raises(DatasetError, match=r"bad\.csv has no 'label' column; found columns \['path', 'class'\]"):
        scan_dataset(manifest)


def test_one_class_manifest_is_refused_naming_the_csv(dataset_copy):
    manifest = write_csv(dataset_copy / "only_real.csv", ["path", "label"],
                         [[f"real/{p.name}", "real"] for p in images(dataset_copy, "real")])
    with pytest.raises(DatasetError, match=r"only_real\.csv has no readable 'fake' image"):
        scan_dataset(manifest)


def test_corrupt_and_empty_files_are_skipped_counted_and_named(dataset_copy):
    (dataset_copy / "fake" / "truncated.jpg").write_bytes((dataset_copy / "fake" / "fake_00000.jpg").read_bytes()[:300])
    (dataset_copy / "real" / "empty.png").write_bytes(b"")
    (dataset_copy / "real" / "text.jpg").write_text("not an image")
    scanned = scan_dataset(dataset_copy)
    assert len(scanned.samples) == 24
    assert sorted(s.path.name for s in scanned.skipped) == ["empty.png", "text.jpg", "truncated.jpg"]
    assert all(s.reason for s in scanned.skipped)


def test_a_class_without_readable_images_stops_at_once_naming_the_folder(dataset_copy):
    for path in (dataset_copy / "fake").glob("*.jpg"):
        path.write_bytes(b"broken")
    with pytest.raises(DatasetError, match=r"class 'fake' has no readable image in .*fake \(12 unreadable\)"):
        scan_dataset(dataset_copy)


def test_one_class_folder_is_refused_naming_the_folder(tmp_path):
    (tmp_path / "real").mkdir()
    for layout in ("auto", "folders"):
        with pytest.raises(DatasetError, match=rf"{tmp_path} has no 'fake/' folder; expected .*real/ and .*fake/"):
            scan_dataset(tmp_path, layout=layout)


def test_real_images_alone_are_a_dataset_when_fakes_are_made_later(dataset_copy):
    shutil.rmtree(dataset_copy / "fake")
    scanned = scan_dataset(dataset_copy, required_classes=("real",))
    assert scanned.layout == "folders" and len(scanned.samples) == 12 and {s.label for s in scanned.samples} == {0}
    manifest = write_csv(dataset_copy / "only_real.csv", ["path", "label"],
                         [[f"real/{p.name}", "real"] for p in images(dataset_copy, "real")])
    assert len(scan_dataset(manifest, required_classes=("real",)).samples) == 12
    for path in (dataset_copy / "real").glob("*.jpg"):
        path.write_bytes(b"broken")
    with pytest.raises(DatasetError, match=r"class 'real' has no readable image .* this run needs real images"):
        scan_dataset(dataset_copy, required_classes=("real",))
    with pytest.raises(ValueError, match="required_classes must be names in"):
        scan_dataset(dataset_copy, required_classes=("genuine",))


def test_unrecognised_source_lists_every_layout(tmp_path):
    with pytest.raises(DatasetError) as error:
        scan_dataset(tmp_path)
    assert all(f"{name}: {layout.description}" in str(error.value) for name, layout in LAYOUTS.items())
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="unknown dataset layout 'zip'"):
        scan_dataset(tmp_path, layout="zip")


# ---------------------------------------------------------------------------------------------------------------------
# Fingerprint


def test_fingerprint_follows_content_and_label_not_location(dataset_copy, tmp_path):
    before = scan_dataset(dataset_copy).fingerprint()
    assert scan_dataset(dataset_copy).fingerprint() == before
    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(dataset_copy, moved)
    assert scan_dataset(moved).fingerprint() == before

    target = dataset_copy / "real" / "real_00003.jpg"
    target.write_bytes((dataset_copy / "real" / "real_00004.jpg").read_bytes())
    assert scan_dataset(dataset_copy).fingerprint() != before


def test_manifest_fingerprint_covers_label_subject_and_split(dataset_copy, tmp_path):
    rows = [[f"{c}/{p.name}", c, p.stem, "train"] for c in ("real", "fake") for p in images(dataset_copy, c)]
    header = ["path", "label", "subject", "split"]

    def fingerprint(changed_rows: list[list[object]]) -> str:
        return scan_dataset(write_csv(dataset_copy / "m.csv", header, changed_rows)).fingerprint()

    before = fingerprint(rows)
    assert fingerprint(rows) == before
    assert fingerprint([[rows[0][0], "fake", *rows[0][2:]], *rows[1:]]) != before
    assert fingerprint([[*rows[0][:2], "someone", "train"], *rows[1:]]) != before
    assert fingerprint([[*rows[0][:3], "val"], *rows[1:]]) != before
    assert fingerprint(rows) == before
    shutil.copytree(dataset_copy, tmp_path / "moved")
    assert scan_dataset(tmp_path / "moved" / "m.csv").fingerprint() == before


# ---------------------------------------------------------------------------------------------------------------------
# Model inputs


def test_dataset_item_is_the_shared_preprocessing_output(tiny_dataset):
    config = PreprocessConfig(input_size=(64, 64))
    samples = scan_dataset(tiny_dataset).samples
    tensor, label = FaceImageDataset(samples, config)[13]
    assert label == samples[13].label == 1
    assert torch.equal(tensor, model_input_from_bytes(samples[13].path.read_bytes(), config))


def test_augmentation_runs_before_the_laplacian_channel(tiny_dataset):
    config = PreprocessConfig(input_size=(64, 64))
    sample = scan_dataset(tiny_dataset).samples[0]
    flipped = FaceImageDataset([sample], config, augment=lambda rgb: rgb[:, ::-1])[0][0]
    rgb = decode_rgb(sample.path.read_bytes())
    assert torch.equal(flipped, model_input_from_rgb(np.ascontiguousarray(rgb[:, ::-1]), config))
    assert not torch.equal(flipped, FaceImageDataset([sample], config)[0][0])

    with pytest.raises(TypeError, match="uint8 RGB"):
        FaceImageDataset([sample], config, augment=lambda rgb: rgb.astype(np.float32))[0]


def test_label_override_relabels_without_touching_samples(tiny_dataset):
    config = PreprocessConfig(input_size=(32, 32))
    samples = scan_dataset(tiny_dataset).samples[:4]
    flipped_labels = [1 - s.label for s in samples]
    dataset = FaceImageDataset(samples, config, labels=flipped_labels)
    assert [dataset[i][1] for i in range(4)] == flipped_labels
    assert torch.equal(dataset[2][0], FaceImageDataset(samples, config)[2][0])
    assert [s.label for s in samples] == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="3 labels for 4 samples"):
        FaceImageDataset(samples, config, labels=[0, 1, 0])



def test_blend_maps_mark_where_a_self_blend_was_pasted_and_nothing_on_other_images(tiny_dataset):
    from training.augment import build_augmenter
    from training.pseudo_fakes import PseudoFakeMaker, twin
    from training.sbi import SbiConfig

    config = PreprocessConfig(input_size=(64, 64))
    real = scan_dataset(tiny_dataset).samples[0]
    maker = PseudoFakeMaker(SbiConfig(enabled=True), crop_margin=0.3, fixed_seed=0)
    plain = FaceImageDataset([twin(real)], config, pseudo_fakes=maker)[0][0]
    for augment in (None, build_augmenter(AugmentConfig(), (64, 64))):
        dataset = FaceImageDataset([real, twin(real)], config, augment=augment, pseudo_fakes=maker,
                                   blend_maps="region")
        (_, real_label, real_map), (fake_tensor, fake_label, fake_map) = dataset[0], dataset[1]
        if augment is None:  # the map is extra: it changes nothing in the image
            assert torch.equal(fake_tensor, plain)
        assert (real_label, fake_label) == (0, 1)
        assert real_map.shape == fake_map.shape == (64, 64) and not real_map.any()
        assert fake_map.max() > 0.9 and fake_map.min() == 0.0  # pasted inside, untouched at the border
        corners = torch.stack([fake_map[:6, :6], fake_map[:6, -6:], fake_map[-6:, :6], fake_map[-6:, -6:]])
        assert fake_map[24:40, 24:40].mean() > 0.5 and corners.max() < 0.05
    with pytest.raises(ValueError, match="blend_map_target must be one of"):
        FaceImageDataset([real], config, pseudo_fakes=maker, blend_maps="seams")
