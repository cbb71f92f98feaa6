"""What ``search.py`` runs: the data, the split, the tuner, the search and its result files.

``run_search`` takes one ``SearchSettings`` (``settings.settings_from`` makes it from the
command line) and owns the project for the whole run: a lone search or the chief of a
distributed one writes the results; a worker only trains the trials the chief hands it.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import keras
import keras_tuner
import pandas as pd

from shipseg.core import atomic, budget, errors, locks, runtime
from shipseg.data import airbus, overlaps, splits, synthetic
from shipseg.model.space import DEFAULT_SPACE
from shipseg.predict import latency
from shipseg.search import evidence, isolation, report, tuning
from shipseg.search import settings as search_settings
from shipseg.search import trials as results
from shipseg.search.settings import SearchSettings
from shipseg.train.hypermodel import ShipUNetHyperModel
from shipseg.train.validation import WholeImageValidation


def tuner_role() -> str:
    """``"single"``, ``"chief"`` or ``"worker"``, by Keras Tuner's own rules.

    Keras Tuner runs distributed only when ``KERASTUNER_ORACLE_IP`` is set, and treats a tuner
    id containing "chief" as the chief.

    Raises:
        errors.UserError: When the variables are only half set (a process that would silently run a
            search of its own in the shared folder).
    """
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID")
    address = os.environ.get("KERASTUNER_ORACLE_IP"), os.environ.get("KERASTUNER_ORACLE_PORT")
    if not tuner_id and not any(address):
        return "single"
    if not tuner_id or not all(address):
        raise errors.UserError(
            "distributed search needs KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and "
            "KERASTUNER_ORACLE_PORT all set (see the README)"
        )
    return "chief" if "chief" in tuner_id else "worker"


def run_search(settings: SearchSettings) -> dict:
    """Runs (or resumes) a search and writes every result file.

    Returns:
        ``{"project_dir": Path, "trials": DataFrame, "best": dict or None}``.

    Raises:
        errors.UserError, errors.DataError: For bad settings or data (one-line messages).
    """
    role = tuner_role()
    if role != "chief":
        isolation.process_context()  # The fork server imports TensorFlow while the data is read.
    if role == "worker" and settings.overwrite:
        raise errors.UserError(
            "--overwrite is for the chief only: a worker would delete the others' trials"
        )
    data_dir = search_data_dir(settings)
    table = airbus.read_dataset(data_dir)
    # The chief (or a lone search) owns the project; workers write through the chief's oracle.
    project_dir = settings.project_dir
    owner = locks.hold(project_dir, "--project") if role != "worker" else contextlib.nullcontext()
    with owner:
        return search_project(settings, role, table, data_dir)


def search_project(
    settings: SearchSettings, role: str, table: pd.DataFrame, data_dir: Path
) -> dict:
    """The search proper, in a project this process may write to (see ``run_search``).

    Args:
        settings: The search's settings; ``project_dir`` is where everything is written.
        role: ``tuner_role()``: ``"single"``, ``"chief"`` or ``"worker"``. A worker never
            clears the project or writes ``search_config.json`` or the results: the chief does.
        table: The dataset, one row per image (``airbus.read_dataset`` of ``data_dir``).
        data_dir: The dataset's folder (the ``--data-dir`` or the synthetic one); recorded
            resolved in ``search_config.json`` and keys the cache of overlapping tiles.

    Returns:
        As ``run_search``; a worker's ``trials`` and ``best`` are None.

    Raises:
        errors.UserError: For a project searched with other settings (without
            ``--overwrite``), fractions that cannot make a split, a split that cannot feed a
            search, or a tuner that cannot be made (see ``make_tuner``).
    """
    project_dir, record = settings.project_dir, settings.record()
    fresh = settings.overwrite or not search_settings.check_resumable(project_dir, record)
    if fresh and role != "worker":
        results.remove_previous_results(project_dir)
    try:
        split = splits.prepare_split(
            table,
            project_dir,
            (settings.val_fraction, settings.test_fraction),
            settings.seed,
            fresh,
            overlaps.cache_path(settings.results_dir, data_dir),
        )
    except ValueError as error:
        raise errors.UserError(str(error)) from None
    print(overlaps.group_summary(overlaps.describe_groups(split.group)))
    record.update(
        split_file=str((project_dir / "split.csv").resolve()),
        resolved_data_dir=str(Path(data_dir).resolve()),
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        tuner_role=role,
        # The chief's oracle hands out the start: a worker needs no --start-from file.
        start_values=settings.start_values() if role != "worker" else None,
        images={name: int((split.split == name).sum()) for name in splits.SPLIT_NAMES},
        overlap_groups=overlaps.describe_groups(split.group),
    )
    if role != "worker":
        atomic.write_json_atomically(project_dir / "search_config.json", record)
    keras.utils.set_random_seed(settings.seed)
    tuner = make_tuner(settings, *search_tables(table, split, settings), record["start_values"])
    start = time.perf_counter()
    tuner.search(callbacks=[_tensorboard(project_dir)], verbose=settings.verbose)
    wall_seconds = time.perf_counter() - start
    if role == "worker":
        print(f"Worker {os.environ['KERASTUNER_TUNER_ID']} finished; the chief writes the results.")
        return {"project_dir": project_dir, "trials": None, "best": None}
    trials, best = results.export_results(tuner, project_dir, record, wall_seconds)
    results.print_summary(trials, project_dir, settings.objective)
    return {"project_dir": project_dir, "trials": trials, "best": best}


def write_report(results_dir: str, project: str) -> None:
    """``--report``: writes an existing project's ``report.md`` from its ``trials.csv``."""
    project_dir = Path(results_dir) / project
    trials = results.read_trials(project_dir)
    config = atomic.read_json(project_dir / "search_config.json")
    names = [dimension.name for dimension in DEFAULT_SPACE]
    objective, start = config["objective"], config.get("start_values")
    verdict = evidence.judge_winner(trials, objective, project_dir, start)
    budget_ms = latency.budget_ms(config.get("max_latency"))
    with locks.hold(project_dir, "--project"):
        path = report.write_report(trials, objective, names, project_dir, verdict, budget_ms)
        print(f"Wrote {path}")


