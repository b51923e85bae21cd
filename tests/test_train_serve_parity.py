"""Train/serve parity: the tensor the training dataset yields is the tensor the handler builds, bit for bit."""

import json

import numpy as np
import pytest
import torch

from handler.metadata import ModelMetadata
from training.dataset import FaceImageDataset, scan_dataset
from training.metrics import classification_metrics
from training.splits import split_dataset


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


def test_served_scores_reproduce_the_reported_test_metrics(handler_and_context, tiny_dataset, tiny_training):
    """What the report states about the test split is what the handler serves, calibration and threshold included."""
    report = json.loads(tiny_training.report_path.read_text())
    config = report["config"]
    split = split_dataset(scan_dataset(tiny_dataset).samples, config["val_fraction"], config["test_fraction"],
                          config["seed"])  # the split is a pure function of the data and the seed
    assert len(split.test) == report["evaluation"]["images"]
    handler, context = handler_and_context(len(split.test))
    responses = handler.handle([{"body": sample.path.read_bytes()} for sample in split.test], context)
    served = np.array([response["probability_fake"] for response in responses])
    labels = np.array([sample.label for sample in split.test])
    assert {response["threshold"] for response in responses} == {report["threshold"]["value"]}
    measured = classification_metrics(labels, served, report["threshold"]["value"])
    reported = report["evaluation"]["calibrated"]
    assert measured["confusion_matrix"] == reported["confusion_matrix"]
    for name in ("roc_auc", "accuracy", "f1", "loss"):
        assert measured[name] == pytest.approx(reported[name], abs=1e-4), name  # responses round to 6 digits
