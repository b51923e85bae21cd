"""Fault injection: deliberate, recorded damage to a training run, used as test oracles.

Each fault breaks one link of the pipeline in a known way, so its effect on the metrics is
predictable: shuffled labels must leave validation AUC near 0.5 (otherwise labels leak into
inputs), a wrong loss must teach the inverse, skipped gradients must leave weights untouched.
Specs look like ``label_noise:0.2`` or ``shuffle_labels``; several may be combined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# name → (takes a value in [0, 1], one-line description) — listed in `python -m training.train --help`.
FAULTS: dict[str, tuple[bool, str]] = {
    "label_noise": (True, "flip this fraction of training labels, chosen at random"),
    "shuffle_labels": (False, "permute training labels: inputs carry no information about them"),
    "input_noise": (True, "add Gaussian noise of this std (normalised units) to every training input"),
    "wrong_loss": (False, "cross-entropy against the opposite class (a swapped class-index bug)"),
    "skip_grad": (True, "skip this fraction of optimiser steps: gradients are computed, then dropped"),
}


@dataclass(frozen=True)
class FaultPlan:
    """The parsed fault specs of a run; all zero/False means a clean run."""

    label_noise: float = 0.0
    shuffle_labels: bool = False
    input_noise: float = 0.0
    wrong_loss: bool = False
    skip_grad: float = 0.0
    specs: tuple[str, ...] = field(default=())

    @property
    def active(self) -> bool:
        """Whether anything is injected."""
        return bool(self.specs)


def parse_faults(specs: tuple[str, ...] | list[str]) -> FaultPlan:
    """'label_noise:0.2', 'shuffle_labels', … → FaultPlan.

    Raises:
        ValueError: an unknown fault, a missing or out-of-range value, or a value given to a flag.

    """
    values: dict[str, Any] = {}
    for spec in specs:
        name, separator, raw = spec.partition(":")
        name = name.strip()
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULTS))}")
        takes_value, _ = FAULTS[name]
        if takes_value:
            try:
                amount = float(raw)
            except ValueError:
                raise ValueError(f"fault {name!r} needs a value, e.g. {name}:0.2; got {spec!r}") from None
            if not 0.0 <= amount <= 1.0 and name != "input_noise":
                raise ValueError(f"fault {name!r} takes a fraction in [0, 1], got {amount}")
            if amount < 0:
                raise ValueError(f"fault {name!r} takes a non-negative value, got {amount}")
            values[name] = amount
        else:
            if separator:
                raise ValueError(f"fault {name!r} takes no value, got {spec!r}")
            values[name] = True
    return FaultPlan(**values, specs=tuple(specs))


def corrupt_labels(labels: list[int], plan: FaultPlan, seed: int) -> tuple[list[int], dict[str, int]]:
    """Applies shuffle_labels / label_noise to the training labels; returns them and counts for the report."""
    rng = np.random.default_rng(seed)
    corrupted = np.asarray(labels, dtype=np.int64).copy()
    effects: dict[str, int] = {}
    if plan.shuffle_labels:
        corrupted = rng.permutation(corrupted)
        effects["labels_changed_by_shuffle"] = int((corrupted != np.asarray(labels)).sum())
    if plan.label_noise > 0:
        flip = rng.choice(len(corrupted), size=round(plan.label_noise * len(corrupted)), replace=False)
        corrupted[flip] = 1 - corrupted[flip]
        effects["labels_flipped"] = len(flip)
    return corrupted.tolist(), effects


def noisy_inputs(inputs: torch.Tensor, plan: FaultPlan) -> torch.Tensor:
    """Adds the input_noise Gaussian (torch's RNG, so the seed covers it)."""
    if plan.input_noise <= 0:
        return inputs
    return inputs + plan.input_noise * torch.randn_like(inputs)


def loss_targets(targets: torch.Tensor, plan: FaultPlan) -> torch.Tensor:
    """The targets the loss sees: the true ones, or the opposite class under wrong_loss."""
    return 1 - targets if plan.wrong_loss else targets


class StepSkipper:
    """Decides, from its own seeded generator, which optimiser steps skip_grad drops, and counts them."""

    def __init__(self, plan: FaultPlan, seed: int) -> None:
        self.fraction = plan.skip_grad
        self.generator = np.random.default_rng(seed)
        self.skipped = 0
        self.taken = 0

    def skip(self) -> bool:
        """True when this step's gradients must be thrown away."""
        drop = self.fraction > 0 and self.generator.random() < self.fraction
        if drop:
            self.skipped += 1
        else:
            self.taken += 1
        return drop
