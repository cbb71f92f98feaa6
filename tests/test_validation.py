"""Per-epoch validation on whole images (shipseg/train/validation.py)."""

from __future__ import annotations

import keras
import keras_tuner
import numpy as np
import pandas as pd
import pytest

import hypermodel
from shipseg.train.validation import WholeImageValidation


def diverged_model() -> keras.Model:
    """A U-Net whose output layer's bias is NaN: every prediction is NaN."""
    model = hypermodel.build_unet(levels=2, base_filters=4)
    kernel, bias = model.get_layer("ship_probability").get_weights()
    model.get_layer("ship_probability").set_weights([kernel, np.full_like(bias, np.nan)])
    return model


def test_predictions_that_became_nan_stop_the_trial_saying_so(synthetic_table):
    validation = WholeImageValidation(synthetic_table.head(4))
    validation.set_model(diverged_model())
    with pytest.raises(keras_tuner.errors.FailedTrialError, match="NaN or infinite"):
        validation.on_epoch_end(0, {})


def test_each_images_scores_are_written_when_the_monitored_score_improves_only(
    synthetic_table, tmp_path
):
    table = synthetic_table.head(6)
    path = tmp_path / "val_images.csv"
    validation = WholeImageValidation(table, monitor="val_f2", image_scores_path=str(path))
    validation.set_model(hypermodel.build_unet(levels=2, base_filters=4))
    logs = {}
    validation.on_epoch_end(0, logs)
    written = pd.read_csv(path)
    assert sorted(written.ImageId) == sorted(table.ImageId)
    assert written.f2.mean() == pytest.approx(logs["val_f2"])
    assert written.f2_tuned.mean() == pytest.approx(logs["val_f2_tuned"])
    path.unlink()
    validation.on_epoch_end(1, {})  # the same model: no improvement, nothing written
    assert not path.exists()
