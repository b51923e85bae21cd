"""Model selection by validation ROC AUC, with patience-based early stopping."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class EarlyStopping:
    """Tracks the best epoch; says when `patience` epochs in a row brought no better score.

    AUC, not loss, picks the epoch: the weighted loss trades classes off by design, while AUC
    measures the ranking that calibration and the threshold are built on afterwards.
    """

    patience: int
    best_score: float = -math.inf
    best_epoch: int = 0
    stale_epochs: int = 0

    def update(self, epoch: int, score: float) -> bool:
        """Records an epoch's score; True when it is the best so far (the first epoch always is; NaN never)."""
        best = -math.inf if math.isnan(self.best_score) else self.best_score
        if self.best_epoch == 0 or score > best:
            self.best_score, self.best_epoch, self.stale_epochs = score, epoch, 0
            return True
        self.stale_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Whether patience has run out (patience 0 never stops)."""
        return 0 < self.patience <= self.stale_epochs
