"""Hyperband search over the ship U-Net: ``python search.py [--data-dir DIR] [options]``.

Without ``--data-dir`` the search runs on the synthetic dataset (generated on first use) with a
budget of a few minutes on a laptop CPU. Everything goes under ``results/<project>/``:

    search_config.json   every setting of the run, the data directory and the split file
    split.csv            the train/val/test split shared by search, training and evaluation
    trials.csv           one row per trial: hyperparameters, score, epochs, status, duration
    best_hparams.json    the best configuration, read by ``train.py --best``
    trials.png           the trials at a glance
    budget.json          with ``--time-budget``: the wall time the project has spent
    tuner/               Keras Tuner's own state (resuming, distributed runs)
    logs/                TensorBoard: ``tensorboard --logdir results``

The search resumes by default: rerunning the same command keeps every completed trial.
Several machines: start the same command with Keras Tuner's ``KERASTUNER_*`` variables (README).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
import zlib
from pathlib import Path

import pipeline  # noqa: E402, I001  (first: TensorFlow is imported quietly below)

pipeline.import_tensorflow_quietly()

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from keras_tuner.oracles import HyperbandOracle  # noqa: E402
from keras_tuner.src.engine import tuner_utils  # noqa: E402

import hypermodel  # noqa: E402
from shipseg import budget  # noqa: E402

# On the synthetic default, a budget that ends in a few minutes on two CPU cores.
SYNTHETIC_DEFAULTS = {"input_size": 128, "max_epochs": 6, "images_per_epoch": 192}
# ... and a space without the slowest U-Nets (5 levels, 32 filters); --hp overrides these too.
SYNTHETIC_SPACE = ["levels=2:4", "base_filters=8,16"]
# On real data, whole-image validation is capped: 1,000 images at about 3 images/s is already
# 5 minutes per epoch on a CPU (the share of empty images is kept).
REAL_DEFAULTS = {"input_size": 256, "max_epochs": 10, "images_per_epoch": 512, "val_images": 1000}
# Settings that must match to resume a project (others, like the verbosity, may change).
RESUME_KEYS = (
    "iterations",
    "val_fraction",
    "test_fraction",
    "data_dir",
    "input",
    "objective",
    "max_epochs",
    "factor",
    "seed",
    "space",
    "images_per_epoch",
    "val_images",
    "executions_per_trial",
)


OBJECTIVES = ("val_dice", "val_f2", "val_f2_tuned")


class SearchError(Exception):
    """A user error in the search's settings or data: printed as one line."""


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``search.py``."""
    parser = argparse.ArgumentParser(
        description="Hyperband search over U-Nets for ship segmentation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", help="dataset in the Kaggle layout (default: synthetic data)")
    data.add_argument(
        "--mode",
        choices=("crop", "resize"),
        default="crop",
        help="train on full-resolution crops or on resized whole images",
    )
    data.add_argument(
        "--input-size",
        type=int,
        help="crop size (or resize target): 256 on real data, 128 on synthetic",
    )
    data.add_argument(
        "--empty-fraction",
        type=float,
        default=0.2,
        help="share of images without ships in training batches",
    )
    data.add_argument(
        "--ship-crop-probability",
        type=float,
        default=0.9,
        help="chance that a crop of a ship image contains a ship",
    )
    data.add_argument("--val-fraction", type=float, default=0.15)
    data.add_argument("--test-fraction", type=float, default=0.15)
    data.add_argument(
        "--val-images",
        type=int,
        help="validate on at most this many whole val images, keeping the share of empty ones "
        "(default: 1000 on real data, all on synthetic)",
    )

    budget = parser.add_argument_group("search budget")
    budget.add_argument(
        "--max-epochs",
        type=int,
        help="Hyperband's most epochs for one model (default 10 on real data, 6 on synthetic)",
    )
    budget.add_argument("--factor", type=int, default=3, help="Hyperband's reduction factor")
    budget.add_argument(
        "--time-budget",
        help="wall time for the whole project, e.g. 45m or 1h30m: no trial starts once it is "
        "spent and the running one stops at it; a rerun resumes with what is left, and a larger "
        "budget extends it (default: none, Hyperband's own budget)",
    )
    budget.add_argument("--iterations", type=int, default=1, help="Hyperband iterations")
    budget.add_argument("--executions-per-trial", type=int, default=1)
    budget.add_argument(
        "--images-per-epoch",
        type=int,
        help="training images per epoch (default 512 real, 192 synthetic)",
    )
    budget.add_argument(
        "--max-parameters",
        type=int,
        default=40_000_000,
        help="trials with bigger models fail at once instead of exhausting memory",
    )

    space = parser.add_argument_group("search space")
    space.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="fix (levels=4), restrict (base_filters=16,32) or narrow "
        "(learning_rate=1e-4:1e-3) a hyperparameter; repeatable. Known: "
        + "; ".join(f"{d.name} [{d.describe()}]" for d in hypermodel.DEFAULT_SPACE),
    )
    space.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="val_dice",
        help="on whole val images: pixel Dice, the competition's instance F2 with fixed 0.5 "
        "thresholds, or that F2 with the image-level ship threshold tuned (val_f2_tuned: what "
        "train.py will reach; rewards a better ship / no-ship decision)",
    )

    run = parser.add_argument_group("run")
    run.add_argument("--results-dir", default="results")
    run.add_argument(
        "--project", help="results/<project> (default: the data folder's name, or 'synthetic')"
    )
    run.add_argument("--seed", type=int, default=0, help="fixes split, sampling and initialisation")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh (default: resume the project, keeping completed trials)",
    )
    run.add_argument(
        "--multi-gpu",
        action="store_true",
        help="train each trial on all local GPUs (tf.distribute.MirroredStrategy)",
    )
    run.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="Keras verbosity")
    return parser


# ---------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Each trial in a fresh process
# ---------------------------------------------------------------------------------------------
# Keras 3 on TensorFlow keeps every fit's traced training graph alive after the model is gone
# (measured: about 35 MiB per trial for a small U-Net; clear_session and gc do not free it), so
# a long search in one process grows until it crashes. Each execution of a trial therefore runs
# in a process of its own that ends with it: memory, GPU memory included, returns to the system
# after every trial, and a trial killed by the system for memory is recorded as failed. The next
# trial's process is started while a trial trains, so that its start-up (TensorFlow's runtime,
# the training stream's graph) does not add to the search's time.


@dataclasses.dataclass
class TrainingData:
    """What a trial's process needs to rebuild the training stream (tf.data cannot be pickled)."""

    table: pd.DataFrame
    input_config: pipeline.InputConfig
    seed: int


