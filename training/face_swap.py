"""Cross-identity face swaps by landmark warping: an unseen fake family, for validation only.

FaceForensics++'s "FaceSwap" method, rebuilt from its classic parts so the project can make real
swaps between *different* people of its own real photos: 68 landmarks of both faces
(training.landmarks), a Delaunay triangulation of the target's landmarks, a piecewise-affine warp of
the donor's face onto the target's geometry, a colour transfer to the target's skin (Reinhard:
mean and spread matched in LAB inside the face) and a blend into the target: Poisson (seamless
cloning) or a feathered alpha mask. The self-blended pseudo-fakes the detector trains on are a face
pasted onto *itself*; these show another person's face, so they measure whether the detector learned
blending traces rather than SBI's own recipe. Never train on them (training.make_swaps writes them
into an evaluation manifest).

The warp is one cv2.remap through a per-pixel map built triangle by triangle, not one warpAffine per
triangle pasted through antialiased triangle masks: pasted triangles leave faint seams along their
edges that a detector could learn, and real face swaps do not have them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from training.landmarks import BROWS, LANDMARK_COUNT, face_landmarks

# Inner lip contour of the 68-point layout: the mouth opening.
INNER_MOUTH = slice(60, 68)
# Below this forehead_visibility a donor's brows are under hair (see forehead_visibility).
MIN_FOREHEAD_VISIBILITY = 0.6


class SwapError(ValueError):
    """A swap cannot be made; `reason` is a short code a report can count (e.g. "no_target_landmarks")."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SwapConfig:
    """How a swap is cut and blended. Sizes are shares of the target face's size (its landmark box diagonal).

    Attributes:
        forehead: how far the mask reaches above the brows, as a share of each brow point's distance from
            the chin: the 68 points stop at the brows, and a swap that stops there leaves the donor's
            brows under the target's forehead.
        inset: the mask is shrunk by this much, so landmark error at the jaw does not bring the donor's
            background along.
        feather: Gaussian sigma of the feathered alpha edge.
        colour_transfer: match the warped face's LAB mean and spread to the target's face before blending.
        max_spread_ratio: bound on the per-channel spread (std) ratio of the colour transfer: a dark face
            put on a light one came out glossy and orange at 2.0 (looked at on the shared London/AMFD crops).
        keep_mouth: the target keeps its own mouth opening (inside the inner lips): a closed donor mouth
            warped onto an open one stretches the lips into a pink slab across the teeth.

    """

    forehead: float = 0.05
    inset: float = 0.04
    feather: float = 0.03
    colour_transfer: bool = True
    max_spread_ratio: float = 1.25
    keep_mouth: bool = True

    def __post_init__(self) -> None:
        checks = {
            "forehead": 0.0 <= self.forehead <= 0.6,
            "inset": 0.0 <= self.inset <= 0.2,
            "feather": 0.0 < self.feather <= 0.2,
            "max_spread_ratio": self.max_spread_ratio >= 1.0,
        }
        bad = [name for name, valid in checks.items() if not valid]
        if bad:
            raise ValueError(f"swap setting(s) {bad} out of range: forehead in [0, 0.6], inset in [0, 0.2], "
                             f"feather in (0, 0.2], max_spread_ratio at least 1")


def face_outline_points(points: np.ndarray, forehead: float) -> np.ndarray:
    """The 68 landmarks plus 10 forehead points above the brows ([78, 2] float32).

    Each brow point is pushed away from the chin (point 8) by `forehead` of its distance to it, so the
    points fan out over the forehead the way a face widens; donor and target get the same construction,
    so the warp maps forehead to forehead.
    """
    points = np.asarray(points, dtype=np.float32)
    brows = points[BROWS]
    chin = points[8]
    return np.concatenate([points, brows + forehead * (brows - chin)]).astype(np.float32)


