import cv2
import numpy as np
import pytest

from handler.forensics import laplacian_channel
from training.demo_data import DemoDataConfig, _random_geometry, demo_image, write_demo_dataset


def decode(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_same_seed_gives_identical_files_and_other_seeds_differ(tmp_path):
    config = DemoDataConfig(count=3, image_size=128, seed=5)
    write_demo_dataset(tmp_path / "a", config)
    write_demo_dataset(tmp_path / "b", config)
    for label in ("real", "fake"):
        for index in range(3):
            name = f"{label}/{label}_{index:05d}.jpg"
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = DemoDataConfig(count=3, image_size=128, seed=6)
    assert demo_image(config, "real", 0) != demo_image(other, "real", 0)


def test_layout_sizes_and_manifest(tmp_path):
    manifest = write_demo_dataset(tmp_path, DemoDataConfig(count=4, image_size=160, seed=1))
    for label in ("real", "fake"):
        files = sorted((tmp_path / label).glob("*.jpg"))
        assert len(files) == 4
        assert decode(files[0].read_bytes()).shape == (160, 160, 3)
    lines = manifest.read_text().splitlines()
    assert lines[0] == "path,label,subject" and len(lines) == 9
    assert len({line.split(",")[2] for line in lines[1:]}) == 8  # every image is its own subject


@pytest.mark.parametrize("size", [64, 300])
def test_image_size_outside_128_to_256_is_refused(tmp_path, size):
    with pytest.raises(ValueError, match="128–256"):
        write_demo_dataset(tmp_path, DemoDataConfig(count=1, image_size=size))


def face_to_surround_laplacian_ratio(config: DemoDataConfig, label: str, index: int) -> float:
    """Laplacian energy inside the pasted-face region over that of the background."""
    rgb = decode(demo_image(config, label, index))
    geometry = _random_geometry(np.random.default_rng([config.seed, {"real": 0, "fake": 1}[label], index]),
                                config.image_size)
    energy = laplacian_channel(rgb)
    yy, xx = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]]
    inner = ((xx - geometry.cx) / (0.5 * geometry.half_width)) ** 2 + (
        (yy - geometry.cy - 0.1 * geometry.half_height) / (0.5 * geometry.half_height)
    ) ** 2 < 1
    background = (yy < geometry.cy) & (np.abs(xx - geometry.cx) > 1.4 * geometry.half_width)
    return float(np.median(energy[inner]) / np.median(energy[background]))


def test_fakes_carry_a_resampling_trace_the_laplacian_channel_sees():
    # The pasted face lacks native sensor noise: its high-frequency energy drops relative to the rest.
    config = DemoDataConfig(image_size=160, seed=3)
    real = [face_to_surround_laplacian_ratio(config, "real", i) for i in range(12)]
    fake = [face_to_surround_laplacian_ratio(config, "fake", i) for i in range(12)]
    assert np.median(fake) < 0.7 * np.median(real)