@dataclasses.dataclass
class TrialExecution:
    """One execution of one trial: everything its process needs, picklable."""

    trial_id: str
    hyperparameters: keras_tuner.HyperParameters
    build_index: int
    builder: hypermodel.ShipUNetHyperModel
    callbacks: list
    fit_kwargs: dict
    warm_start_weights: str | None
    build_config_path: str
    multi_gpu: bool
    deadline: float | None = None


# What prepare_trial_process made ready in this trial process.
_training_data: TrainingData | None = None
_training_stream = None
# This trial process's line to the search process (see TrialProcesses).
_search_connection = None


def past_start_up() -> None:
    """Tells the search that this trial process is past its start-up (a no-op elsewhere).

    The search then starts the next trial's process, whose own start-up would otherwise compete
    with this one's for the CPU.
    """
    if _search_connection is not None:
        _search_connection.send(("past start-up", None))


class _PastStartUp(keras.callbacks.Callback):
    """Calls ``past_start_up`` after the first training step (tracing is start-up too)."""

    def __init__(self):
        super().__init__()
        self.told = False

    def on_train_batch_end(self, batch, logs=None):  # noqa: D102
        if not self.told:
            self.told = True
            past_start_up()


def prepare_trial_process(data: TrainingData) -> None:
    """Gets a trial process ready before its trial is known (runs while the previous trains)."""
    global _training_data, _training_stream
    import tensorflow as tf
    from tensorboard.plugins.hparams import api  # noqa: F401  (imported ahead for the trial)

    _training_data = data
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        # Trials on a GPU may share it with the next one's process for a moment: none may
        # reserve all of its memory up front, as TensorFlow does by default. Nor does this
        # process start TensorFlow's runtime (which takes GPU memory) before its trial comes.
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        return
    _training_stream = pipeline.training_dataset(data.table, data.input_config, data.seed)