def forehead_visibility(rgb: np.ndarray, points: np.ndarray) -> float:
    """Median lightness of the band just above the brows over that of the cheeks: about 1 for a bare forehead.

    A donor whose fringe covers the brows brings hair into the warped face, and Poisson blending then
    draws the hair's edge as a bright, box-shaped halo across the target's brows. On the 423 shared
    London/AMFD crops the median is 0.94; all 8 crops below 0.6 have a fringe over the brows (the next,
    0.62 to 0.66, mix fringes with dark-skinned faces whose lit cheeks outshine the forehead), hence
    :data:`MIN_FOREHEAD_VISIBILITY`.
    """
    lightness = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2LAB)[..., 0]
    points = np.asarray(points, dtype=np.float32)
    band = np.zeros(lightness.shape, dtype=np.uint8)
    above = face_outline_points(points, 0.15)[LANDMARK_COUNT:]
    cv2.fillPoly(band, [np.round(np.concatenate([points[BROWS], above[::-1]])).astype(np.int32)], 255)
    cheeks = np.zeros_like(band)
    for corners in ([1, 31, 40], [15, 35, 47]):  # jaw side, nostril, lower eyelid: bare skin on either side
        cv2.fillConvexPoly(cheeks, np.round(points[corners]).astype(np.int32), 255)
    if not band.any() or not cheeks.any():
        return 0.0
    return float(np.median(lightness[band > 0]) / max(1.0, float(np.median(lightness[cheeks > 0]))))


def delaunay_triangles(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Delaunay triangles of `points` (clipped into the image) as index triples [T, 3], by cv2.Subdiv2D."""
    height, width = shape[:2]
    inside = np.clip(np.asarray(points, dtype=np.float32), 0, [width - 1, height - 1])
    subdiv = cv2.Subdiv2D((0, 0, width, height))
    subdiv.insert([(float(x), float(y)) for x, y in inside])
    triangles = []
    for corners in subdiv.getTriangleList().reshape(-1, 3, 2):
        distances = np.linalg.norm(corners[:, None, :] - inside[None, :, :], axis=2)
        indices = distances.argmin(axis=1)
        # Triangles touching Subdiv2D's far-away helper vertices match no point of ours.
        if (distances[np.arange(3), indices] < 0.5).all() and len(set(indices.tolist())) == 3:
            triangles.append(indices)
    return np.array(triangles, dtype=np.int32).reshape(-1, 3)


def warp_face(donor: np.ndarray, donor_points: np.ndarray, target_points: np.ndarray,
              triangles: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The donor warped onto the target's geometry, and the mask of pixels the triangles cover.

    Each target pixel inside a triangle is mapped back into the donor by that triangle's affine map, and
    the whole image is resampled in one cv2.remap, so neighbouring triangles meet without seams.

    Returns:
        (warped RGB uint8 [H, W, 3] of the target's size, covered bool [H, W]).

    """
    height, width = shape[:2]
    owner = np.full((height, width), -1, dtype=np.int32)
    maps = np.zeros((len(triangles), 2, 3), dtype=np.float32)
    for index, corners in enumerate(triangles):
        maps[index] = cv2.getAffineTransform(target_points[corners].astype(np.float32),
                                             donor_points[corners].astype(np.float32))
        cv2.fillConvexPoly(owner, np.round(target_points[corners]).astype(np.int32), index)
    covered = owner >= 0
    ys, xs = np.nonzero(covered)
    chosen = maps[owner[ys, xs]]
    map_x = np.full((height, width), -1.0, dtype=np.float32)
    map_y = np.full((height, width), -1.0, dtype=np.float32)
    map_x[ys, xs] = chosen[:, 0, 0] * xs + chosen[:, 0, 1] * ys + chosen[:, 0, 2]
    map_y[ys, xs] = chosen[:, 1, 0] * xs + chosen[:, 1, 1] * ys + chosen[:, 1, 2]
    warped = cv2.remap(donor, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return warped, covered


def face_mask(target_outline: np.ndarray, covered: np.ndarray, inset_pixels: int) -> np.ndarray:
    """uint8 {0, 255} mask: the convex hull of the target's outline points, inset, within the warped pixels.

    One pixel is always kept clear of the image border: seamless cloning needs the mask's surroundings.
    """
    height, width = covered.shape
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(target_outline).astype(np.int32)), 255)
    mask[~covered] = 0
    if inset_pixels > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * inset_pixels + 1, 2 * inset_pixels + 1))
        mask = cv2.erode(mask, kernel)
    mask[[0, -1], :] = 0
    mask[:, [0, -1]] = 0
    return mask


