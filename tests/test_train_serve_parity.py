"""Train/serve parity: the tensor the training dataset yields is the tensor the handler builds, bit for bit."""

import shutil

import pytest
import torch
from ts.context import Context

from handler.deepfake_handler import DeepfakeHandler
from handler.metadata import ModelMetadata
from training.dataset import FaceImageDataset, scan_image_folder


@pytest.fixture
def initialised_handler(tiny_export, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_export, model_dir)
    handler = DeepfakeHandler()
    context = Context("deepfake", str(model_dir), {"model": {}}, 1, None, "0.12.0", model_yaml_config={})
    handler.initialize(context)
    return handler


def test_training_dataset_and_handler_build_identical_tensors(initialised_handler, tiny_dataset, tiny_export):
    metadata = ModelMetadata.load(tiny_export / "metadata.json")
    samples = scan_image_folder(tiny_dataset).samples
    dataset = FaceImageDataset(samples, metadata.preprocessing)  # what training and validation feed the model
    rows = [{"body": sample.path.read_bytes()} for sample in samples]
    batch, errors = initialised_handler.preprocess(rows)  # what the served handler feeds the model
    assert errors == {}
    expected = torch.stack([dataset[index][0] for index in range(len(samples))])
    assert batch.shape == expected.shape == (len(samples), 4, *metadata.preprocessing.input_size)
    assert torch.equal(batch, expected)
