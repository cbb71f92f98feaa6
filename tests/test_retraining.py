"""What train.py runs (``shipseg.train.run``): its settings checked before any work.

The trainings themselves run as users start them, in ``test_train.py``.
"""

from __future__ import annotations

import pytest

from shipseg.core import errors
from shipseg.train.run import TrainOptions


@pytest.mark.parametrize(
    "options, error",
    [
        ({"only_folds": [1]}, "--only-folds needs --folds"),
        ({"folds": 3, "only_folds": [0, 3]}, "numbers the folds 0 to 2"),
        ({"folds": 3, "full": True}, "--full cannot go with --folds"),
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"val_images": 0}, "--val-images must be at least 1"),
        ({"images_per_epoch": 0}, "--images-per-epoch must be at least 1"),
        ({"patience": -1}, "--patience must be at least 0"),
    ],
)
def test_settings_out_of_their_range_or_together_are_refused_naming_the_option(options, error):
    with pytest.raises(errors.UserError, match=error):
        TrainOptions(**options)
