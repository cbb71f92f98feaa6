"""The isolated tuner: Keras Tuner's search algorithms, each trial in a fresh process.

``IsolatedTuner`` is Keras Tuner's ``Tuner`` with one of Keras Tuner's oracles (Hyperband, random
search or Bayesian optimisation, see ``ORACLES``) made to respect a wall-time budget
(``BudgetedOracle``). Its ``run_trial`` does what Keras Tuner's own Hyperband does (a best-epoch
checkpoint, copies of the callbacks, a warm start for promoted trials), but sends each execution
to ``execute_trial`` in a fresh process (``shipseg.search.isolation``), and writes how long it took and
how much memory it used beside the trial (``timing.json``).

Each trial's model is also timed as it would be deployed (``shipseg.predict.latency``) before
it trains; with a latency budget, a model over it is not trained at all: the trial reports
``OVER_LATENCY_SCORE``, below any real score, so no algorithm prefers it (Hyperband promotes
one only when no trained trial is left to promote, and its child skips training too), and
``timing.json`` says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import resource
import sys
import time
import zlib
from pathlib import Path

from shipseg.core import runtime  # noqa: I001  (first: the fork server imports this module)

runtime.import_tensorflow_quietly()

import keras
import keras_tuner
import pandas as pd
from keras_tuner import oracles

from shipseg.core import atomic, budget
from shipseg.data import inputs
from shipseg.model import unet
from shipseg.predict import latency, prediction
from shipseg.search import evidence, isolation, kt_private
from shipseg.train.hypermodel import ShipUNetHyperModel


@dataclasses.dataclass
class TrainingData:
    """What a trial's process needs to rebuild the training stream (tf.data cannot be pickled)."""

    table: pd.DataFrame
    input_config: inputs.InputConfig
    seed: int


# What a trial over the latency budget reports to the oracle: every objective lies in [0, 1].
OVER_LATENCY_SCORE = -1.0


@dataclasses.dataclass(frozen=True)
class LatencyCheck:
    """How each trial's model is timed, and the latency budget it must meet (or None)."""

    protocol: latency.LatencyProtocol = latency.LatencyProtocol()
    max_ms: float | None = None

    def over(self, record: dict) -> bool:
        """Whether a timing record (``latency.Latency`` as a dict) is over the budget."""
        return self.max_ms is not None and record["median_ms"] > self.max_ms


@dataclasses.dataclass
class TrialExecution:
    """One execution of one trial: everything its process needs, picklable."""

    trial_id: str
    hyperparameters: keras_tuner.HyperParameters
    build_index: int
    builder: ShipUNetHyperModel
    callbacks: list
    fit_kwargs: dict
    warm_start_weights: str | None
    build_config_path: str
    multi_gpu: bool
    deadline: float | None = None
    latency_check: LatencyCheck = LatencyCheck()
    known_latency: dict | None = None


def training_stream(data: TrainingData):
    """Builds the training stream in a trial process, before its model.

    Run as ``isolation.run_in_fresh_process``'s ``prepare``: a stream that cannot be built
    would fail every trial the same way, so it stops the search instead.
    """
    import tensorflow as tf

    # A GPU may be shared with other workers' trials: take its memory as needed, not all of it.
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    runtime.configure_cpu_replicas()  # before the stream starts TensorFlow's devices
    return inputs.training_dataset(data.table, data.input_config, data.seed)


def _hparams_callback(execution: TrialExecution, callbacks: list) -> list:
    """TensorBoard's HParams callback beside the trial's TensorBoard one (if it has one).

    Made in the trial process: it opens its summary writer at once, which cannot be pickled.
    """
    from tensorboard.plugins.hparams import api as hparams_api

    tensorboard = next((c for c in callbacks if isinstance(c, keras.callbacks.TensorBoard)), None)
    if tensorboard is None:
        return []
    hparams = kt_private.convert_hyperparams_to_hparams(execution.hyperparameters, hparams_api)
    return [hparams_api.KerasCallback(tensorboard.log_dir, hparams, trial_id=execution.trial_id)]


def _build_model(execution: TrialExecution) -> keras.Model:
    """Builds the trial's model (on every GPU with ``multi_gpu``), warm-started if promoted."""
    scope = runtime.mirrored_strategy().scope() if execution.multi_gpu else None
    with scope or contextlib.nullcontext():
        model = execution.builder.build(execution.hyperparameters)
        if execution.warm_start_weights:
            # A Hyperband promotion continues from the best epoch of the trial it came from,
            # Adam's moments included: built first, the optimizer takes them from the file
            # (unbuilt, Keras skips them with a warning per promotion).
            model.optimizer.build(model.trainable_variables)
            model.load_weights(execution.warm_start_weights)
    atomic.write_json_atomically(Path(execution.build_config_path), model.get_build_config())
    return model