def execute_trial(execution: TrialExecution) -> dict:
    """Builds, warm-starts and trains one model (in a trial process made ready for it).

    Returns:
        ``{"history": dict, "epoch": list, "fit_seconds": float, "strategy": str,
        "best_value": float, "peak_memory_mib": float}``; ``best_value`` is the best objective
        value the checkpoint callback has seen, carried over to the trial's next execution;
        ``strategy`` names the distribution strategy and its number of replicas.

    Raises:
        keras_tuner.errors.FailedTrialError: NaN loss, out of memory while training, or a model
            too large.
    """
    import contextlib
    import resource

    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hparams_api

    if _training_data is None:
        raise RuntimeError("execute_trial runs in a process set up by prepare_trial_process")
    stream = _training_stream
    if stream is None:  # On a GPU it is built only now (see prepare_trial_process).
        stream = pipeline.training_dataset(
            _training_data.table, _training_data.input_config, _training_data.seed
        )
    builder = execution.builder
    builder.builds = execution.build_index
    callbacks = [*execution.callbacks, _PastStartUp()]
    time_budget = None
    if execution.deadline is not None:
        time_budget = budget.TimeBudget(execution.deadline, verbose=False)
        callbacks.append(time_budget)
    tensorboard = next((c for c in callbacks if isinstance(c, keras.callbacks.TensorBoard)), None)
    if tensorboard is not None:
        # Made here: the HParams callback opens its summary writer at once (not picklable).
        callbacks.append(
            hparams_api.KerasCallback(
                writer=tensorboard.log_dir,
                hparams=tuner_utils.convert_hyperparams_to_hparams(
                    execution.hyperparameters, hparams_api
                ),
                trial_id=execution.trial_id,
            )
        )
    scope = tf.distribute.MirroredStrategy().scope() if execution.multi_gpu else None
    with scope or contextlib.nullcontext():
        model = builder.build(execution.hyperparameters)
        if execution.warm_start_weights:
            # A Hyperband promotion continues from the best epoch of the trial it came from.
            model.load_weights(execution.warm_start_weights)
    pipeline.write_json_atomically(Path(execution.build_config_path), model.get_build_config())
    start = time.perf_counter()
    history = builder.fit(
        execution.hyperparameters,
        model,
        stream,
        callbacks=callbacks,
        **execution.fit_kwargs,
    )
    fit_seconds = time.perf_counter() - start
    checkpoint = next(c for c in callbacks if isinstance(c, tuner_utils.SaveBestEpoch))
    strategy = model.distribute_strategy
    return {
        "history": {name: [float(v) for v in values] for name, values in history.history.items()},
        "epoch": list(history.epoch),
        "fit_seconds": fit_seconds,
        "strategy": f"{type(strategy).__name__} ({strategy.num_replicas_in_sync} replicas)",
        "best_value": float(checkpoint.best_value),
        "stopped_by_budget": bool(time_budget is not None and time_budget.stopped),
        "epochs_completed": (
            time_budget.epochs_completed if time_budget is not None else len(history.epoch)
        ),
        # ru_maxrss is in KiB on Linux.
        "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


_process_context = None


def trial_process_context():
    """The multiprocessing context for trial processes.

    A fork server with this module preloaded: TensorFlow is imported once, in the fork server
    (which never runs a TensorFlow op, so forking it is safe), and each trial process starts in
    a fraction of a second instead of the seconds a fresh import takes. ``spawn`` where there
    is no fork.
    """
    global _process_context
    if _process_context is None:
        import multiprocessing
        from multiprocessing import forkserver

        if "forkserver" not in multiprocessing.get_all_start_methods():
            _process_context = multiprocessing.get_context("spawn")
            return _process_context
        # By file name: run as a script this module is __main__, which Python 3.11's fork server
        # does not preload. It also ignores the caller's sys.path, hence PYTHONPATH while the
        # server starts.
        forkserver.set_forkserver_preload([Path(__file__).stem])
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(Path(__file__).parent), saved])
        )
        try:
            forkserver.ensure_running()
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
        _process_context = multiprocessing.get_context("forkserver")
    return _process_context


def _trial_process_main(connection, search_pid: int, prepare, prepare_arguments) -> None:
    """A trial process: gets ready, runs the one call it is sent, replies, ends."""
    import gc
    import pickle
    import traceback

    # What this process inherits from the fork server (TensorFlow, Keras: some 400,000 objects)
    # lives as long as it does. Frozen, the garbage collector no longer walks it: each full
    # collection would take about 0.2 s (several per model build) and copy every page it reads.
    gc.freeze()
    global _search_connection
    _search_connection = connection
    _exit_with(search_pid)
    problem = None
    try:
        try:
            if prepare is not None:
                prepare(*prepare_arguments)
                gc.freeze()  # What the preparation built lives as long as this process, too.
        except Exception as error:
            # Every trial process would fail the same way: stop the search rather than record
            # every trial as failed. Keras Tuner re-raises FatalError.
            problem = keras_tuner.errors.FatalError(
                f"a trial process could not get ready: {type(error).__name__}: {error}\n"
                + traceback.format_exc()
            )
        try:
            function, arguments = connection.recv()
        except EOFError:
            return  # The search ended without needing this process.
        try:
            if problem is not None:
                raise problem
            reply = ("result", function(*arguments))
        except Exception as error:
            error.add_note("In the trial process:\n" + traceback.format_exc())
            reply = ("error", error)
        try:
            pickle.loads(pickle.dumps(reply))
        except Exception:  # Would not arrive intact: send what can be.
            text = f"{type(reply[1]).__name__}: {reply[1]}"
            reply = ("error", RuntimeError(text + "".join(getattr(reply[1], "__notes__", []))))
        connection.send(reply)
    except KeyboardInterrupt:
        pass  # Ctrl-C reaches every process of the search: the search process reports it.
    finally:
        connection.close()


