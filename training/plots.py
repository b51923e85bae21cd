"""Report figures for a training run, one PNG each.

Figures are built as `matplotlib.figure.Figure` objects rendered by the Agg canvas, never through
pyplot: no global backend switch, no figure registry to leak, nothing that needs a display. The
curves come from scikit-learn's display classes so they match its metric definitions; the only
number computed here is the ECE in the reliability legend (training.metrics).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from training.metrics import ECE_BINS, expected_calibration_error

DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _series(history: list[dict[str, Any]], key: str) -> list[float]:
    # A key an epoch lacks (an older report, a metric added later) becomes a gap rather than an error.
    return [float(row.get(key, math.nan)) for row in history]


def plot_training_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss (train vs validation) and validation ROC AUC / accuracy per epoch.

    Args:
        history: one dict per epoch with "epoch", "train_loss" and the validation metrics of
            training.metrics.classification_metrics ("loss", "roc_auc", "accuracy", ...).
        path: PNG to write.

    Returns:
        path.

    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    epochs = [row["epoch"] for row in history]
    figure = _new_figure(10, 4)
    losses, scores = figure.subplots(1, 2)
    # Markers keep a one-epoch run visible (a single point draws no line).
    # Not the same quantity: training minimises class-weighted cross-entropy (on fault-injected labels,
    # if any), validation reports plain log loss. Labelled as such, so nobody reads the gap as overfitting.
    losses.plot(epochs, _series(history, "train_loss"), marker="o", label="train (class-weighted CE)")
    losses.plot(epochs, _series(history, "loss"), marker="o", label="validation (log loss)")
    losses.set(title="Loss", xlabel="epoch", ylabel="loss")
    losses.legend()
    scores.plot(epochs, _series(history, "roc_auc"), marker="o", label="ROC AUC")
    scores.plot(epochs, _series(history, "accuracy"), marker="o", label="accuracy")
    scores.set(title="Validation", xlabel="epoch", ylabel="score", ylim=(0.0, 1.02))
    scores.legend()
    for axes in (losses, scores):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # no "epoch 0.96" ticks
        axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_roc(labels: np.ndarray, probability_fake: np.ndarray, path: Path) -> Path:
    """ROC curve of the fake class with its AUC in the legend and title."""
    figure = _new_figure(5, 5)
    axes = figure.subplots()
    display = RocCurveDisplay.from_predictions(labels, probability_fake, pos_label=1, name="detector", ax=axes,
                                               plot_chance_level=True)
    axes.set(title=f"ROC, AUC = {display.roc_auc:.4f}", xlabel="false positive rate (real called fake)",
             ylabel="true positive rate (fakes caught)")
    return _save(figure, path)


def plot_confusion_matrix(confusion: list[list[int]], path: Path,
                          class_names: Sequence[str] = ("real", "fake")) -> Path:
    """Counts [[tn, fp], [fn, tp]] (rows: true class, columns: predicted), as training.metrics.confusion_counts."""
    matrix = np.asarray(confusion, dtype=np.int64)
    if matrix.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion must be {len(class_names)}x{len(class_names)} to match class_names, "
                         f"got shape {matrix.shape}")
    figure = _new_figure(5, 4.5)
    axes = figure.subplots()
    ConfusionMatrixDisplay(matrix, display_labels=list(class_names)).plot(ax=axes, values_format="d", colorbar=True)
    axes.set_title("Confusion matrix")
    return _save(figure, path)


def plot_reliability(labels: np.ndarray, probability_before: np.ndarray, probability_after: np.ndarray, path: Path,
                     bins: int = ECE_BINS) -> Path:
    """Reliability diagram of the probability of fake before and after calibration, ECE of each in the legend."""
    figure = _new_figure(5, 5)
    axes = figure.subplots()
    for name, probability, ref_line in (("before", probability_before, True), ("after", probability_after, False)):
        ece = expected_calibration_error(labels, probability, bins)
        CalibrationDisplay.from_predictions(labels, probability, n_bins=bins, strategy="uniform", pos_label=1,
                                            name=f"{name} calibration (ECE {ece:.3f})", ax=axes, ref_line=ref_line)
    axes.set(title=f"Reliability, {bins} equal-width bins", xlabel="mean predicted probability of fake",
             ylabel="fraction of images that are fake")
    axes.legend(loc="upper left")
    return _save(figure, path)


def plot_roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str = "ROC") -> Path:
    """Several ROC curves on one chart, e.g. clean images and each degradation of them, AUC of each in the legend.

    Args:
        curves: name → (labels, probability_fake); each needs both classes, as a ROC curve does.
        path: PNG to write.
        title: chart title.

    Returns:
        path.

    """
    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    one_class = [name for name, (labels, _) in curves.items() if len(np.unique(labels)) != 2]
    if one_class:
        raise ValueError(f"a ROC curve needs real and fake examples; {one_class} have only one class")
    figure = _new_figure(5.5, 5.5)
    axes = figure.subplots()
    for index, (name, (labels, probability_fake)) in enumerate(curves.items()):
        RocCurveDisplay.from_predictions(labels, probability_fake, pos_label=1, name=name, ax=axes,
                                         plot_chance_level=index == len(curves) - 1)
    axes.set(title=title, xlabel="false positive rate (real called fake)", ylabel="true positive rate (fakes caught)")
    axes.legend(loc="lower right")
    return _save(figure, path)


def plot_score_histogram(labels: np.ndarray, probability_fake: np.ndarray, path: Path,
                         threshold: float | None = None, bins: int = 20) -> Path:
    """Histogram of the probability of fake for real and for fake images, with the decision threshold marked.

    Shows what one AUC hides: how far apart the classes are, and how many of each sit near the threshold.
    Either class may be absent (e.g. a real-only split), which leaves its bars out.
    """
    labels = np.asarray(labels)
    probability_fake = np.asarray(probability_fake, dtype=np.float64)
    if labels.shape != probability_fake.shape or labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels and probability_fake must be non-empty 1-D arrays of equal length, got shapes "
                         f"{labels.shape} and {probability_fake.shape}")
    figure = _new_figure(6, 4)
    axes = figure.subplots()
    edges = np.linspace(0.0, 1.0, bins + 1)
    for label, name, colour in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
        scores = probability_fake[labels == label]
        if len(scores):
            axes.hist(scores, bins=edges, alpha=0.55, color=colour, label=f"{name} ({len(scores)})")
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    axes.set(title="Scores by true class", xlabel="probability of fake", ylabel="images", xlim=(0.0, 1.0))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend()
    axes.grid(alpha=0.3)
    return _save(figure, path)
