"""Training configuration: one YAML file of defaults, overridden from the command line.

Every run writes the fully resolved configuration next to its outputs, so a result can be
reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    Attributes:
        data_dir: folder with real/ and fake/ sub-folders of images.
        output_dir: where checkpoints, the export and the run report go.
        model_name: any timm model name; it is built with a 4-channel stem and 2 logits.
        input_size: side of the square model input in pixels.
        epochs: passes over the training split.
        batch_size: images per optimisation step.
        learning_rate: peak AdamW learning rate (cosine-annealed per step).
        weight_decay: AdamW weight decay.
        val_fraction: share of images held out, stratified by class, for model selection.
        seed: seeds the split, initialisation, shuffling and augmentation.
        class_weights: cross-entropy weights for (real, fake); raise fake's to penalise missed fakes.
        threshold: probability of fake at or above which a prediction is "fake" (exported).
        horizontal_flip: mirror training images at random.
        num_workers: DataLoader worker processes (0 decodes in the training process).
        device: "auto" (CUDA, then MPS, then CPU), or an explicit torch device string.
        channels_last: train in NHWC memory layout (faster convolutions on CPU and GPU).
        export_tolerance: largest |TorchScript - eager| logit difference accepted at export.

    """

    data_dir: Path
    output_dir: Path
    model_name: str = "resnet18"
    input_size: int = 128
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    class_weights: tuple[float, float] = (1.0, 1.0)
    threshold: float = 0.5
    horizontal_flip: bool = True
    num_workers: int = 0
    device: str = "auto"
    channels_last: bool = True
    export_tolerance: float = 1e-4

    def to_dict(self) -> dict[str, Any]:
        """YAML/JSON-friendly form."""
        values = dataclasses.asdict(self)
        values["data_dir"] = str(self.data_dir)
        values["output_dir"] = str(self.output_dir)
        values["class_weights"] = list(self.class_weights)
        return values


FIELD_NAMES = {f.name for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    if name in ("data_dir", "output_dir"):
        return Path(value)
    if name == "class_weights":
        weights = tuple(float(w) for w in (value.split(",") if isinstance(value, str) else value))
        if len(weights) != 2:
            raise ValueError(f"class_weights needs two numbers (real, fake), got {value!r}")
        return weights
    default = TrainConfig.__dataclass_fields__[name].default
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    if isinstance(default, (int, float, str)) and not isinstance(value, type(default)):
        return type(default)(value)
    return value


def load_config(path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Reads the YAML file (if any), applies overrides (None values are ignored), validates names.

    Raises:
        ValueError: an unknown key, naming the file it came from and the keys that exist.

    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(yaml.safe_load(Path(path).read_text()) or {})
    values.update({key: value for key, value in overrides.items() if value is not None})
    unknown = set(values) - FIELD_NAMES
    if unknown:
        source = f" in {path}" if path else ""
        raise ValueError(f"unknown training setting(s) {sorted(unknown)}{source}; known: {sorted(FIELD_NAMES)}")
    missing = [name for name in ("data_dir", "output_dir") if name not in values]
    if missing:
        raise ValueError(f"missing required setting(s) {missing}: pass --data-dir/--output-dir or set them in YAML")
    return TrainConfig(**{name: _coerce(name, value) for name, value in values.items()})


def save_config(config: TrainConfig, path: Path) -> None:
    """Writes the resolved configuration as YAML."""
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