def _exit_with(search_pid: int) -> None:
    """Ends this trial process as soon as the search process ``search_pid`` is gone.

    A search killed with kill -9 cannot stop its trials; without this, the trial would keep
    running, writing into a project that a rerun may already be resuming.
    """
    import threading

    def search_is_alive() -> bool:
        try:
            os.kill(search_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:  # A killed process stays a zombie until its own parent reaps it.
            return Path(f"/proc/{search_pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return True

    def watch() -> None:
        while search_is_alive():
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-search", daemon=True).start()


class TrialProcesses:
    """Runs calls in fresh processes, one each; the next process gets ready while one works.

    With ``prepare``, the next process is started when the current call reports that it is
    past its start-up (``past_start_up``), or else when the call returns.

    Args:
        prepare: Called in each new process before its call arrives, or None.
        prepare_arguments: Arguments of ``prepare``.
    """

    def __init__(self, prepare=None, *prepare_arguments):
        self.prepare = prepare
        self.prepare_arguments = prepare_arguments
        self._ready = None

    def _start(self):
        context = trial_process_context()
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_trial_process_main,
            args=(theirs, os.getpid(), self.prepare, self.prepare_arguments),
            name="trial",
            daemon=True,
        )
        process.start()
        theirs.close()
        return process, ours

    def start_ahead(self) -> None:
        """Starts the process for the next call now, so that it is ready when the call comes."""
        if self._ready is None:
            self._ready = self._start()

    def run(self, function, *arguments):
        """Runs ``function(*arguments)`` in a fresh process and returns its result.

        Exceptions raised there are raised here (Keras Tuner's FailedTrialError included), with
        the trial process's traceback as a note.

        Raises:
            keras_tuner.errors.FailedTrialError: When the process dies without an answer, for
                example killed by the system for using too much memory.
        """
        if self._ready is not None and not self._ready[0].is_alive():
            self.close()  # Died while waiting (killed for memory, say): not this call's fault.
        process, connection = self._ready or self._start()
        self._ready = None
        try:
            connection.send((function, arguments))
            kind, value = connection.recv()
            if kind == "past start-up":
                if self.prepare is not None:
                    self.start_ahead()
                kind, value = connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            _join_or_kill(process)
            raise keras_tuner.errors.FailedTrialError(
                f"the trial's process ended abruptly (exit code {process.exitcode}; killed by "
                "the system, often for using too much memory)"
            ) from None
        finally:
            connection.close()
        _join_or_kill(process)
        if self.prepare is not None:
            self.start_ahead()
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        """Ends the process kept ready for a next call (it holds nothing worth waiting for)."""
        if self._ready is not None:
            process, connection = self._ready
            self._ready = None
            connection.close()
            process.kill()
            process.join()


def _join_or_kill(process, timeout: float = 60) -> None:
    """Waits for a process that has replied to end; kills it if it hangs on its way out."""
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()


def run_in_fresh_process(function, *arguments):
    """Runs ``function(*arguments)`` once in a new process (see ``TrialProcesses.run``)."""
    processes = TrialProcesses()
    try:
        return processes.run(function, *arguments)
    finally:
        processes.close()


class AtomicSaveBestEpoch(tuner_utils.SaveBestEpoch):
    """Keras Tuner's best-epoch checkpoint, written atomically.

    A trial killed while saving never leaves a half-written checkpoint for a promoted trial to
    load, and a reader of the old checkpoint never blocks the writer of the new one.
    """

    def _save_model(self):
        pipeline.write_atomically(self.filepath, self.model.save_weights, suffix=".weights.h5")


def _build_index(trial_id: str, execution: int, executions_per_trial: int) -> int:
    """The trial's position in the seed sequence: the same on resume and in distributed runs."""
    number = int(trial_id) if trial_id.isdigit() else zlib.crc32(trial_id.encode())
    return number * executions_per_trial + execution


class BudgetedHyperbandOracle(HyperbandOracle):
    """Keras Tuner's Hyperband oracle that hands out no trial once a wall-clock deadline passes.

    The deadline is not part of the oracle's saved state: each run sets it from what is left of
    the project's ``--time-budget`` (see ``shipseg.budget.SearchBudget``). In a distributed
    search the chief's oracle decides for every worker.
    """

    deadline: float | None = None

    def populate_space(self, trial_id):  # noqa: D102
        if self.deadline is not None and time.time() >= self.deadline:
            return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED, "values": None}
        return super().populate_space(trial_id)