def search_data_dir(settings: SearchSettings) -> Path:
    """The ``--data-dir``, or the synthetic dataset (made on first use) without one."""
    if settings.data_dir is not None:
        return Path(settings.data_dir)
    data_dir = synthetic.ensure_synthetic_dataset(
        Path(settings.results_dir) / synthetic.SYNTHETIC_DIR_NAME
    )
    print(
        f"No --data-dir given: searching on the synthetic dataset in {data_dir} with a small "
        f"budget. For real data: python search.py --data-dir PATH (a folder with train_v2/ "
        f"and {airbus.CSV_NAME})."
    )
    return data_dir


def search_tables(
    table: pd.DataFrame, split: pd.DataFrame, settings: SearchSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training images and the (capped) validation images of the search.

    Args:
        table: The dataset, one row per image (``airbus.read_dataset``).
        split: The project's split (``ImageId``, ``split``, ``group``) assigning each image.
        settings: Its ``val_images`` caps the validation images (a sample fixed by ``seed``:
            each is scored whole after every epoch of every trial, so they cost time).

    Returns:
        ``(train_table, val_table)``, rows of ``table``.

    Raises:
        errors.UserError: When there is no training image, or no validation image with
            ships (the message says why and what would help: ``split_problem``).
    """
    train_table = splits.select_split(table, split, "train")
    val_table = splits.sample_images(
        splits.select_split(table, split, "val"), settings.val_images, settings.seed
    )
    if train_table.empty or val_table.empty or not (val_table.ship_count > 0).any():
        raise errors.UserError(split_problem(split, train_table, val_table, settings))
    print(
        f"Searching: {len(train_table)} training and {len(val_table)} validation images, "
        f"{settings.input_config.mode} {settings.input_config.size} px, "
        f"objective {settings.objective}, results in {settings.project_dir}"
    )
    return train_table, val_table


def split_problem(
    split: pd.DataFrame,
    train_table: pd.DataFrame,
    val_table: pd.DataFrame,
    settings: SearchSettings,
) -> str:
    """Why the split cannot feed a search, and what would help: more data, or other groups.

    Overlap groups are never divided, so when a few groups hold most images a larger
    ``--val-fraction`` cannot help: the message then names the largest groups.

    Args:
        split: The project's split (``ImageId``, ``split``, ``group``).
        train_table: The training images it gives.
        val_table: The validation images it gives (capped by ``--val-images``).
        settings: The search's settings (where the project's files are).
    """
    counts = split.group.value_counts()
    found = (
        f"{settings.project_dir / 'split.csv'}: the split needs training images and validation "
        f"images with ships (has {len(train_table)} train, {len(val_table)} val, "
        f"{int((val_table.ship_count > 0).sum())} val with ships)"
    )
    if len(counts) >= 3 and counts.iloc[0] <= len(split) / 2:
        return f"{found}; use more data or a larger --val-fraction"
    largest = ", ".join(
        f"group {group}: {size} images (e.g. {split.ImageId[split.group == group].iloc[0]})"
        for group, size in counts.head(3).items()
    )
    return (
        f"{found}: its {len(split)} images fall in {len(counts)} overlap groups ({largest}), and a "
        "group is never divided between train, val and test (its images show the same place); "
        f"add images of other places, or check {settings.project_dir / 'overlaps.csv'} for "
        "duplicated files"
    )


def _tensorboard(project_dir: Path) -> keras.callbacks.TensorBoard:
    return keras.callbacks.TensorBoard(
        str(project_dir / "logs"), write_graph=False, profile_batch=0
    )


def search_budget(settings: SearchSettings) -> budget.SearchBudget | None:
    """The project's time budget (what earlier runs spent counts), or None without one."""
    if settings.time_budget is None:
        return None
    try:
        project_budget = budget.SearchBudget(
            settings.project_dir / "budget.json", budget.parse_duration(settings.time_budget)
        )
    except ValueError as error:
        raise errors.UserError(str(error)) from None
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


