"""TorchScript loading with only the deprecation warning of torch ≥ 2.10 silenced.

torch marks torch.jit.* deprecated (FutureWarning) but TorchServe's TorchScript path is what we
ship; the filter is narrow (that message, that category) and scoped to the calls that raise it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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
