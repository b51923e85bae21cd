"""Deterministic demo dataset: procedurally drawn face photos (real) and face swaps made from them (fake).

Nothing is downloaded. "Real" images are rendered faces (shaded head, hair, eyes, brows, nose,
mouth, background, clothing) photographed by a simulated camera: optical blur, sensor noise and
JPEG compression. A "fake" takes such a photo *before* compression and pastes in another person's
face the way face-swap pipelines do: the new face is generated at a lower resolution and upsampled
(resampling artifacts, missing sensor noise), colour-corrected imperfectly (local colour mismatch),
and blended through a deformed, blurred mask (soft seam). Both classes then go through the same
JPEG step, so compression alone tells them apart no better than chance.

This is a demo set for proving the pipeline learns, not a benchmark: real deepfakes are harder.

Usage:
    python -m training.demo_data --out build/demo/data --count 400 --seed 0
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

SUPERSAMPLE = 2  # draw at 2× and shrink, for anti-aliased edges like a real lens gives

SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 160], [224, 172, 132], [198, 134, 96], [160, 104, 70], [110, 70, 46], [84, 52, 36]],
    dtype=np.float32,
)
HAIR_COLOURS = np.array(
    [[20, 16, 14], [52, 36, 26], [96, 64, 40], [150, 110, 70], [210, 180, 120], [160, 160, 160], [120, 40, 20]],
    dtype=np.float32,
)
IRIS_COLOURS = np.array([[70, 45, 25], [40, 30, 20], [60, 90, 130], [70, 110, 70], [110, 90, 50]], dtype=np.float32)


@dataclass(frozen=True)
class DemoDataConfig:
    """What to generate.

    Attributes:
        count: images per class.
        image_size: side of the square images, in pixels (128–256).
        seed: the dataset is a pure function of the seed: same seed, byte-identical files.
        jpeg_quality: range of JPEG qualities, drawn per image for both classes alike.

    """

    count: int = 400
    image_size: int = 160
    seed: int = 0
    jpeg_quality: tuple[int, int] = (80, 95)


@dataclass(frozen=True)
class FaceGeometry:
    """Where the head is, in output pixels: centre and semi-axes of the face ellipse."""

    cx: float
    cy: float
    half_width: float
    half_height: float


@dataclass(frozen=True)
class Identity:
    """A person's looks, independent of pose and camera."""

    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    lips: np.ndarray
    eye_spacing: float
    eye_height: float
    eye_size: float
    brow_thickness: float
    mouth_width: float
    smile: float
    hair_line: float


def _random_identity(rng: np.random.Generator) -> Identity:
    i = rng.uniform(0, len(SKIN_TONES) - 1)
    skin = SKIN_TONES[int(i)] * (1 - i % 1) + SKIN_TONES[int(i) + 1] * (i % 1)
    return Identity(
        skin=skin * rng.uniform(0.95, 1.05, 3),
        hair=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.85, 1.15),
        iris=IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))],
        lips=skin * np.array([0.85, 0.55, 0.55]) * rng.uniform(0.9, 1.1),
        eye_spacing=rng.uniform(0.36, 0.46),
        eye_height=rng.uniform(0.12, 0.22),
        eye_size=rng.uniform(0.13, 0.18),
        brow_thickness=rng.uniform(0.025, 0.05),
        mouth_width=rng.uniform(0.28, 0.42),
        smile=rng.uniform(-0.2, 1.0),
        hair_line=rng.uniform(0.35, 0.6),
    )


