"""The contract between an exported model and the code that serves it: metadata.json.

Training writes it next to the TorchScript file; the handler reads input size, normalisation,
class order and threshold from it, so none of those is duplicated as a constant in serving code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handler.faces import FaceConfig
from handler.forensics import PreprocessConfig

METADATA_FILENAME = "metadata.json"
MODEL_FILENAME = "model.torchscript.pt"
# The explain-capable twin of MODEL_FILENAME (same weights; forward(x) returns (logits, last feature map)), written
# by training/export.py when the backbone splits into forward_features/forward_head; handler/explain.py runs Grad-CAM
# on it. TorchScript hides a traced model's activations, so they have to be an output of their own.
EXPLAIN_FILENAME = "model.explain.pt"
METRICS_FILENAME = "metrics.json"  # the run's measured quality, carried into the .mar for `inspect`
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelMetadata:
    """What a served model needs to know about itself.

    Attributes:
        architecture: timm model name the weights belong to.
        class_names: output index → label; the handler looks up "fake" by name, never by position.
        threshold: probability of fake at or above which the label is "fake".
        preprocessing: how to build the input tensor (see handler.forensics).
        training: metrics and facts of the run that produced the weights (informational).
        faces: how the training images were cut around faces (handler.faces), or None for a model trained on
            whole images. A face model must be served on faces cut the same way, so the crop margin travels here.
        explain: what export said about explanations: {"file": EXPLAIN_FILENAME, "method": "grad-cam", "layer":
            the module whose activations Grad-CAM weighs} when it wrote the explain model, {"file": None,
            "reason": why not} when it could not, None for models exported before explanations existed.

    """

    architecture: str
    class_names: tuple[str, ...] = ("real", "fake")
    threshold: float = 0.5
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)
    training: dict[str, Any] = field(default_factory=dict)
    faces: FaceConfig | None = None
    explain: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def fake_index(self) -> int:
        """Index of the "fake" logit."""
        return self.class_names.index("fake")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "schema_version": self.schema_version,
            "architecture": self.architecture,
            "class_names": list(self.class_names),
            "threshold": self.threshold,
            "preprocessing": self.preprocessing.to_dict(),
            "training": self.training,
            "faces": None if self.faces is None else self.faces.to_dict(),
            **({} if self.explain is None else {"explain": self.explain}),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelMetadata:
        """Parses metadata.json's content, refusing files written by an incompatible schema."""
        version = values.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"metadata schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
        class_names = tuple(values["class_names"])
        if sorted(class_names) != ["fake", "real"]:
            raise ValueError(f"class_names must be 'real' and 'fake', got {list(class_names)}")
        return cls(
            architecture=values["architecture"],
            class_names=class_names,
            threshold=float(values["threshold"]),
            preprocessing=PreprocessConfig.from_dict(values["preprocessing"]),
            training=dict(values.get("training", {})),
            faces=FaceConfig.from_dict(values["faces"]) if values.get("faces") else None,
            explain=dict(values["explain"]) if isinstance(values.get("explain"), dict) else None,
        )

    def save(self, path: Path) -> None:
        """Writes the JSON file."""
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> ModelMetadata:
        """Reads the JSON file."""
        return cls.from_dict(json.loads(path.read_text()))
