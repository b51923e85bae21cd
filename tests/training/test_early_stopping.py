import math

from training.early_stopping import EarlyStopping


def test_tracks_the_best_epoch_and_stops_after_patience_runs_out():
    stopper = EarlyStopping(patience=2)
    decisions = [(stopper.update(epoch, score), stopper.should_stop)
                 for epoch, score in enumerate([0.6, 0.7, 0.7, 0.65], start=1)]
    assert decisions == [(True, False), (True, False), (False, False), (False, True)]
    assert (stopper.best_epoch, stopper.best_score) == (2, 0.7)


def test_an_improvement_resets_the_patience():
    stopper = EarlyStopping(patience=2)
    for epoch, score in enumerate([0.5, 0.4, 0.6, 0.55], start=1):
        stopper.update(epoch, score)
    assert not stopper.should_stop and stopper.best_epoch == 3


def test_zero_patience_never_stops_and_nan_never_wins():
    stopper = EarlyStopping(patience=0)
    assert stopper.update(1, math.nan)  # the first epoch is kept even without a score
    for epoch in range(2, 30):
        stopper.update(epoch, math.nan)
    assert not stopper.should_stop and stopper.best_epoch == 1
    assert stopper.update(30, 0.5) and stopper.best_epoch == 30
