"""Keras Tuner's private API, used only through ``shipseg.search.kt_private``: still where it was."""

import inspect
import json
from pathlib import Path

import keras_tuner
import pytest

from shipseg.core import atomic
from shipseg.search import kt_private, tuning

# The private methods the adapter calls (or the tuner's oracle overrides), with their arguments.
PRIVATE_METHODS = {
    ("Tuner", "_get_checkpoint_fname"): ["trial_id"],
    ("Tuner", "_get_build_config_fname"): ["trial_id"],
    ("Tuner", "_get_tensorboard_dir"): ["logdir", "trial_id", "execution"],
    ("Tuner", "_deepcopy_callbacks"): ["callbacks"],
    ("Tuner", "_get_tuner_fname"): [],
    ("Tuner", "_is_worker"): [],
    ("Oracle", "_get_oracle_fname"): [],
    ("Oracle", "_get_trial_dir"): ["trial_id"],
    ("Oracle", "_save_trial"): ["trial"],
    ("Oracle", "_random_values"): [],
    ("Oracle", "_duplicate"): ["values"],
}


@pytest.mark.parametrize(("owner", "name"), sorted(PRIVATE_METHODS))
def test_the_private_methods_the_adapter_relies_on_still_exist(owner, name):
    method = getattr(getattr(keras_tuner, owner), name, None)
    where = f"keras_tuner.{owner}.{name}"
    assert method is not None, f"{where} is gone: update shipseg/search/kt_private.py"
    parameters = list(inspect.signature(method).parameters)[1:]
    assert parameters == PRIVATE_METHODS[owner, name], (
        f"{where} now takes {parameters}: update shipseg/search/kt_private.py"
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


def test_the_best_epoch_checkpoint_and_the_trial_files_go_through_the_atomic_writers(
    tmp_path, monkeypatch
):
    import keras

    written = []
    monkeypatch.setattr(
        kt_private.atomic,
        "write_atomically",
        lambda path, write, suffix=None: written.append(str(path)) or write(str(path)),
    )
    monkeypatch.setattr(
        kt_private.atomic, "write_text_atomically", lambda path, text: written.append(str(path))
    )
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = tmp_path / "checkpoint.weights.h5"
    checkpoint = kt_private.AtomicSaveBestEpoch(keras_tuner.Objective("loss", "min"), str(path))
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"loss": 1.0})  # Keras Tuner calls its _save_model here
    assert written == [str(path)] and path.is_file()

    class Oracle(kt_private.AtomicOracleFiles, keras_tuner.oracles.RandomSearchOracle):
        pass

    oracle = Oracle(objective="loss", max_trials=1)
    oracle._set_project_dir(str(tmp_path), "project")
    trial = oracle.create_trial("tuner0")
    oracle.update_trial(trial.trial_id, {"loss": 1.0})  # Keras Tuner calls its _save_trial
    assert kt_private.trial_path(oracle, trial.trial_id) in written


def test_the_searchs_oracle_writes_its_state_and_its_trials_atomically(tmp_path, monkeypatch):
    written = []
    real = atomic.write_text_atomically

    def spy(path, text):
        written.append(Path(path).relative_to(tmp_path))
        real(path, text)

    monkeypatch.setattr(atomic, "write_text_atomically", spy)
    oracle = tuning.BudgetedHyperbandOracle(objective="val_dice", max_epochs=2, factor=2)
    oracle._set_project_dir(str(tmp_path), "project")
    trial = oracle.create_trial("tuner0")
    oracle.save()
    oracle._save_trial(trial)
    assert Path("project/oracle.json") in written
    assert Path(f"project/trial_{trial.trial_id}/trial.json") in written
    reloaded = json.loads((tmp_path / "project" / "oracle.json").read_text())
    assert reloaded == json.loads(json.dumps(oracle.get_state()))


def _start_tuner(directory, overwrite: bool) -> keras_tuner.Tuner:
    def build(hp):
        hp.Int("a", 1, 9, default=5)
        hp.Choice("b", ["x", "y"], default="y")
        hp.Float("c", 0.0, 1.0, default=0.25)

    oracle = tuning.BudgetedRandomSearchOracle(
        objective=keras_tuner.Objective("score", "max"), max_trials=10, seed=1
    )
    oracle.start_values = {"a": 3, "b": "x", "c": 0.5}
    return keras_tuner.Tuner(
        oracle=oracle, hypermodel=build, directory=str(directory), project_name="p",
        overwrite=overwrite,
    )  # fmt: skip


def test_the_oracles_first_trial_is_the_start_and_a_resumed_search_does_not_start_again(
    tmp_path,
):
    tuner = _start_tuner(tmp_path, overwrite=True)
    first = tuner.oracle.create_trial("tuner0")
    assert first.hyperparameters.values == {"a": 3, "b": "x", "c": 0.5}
    tuner.oracle.update_trial(first.trial_id, {"score": 0.5})
    tuner.oracle.end_trial(first)
    second = tuner.oracle.create_trial("tuner0")
    assert second.hyperparameters.values != first.hyperparameters.values
    tuner.save()
    resumed = _start_tuner(tmp_path, overwrite=False)
    again = resumed.oracle.create_trial("tuner0")
    assert again.hyperparameters.values != first.hyperparameters.values
    assert {t.trial_id for t in resumed.oracle.trials.values()} == {first.trial_id, second.trial_id}
