"""Keras Tuner's private API, used only through ``shipseg.kt_private``: still where it was."""

import inspect

import keras_tuner
import pytest

from shipseg import kt_private

# The private Tuner methods the adapter calls, with the arguments it passes.
TUNER_METHODS = {
    "_get_checkpoint_fname": ["trial_id"],
    "_get_build_config_fname": ["trial_id"],
    "_get_tensorboard_dir": ["logdir", "trial_id", "execution"],
    "_deepcopy_callbacks": ["callbacks"],
    "_get_tuner_fname": [],
    "_is_worker": [],
}
# The private Oracle methods the adapter calls or the tuner's oracle overrides.
ORACLE_METHODS = {"_get_oracle_fname": [], "_get_trial_dir": ["trial_id"], "_save_trial": ["trial"]}


@pytest.mark.parametrize("name", sorted(TUNER_METHODS))
def test_the_private_tuner_methods_the_adapter_calls_still_exist(name):
    method = getattr(keras_tuner.Tuner, name, None)
    assert method is not None, f"keras_tuner.Tuner.{name} is gone: update shipseg/kt_private.py"
    parameters = list(inspect.signature(method).parameters)[1:]
    assert parameters == TUNER_METHODS[name], (
        f"keras_tuner.Tuner.{name} now takes {parameters}: update shipseg/kt_private.py"
    )


@pytest.mark.parametrize("name", sorted(ORACLE_METHODS))
def test_the_private_oracle_methods_still_exist(name):
    method = getattr(keras_tuner.Oracle, name, None)
    assert method is not None, f"keras_tuner.Oracle.{name} is gone: update shipseg/kt_private.py"
    parameters = list(inspect.signature(method).parameters)[1:]
    assert parameters == ORACLE_METHODS[name], (
        f"keras_tuner.Oracle.{name} now takes {parameters}: update shipseg/kt_private.py"
    )


def test_the_private_helpers_the_adapter_imports_are_what_it_expects():
    import keras

    assert issubclass(kt_private.SaveBestEpoch, keras.callbacks.Callback)
    assert {"objective", "filepath"} <= set(inspect.signature(kt_private.SaveBestEpoch).parameters)
    assert callable(kt_private.validate_trial_results)
    assert callable(kt_private.convert_hyperparams_to_hparams)


def test_the_adapter_names_the_paths_keras_tuner_uses(tmp_path):
    tuner = keras_tuner.RandomSearch(
        hypermodel=lambda hp: None,
        objective="loss",
        max_trials=1,
        directory=str(tmp_path),
        project_name="adapter",
    )
    assert kt_private.checkpoint_path(tuner, "7").startswith(tuner.get_trial_dir("7"))
    assert kt_private.build_config_path(tuner, "7").startswith(tuner.get_trial_dir("7"))
    assert "7" in kt_private.tensorboard_dir(tuner, str(tmp_path / "logs"), "7", 0)
    assert kt_private.copy_callbacks(tuner, []) == []