class IsolatedHyperband(keras_tuner.Tuner):
    """Hyperband that trains each trial in a fresh process and records how long it took.

    Args:
        unet_hypermodel: The ship U-Net HyperModel.
        training_data: The training stream's table, input settings and seed.
        multi_gpu: Train each trial on all local GPUs with ``tf.distribute.MirroredStrategy``.
        search_budget: The project's wall-time budget, or None for Hyperband's own budget.
        hyperband: Arguments of Keras Tuner's ``HyperbandOracle`` (objective, max_epochs, ...).
        **kwargs: Passed to ``keras_tuner.Tuner`` (directory, project_name, overwrite, ...).
    """

    def __init__(
        self,
        unet_hypermodel: hypermodel.ShipUNetHyperModel,
        training_data: TrainingData,
        multi_gpu: bool = False,
        search_budget: budget.SearchBudget | None = None,
        hyperband: dict | None = None,
        **kwargs,
    ):
        self.search_budget = search_budget
        # On a worker Keras Tuner wraps the oracle in a client that hides its attributes: the
        # deadline is kept here too, for the trials this process runs.
        self.deadline = search_budget.deadline() if search_budget is not None else None
        oracle = BudgetedHyperbandOracle(**(hyperband or {}))
        oracle.deadline = self.deadline
        super().__init__(oracle=oracle, hypermodel=unet_hypermodel, **kwargs)
        self.multi_gpu = multi_gpu
        self.trial_processes = TrialProcesses(prepare_trial_process, training_data)

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
            self.search_budget.save(pipeline.write_json_atomically)

    def on_search_end(self):  # noqa: D102
        self.trial_processes.close()
        super().on_search_end()

    def run_trial(self, trial, *args, **kwargs):  # noqa: D102
        if args:
            raise TypeError("the training data is given to the tuner, not to search()")
        values = trial.hyperparameters.values
        callbacks = kwargs.pop("callbacks", [])
        fit_kwargs = {
            **kwargs,
            "epochs": values["tuner/epochs"],
            "initial_epoch": values["tuner/initial_epoch"],
        }
        parent_trial = values.get("tuner/trial_id")
        # One checkpoint for the best epoch over all executions, as Keras Tuner does.
        checkpoint = AtomicSaveBestEpoch(
            objective=self.oracle.objective,
            filepath=self._get_checkpoint_fname(trial.trial_id),
        )
        histories, fit_seconds, peak_memory, strategy = [], 0.0, 0.0, None
        stopped_by_budget, epochs_completed = False, 0
        start = time.perf_counter()
        try:
            for execution in range(self.executions_per_trial):
                execution_callbacks = self._deepcopy_callbacks(callbacks)
                for callback in execution_callbacks:
                    if isinstance(callback, keras.callbacks.TensorBoard):
                        callback.log_dir = self._get_tensorboard_dir(
                            callback.log_dir, trial.trial_id, execution
                        )
                execution_callbacks.append(checkpoint)
                result = self.trial_processes.run(
                    execute_trial,
                    TrialExecution(
                        trial_id=trial.trial_id,
                        hyperparameters=trial.hyperparameters,
                        build_index=_build_index(
                            trial.trial_id, execution, self.executions_per_trial
                        ),
                        builder=self.hypermodel,
                        callbacks=execution_callbacks,
                        fit_kwargs=fit_kwargs,
                        warm_start_weights=(
                            self._get_checkpoint_fname(parent_trial) if parent_trial else None
                        ),
                        build_config_path=self._get_build_config_fname(trial.trial_id),
                        multi_gpu=self.multi_gpu,
                        deadline=self.deadline,
                    ),
                )
                checkpoint.best_value = result["best_value"]
                fit_seconds += result["fit_seconds"]
                peak_memory = max(peak_memory, result["peak_memory_mib"])
                strategy = result["strategy"]
                stopped_by_budget |= result["stopped_by_budget"]
                epochs_completed = result["epochs_completed"]
                history = keras.callbacks.History()
                history.history, history.epoch = result["history"], result["epoch"]
                tuner_utils.validate_trial_results(
                    history, self.oracle.objective, "HyperModel.fit()"
                )
                histories.append(history)
        finally:
            pipeline.write_json_atomically(
                Path(self.get_trial_dir(trial.trial_id)) / "timing.json",
                {
                    "seconds": time.perf_counter() - start,
                    "fit_seconds": fit_seconds,
                    "peak_memory_mib": peak_memory,
                    "strategy": strategy,
                    "tuner_id": self.tuner_id,
                    "stopped_by_budget": stopped_by_budget,
                    "epochs_completed": epochs_completed,
                },
            )
        return histories


def tuner_role() -> str:
    """``"single"``, ``"chief"`` or ``"worker"``, by Keras Tuner's own rules.

    Keras Tuner runs distributed only when ``KERASTUNER_ORACLE_IP`` is set, and treats a tuner
    id containing "chief" as the chief.

    Raises:
        SearchError: When the variables are only half set (a process that would silently run a
            search of its own in the shared folder).
    """
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID")
    address = os.environ.get("KERASTUNER_ORACLE_IP"), os.environ.get("KERASTUNER_ORACLE_PORT")
    if not tuner_id and not any(address):
        return "single"
    if not tuner_id or not all(address):
        raise SearchError(
            "distributed search needs KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and "
            "KERASTUNER_ORACLE_PORT all set (see the README)"
        )
    return "chief" if "chief" in tuner_id else "worker"


