"""Training one model: a fit that diverges or keeps no epoch ends in one line, not a traceback.

The fit itself is a stand-in here (the real one runs in ``test_train.py`` and
``test_encoders.py``); what is tested is what ``train_model`` makes of its outcome.
"""

from __future__ import annotations

import types

import keras_tuner
import pytest

from shipseg.core import errors
from shipseg.train.fitting import AtomicCheckpoint, fit_keeping_the_best

SETTINGS = types.SimpleNamespace(epochs=3, verbose=0)


class StandInBuilder:
    """A hypermodel whose ``fit`` plays epochs into the callbacks with the given logs."""

    def __init__(self, epoch_logs: list[dict], failure: Exception | None = None):
        self.epoch_logs, self.failure = epoch_logs, failure

    def fit(self, hp, model, dataset, epochs, callbacks, verbose):
        for epoch, logs in enumerate(self.epoch_logs):
            for callback in callbacks:
                callback.on_epoch_end(epoch, logs)
        if self.failure is not None:
            raise self.failure


class SavableModel:
    """Saves a marker; has no layers (so no encoder to unfreeze while saving)."""

    layers: tuple = ()

    def save(self, path):
        with open(path, "w") as file:
            file.write("weights")


def fit(tmp_path, epoch_logs, failure=None):
    checkpoint = AtomicCheckpoint(tmp_path / "model.keras", "val_dice")
    checkpoint.set_model(SavableModel())
    builder = StandInBuilder(epoch_logs, failure)
    fit_keeping_the_best(builder, None, None, None, SETTINGS, [checkpoint], checkpoint)
    return checkpoint


def test_the_best_epoch_by_the_monitor_is_kept(tmp_path):
    logs = [
        {"loss": 1.0, "val_dice": 0.2},
        {"loss": 0.8, "val_dice": 0.5},
        {"loss": 0.7, "val_dice": 0.4},
    ]
    assert fit(tmp_path, logs).best_epoch == 1
    assert (tmp_path / "model.keras").read_text() == "weights"


def test_a_training_in_which_no_epoch_had_a_finite_monitor_is_a_one_line_error(tmp_path):
    logs = [{"loss": 1.0, "val_dice": float("nan")}, {"loss": float("nan"), "val_dice": 0.5}]
    with pytest.raises(
        errors.UserError, match="not written, no epoch had a finite loss and val_dice"
    ):
        fit(tmp_path, logs)
    assert not (tmp_path / "model.keras").exists()


def test_a_diverged_training_names_the_best_epoch_it_kept_before(tmp_path):
    diverged = keras_tuner.errors.FailedTrialError("the loss became NaN at epoch 2")
    logs = [{"loss": 1.0, "val_dice": 0.3}]
    with pytest.raises(errors.UserError) as raised:
        fit(tmp_path, logs, diverged)
    assert str(raised.value) == (
        "training stopped: the loss became NaN at epoch 2; "
        f"the best epoch before it (1) is in {tmp_path / 'model.keras'} "
        "until the next run discards it"
    )
