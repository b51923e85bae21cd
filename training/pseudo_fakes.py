"""Self-blended fakes inside the training data: which real images get a twin, and how the twin is made.

Splitting happens on the real images first (by subject), then each split gets the self-blended
twins of its own reals, so a person's blends never leak into another split. Training twins are
drawn anew every epoch (more variety than a fixed set); validation and test twins are fixed per
image (by its pixels and the run's seed), so model selection, calibration and the test report measure
the same fakes every time, and training.evaluate, blending through :meth:`PseudoFakeMaker.blend`,
scores those very fakes wherever the files are listed from.

Landmark masks (`sbi.mask` landmarks or face_hull) need the face's 68 points: they are found once
per file (training.landmarks, a few milliseconds) and kept in a small cache, since the same crop is
blended again every epoch. A face whose points are missing or implausible is blended through the
ellipse instead, and counted (:class:`LandmarkCache`).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from handler.faces import FaceBox, FaceConfig, detect_faces
from training.dataset import CLASS_NAMES, Sample, relative_key
from training.landmarks import face_landmarks
from training.sbi import (
    SbiConfig,
    image_rng,
    inner_face_box,
    needs_landmarks,
    plausible_landmarks,
    self_blend_with_mask,
)
from training.splits import DatasetSplit

FAKE_LABEL = CLASS_NAMES.index("fake")
REAL_LABEL = CLASS_NAMES.index("real")
# Files whose landmarks are kept: 68 points are 544 bytes, so the cache stays under 20 MB; larger datasets recompute
# the least recently blended files' points (a few milliseconds each).
LANDMARK_CACHE_SIZE = 32768


def blend_landmarks(rgb: np.ndarray, box: FaceBox, config: SbiConfig) -> np.ndarray | None:
    """The 68 points a blend made with `config` needs for the face in `box`, or None.

    None when the mask needs no landmarks, and when training.landmarks finds no face or points that
    cannot outline this one: the blend then goes through the ellipse (training.sbi.self_blend).
    """
    if not needs_landmarks(config):
        return None
    points = face_landmarks(rgb, box)
    return points if plausible_landmarks(points, box) else None


class LandmarkCache:
    """Landmarks per file (least recently used ones dropped first) and how often a blend fell back to the ellipse.

    The counts are of this process: with DataLoader workers, each worker counts its own blends.

    Attributes:
        capacity: files kept.
        computed: files whose landmarks were looked up (cache misses).
        blends: blends that asked for landmarks.
        fallbacks: of those, blends made through the ellipse because the face had no usable landmarks.

    """

    def __init__(self, capacity: int = LANDMARK_CACHE_SIZE) -> None:
        self.capacity = capacity
        self.computed = self.blends = self.fallbacks = 0
        self._points: OrderedDict[str, np.ndarray | None] = OrderedDict()

    def landmarks(self, key: str, rgb: np.ndarray, box: FaceBox, config: SbiConfig) -> np.ndarray | None:
        """blend_landmarks for the file `key`, looked up once and then served from the cache; counts the blend."""
        if key in self._points:
            self._points.move_to_end(key)
            points = self._points[key]
        else:
            points = blend_landmarks(rgb, box, config)
            self.computed += 1
            self._points[key] = points
            if len(self._points) > self.capacity:
                self._points.popitem(last=False)
        self.blends += 1
        self.fallbacks += points is None
        return points

    def stats(self) -> dict[str, int]:
        """The counts, for a training report: {"blends", "fallbacks", "computed"}."""
        return {"blends": self.blends, "fallbacks": self.fallbacks, "computed": self.computed}


@dataclass(frozen=True)
class PseudoFakeMaker:
    """Turns a decoded real image into its self-blended fake (a callable FaceImageDataset accepts).

    Attributes:
        config: how blends are made.
        crop_margin: the images are face crops made by training.prepare with this margin, so the face is
            the crop's central square; None: the images are whole photos and the face is detected.
        fixed_seed: val/test/evaluation: the same fake for an image every time, from (its pixels, seed), so a
            moved dataset, or a run's splits.csv listing it by absolute path, keeps its fixed fakes; None: a
            new fake at every load, from torch's RNG (seeded per run and per DataLoader worker).
        root: the landmark cache keys sample paths relative to this folder.
        landmarks: the landmark cache and fallback counts of landmark masks (`landmarks.stats()`).

    """

    config: SbiConfig
    crop_margin: float | None = None
    fixed_seed: int | None = None
    root: Path | None = None
    landmarks: LandmarkCache = field(default_factory=LandmarkCache, compare=False, repr=False)

    def face_box(self, rgb: np.ndarray) -> FaceBox:
        """Where to blend: the crop's central face, the largest detected face, or the centre when none is found."""
        if self.crop_margin is not None:
            return inner_face_box(rgb.shape, self.crop_margin)
        faces = detect_faces(rgb, FaceConfig())
        return faces[0] if faces else inner_face_box(rgb.shape, FaceConfig().margin)

    def key(self, sample: Sample) -> str:
        """The file's name in the landmark cache: relative to `root` when given."""
        return sample.path.as_posix() if self.root is None else relative_key(sample.path, self.root)

    def rng(self, rgb: np.ndarray) -> np.random.Generator:
        """Fixed per image for evaluation splits, fresh for training."""
        if self.fixed_seed is None:
            return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        return image_rng(rgb, self.fixed_seed)

    def blend(self, rgb: np.ndarray, box: FaceBox, sample: Sample) -> np.ndarray:
        """The self-blend of `rgb`, the decoded image of the real `sample`, on the face in `box`.

        training.evaluate calls this with the box its --faces plan gives, so its pseudo-fakes are made
        by the very code (landmarks, generator, blend) that made the run's validation and test fakes.
        """
        return self.blend_with_mask(rgb, box, sample)[0]

    def blend_with_mask(self, rgb: np.ndarray, box: FaceBox, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`blend` and the mask it pasted through (float32 [H, W]), the target of training.blend_map."""
        points = self.landmarks.landmarks(self.key(sample), rgb, box, self.config) \
            if needs_landmarks(self.config) else None
        return self_blend_with_mask(rgb, box, self.config, self.rng(rgb), points)

    def __call__(self, rgb: np.ndarray, sample: Sample) -> np.ndarray:
        """The self-blend of `rgb`, the decoded image of the real `sample`, on its face (:meth:`face_box`)."""
        return self.blend(rgb, self.face_box(rgb), sample)

    def with_mask(self, rgb: np.ndarray, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`__call__` and its blend mask."""
        return self.blend_with_mask(rgb, self.face_box(rgb), sample)


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

