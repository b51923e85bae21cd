import cv2
import numpy as np
import pytest

from tests.shared_faces import face_crop
from training.face_swap import (
    FAMILIES,
    INNER_MOUTH,
    MIN_FOREHEAD_VISIBILITY,
    SwapConfig,
    SwapError,
    delaunay_triangles,
    face_outline_points,
    forehead_visibility,
    swap_face,
    swap_with_landmarks,
    transfer_colour,
    warp_face,
)
from training.landmarks import face_landmarks

SIDE = 192  # small crops keep each swap at a few milliseconds


def small_crop(name: str) -> np.ndarray:
    return cv2.resize(face_crop(name), (SIDE, SIDE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def faces() -> dict:
    target, donor = small_crop("london/L001_neutral.jpg"), small_crop("amfd/A1001_neutral.jpg")
    target_points, donor_points = face_landmarks(target), face_landmarks(donor)
    assert target_points is not None and donor_points is not None
    return {"target": target, "donor": donor, "target_points": target_points, "donor_points": donor_points}


def hull_mask(points: np.ndarray, shape: tuple[int, ...], grow: int = 0) -> np.ndarray:
    mask = np.zeros(shape[:2], dtype=np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points).astype(np.int32)), 255)
    if grow > 0:
        mask = cv2.dilate(mask, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    elif grow < 0:
        mask = cv2.erode(mask, np.ones((-2 * grow + 1, -2 * grow + 1), np.uint8))
    return mask > 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_swap_changes_the_face_and_nothing_far_from_it(faces, family):
    target = faces["target"]
    fake = swap_with_landmarks(target, faces["target_points"], faces["donor"], faces["donor_points"], family)
    assert fake.shape == target.shape and fake.dtype == np.uint8
    outline = face_outline_points(faces["target_points"], SwapConfig().forehead)
    far = ~hull_mask(outline, target.shape, grow=4)
    assert np.array_equal(fake[far], target[far])
    inner = hull_mask(faces["target_points"], target.shape, grow=-SIDE // 10)
    change = np.abs(fake.astype(np.int16) - target.astype(np.int16))[inner].mean()
    assert change > 8.0, f"the face barely changed (mean |diff| {change:.1f})"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_swap_is_deterministic(faces, family):
    first = swap_with_landmarks(faces["target"], faces["target_points"], faces["donor"], faces["donor_points"], family)
    again = swap_with_landmarks(faces["target"], faces["target_points"], faces["donor"], faces["donor_points"], family)
    assert np.array_equal(first, again)


def test_a_donor_of_another_size_gives_the_targets_shape(faces):
    donor = cv2.resize(faces["donor"], (SIDE * 2, SIDE * 2))
    fake = swap_with_landmarks(faces["target"], faces["target_points"], donor, faces["donor_points"] * 2.0,
                               "faceswap_feather")
    assert fake.shape == faces["target"].shape


def test_the_target_keeps_its_own_mouth_opening(faces):
    target = faces["target"]
    points = faces["target_points"].copy()
    # Open the inner lips by 8 px: the region between them must stay the target's.
    points[61:64, 1] -= 4
    points[65:68, 1] += 4
    fake = swap_with_landmarks(target, points, faces["donor"], faces["donor_points"], "faceswap_feather")
    opening = np.zeros(target.shape[:2], np.uint8)
    cv2.fillPoly(opening, [np.round(points[INNER_MOUTH]).astype(np.int32)], 255)
    opening = cv2.erode(opening, np.ones((3, 3), np.uint8)) > 0
    assert opening.sum() > 20
    assert np.abs(fake[opening].astype(int) - target[opening].astype(int)).max() <= 2


def test_warping_a_face_onto_its_own_landmarks_gives_it_back(faces):
    image, points = faces["target"], face_outline_points(faces["target_points"], 0.05)
    triangles = delaunay_triangles(points, image.shape)
    warped, covered = warp_face(image, points, points, triangles, image.shape)
    assert covered.sum() >= 0.97 * hull_mask(points, image.shape).sum()
    assert np.abs(warped[covered].astype(int) - image[covered].astype(int)).max() <= 1


def test_triangles_index_every_distinct_landmark(faces):
    points = face_outline_points(faces["target_points"], 0.05)
    triangles = delaunay_triangles(points, faces["target"].shape)
    # Coinciding points (closed lips: 62 and 66) are one vertex; every other point is a corner of some triangle.
    _, first = np.unique(points, axis=0, return_index=True)
    assert triangles.shape[1] == 3 and set(np.unique(triangles).tolist()) == set(first.tolist())


def test_colour_transfer_gives_the_face_the_targets_colour(faces):
    mask = hull_mask(faces["target_points"], faces["target"].shape, grow=-4).astype(np.uint8) * 255
    moved = transfer_colour(faces["donor"], faces["target"], mask, max_spread_ratio=4.0)
    lab = [cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[mask > 0].mean(axis=0) for image in (moved, faces["target"])]
    assert np.abs(lab[0] - lab[1]).max() < 3.0


def test_a_faceless_image_is_refused_with_a_reason(faces):
    grey = np.full_like(faces["target"], 128)
    with pytest.raises(SwapError) as target_error:
        swap_face(grey, faces["donor"], "faceswap_poisson")
    with pytest.raises(SwapError) as donor_error:
        swap_face(faces["target"], grey, "faceswap_poisson")
    assert (target_error.value.reason, donor_error.value.reason) == ("no_target_landmarks", "no_donor_landmarks")


def test_an_unknown_family_is_named(faces):
    with pytest.raises(ValueError, match="unknown swap family 'deepfacelab'; known: .*faceswap_poisson"):
        swap_with_landmarks(faces["target"], faces["target_points"], faces["donor"], faces["donor_points"],
                            "deepfacelab")


def test_a_fringe_over_the_brows_lowers_forehead_visibility(faces):
    target, points = faces["target"], faces["target_points"]
    bare = forehead_visibility(target, points)
    fringe = target.copy()
    top = int(points[17:27, 1].max()) + 2  # dark hair down to just below the brows
    fringe[:top] = (40, 30, 25)
    assert bare > 0.8 and forehead_visibility(fringe, points) < MIN_FOREHEAD_VISIBILITY
