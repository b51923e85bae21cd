"""Self-blended fakes inside the training data: which real images get a twin, and how the twin is made.

Splitting happens on the real images first (by subject), then each split gets the self-blended
twins of its own reals, so a person's blends never leak into another split. Training twins are
drawn anew every epoch (more variety than a fixed set); validation and test twins are fixed per
file, so model selection, calibration and the test report measure the same fakes every time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from handler.faces import FaceBox, FaceConfig, detect_faces
from training.dataset import CLASS_NAMES, Sample, relative_key
from training.sbi import SbiConfig, inner_face_box, rng_for, self_blend
from training.splits import DatasetSplit

FAKE_LABEL = CLASS_NAMES.index("fake")
REAL_LABEL = CLASS_NAMES.index("real")


@dataclass(frozen=True)
class PseudoFakeMaker:
    """Turns a decoded real image into its self-blended fake (a callable FaceImageDataset accepts).

    Attributes:
        config: how blends are made.
        crop_margin: the images are face crops made by training.prepare with this margin, so the face is
            the crop's central square; None: the images are whole photos and the face is detected.
        fixed_seed: val/test/evaluation: the same fake for a file every time, from (file, seed); None: a new
            fake at every load, from torch's RNG (seeded per run and per DataLoader worker).
        root: sample paths are keyed relative to this folder, so a moved dataset keeps its fixed fakes.

    """

    config: SbiConfig
    crop_margin: float | None = None
    fixed_seed: int | None = None
    root: Path | None = None

    def face_box(self, rgb: np.ndarray) -> FaceBox:
        """Where to blend: the crop's central face, the largest detected face, or the centre when none is found."""
        if self.crop_margin is not None:
            return inner_face_box(rgb.shape, self.crop_margin)
        faces = detect_faces(rgb, FaceConfig())
        return faces[0] if faces else inner_face_box(rgb.shape, FaceConfig().margin)

    def rng(self, sample: Sample) -> np.random.Generator:
        """Fixed per file for evaluation splits, fresh for training."""
        if self.fixed_seed is None:
            return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        key = sample.path.as_posix() if self.root is None else relative_key(sample.path, self.root)
        return rng_for(key, self.fixed_seed)

    def __call__(self, rgb: np.ndarray, sample: Sample) -> np.ndarray:
        """The self-blend of `rgb`, the decoded image of the real `sample`."""
        return self_blend(rgb, self.face_box(rgb), self.config, self.rng(sample))


def twin(sample: Sample) -> Sample:
    """The pseudo-fake of a real sample: same file, subject and split, label fake."""
    return dataclasses.replace(sample, label=FAKE_LABEL, pseudo_fake=True)


def with_twins(samples: list[Sample], share: float, seed: int) -> list[Sample]:
    """The samples plus pseudo-fake twins of round(share × reals) of their real images (cycling when share > 1).

    Which reals get a twin is fixed by the seed; with share 1 every real image gets one.
    """
    reals = [sample for sample in samples if sample.label == REAL_LABEL and not sample.pseudo_fake]
    count = round(share * len(reals))
    if not reals or count == 0:
        return list(samples)
    order = np.random.default_rng(seed).permutation(len(reals))
    chosen = [reals[order[index % len(reals)]] for index in range(count)]
    return [*samples, *(twin(sample) for sample in chosen)]


def split_with_twins(split: DatasetSplit, config: SbiConfig, seed: int) -> DatasetSplit:
    """Each split plus the twins of its own reals: `fake_share` per real in train, exactly one in val and test."""
    return DatasetSplit(
        train=with_twins(split.train, config.fake_share, seed),
        val=with_twins(split.val, 1.0, seed),
        test=with_twins(split.test, 1.0, seed),
        method=f"{split.method}+sbi",
    )