def _latency_record(model: keras.Model, execution: TrialExecution) -> dict | None:
    """The model's latency record: measured, or its configuration's from an earlier trial.

    Timed untrained (the time depends on the architecture, not on the weights' values) and as
    it loads for deployment: a mixed-precision model in float32 (``unet.in_float32``). A model
    that cannot be timed trains without a record, unless a latency budget needs one.

    Raises:
        keras_tuner.errors.FailedTrialError: The model cannot be timed under a latency budget.
    """
    if execution.known_latency is not None:
        return execution.known_latency
    check = execution.latency_check
    deployed = unet.in_float32(model)
    serving_batch = (
        prediction.CPU_BATCH  # TFLite runs on the CPU
        if check.protocol.format == "tflite"
        else prediction.device_batch_size(deployed, check.protocol.image_size, limit=8)
    )
    protocol = dataclasses.replace(check.protocol, serving_batch=serving_batch)
    try:
        return dataclasses.asdict(latency.measure_latency(deployed, protocol))
    except Exception as error:  # a converter's or profiler's failure: the trial can still train
        if check.max_ms is not None:
            raise keras_tuner.errors.FailedTrialError(
                f"could not time the model: {error}"
            ) from error
        print(f"warning: could not time the model ({error}); it trains untimed", file=sys.stderr)
        return None


def _log_latency(callbacks: list, record: dict | None) -> None:
    """Writes the latency as scalars beside the trial's TensorBoard run (HParams metrics)."""
    import tensorflow as tf

    tensorboard = next((c for c in callbacks if isinstance(c, keras.callbacks.TensorBoard)), None)
    if tensorboard is None or record is None:
        return
    with tf.summary.create_file_writer(str(Path(tensorboard.log_dir) / "latency")).as_default():
        for name in ("median_ms", "p95_ms", "images_per_s", "gflops", "parameters", "file_mib"):
            tf.summary.scalar(f"latency_{name}", float(record[name]), step=0)


def _over_latency_budget(record: dict) -> dict:
    """``execute_trial``'s result for a model over the latency budget: nothing trained."""
    return {
        "history": {},
        "epoch": [],
        "fit_seconds": 0.0,
        "strategy": None,
        "best_value": float("-inf"),
        "stopped_by_budget": False,
        "epochs_completed": 0,
        "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "latency": record,
        "over_latency_budget": True,
    }


def execute_trial(stream, execution: TrialExecution) -> dict:
    """Builds, warm-starts, times and trains one model in a trial process.

    Args:
        stream: The training stream, from ``training_stream`` in the same process.
        execution: What to build and how to train it.

    Returns:
        ``{"history", "epoch", "fit_seconds", "strategy", "best_value", "stopped_by_budget",
        "epochs_completed", "peak_memory_mib", "latency", "over_latency_budget"}``;
        ``best_value`` is the best objective value the checkpoint callback has seen, carried
        over to the trial's next execution; ``strategy`` names the distribution strategy and
        its number of replicas; ``latency`` is ``latency.Latency``'s record. A model over the
        latency budget is returned untrained (``_over_latency_budget``).

    Raises:
        keras_tuner.errors.FailedTrialError: NaN loss, out of memory while training, or a model
            too large.
    """
    execution.builder.builds = execution.build_index
    time_budget = None
    if execution.deadline is not None:
        time_budget = budget.TimeBudget(execution.deadline, verbose=False)
    callbacks = [*execution.callbacks, *([time_budget] if time_budget is not None else [])]
    callbacks += _hparams_callback(execution, callbacks)
    model = _build_model(execution)
    timed = _latency_record(model, execution)
    if timed is not None and execution.latency_check.over(timed):
        return _over_latency_budget(timed)
    _log_latency(callbacks, timed)
    start = time.perf_counter()
    history = execution.builder.fit(
        execution.hyperparameters, model, stream, callbacks=callbacks, **execution.fit_kwargs
    )
    fit_seconds = time.perf_counter() - start
    checkpoint = next(c for c in callbacks if isinstance(c, kt_private.SaveBestEpoch))
    strategy = model.distribute_strategy
    return {
        "history": {name: [float(v) for v in values] for name, values in history.history.items()},
        "epoch": list(history.epoch),
        "fit_seconds": fit_seconds,
        "strategy": f"{type(strategy).__name__} ({strategy.num_replicas_in_sync} replicas)",
        "best_value": float(checkpoint.best_value),
        "stopped_by_budget": time_budget is not None and time_budget.stopped,
        "epochs_completed": (
            time_budget.epochs_completed if time_budget is not None else len(history.epoch)
        ),
        # ru_maxrss is in KiB on Linux.
        "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "latency": timed,
        "over_latency_budget": False,
    }