def _random_geometry(rng: np.random.Generator, size: int) -> FaceGeometry:
    return FaceGeometry(
        cx=size * rng.uniform(0.44, 0.56),
        cy=size * rng.uniform(0.42, 0.5),
        half_width=size * rng.uniform(0.21, 0.26),
        half_height=size * rng.uniform(0.28, 0.33),
    )


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells, channels)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).reshape(size, size, channels)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    top, bottom = rng.uniform(40, 230, 3), rng.uniform(30, 200, 3)
    ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    canvas = top * (1 - ramp) + bottom * ramp + np.zeros((size, size, 3), np.float32)
    canvas += 18 * _smooth_noise(rng, size, 5, 3)
    for _ in range(rng.integers(1, 4)):  # out-of-focus objects behind the person
        colour = rng.uniform(30, 230, 3).tolist()
        centre = (int(rng.uniform(0, size)), int(rng.uniform(0, size * 0.7)))
        cv2.circle(canvas, centre, int(rng.uniform(size * 0.05, size * 0.2)), colour, -1, cv2.LINE_AA)
    return cv2.GaussianBlur(canvas, (0, 0), size / 60)


def _draw_head(canvas: np.ndarray, face: Identity, geometry: FaceGeometry, rng: np.random.Generator) -> None:
    """Draws hair, neck, clothing, shaded face and features in place (canvas is float32 RGB)."""
    size = canvas.shape[0]
    cx, cy, a, b = geometry.cx, geometry.cy, geometry.half_width, geometry.half_height
    point = lambda x, y: (int(round(x)), int(round(y)))  # noqa: E731

    clothing = rng.uniform(20, 220, 3).tolist()
    cv2.ellipse(canvas, point(cx, size * 1.08), point(a * 2.1, size * 0.32), 0, 0, 360, clothing, -1, cv2.LINE_AA)
    cv2.rectangle(canvas, point(cx - a * 0.45, cy + b * 0.6), point(cx + a * 0.45, size * 0.95),
                  (face.skin * 0.8).tolist(), -1, cv2.LINE_AA)
    cv2.ellipse(canvas, point(cx, cy - b * 0.08), point(a * 1.15, b * 1.08), 0, 0, 360, face.hair.tolist(), -1,
                cv2.LINE_AA)

    # Face: an ellipsoid lit from one side, so it has the soft shading of a real head.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u, v = (xx - cx) / a, (yy - cy) / b
    inside = u**2 + v**2
    nz = np.sqrt(np.clip(1 - inside, 0, 1))
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.1), 1.0])
    light /= np.linalg.norm(light)
    shade = 0.55 + 0.5 * np.clip(u * light[0] + v * light[1] + nz * light[2], 0, 1)
    pores = 1 + 0.02 * cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 0.8)
    skin = face.skin[None, None, :] * (shade * pores)[..., None]
    alpha = np.clip((1 - inside) * a / 1.5, 0, 1)[..., None]  # ~1.5 px soft edge
    canvas[:] = canvas * (1 - alpha) + skin * alpha

    # Fringe: hair over the top of the face.
    fringe_y = cy - b * face.hair_line
    cv2.ellipse(canvas, point(cx, fringe_y - b * 0.45), point(a * 1.05, b * 0.5), 0, 0, 360, face.hair.tolist(), -1,
                cv2.LINE_AA)
    strands = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (1, 0), sigmaX=0.1, sigmaY=3)
    hair_mask = (np.abs(canvas - face.hair).sum(axis=2) < 1.0)[..., None]
    canvas += hair_mask * 10 * strands[..., None]

    eye_y = cy - b * face.eye_height
    eye_w, eye_h = a * face.eye_size * 1.6, a * face.eye_size * 0.8
    for side in (-1, 1):
        ex = cx + side * a * face.eye_spacing
        cv2.ellipse(canvas, point(ex, eye_y), point(eye_w, eye_h), 0, 0, 360, (235, 232, 225), -1, cv2.LINE_AA)
        cv2.circle(canvas, point(ex, eye_y), int(round(eye_h * 0.95)), face.iris.tolist(), -1, cv2.LINE_AA)
        cv2.circle(canvas, point(ex, eye_y), int(round(eye_h * 0.45)), (10, 10, 10), -1, cv2.LINE_AA)
        cv2.circle(canvas, point(ex + eye_h * 0.3, eye_y - eye_h * 0.3), max(1, int(eye_h * 0.2)), (250, 250, 250),
                   -1, cv2.LINE_AA)
        cv2.ellipse(canvas, point(ex, eye_y), point(eye_w, eye_h), 0, 190, 350, (face.skin * 0.45).tolist(),
                    max(1, int(eye_h * 0.25)), cv2.LINE_AA)
        cv2.ellipse(canvas, point(ex, eye_y - eye_h * 1.9), point(eye_w * 1.2, eye_h * 0.9), 0, 200, 340,
                    (face.hair * 0.9).tolist(), max(1, int(a * face.brow_thickness)), cv2.LINE_AA)

    nose_y = cy + b * 0.15
    cv2.line(canvas, point(cx + a * 0.05, eye_y + eye_h), point(cx + a * 0.1, nose_y), (face.skin * 0.82).tolist(),
             max(1, int(a * 0.04)), cv2.LINE_AA)
    for side in (-1, 1):
        cv2.ellipse(canvas, point(cx + side * a * 0.1, nose_y), point(a * 0.06, a * 0.035), 0, 0, 360,
                    (face.skin * 0.5).tolist(), -1, cv2.LINE_AA)

    mouth_y = cy + b * 0.45
    mouth_w = a * face.mouth_width
    cv2.ellipse(canvas, point(cx, mouth_y), point(mouth_w, a * 0.09), 0, 0, 360, face.lips.tolist(), -1, cv2.LINE_AA)
    curve = int(max(1, a * 0.12 * abs(face.smile)))
    start, end = (10, 170) if face.smile >= 0 else (190, 350)
    cv2.ellipse(canvas, point(cx, mouth_y - (curve if face.smile >= 0 else -curve)), point(mouth_w * 0.95, curve), 0,
                start, end, (face.lips * 0.45).tolist(), max(1, int(a * 0.03)), cv2.LINE_AA)


