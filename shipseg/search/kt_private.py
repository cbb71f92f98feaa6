"""Keras Tuner's private API, in one place: what the isolated tuner needs that is not public.

Keras Tuner (1.4) keeps these under ``keras_tuner.src`` or as underscore methods of ``Tuner``,
``Oracle`` and ``SaveBestEpoch``. Everything else imports them from here (``tests/test_limits.py``
fails on a private Keras Tuner name anywhere else), and ``tests/test_kt_private.py`` fails
loudly, naming the missing piece, if an upgrade moves one of them.
"""

from __future__ import annotations

import json
import os

import keras_tuner
from keras_tuner.src.engine import tuner_utils

from shipseg.core import atomic

# The best-epoch checkpoint Keras Tuner's own ``run_trial`` adds to every fit.
SaveBestEpoch = tuner_utils.SaveBestEpoch
# Checks that a fit's history holds the objective; raises a clear error if not.
validate_trial_results = tuner_utils.validate_trial_results
# Turns HyperParameters into TensorBoard's HParams for the HParams dashboard.
convert_hyperparams_to_hparams = tuner_utils.convert_hyperparams_to_hparams


def checkpoint_path(tuner: keras_tuner.Tuner, trial_id: str) -> str:
    """Where a trial's best-epoch weights are saved (and a promoted trial reads them)."""
    return tuner._get_checkpoint_fname(trial_id)


def build_config_path(tuner: keras_tuner.Tuner, trial_id: str) -> str:
    """Where a trial's model build config is saved (Keras Tuner reloads models with it)."""
    return tuner._get_build_config_fname(trial_id)


def tensorboard_dir(tuner: keras_tuner.Tuner, log_dir: str, trial_id: str, execution: int) -> str:
    """The TensorBoard folder of one execution of one trial, as Keras Tuner names it.

    Args:
        tuner: The tuner whose naming is used (its private ``_get_tensorboard_dir``).
        log_dir: The user's TensorBoard callback's ``log_dir``, the search-wide folder
            (``<project>/logs``) that every trial's runs go under.
        trial_id: The trial's id as Keras Tuner gives it (e.g. ``"07"``).
        execution: The execution's index within the trial, from 0 (``--executions-per-trial``).

    Returns:
        ``<log_dir>/<trial_id>/execution<execution>`` in Keras Tuner 1.4: one TensorBoard run
        per execution, so repeated executions of a trial do not write over each other.
    """
    return tuner._get_tensorboard_dir(log_dir, trial_id, execution)


def copy_callbacks(tuner: keras_tuner.Tuner, callbacks: list) -> list:
    """Deep copies of the user's callbacks for one execution, as Keras Tuner makes them."""
    return tuner._deepcopy_callbacks(callbacks)


def oracle_path(oracle: keras_tuner.Oracle) -> str:
    """The oracle's own state file (``oracle.json``)."""
    return oracle._get_oracle_fname()


def trial_path(oracle: keras_tuner.Oracle, trial_id: str) -> str:
    """A trial's state file (``trial_<id>/trial.json``), its folder created."""
    return os.path.join(oracle._get_trial_dir(trial_id), "trial.json")


def tuner_path(tuner: keras_tuner.Tuner) -> str:
    """The tuner's own state file (``<tuner_id>.json``)."""
    return tuner._get_tuner_fname()


def is_worker(tuner: keras_tuner.Tuner) -> bool:
    """Whether this tuner is a worker of a distributed search (its oracle is the chief's)."""
    return tuner._is_worker()


class AtomicSaveBestEpoch(SaveBestEpoch):
    """Keras Tuner's best-epoch checkpoint, written atomically (its private ``_save_model``).

    A trial killed while saving never leaves a half-written checkpoint for a promoted trial to
    load, and a reader of the old checkpoint never blocks the writer of the new one.
    """

    def _save_model(self):
        atomic.write_atomically(self.filepath, self.model.save_weights, suffix=".weights.h5")


class AtomicOracleFiles:
    """Mixed in before a Keras Tuner oracle: its JSON state files written atomically.

    Keras Tuner writes ``oracle.json`` and each ``trial.json`` in place (the latter in its
    private ``_save_trial``); a kill during a write would leave a file that the next resume
    cannot read. Same content, written atomically.
    """

    def save(self):  # noqa: D102
        atomic.write_text_atomically(oracle_path(self), json.dumps(self.get_state()))

    def _save_trial(self, trial):
        atomic.write_text_atomically(
            trial_path(self, trial.trial_id), json.dumps(trial.get_state())
        )


class StartsFromValues:
    """Mixed in before a Keras Tuner oracle: its first new configuration is ``start_values``.

    Every algorithm draws its new configurations in the private ``_random_values`` (Hyperband's
    first rounds, random search, Bayesian optimisation's initial points); this one returns the
    start there until a trial holds it. Keras Tuner records every configuration it hands out
    (``_duplicate``), in its saved state too, so a resumed search does not start again.
    """

    start_values: dict | None = None

    def _random_values(self):
        if self.start_values is not None and not self._duplicate(self.start_values):
            return dict(self.start_values)
        return super()._random_values()