def _build_index(trial_id: str, execution: int, executions_per_trial: int) -> int:
    """The trial's position in the seed sequence: the same on resume and in distributed runs."""
    number = int(trial_id) if trial_id.isdigit() else zlib.crc32(trial_id.encode())
    return number * executions_per_trial + execution


class BudgetedOracle(kt_private.StartsFromValues, kt_private.AtomicOracleFiles):
    """Makes a Keras Tuner oracle start from a trusted configuration and stop at a deadline.

    Mixed in before one of Keras Tuner's oracles (``ORACLES``). Its first trial is
    ``start_values`` (``kt_private.StartsFromValues``), when given. The deadline is not part of the
    oracle's saved state: each run sets it from what is left of the project's ``--time-budget``
    (see ``shipseg.core.budget.SearchBudget``). In a distributed search the chief's oracle decides
    for every worker.
    """

    deadline: float | None = None

    def populate_space(self, trial_id):  # noqa: D102
        if self.deadline is not None and time.time() >= self.deadline:
            return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED, "values": None}
        return super().populate_space(trial_id)


class BudgetedHyperbandOracle(BudgetedOracle, oracles.HyperbandOracle):
    """Hyperband (Li et al., 2018): many short trials, the best promoted to longer training."""


class BudgetedRandomSearchOracle(BudgetedOracle, oracles.RandomSearchOracle):
    """Random search: every trial draws its configuration at random and trains in full."""


class BudgetedBayesianOracle(BudgetedOracle, oracles.BayesianOptimizationOracle):
    """Bayesian optimisation: a Gaussian process on the finished trials proposes the next one."""


# The search algorithms, by the name ``search.py --tuner`` takes.
ORACLES = {
    "hyperband": BudgetedHyperbandOracle,
    "random": BudgetedRandomSearchOracle,
    "bayesian": BudgetedBayesianOracle,
}