def _matched_donor(target: Identity, rng: np.random.Generator) -> Identity:
    """Another person with the target's skin tone, as swap pipelines pick and colour-match donors."""
    skin = target.skin * rng.uniform(0.96, 1.04, 3)
    return replace(_random_identity(rng), skin=skin, lips=skin * np.array([0.85, 0.55, 0.55]) * rng.uniform(0.9, 1.1))


def render_scene(identity: Identity, geometry: FaceGeometry, size: int, rng: np.random.Generator) -> np.ndarray:
    """A clean (noise-free) float32 RGB picture of a person, anti-aliased, values in [0, 255]."""
    big = size * SUPERSAMPLE
    scale = float(SUPERSAMPLE)
    canvas = _background(rng, big)
    big_geometry = FaceGeometry(geometry.cx * scale, geometry.cy * scale, geometry.half_width * scale,
                                geometry.half_height * scale)
    _draw_head(canvas, identity, big_geometry, rng)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


def camera(scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lens blur plus sensor noise (luminance and chroma), as every real photo has."""
    blurred = cv2.GaussianBlur(scene, (0, 0), rng.uniform(0.35, 0.7))
    sigma = rng.uniform(2.5, 6.0)
    luminance = rng.standard_normal(scene.shape[:2]).astype(np.float32)[..., None] * sigma
    chroma = rng.standard_normal(scene.shape).astype(np.float32) * sigma * 0.4
    return np.clip(blurred + luminance + chroma, 0, 255)


def blend_mask(geometry: FaceGeometry, size: int, rng: np.random.Generator) -> np.ndarray:
    """Soft [0, 1] mask over the inner face: a deformed ellipse with a blurred seam."""
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    radius = 1 + 0.08 * rng.standard_normal(24)
    radius = np.convolve(np.concatenate([radius[-2:], radius, radius[:2]]), np.ones(5) / 5, mode="valid")
    shrink = rng.uniform(0.78, 0.95)
    xs = geometry.cx + geometry.half_width * shrink * radius * np.cos(angles)
    ys = geometry.cy + geometry.half_height * 0.1 + geometry.half_height * shrink * radius * np.sin(angles)
    mask = np.zeros((size, size), np.float32)
    cv2.fillPoly(mask, [np.stack([xs, ys], axis=1).round().astype(np.int32)], 1.0, cv2.LINE_AA)
    return cv2.GaussianBlur(mask, (0, 0), rng.uniform(1.5, 5.0))[..., None]


def face_swap(
    target_photo: np.ndarray, geometry: FaceGeometry, donor: Identity, rng: np.random.Generator
) -> np.ndarray:
    """Pastes the donor's face into the target photo the way a face-swap generator does.

    The donor face is generated at a fraction of the resolution and upsampled (no native sensor
    noise, interpolation artifacts), its colour is matched imperfectly, and it is blended through
    a soft, deformed mask: the three traces the Laplacian channel is there to expose.
    """
    size = target_photo.shape[0]
    low = int(round(size / rng.uniform(1.6, 2.8)))
    low_geometry = FaceGeometry(*(value * low / size for value in vars(geometry).values()))
    generated = camera(render_scene(donor, low_geometry, low, rng), rng)
    interpolation = [cv2.INTER_LINEAR, cv2.INTER_CUBIC][rng.integers(2)]
    donor_face = cv2.resize(generated, (size, size), interpolation=interpolation)
    donor_face = donor_face * rng.uniform(0.95, 1.05, 3) + rng.uniform(-6, 6)
    mask = blend_mask(geometry, size, rng)
    return np.clip(donor_face * mask + target_photo * (1 - mask), 0, 255)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a float or uint8 RGB array."""
    bgr = cv2.cvtColor(np.clip(rgb, 0, 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return encoded.tobytes()


def demo_image(config: DemoDataConfig, label: str, index: int) -> bytes:
    """The JPEG bytes of one demo image: a pure function of (seed, label, index)."""
    label_id = {"real": 0, "fake": 1}[label]
    rng = np.random.default_rng([config.seed, label_id, index])
    size = config.image_size
    geometry = _random_geometry(rng, size)
    person = _random_identity(rng)
    photo = camera(render_scene(person, geometry, size, rng), rng)
    if label == "fake":
        photo = face_swap(photo, geometry, _matched_donor(person, rng), rng)
    return encode_jpeg(photo, int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1)))


def write_demo_dataset(out_dir: Path, config: DemoDataConfig) -> Path:
    """Writes real/ and fake/ folders plus manifest.csv; returns the manifest path.

    Every image is its own person (subject), so any split of this set is subject-independent.
    """
    if not 128 <= config.image_size <= 256:
        raise ValueError(f"image_size must be within 128–256 px, got {config.image_size}")
    manifest = out_dir / "manifest.csv"
    rows = []
    for label in ("real", "fake"):
        folder = out_dir / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(config.count):
            path = folder / f"{label}_{index:05d}.jpg"
            path.write_bytes(demo_image(config, label, index))
            rows.append({"path": f"{label}/{path.name}", "label": label, "subject": f"{label}-{config.seed}-{index}"})
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "subject"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write real/, fake/ and manifest.csv into")
    parser.add_argument("--count", type=int, default=DemoDataConfig.count, help="images per class")
    parser.add_argument("--size", type=int, default=DemoDataConfig.image_size, help="image side in px (128–256)")
    parser.add_argument("--seed", type=int, default=DemoDataConfig.seed)
    args = parser.parse_args(argv)
    config = DemoDataConfig(count=args.count, image_size=args.size, seed=args.seed)
    manifest = write_demo_dataset(args.out, config)
    print(f"wrote {2 * config.count} images ({config.count} real, {config.count} fake) and {manifest}")


if __name__ == "__main__":
    main()
