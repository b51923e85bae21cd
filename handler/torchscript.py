"""TorchScript loading (with only the deprecation warning of torch ≥ 2.10 silenced) and preparing for serving.

torch marks torch.jit.* deprecated (FutureWarning) but TorchServe's TorchScript path is what we
ship; the filter is narrow (that message, that category) and scoped to the calls that raise it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch


@contextmanager
def torchscript_deprecation_silenced() -> Iterator[None]:
    """Ignores torch's "`torch.jit.<name>` is deprecated" FutureWarnings inside the block, nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit\.\w+` is deprecated")
        yield


def load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """Loads a TorchScript file onto `device` in eval mode."""
    with torchscript_deprecation_silenced():
        return torch.jit.load(str(path), map_location=device).eval()


# How a loaded model is prepared for serving (handler setting `optimization`):
#   frozen_channels_last: torch.jit.freeze (weights become constants, BatchNorm folds into the convolutions,
#       dead code goes) with weights and inputs in channels_last, the layout oneDNN's convolutions run fastest in;
#   frozen: freezing only;  none: the model as exported.
# Measured on 2 CPU cores, tf_efficientnet_lite0 at 128 px, batch 8: 125 → 237–292 images/s (see docs/BENCHMARKS.md).
OPTIMIZATIONS = ("frozen_channels_last", "frozen", "none")
# Handler setting `precision`: the dtype of weights and inputs. fp16 is for GPUs; bf16 needs a CPU with native
# bf16 (AVX512-BF16/AMX) or a GPU, and is 16× slower than fp32 on a CPU without it (measured on this AMD EPYC).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ServingOptions:
    """How the worker runs the model: graph optimisation, memory layout and precision.

    Attributes:
        optimization: one of OPTIMIZATIONS.
        precision: a key of PRECISIONS.

    """

    optimization: str = "frozen_channels_last"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.optimization not in OPTIMIZATIONS:
            raise ValueError(f"optimization must be one of {list(OPTIMIZATIONS)}, got {self.optimization!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")

    @property
    def dtype(self) -> torch.dtype:
        """Weights' and inputs' dtype."""
        return PRECISIONS[self.precision]

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout inputs are handed to the model in."""
        return torch.channels_last if self.optimization == "frozen_channels_last" else torch.contiguous_format

    def prepare(self, model: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
        """The loaded model converted to this precision and layout, and frozen unless optimization is none.

        Freezing is done after the device and dtype are final, because a frozen model's weights are constants.
        """
        if self.dtype != torch.float32:
            model = model.to(self.dtype)
        if self.optimization == "none":
            return model
        if self.memory_format == torch.channels_last:
            model = model.to(memory_format=torch.channels_last)
        with torchscript_deprecation_silenced():
            return torch.jit.freeze(model.eval())

    def batch(self, inputs: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """Stacks model inputs [4, H, W] into one batch on `device`, in this layout and dtype.

        Each input is copied once, straight into its place in the batch (layout and dtype converted on the way),
        instead of stacking and then converting the whole batch.
        """
        batch = torch.empty((len(inputs), *inputs[0].shape), dtype=self.dtype, memory_format=self.memory_format)
        for row, tensor in zip(batch, inputs, strict=True):
            row.copy_(tensor)
        return batch.to(device, non_blocking=True)