class IsolatedTuner(keras_tuner.Tuner):
    """A Keras Tuner search that trains each trial in a fresh process and records its cost.

    Args:
        unet_hypermodel: The ship U-Net HyperModel.
        training_data: The training stream's table, input settings and seed.
        multi_gpu: Train each trial on all local GPUs with ``tf.distribute.MirroredStrategy``.
        search_budget: The project's wall-time budget, or None for the algorithm's own budget.
        algorithm: A key of ``ORACLES``.
        oracle_settings: Arguments of its Keras Tuner oracle (objective, max_epochs, ...).
        trial_epochs: Epochs of every trial where the algorithm does not choose them (random
            search, Bayesian optimisation); Hyperband's trials take theirs from the oracle.
        start_values: The first trial's hyperparameters (every one of the space), or None for
            Keras Tuner's own first draw.
        latency_check: How each trial's model is timed, and the latency budget.
        **kwargs: Passed to ``keras_tuner.Tuner`` (directory, project_name, overwrite, ...).
    """

    def __init__(
        self,
        unet_hypermodel: ShipUNetHyperModel,
        training_data: TrainingData,
        multi_gpu: bool = False,
        search_budget: budget.SearchBudget | None = None,
        algorithm: str = "hyperband",
        oracle_settings: dict | None = None,
        trial_epochs: int = 1,
        start_values: dict | None = None,
        latency_check: LatencyCheck = LatencyCheck(),
        **kwargs,
    ):
        self.search_budget = search_budget
        # On a worker Keras Tuner wraps the oracle in a client that hides its attributes: the
        # deadline is kept here too, for the trials this process runs.
        self.deadline = search_budget.deadline() if search_budget is not None else None
        self.trial_epochs = trial_epochs
        oracle = ORACLES[algorithm](**(oracle_settings or {}))
        oracle.deadline = self.deadline
        oracle.start_values = start_values
        super().__init__(oracle=oracle, hypermodel=unet_hypermodel, **kwargs)
        self.multi_gpu = multi_gpu
        self.training_data = training_data
        self.latency_check = latency_check

    def save(self):  # noqa: D102  (atomically: see BudgetedOracle.save)
        if not kt_private.is_worker(self):
            self.oracle.save()
        atomic.write_text_atomically(kt_private.tuner_path(self), json.dumps(self.get_state()))

    def on_trial_begin(self, trial):  # noqa: D102
        if self.search_budget is not None:
            print(
                f"Trial {trial.trial_id}: "
                f"{budget.format_duration(self.search_budget.left())} left in the time budget"
            )
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):  # noqa: D102
        super().on_trial_end(trial)
        if self.search_budget is not None:
            self.search_budget.save(atomic.write_json_atomically)

    def run_trial(self, trial, *args, **kwargs):  # noqa: D102
        if args:
            raise TypeError("the training data is given to the tuner, not to search()")
        values = trial.hyperparameters.values
        callbacks = kwargs.pop("callbacks", [])
        fit_kwargs = {
            **kwargs,
            "epochs": values.get("tuner/epochs", self.trial_epochs),
            "initial_epoch": values.get("tuner/initial_epoch", 0),
            # Each validation image's scores at the trial's best epoch: the paired margins.
            "image_scores_path": str(
                Path(self.get_trial_dir(trial.trial_id)) / evidence.IMAGE_SCORES
            ),
        }
        # One checkpoint for the best epoch over all executions, as Keras Tuner does.
        checkpoint = kt_private.AtomicSaveBestEpoch(
            objective=self.oracle.objective,
            filepath=kt_private.checkpoint_path(self, trial.trial_id),
        )
        timing = TrialTiming(start=time.perf_counter())
        # A promoted trial's model is its parent's: so is its latency.
        timing.latency = self._recorded_latency(values.get("tuner/trial_id"))
        histories = []
        try:
            if timing.latency is not None and self.latency_check.over(timing.latency):
                timing.over_latency_budget = True  # promoted from a trial over the budget
                return {self.oracle.objective.name: OVER_LATENCY_SCORE}
            for execution in range(self.executions_per_trial):
                plan = self._execution(trial, execution, callbacks, checkpoint, fit_kwargs)
                plan.known_latency = timing.latency
                result = isolation.run_in_fresh_process(
                    execute_trial,
                    plan,
                    prepare=training_stream,
                    prepare_arguments=(self.training_data,),
                )
                timing.add(result)
                if result["over_latency_budget"]:
                    return {self.oracle.objective.name: OVER_LATENCY_SCORE}
                checkpoint.best_value = result["best_value"]
                histories.append(self._history(result))
        finally:
            atomic.write_json_atomically(
                Path(self.get_trial_dir(trial.trial_id)) / "timing.json",
                timing.record(self.tuner_id),
            )
        return histories

    def _execution(self, trial, execution: int, callbacks, checkpoint, fit_kwargs: dict):
        """What the trial process needs for one execution of ``trial``."""
        callbacks = [*kt_private.copy_callbacks(self, callbacks), checkpoint]
        for callback in callbacks:
            if isinstance(callback, keras.callbacks.TensorBoard):
                callback.log_dir = kt_private.tensorboard_dir(
                    self, callback.log_dir, trial.trial_id, execution
                )
        parent = trial.hyperparameters.values.get("tuner/trial_id")
        return TrialExecution(
            trial_id=trial.trial_id,
            hyperparameters=trial.hyperparameters,
            build_index=_build_index(trial.trial_id, execution, self.executions_per_trial),
            builder=self.hypermodel,
            callbacks=callbacks,
            # The per-image scores follow the checkpoint: an execution writes them only past
            # the best score the earlier executions reached.
            fit_kwargs={**fit_kwargs, "image_scores_best": float(checkpoint.best_value)},
            warm_start_weights=kt_private.checkpoint_path(self, parent) if parent else None,
            build_config_path=kt_private.build_config_path(self, trial.trial_id),
            multi_gpu=self.multi_gpu,
            deadline=self.deadline,
            latency_check=self.latency_check,
        )

    def _recorded_latency(self, trial_id: str | None) -> dict | None:
        """The latency a trial recorded in its ``timing.json``, or None."""
        path = Path(self.get_trial_dir(trial_id)) / "timing.json" if trial_id else None
        return atomic.read_json(path).get("latency") if path and path.is_file() else None

    def _history(self, result: dict) -> keras.callbacks.History:
        """The trial process's history as the Keras object Keras Tuner expects, checked."""
        history = keras.callbacks.History()
        history.history, history.epoch = result["history"], result["epoch"]
        kt_private.validate_trial_results(history, self.oracle.objective, "HyperModel.fit()")
        return history


@dataclasses.dataclass
class TrialTiming:
    """What ``timing.json`` records of a trial, summed over its executions."""

    start: float
    fit_seconds: float = 0.0
    peak_memory_mib: float = 0.0
    strategy: str | None = None
    stopped_by_budget: bool = False
    epochs_completed: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)
    latency: dict | None = None
    over_latency_budget: bool = False

    def add(self, result: dict) -> None:
        """Counts one execution's result from ``execute_trial``."""
        self.fit_seconds += result["fit_seconds"]
        self.peak_memory_mib = max(self.peak_memory_mib, result["peak_memory_mib"])
        self.strategy = result["strategy"]
        self.stopped_by_budget |= result["stopped_by_budget"]
        self.epochs_completed = result["epochs_completed"]
        self.losses = result["history"].get("loss", [])  # each epoch's, of the last execution
        self.latency = result["latency"]
        self.over_latency_budget = result["over_latency_budget"]

    def record(self, tuner_id: str) -> dict:
        """The content of ``timing.json``."""
        fields = dataclasses.asdict(self)
        return {
            "seconds": time.perf_counter() - fields.pop("start"),
            **fields,
            "tuner_id": tuner_id,
        }
