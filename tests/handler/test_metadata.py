import pytest

from handler.forensics import PreprocessConfig
from handler.metadata import ModelMetadata


def test_round_trip_through_file(tmp_path):
    metadata = ModelMetadata(architecture="resnet18", class_names=("fake", "real"), threshold=0.4,
                             preprocessing=PreprocessConfig(input_size=(96, 96)), training={"auc": 0.9})
    metadata.save(tmp_path / "metadata.json")
    loaded = ModelMetadata.load(tmp_path / "metadata.json")
    assert loaded == metadata
    assert loaded.fake_index == 0


def test_refuses_other_schema_and_classes():
    good = ModelMetadata(architecture="resnet18").to_dict()
    with pytest.raises(ValueError, match="schema_version"):
        ModelMetadata.from_dict({**good, "schema_version": 99})
    with pytest.raises(ValueError, match="class_names"):
        ModelMetadata.from_dict({**good, "class_names": ["cat", "dog"]})