def transfer_colour(face: np.ndarray, target: np.ndarray, mask: np.ndarray, max_spread_ratio: float) -> np.ndarray:
    """Reinhard colour transfer: the face's LAB mean and std inside `mask` made the target's there.

    A swapped face keeps the donor's skin tone and lighting; matching the first two moments in LAB (a
    roughly perceptual space with decorrelated channels) is the classic fix, and what FaceSwap-style
    pipelines do before blending.
    """
    inside = mask > 0
    face_lab = cv2.cvtColor(face.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    target_lab = cv2.cvtColor(target.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    face_mean, face_std = face_lab[inside].mean(axis=0), face_lab[inside].std(axis=0)
    target_mean, target_std = target_lab[inside].mean(axis=0), target_lab[inside].std(axis=0)
    ratio = np.clip(target_std / np.maximum(face_std, 1e-3), 1.0 / max_spread_ratio, max_spread_ratio)
    matched = (face_lab - face_mean) * ratio + target_mean
    rgb = cv2.cvtColor(matched.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class PreparedSwap:
    """The donor face in the target's geometry and colour, and where it goes: what every blend starts from.

    Attributes:
        face: RGB uint8 [H, W, 3], the target's size; meaningful inside `mask`.
        mask: uint8 {0, 255} [H, W], the face region in the target.
        mouth: uint8 {0, 255} [H, W], the target's mouth opening it keeps; inside `mask`'s hull but not in it.
        face_size: the target face's landmark box diagonal in pixels (the scale of feathering).

    """

    face: np.ndarray
    mask: np.ndarray
    mouth: np.ndarray
    face_size: float


def prepare_swap(target: np.ndarray, target_points: np.ndarray, donor: np.ndarray, donor_points: np.ndarray,
                 config: SwapConfig) -> PreparedSwap:
    """Warps the donor's face onto the target's landmarks and matches its colour (everything but the blend)."""
    if target_points.shape != (LANDMARK_COUNT, 2) or donor_points.shape != (LANDMARK_COUNT, 2):
        raise ValueError(f"landmarks must be [{LANDMARK_COUNT}, 2], got {target_points.shape} and {donor_points.shape}")
    height, width = target.shape[:2]
    target_outline = face_outline_points(target_points, config.forehead)
    target_outline = np.clip(target_outline, 0, [width - 1, height - 1]).astype(np.float32)
    donor_outline = face_outline_points(donor_points, config.forehead)
    triangles = delaunay_triangles(target_outline, target.shape)
    warped, covered = warp_face(donor, donor_outline, target_outline, triangles, target.shape)
    extent = target_points.max(axis=0) - target_points.min(axis=0)
    face_size = float(np.hypot(*extent))
    hull = face_mask(target_outline, covered, round(config.inset * face_size))
    mouth = np.zeros_like(hull)
    if config.keep_mouth:
        cv2.fillPoly(mouth, [np.round(target_points[INNER_MOUTH]).astype(np.int32)], 255)
        grow = max(1, round(0.01 * face_size))  # the inner lip line itself: landmark error is a few pixels
        mouth = cv2.dilate(mouth, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    mask = np.where(mouth > 0, 0, hull).astype(np.uint8)
    if not mask.any():
        raise SwapError("empty_mask", "the target face covers no pixels after the inset; is the face tiny?")
    if config.colour_transfer:
        warped = transfer_colour(warped, target, mask, config.max_spread_ratio)
    return PreparedSwap(warped, mask, np.where(hull > 0, mouth, 0).astype(np.uint8), face_size)


def poisson_blend(target: np.ndarray, swap: PreparedSwap, config: SwapConfig) -> np.ndarray:
    """Poisson (gradient-domain) blending: cv2.seamlessClone with NORMAL_CLONE, the face's gradients kept.

    OpenCV solves over the mask's whole bounding box, with the target's gradients outside the mask, so
    pixels there drift from the target (by 4 levels on average next to the mask, more further in). The
    clone is kept inside the mask and faded back to the target over a ramp of half the inset outside it:
    nothing beyond the face hull changes, and the ramp leaves no step where the two meet.
    """
    x, y, width, height = cv2.boundingRect(swap.mask)
    centre = (x + width // 2, y + height // 2)  # seamlessClone puts the mask's bounding box centre here
    bgr = cv2.seamlessClone(cv2.cvtColor(swap.face, cv2.COLOR_RGB2BGR), cv2.cvtColor(target, cv2.COLOR_RGB2BGR),
                            swap.mask.copy(), centre, cv2.NORMAL_CLONE)  # copy: OpenCV writes into the mask
    cloned = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    reach = max(1.0, 0.5 * config.inset * swap.face_size)
    outside = cv2.distanceTransform(np.where(swap.mask > 0, 0, 255).astype(np.uint8), cv2.DIST_L2, 5)
    alpha = np.clip(1.0 - outside / reach, 0.0, 1.0)[..., None]
    blended = alpha * cloned.astype(np.float32) + (1.0 - alpha) * target.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def feather_blend(target: np.ndarray, swap: PreparedSwap, config: SwapConfig) -> np.ndarray:
    """Alpha blending through the mask, shrunk by two sigmas and blurred, so the alpha stays inside the hull.

    The kept mouth opening gets a narrow soft edge of its own: the wide outer feather would hand the
    target's lips back too.
    """
    sigma = max(1.0, config.feather * swap.face_size)
    reach = int(np.ceil(2.0 * sigma))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    alpha = cv2.erode(np.maximum(swap.mask, swap.mouth), kernel).astype(np.float32) / 255.0
    alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
    if swap.mouth.any():
        mouth_sigma = max(1.0, 0.005 * swap.face_size)
        alpha *= 1.0 - cv2.GaussianBlur(swap.mouth.astype(np.float32) / 255.0, (0, 0), mouth_sigma)
    alpha[swap.mask == 0] = 0.0
    alpha = alpha[..., None]
    blended = alpha * swap.face.astype(np.float32) + (1.0 - alpha) * target.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


Blend = Callable[[np.ndarray, PreparedSwap, SwapConfig], np.ndarray]

# The swap families by the name manifests and reports use: FaceSwap with each blending method.
FAMILIES: dict[str, tuple[Blend, str]] = {
    "faceswap_poisson": (poisson_blend, "landmark warp + LAB colour transfer + Poisson blending (seamlessClone)"),
    "faceswap_feather": (feather_blend, "landmark warp + LAB colour transfer + feathered alpha mask"),
}


def swap_with_landmarks(target: np.ndarray, target_points: np.ndarray, donor: np.ndarray, donor_points: np.ndarray,
                        family: str, config: SwapConfig | None = None) -> np.ndarray:
    """The target image with the donor's face, made by `family` (a name in :data:`FAMILIES`); pure.

    Args:
        target: RGB uint8 [H, W, 3], the photo whose face is replaced (person B).
        target_points: its 68 landmarks [68, 2].
        donor: RGB uint8 [h, w, 3], the photo the face comes from (person A); any size.
        donor_points: its 68 landmarks.
        family: how the face is blended in.
        config: mask and colour settings.

    Returns:
        RGB uint8 of the target's shape; pixels outside the face mask are the target's.

    """
    if family not in FAMILIES:
        raise ValueError(f"unknown swap family {family!r}; known: {sorted(FAMILIES)}")
    config = config or SwapConfig()
    swap = prepare_swap(target, target_points, donor, donor_points, config)
    return FAMILIES[family][0](target, swap, config)


def swap_face(target: np.ndarray, donor: np.ndarray, family: str, config: SwapConfig | None = None) -> np.ndarray:
    """Like :func:`swap_with_landmarks`, finding each face's landmarks first (the largest HOG face of each image).

    Raises:
        SwapError: no face in the target (reason "no_target_landmarks") or the donor ("no_donor_landmarks").

    """
    target_points = face_landmarks(target)
    if target_points is None:
        raise SwapError("no_target_landmarks", "no face found in the target image")
    donor_points = face_landmarks(donor)
    if donor_points is None:
        raise SwapError("no_donor_landmarks", "no face found in the donor image")
    return swap_with_landmarks(target, target_points, donor, donor_points, family, config)