def resolve_settings(args: argparse.Namespace) -> dict:
    """Fills in defaults, checks the settings, and returns the run's configuration record."""
    synthetic = args.data_dir is None
    defaults = SYNTHETIC_DEFAULTS if synthetic else REAL_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("max_epochs", "factor", "iterations", "executions_per_trial", "images_per_epoch"):
        if getattr(args, name) < 1:
            raise SearchError(f"--{name.replace('_', '-')} must be at least 1")
    if args.val_images is not None and args.val_images < 1:
        raise SearchError("--val-images must be at least 1")
    if args.factor < 2:
        raise SearchError("--factor must be at least 2")
    if args.time_budget is not None:
        try:
            budget.parse_duration(args.time_budget)
        except ValueError as error:
            raise SearchError(f"--time-budget: {error}") from None
    if synthetic:
        args.hp = [*SYNTHETIC_SPACE, *args.hp]
    try:
        space = hypermodel.search_space(args.hp)
        input_config = pipeline.InputConfig(
            mode=args.mode,
            size=args.input_size,
            ship_crop_probability=args.ship_crop_probability,
            empty_image_fraction=args.empty_fraction,
        )
    except ValueError as error:
        raise SearchError(str(error)) from None
    # Ranges are (low, high) and choices a tuple: either way the deepest is the largest value.
    deepest = max(next(d for d in space if d.name == "levels").values)
    try:
        hypermodel.check_input_size(args.input_size, int(deepest))
    except ValueError as error:
        raise SearchError(f"--input-size: {error}") from None
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None
    project = args.project or (Path(args.data_dir).resolve().name if args.data_dir else "synthetic")
    return {
        "data_dir": data_dir,
        "synthetic": dataclasses.asdict(pipeline.SyntheticConfig()) if synthetic else None,
        "project": project,
        "input": dataclasses.asdict(input_config),
        "objective": args.objective,
        "max_epochs": args.max_epochs,
        "factor": args.factor,
        "iterations": args.iterations,
        "executions_per_trial": args.executions_per_trial,
        "images_per_epoch": args.images_per_epoch,
        "val_images": args.val_images,
        "val_fraction": args.val_fraction,
        "test_fraction": args.test_fraction,
        "max_parameters": args.max_parameters,
        "seed": args.seed,
        "space": {d.name: d.describe() for d in space},
        "hp_overrides": list(args.hp),
        "multi_gpu": args.multi_gpu,
        "time_budget": args.time_budget,
        "versions": hypermodel.library_versions(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def prepare_split(
    table: pd.DataFrame, split_path: Path, settings: dict, fresh: bool
) -> pd.DataFrame:
    """Loads the project's split, or makes and saves it on a fresh start."""
    if split_path.is_file() and not fresh:
        return pipeline.load_split(split_path, table)
    try:
        split = pipeline.make_split(
            table, settings["val_fraction"], settings["test_fraction"], settings["seed"]
        )
    except ValueError as error:
        raise SearchError(str(error)) from None
    pipeline.save_split(split, split_path)
    return split


def run_search(args: argparse.Namespace) -> dict:
    """Runs (or resumes) a search and writes every result file.

    Args:
        args: Parsed command line (see ``build_parser``).

    Returns:
        ``{"project_dir": Path, "trials": DataFrame, "best": dict or None}``.

    Raises:
        SearchError, pipeline.DataError: For bad settings or data (one-line messages).
    """
    settings = resolve_settings(args)
    role = tuner_role()
    if role != "chief":
        trial_process_context()  # The fork server imports TensorFlow while the data is read.
    if role == "worker" and args.overwrite:
        raise SearchError(
            "--overwrite is for the chief only: a worker would delete the others' trials"
        )
    if settings["data_dir"] is None:
        data_dir = pipeline.ensure_synthetic_dataset(Path(args.results_dir) / "synthetic-data")
        print(
            f"No --data-dir given: searching on the synthetic dataset in {data_dir} with a small "
            f"budget. For real data: python search.py --data-dir PATH (a folder with train_v2/ "
            f"and {pipeline.CSV_NAME})."
        )
    else:
        data_dir = Path(settings["data_dir"])
    table = pipeline.read_dataset(data_dir)

    project_dir = Path(args.results_dir) / settings["project"]
    config_path = project_dir / "search_config.json"
    fresh = args.overwrite or not config_path.is_file()
    if not fresh:
        previous = json.loads(config_path.read_text())
        changed = [key for key in RESUME_KEYS if previous.get(key) != settings.get(key)]
        if changed:
            raise SearchError(
                f"{config_path}: this project was searched with other settings "
                f"({', '.join(changed)}); "
                "rerun with --overwrite to start afresh, or choose another --project"
            )
    if fresh and role != "worker":
        remove_previous_results(project_dir)
    split_path = project_dir / "split.csv"
    split = prepare_split(table, split_path, settings, fresh)
    settings.update(
        split_file=str(split_path.resolve()),
        resolved_data_dir=str(Path(data_dir).resolve()),
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        tuner_role=role,
        images={name: int((split.split == name).sum()) for name in pipeline.SPLIT_NAMES},
    )
    if role != "worker":
        pipeline.write_json_atomically(config_path, settings)

    keras.utils.set_random_seed(args.seed)
    input_config = pipeline.InputConfig(**settings["input"])
    train_table = pipeline.select_split(table, split, "train")
    val_table = pipeline.sample_images(
        pipeline.select_split(table, split, "val"), args.val_images, args.seed
    )
    if train_table.empty or val_table.empty or not (val_table.ship_count > 0).any():
        raise SearchError(
            f"{split_path}: the split needs training images and validation images with ships "
            f"(has {len(train_table)} train, {len(val_table)} val, "
            f"{int((val_table.ship_count > 0).sum())} val with ships); use more data or a larger "
            "--val-fraction"
        )
    validation = hypermodel.WholeImageValidation(val_table, input_config)
    model_space = hypermodel.search_space(args.hp)
    training_data = TrainingData(train_table, input_config, args.seed)
    _keep_off_gpus()
    try:
        tuner = make_tuner(
            args,
            project_dir,
            model_space,
            validation,
            training_data,
            search_budget(args, project_dir),
        )
    except keras_tuner.errors.FailedTrialError as error:
        # Keras Tuner builds one model while it is constructed; a space whose smallest model
        # is already too big fails there, before any trial could record it.
        raise SearchError(f"--max-parameters: {error}") from None
    tensorboard = keras.callbacks.TensorBoard(
        str(project_dir / "logs"), write_graph=False, profile_batch=0
    )
    print(
        f"Searching: {len(train_table)} training and {len(val_table)} validation images, "
        f"{args.mode} {args.input_size} px, objective {args.objective}, results in {project_dir}"
    )
    if role != "chief":
        tuner.trial_processes.start_ahead()  # The first trial's process gets ready meanwhile.
    start = time.perf_counter()
    try:
        tuner.search(callbacks=[tensorboard], verbose=args.verbose)
    finally:
        tuner.trial_processes.close()
    wall_seconds = time.perf_counter() - start
    if role == "worker":
        print(f"Worker {os.environ['KERASTUNER_TUNER_ID']} finished; the chief writes the results.")
        return {"project_dir": project_dir, "trials": None, "best": None}

    trials, best = export_results(tuner, project_dir, settings, wall_seconds)
    print_summary(trials, project_dir, args.objective)
    return {"project_dir": project_dir, "trials": trials, "best": best}


def search_budget(args: argparse.Namespace, project_dir: Path) -> budget.SearchBudget | None:
    """The project's time budget (what earlier runs spent counts), or None without one."""
    if args.time_budget is None:
        return None
    try:
        project_budget = budget.SearchBudget(
            project_dir / "budget.json", budget.parse_duration(args.time_budget)
        )
    except ValueError as error:
        raise SearchError(str(error)) from None
    spent, total = (
        budget.format_duration(s) for s in (project_budget.spent(), project_budget.seconds)
    )
    if project_budget.left() <= 0:
        print(
            f"Time budget spent ({spent} of {total}): no new trial starts; rerun with a larger "
            "--time-budget to extend it."
        )
    else:
        print(f"Time budget {total}, {spent} spent by earlier runs of this project")
    return project_budget


def make_tuner(
    args: argparse.Namespace,
    project_dir: Path,
    space,
    validation: hypermodel.WholeImageValidation,
    training_data: TrainingData,
    search_budget: budget.SearchBudget | None = None,
) -> IsolatedHyperband:
    """The Hyperband tuner over the ship U-Net HyperModel, stored under ``project_dir/tuner``."""
    return IsolatedHyperband(
        hypermodel.ShipUNetHyperModel(
            space, validation, args.images_per_epoch, args.seed, args.max_parameters
        ),
        training_data,
        multi_gpu=args.multi_gpu,
        search_budget=search_budget,
        hyperband={
            "objective": keras_tuner.Objective(args.objective, direction="max"),
            "max_epochs": args.max_epochs,
            "factor": args.factor,
            "hyperband_iterations": args.iterations,
            "seed": args.seed,
            # None: failed trials are recorded and the search goes on, however many fail in a row.
            "max_consecutive_failed_trials": None,
        },
        executions_per_trial=args.executions_per_trial,
        directory=str(project_dir),
        project_name="tuner",
        overwrite=args.overwrite,
    )


def _keep_off_gpus() -> None:
    """Hides the GPUs from this process: only the trial processes train.

    Keras Tuner builds a model here while it sets up the search space; on a GPU that would
    reserve the GPU's memory for the whole search, out of reach of the trials.
    """
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TensorFlow already started here (a test or a notebook): nothing to hide any more.


def remove_previous_results(project_dir: Path) -> None:
    """Deletes an earlier search's result files and logs before a fresh start.

    Keras Tuner's ``overwrite`` only clears its own folder; stale ``best_hparams.json`` or
    TensorBoard runs with the same trial ids would otherwise mix with the new search.
    """
    for name in (
        "best_hparams.json",
        "trials.csv",
        "trials.png",
        "search_summary.json",
        "split.csv",
    ):
        (project_dir / name).unlink(missing_ok=True)
    for name in ("logs", "tuner", "final"):
        shutil.rmtree(project_dir / name, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def trials_table(tuner: keras_tuner.Tuner, objective: str) -> pd.DataFrame:
    """One row per trial: id, every hyperparameter, score, epochs, status and duration."""
    rows = []
    for trial in tuner.oracle.trials.values():
        values = trial.hyperparameters.values
        timing_path = Path(tuner.get_trial_dir(trial.trial_id)) / "timing.json"
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
        row = {
            "trial_id": trial.trial_id,
            "status": trial.status,
            objective: trial.score if trial.score is not None else np.nan,
        }
        for metric in OBJECTIVES + ("val_dice_ship_images", "val_ship_accuracy", "val_ship_auc"):
            if metric != objective:
                row[metric] = (
                    trial.metrics.get_best_value(metric) if trial.metrics.exists(metric) else np.nan
                )
        row.update({name: value for name, value in values.items() if not name.startswith("tuner/")})
        row["epochs"] = values.get("tuner/epochs", np.nan)
        row["epochs_trained"] = values.get("tuner/epochs", 0) - values.get("tuner/initial_epoch", 0)
        # Keras Tuner counts best_step within this trial's fit, which starts at initial_epoch.
        row["best_epoch"] = (
            values.get("tuner/initial_epoch", 0) + trial.best_step + 1
            if trial.best_step is not None
            else np.nan
        )
        row["continued_from"] = values.get("tuner/trial_id", "")
        row["bracket"] = values.get("tuner/bracket", np.nan)
        row["duration_s"] = round(timing.get("seconds", np.nan), 2)
        row["fit_s"] = round(timing.get("fit_seconds", np.nan), 2)
        row["peak_memory_mib"] = round(timing.get("peak_memory_mib", np.nan), 1)
        row["tuner_id"] = timing.get("tuner_id", "")
        # A trial the time budget cut short still counts, with the epochs it finished.
        row["stopped_by_budget"] = bool(timing.get("stopped_by_budget", False))
        row["epochs_completed"] = timing.get("epochs_completed", np.nan)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(objective, ascending=False, na_position="last").reset_index(drop=True)


def export_results(
    tuner: keras_tuner.Tuner, project_dir: Path, settings: dict, wall_seconds: float
) -> tuple[pd.DataFrame, dict | None]:
    """Writes ``trials.csv``, ``best_hparams.json`` and ``trials.png``, each atomically.

    Returns:
        The trials table and the content of ``best_hparams.json`` (None when no trial
        completed, in which case no such file is written).
    """
    objective = settings["objective"]
    trials = trials_table(tuner, objective)
    pipeline.write_atomically(
        project_dir / "trials.csv", lambda temporary: trials.to_csv(temporary, index=False)
    )
    completed = (
        trials[(trials.status == "COMPLETED") & trials[objective].notna()]
        if len(trials)
        else trials
    )
    best = None
    if len(completed):
        winner = completed.iloc[0]
        names = [d.name for d in hypermodel.DEFAULT_SPACE]
        best = {
            "trial_id": winner.trial_id,
            "objective": objective,
            "score": float(winner[objective]),
            "hyperparameters": {name: _plain(winner[name]) for name in names},
            "epochs": int(winner.epochs),
            "best_epoch": int(winner.best_epoch),
            "search_config": str((project_dir / "search_config.json").resolve()),
        }
        pipeline.write_json_atomically(project_dir / "best_hparams.json", best)
        plot_trials(trials, objective, project_dir / "trials.png")
    summary = {
        "wall_seconds": round(wall_seconds, 2),
        "trial_seconds": round(float(trials.duration_s.sum()), 2) if len(trials) else 0.0,
        "fit_seconds": round(float(trials.fit_s.sum()), 2) if len(trials) else 0.0,
        "trials": int(len(trials)),
        "completed": int(len(completed)),
        "failed": int((trials.status == "FAILED").sum()) if len(trials) else 0,
    }
    pipeline.write_json_atomically(project_dir / "search_summary.json", summary)
    return trials, best


def _plain(value):
    """Converts a numpy scalar to a plain Python value for JSON."""
    return value.item() if hasattr(value, "item") else value


def plot_trials(trials: pd.DataFrame, objective: str, path: Path) -> None:
    """Scores per trial, by learning rate and by depth and filters; saved atomically."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = trials[trials[objective].notna()]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    order = done.trial_id.astype(int)
    scatter = axes[0].scatter(order, done[objective], c=done.epochs, cmap="viridis", s=40)
    figure.colorbar(scatter, ax=axes[0], label="epochs (Hyperband budget)")
    axes[0].set(title="Score of each trial", xlabel="trial id", ylabel=objective)
    axes[1].scatter(done.learning_rate, done[objective], c=done.epochs, cmap="viridis", s=40)
    axes[1].set(
        xscale="log",
        title="Score against learning rate",
        xlabel="learning rate (log)",
        ylabel=objective,
    )
    # Minor log ticks get labels too by default, which overlap on a narrow range.
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    labels = done.levels.astype(str) + " x " + done.base_filters.astype(str)
    best_by_shape = done.assign(shape=labels).groupby("shape")[objective].max().sort_index()
    axes[2].bar(best_by_shape.index, best_by_shape.values, color="steelblue")
    axes[2].set(
        title="Best score by depth x base filters",
        xlabel="levels x base filters",
        ylabel=f"best {objective}",
    )
    figure.tight_layout()
    pipeline.write_atomically(
        path, lambda temporary: figure.savefig(temporary, dpi=90, format="png")
    )
    plt.close(figure)


def print_summary(trials: pd.DataFrame, project_dir: Path, objective: str, top: int = 5) -> None:
    """Prints the best trials as a table and where the results are."""
    if trials.empty:
        print("No trial ran.")
        return
    columns = [
        "trial_id",
        objective,
        *[d.name for d in hypermodel.DEFAULT_SPACE],
        "epochs",
        "status",
        "duration_s",
    ]
    with pd.option_context(
        "display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format
    ):
        print(f"\nBest {min(top, len(trials))} of {len(trials)} trials (by {objective}):")
        print(trials[columns].head(top).to_string(index=False))
    print(
        f"\nResults in {project_dir}: trials.csv, best_hparams.json, trials.png; "
        f"TensorBoard: tensorboard --logdir {project_dir.parent}"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        run_search(args)
    except (SearchError, pipeline.DataError) as error:
        print(f"search.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nsearch.py: interrupted; rerun the same command to resume "
            "(completed trials are kept)",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
