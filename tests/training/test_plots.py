import matplotlib.image
import matplotlib.pyplot
import numpy as np
import pytest

from training.metrics import confusion_counts
from training.plots import (
    plot_confusion_matrix,
    plot_reliability,
    plot_roc,
    plot_roc_curves,
    plot_score_histogram,
    plot_training_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

rng = np.random.default_rng(0)
LABELS = rng.integers(0, 2, 300)
PROBABILITY = np.clip(0.5 + 0.3 * (LABELS - 0.5) + 0.2 * rng.normal(size=300), 0, 1)
OVER_CONFIDENT = 1 / (1 + np.exp(-8 * (PROBABILITY - 0.5)))
HISTORY = [{"epoch": epoch, "train_loss": 0.7 / epoch, "loss": 0.8 / epoch, "roc_auc": 1 - 0.3 / epoch,
            "accuracy": 1 - 0.4 / epoch, "f1": 0.5} for epoch in range(1, 6)]

PLOTS = {
    "training_curves": lambda path: plot_training_curves(HISTORY, path),
    "training_curves_one_epoch": lambda path: plot_training_curves(HISTORY[:1], path),
    "training_curves_no_validation_loss": lambda path: plot_training_curves(
        [{k: v for k, v in row.items() if k != "loss"} for row in HISTORY], path),
    "roc": lambda path: plot_roc(LABELS, PROBABILITY, path),
    "confusion_matrix": lambda path: plot_confusion_matrix(confusion_counts(LABELS, PROBABILITY, 0.5), path),
    "reliability": lambda path: plot_reliability(LABELS, OVER_CONFIDENT, PROBABILITY, path),
    "roc_curves": lambda path: plot_roc_curves({"clean": (LABELS, PROBABILITY), "degraded": (LABELS, OVER_CONFIDENT)},
                                               path),
    "score_histogram": lambda path: plot_score_histogram(LABELS, PROBABILITY, path, threshold=0.5),
    "score_histogram_real_only": lambda path: plot_score_histogram(np.zeros(50, int), PROBABILITY[:50], path),
}


def _assert_is_a_real_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert height >= 300 and width >= 300
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas


@pytest.mark.parametrize("name", PLOTS)
def test_each_plot_writes_a_png(name, tmp_path):
    path = tmp_path / "nested" / f"{name}.png"  # parent folders are created
    assert PLOTS[name](path) == path
    _assert_is_a_real_png(path)


def test_plots_leave_pyplot_alone(tmp_path):
    before = matplotlib.get_backend(), matplotlib.pyplot.get_fignums()
    for name, plot in PLOTS.items():
        plot(tmp_path / f"{name}.png")
    assert (matplotlib.get_backend(), matplotlib.pyplot.get_fignums()) == before


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="history is empty"):
        plot_training_curves([], tmp_path / "curves.png")
    with pytest.raises(ValueError, match="2x2"):
        plot_confusion_matrix([[1, 2, 3]], tmp_path / "confusion.png")
    assert not list(tmp_path.iterdir())


def test_roc_curves_draw_one_line_per_condition(tmp_path):
    # Two conditions with different curves: the second must not hide the first.
    path = plot_roc_curves({"perfect": (LABELS, LABELS.astype(float)), "chance": (LABELS, rng.random(300))},
                           tmp_path / "roc.png")
    image = matplotlib.image.imread(path)[..., :3]
    reference = plot_roc_curves({"perfect": (LABELS, LABELS.astype(float))}, tmp_path / "one.png")
    assert np.abs(image - matplotlib.image.imread(reference)[..., :3]).sum() > 100  # the second curve was drawn


def test_new_plots_refuse_what_they_cannot_draw(tmp_path):
    with pytest.raises(ValueError, match="curves is empty"):
        plot_roc_curves({}, tmp_path / "roc.png")
    with pytest.raises(ValueError, match=r"\['real only'\] have only one class"):
        plot_roc_curves({"fine": (LABELS, PROBABILITY), "real only": (np.zeros(5, int), np.full(5, 0.2))},
                        tmp_path / "roc.png")
    with pytest.raises(ValueError, match="equal length"):
        plot_score_histogram(LABELS, PROBABILITY[:10], tmp_path / "hist.png")
    assert not list(tmp_path.iterdir())