def _hypermodel(settings: SearchSettings, val_table: pd.DataFrame) -> ShipUNetHyperModel:
    """The HyperModel every trial builds and fits, validating on ``val_table``."""
    return ShipUNetHyperModel(
        settings.space,
        WholeImageValidation(val_table, settings.input_config, monitor=settings.objective),
        settings.images_per_epoch,
        settings.seed,
        settings.max_parameters,
        settings.encoder_weights,
        mixed_precision=settings.mixed_precision,
        jit_compile=settings.jit_compile,
    )


def make_tuner(
    settings: SearchSettings,
    train_table: pd.DataFrame,
    val_table: pd.DataFrame,
    start_values: dict | None = None,
) -> tuning.IsolatedTuner:
    """The ``--tuner`` search over the ship U-Net HyperModel, stored under ``project_dir/tuner``.

    Args:
        settings: The search's settings: algorithm, space, budgets, seed and ``--overwrite``.
        train_table: The training images (``read_dataset`` rows), streamed to each trial.
        val_table: The validation images, each scored whole after every epoch of a trial.
        start_values: The first trial's hyperparameters (``SearchSettings.start_values``);
            None on a worker, whose trials the chief's oracle hands out.

    Raises:
        errors.UserError: When ``--max-parameters`` rules out even the smallest model, or a
            resumed project's saved tuner state cannot be read.
    """
    project_dir, input_config = settings.project_dir, settings.input_config
    unet = _hypermodel(settings, val_table)
    runtime.hide_gpus()
    try:
        tuner = tuning.IsolatedTuner(
            unet,
            tuning.TrainingData(train_table, input_config, settings.seed),
            multi_gpu=settings.multi_gpu,
            search_budget=search_budget(settings),
            algorithm=settings.tuner,
            oracle_settings=search_settings.oracle_settings(settings),
            trial_epochs=settings.max_epochs,
            start_values=start_values,
            latency_check=tuning.LatencyCheck(settings.latency_protocol, settings.max_latency_ms),
            executions_per_trial=settings.executions_per_trial,
            directory=str(project_dir),
            project_name="tuner",
            overwrite=settings.overwrite,
        )
    except keras_tuner.errors.FailedTrialError as error:
        # Keras Tuner builds one model while it is constructed; a space whose smallest model
        # is already too big fails there, before any trial could record it.
        raise errors.UserError(f"--max-parameters: {error}") from None
    except (ValueError, KeyError, RuntimeError) as error:  # json.JSONDecodeError is a ValueError
        # Resuming reads Keras Tuner's saved state; written atomically since 2026-12-01, it
        # can still be damaged by older versions or by hand.
        if settings.overwrite or not (project_dir / "tuner").is_dir():
            raise
        raise errors.UserError(
            f"{project_dir / 'tuner'}: Keras Tuner's saved state cannot be read "
            f"({type(error).__name__}: {error}); rerun with --overwrite to start afresh"
        ) from None
    if settings.tuner == "bayesian":
        # Resuming restores the oracle's saved count of random trials; this run's count wins.
        tuner.oracle.num_initial_points = settings.bayesian_initial_trials
    return tuner
