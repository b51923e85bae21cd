"""Train/serve parity: the tensor the training dataset yields is the tensor the handler builds, bit for bit."""

import torch

from handler.metadata import ModelMetadata
from training.dataset import FaceImageDataset, scan_dataset


def test_training_dataset_and_handler_build_identical_tensors(handler_and_context, tiny_dataset, tiny_export):
    initialised_handler, _ = handler_and_context(1)
    metadata = ModelMetadata.load(tiny_export / "metadata.json")
    samples = scan_dataset(tiny_dataset).samples
    dataset = FaceImageDataset(samples, metadata.preprocessing)  # what training and validation feed the model
    rows = [{"body": sample.path.read_bytes()} for sample in samples]
    batch, errors = initialised_handler.preprocess(rows)  # what the served handler feeds the model
    assert errors == {}
    expected = torch.stack([dataset[index][0] for index in range(len(samples))])
    assert batch.shape == expected.shape == (len(samples), 4, *metadata.preprocessing.input_size)
    assert torch.equal(batch, expected)
