import json
import random
from dataclasses import replace

import pytest

from tests.training.dataset_helpers import SPLITS, subjects_by_split
from training.dataset import DatasetError, scan_dataset
from training.splits import DatasetSplit, assert_subject_disjoint, split_dataset


def test_subject_split_keeps_each_subject_in_one_split(subject_manifest):
    samples = scan_dataset(subject_manifest).samples
    split = split_dataset(samples, val_fraction=0.1, test_fraction=0.1, seed=0)
    assert split.method == "subject"
    assert_subject_disjoint(split)
    by_split = subjects_by_split(split)
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                or by_split["val"] & by_split["test"])
    assert sum(len(subjects) for subjects in by_split.values()) == 40
    assert 84 <= len(split.train) <= 108 and 6 <= len(split.val) <= 18 and 6 <= len(split.test) <= 18
    for part in split.parts().values():
        assert 0.3 <= sum(s.label for s in part) / len(part) <= 0.7  # the 50:50 class ratio, roughly

    summary = json.loads(json.dumps(split.summary()))
    assert summary["method"] == "subject" and summary["images"] == 120
    assert sum(summary["splits"][name]["subjects"] for name in SPLITS) == 40
    assert summary["splits"]["val"]["real"] + summary["splits"]["val"]["fake"] == len(split.val)


def test_a_plain_stratified_split_of_the_same_data_would_leak_subjects(subject_manifest):
    samples = scan_dataset(subject_manifest).samples
    anonymous = split_dataset([replace(s, subject=None) for s in samples], seed=0)
    assert anonymous.method == "stratified"
    subject = {s.path: s.subject for s in samples}
    leaky = DatasetSplit(*([replace(s, subject=subject[s.path]) for s in part] for part in anonymous.parts().values()),
                         method=anonymous.method)
    with pytest.raises(DatasetError, match=r"subject\(s\) appear in more than one split \('person-"):
        assert_subject_disjoint(leaky)


def test_split_is_deterministic_and_independent_of_input_order(subject_manifest, tiny_dataset):
    for samples in (scan_dataset(subject_manifest).samples, scan_dataset(tiny_dataset).samples):
        reference = split_dataset(samples, seed=3)
        shuffled = list(samples)
        random.Random(1).shuffle(shuffled)
        assert split_dataset(shuffled, seed=3) == reference
        assert split_dataset(list(reversed(samples)), seed=3) == reference
        assert split_dataset(samples, seed=4) != reference


def test_stratified_fallback_without_subjects(tiny_dataset):
    split = split_dataset(scan_dataset(tiny_dataset).samples, val_fraction=0.1, test_fraction=0.1)
    assert split.method == "stratified"
    assert [len(split.train), len(split.val), len(split.test)] == [20, 2, 2]
    assert all(sorted(s.label for s in part) == [0, 1] for part in (split.val, split.test))
    assert len({s.path for part in split.parts().values() for s in part}) == 24
    assert split.summary()["splits"]["train"]["subjects"] is None


def test_zero_test_fraction_leaves_test_empty(subject_manifest):
    split = split_dataset(scan_dataset(subject_manifest).samples, val_fraction=0.2, test_fraction=0.0)
    assert split.test == [] and 18 <= len(split.val) <= 30 and len(split.train) + len(split.val) == 120
    assert_subject_disjoint(split)


def test_predefined_manifest_splits_are_used_as_given(subject_manifest):
    samples = scan_dataset(subject_manifest).samples
    assign = {f"person-{i:02d}": ("train", "val", "test", "train")[i % 4] for i in range(40)}
    predefined = [replace(s, split=assign[s.subject]) for s in samples]
    split = split_dataset(predefined, val_fraction=0.1, test_fraction=0.1)
    assert split.method == "predefined"
    assert all(s.split == name for name, part in split.parts().items() for s in part)
    assert [len(split.train), len(split.val), len(split.test)] == [60, 30, 30]

    mixed = predefined[:-1] + [replace(predefined[-1], split=None)]
    with pytest.raises(DatasetError, match=r"119 of 120 images have a split and the others not"):
        split_dataset(mixed)


def test_predefined_splits_sharing_a_subject_fail_the_disjointness_check(subject_manifest):
    samples = scan_dataset(subject_manifest).samples
    split = split_dataset([replace(s, split="val" if i % 5 == 0 else "train") for i, s in enumerate(samples)],
                          test_fraction=0.0)
    with pytest.raises(DatasetError, match="appear in more than one split"):
        assert_subject_disjoint(split)


def test_a_split_lacking_a_class_is_refused_naming_split_and_class(tiny_dataset):
    samples = scan_dataset(tiny_dataset).samples
    one_faker = [replace(s, subject="the-faker" if s.label else f"person-{i}") for i, s in enumerate(samples)]
    with pytest.raises(DatasetError, match=r"the (train|val|test) split \(subject\) has no fake image"):
        split_dataset(one_faker)


def test_fractions_out_of_range_are_refused(tiny_dataset):
    samples = scan_dataset(tiny_dataset).samples
    for val, test in ((0.0, 0.1), (0.5, 0.5), (0.1, -0.1)):
        with pytest.raises(ValueError, match="val_fraction"):
            split_dataset(samples, val, test)


def test_real_only_samples_split_by_subject_when_fakes_come_later(subject_manifest):
    reals = [s for s in scan_dataset(subject_manifest).samples if s.label == 0]
    with pytest.raises(DatasetError, match=r"the train split \(subject\) has no fake image"):
        split_dataset(reals, seed=0)
    split = split_dataset(reals, val_fraction=0.2, test_fraction=0.2, seed=0, classes=("real",))
    assert split.method == "subject" and all(split.parts().values())
    assert_subject_disjoint(split)


def test_the_split_manifest_lists_every_file_with_its_split_and_groups(subject_manifest, tmp_path):
    import csv

    from training.pseudo_fakes import split_with_twins
    from training.sbi import SbiConfig
    from training.splits import write_split_manifest

    source = tmp_path / "with_groups.csv"
    with subject_manifest.open() as handle:
        rows = list(csv.DictReader(handle))
    with source.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "label", "subject", "dataset"])
        writer.writeheader()
        for index, row in enumerate(rows):
            writer.writerow({**row, "path": str(subject_manifest.parent / row["path"]), "dataset": f"d{index % 2}"})
    samples = scan_dataset(source).samples
    split = split_with_twins(split_dataset(samples, seed=0), SbiConfig(enabled=True), seed=0)
    written = write_split_manifest(split, tmp_path / "splits.csv", source)
    with written.open() as handle:
        listed = list(csv.DictReader(handle))
    assert list(listed[0]) == ["path", "label", "subject", "split", "dataset"]
    assert len(listed) == len(samples)  # the twins are made again by evaluate --sbi, not listed
    expected = {str(s.path.resolve()): (name, ("real", "fake")[s.label], s.subject)
                for name, part in split.parts().items() for s in part if not s.pseudo_fake}
    assert {row["path"]: (row["split"], row["label"], row["subject"]) for row in listed} == expected
    groups = {str((subject_manifest.parent / row["path"]).resolve()): f"d{index % 2}" for index, row in enumerate(rows)}
    assert all(row["dataset"] == groups[row["path"]] for row in listed)
    rescanned = scan_dataset(written)
    assert {s.path: s.split for s in rescanned.samples} == {s.path.resolve(): s.split or name for name, part in
                                                             split.parts().items() for s in part if not s.pseudo_fake}
