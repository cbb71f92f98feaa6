"""The isolated tuner's pieces that run inside a trial process, called directly."""

import keras
import keras_tuner
import numpy as np

import hypermodel
from shipseg.search import tuning


def execution(builder, hp, tmp_path, warm_start=None) -> tuning.TrialExecution:
    return tuning.TrialExecution(
        trial_id="0001",
        hyperparameters=hp,
        build_index=0,
        builder=builder,
        callbacks=[],
        fit_kwargs={},
        warm_start_weights=warm_start,
        build_config_path=str(tmp_path / "build_config.json"),
        multi_gpu=False,
    )


def test_a_promoted_trial_continues_with_the_weights_and_optimizer_state_it_saved(tmp_path):
    builder = hypermodel.ShipUNetHyperModel(
        hypermodel.search_space(["levels=2", "base_filters=4", "ship_loss_weight=0"])
    )
    hp = keras_tuner.HyperParameters()
    parent = tuning._build_model(execution(builder, hp, tmp_path))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    masks = (rng.uniform(size=(4, 32, 32, 1)) > 0.9).astype("float32")
    parent.fit(images, masks, epochs=2, verbose=0)
    weights = tmp_path / "checkpoint.weights.h5"
    parent.save_weights(weights)

    child = tuning._build_model(execution(builder, hp, tmp_path, str(weights)))
    for saved, loaded in zip(parent.weights, child.weights, strict=True):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(saved), keras.ops.convert_to_numpy(loaded)
        )
    assert int(child.optimizer.iterations) == int(parent.optimizer.iterations) == 2
    for saved, loaded in zip(parent.optimizer.variables, child.optimizer.variables, strict=True):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(saved), keras.ops.convert_to_numpy(loaded)
        )
    assert (tmp_path / "build_config.json").is_file()
