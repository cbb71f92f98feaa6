"""Hyperband search over the ship U-Net: ``python search.py [--data-dir DIR] [options]``.

Without ``--data-dir`` the search runs on the synthetic dataset (generated on first use) with a
budget of a few minutes on a laptop CPU. Everything goes under ``results/<project>/``:

    search_config.json   every setting of the run, the data directory and the split file
    split.csv            the train/val/test split shared by search, training and evaluation
    trials.csv           one row per trial: hyperparameters, score, epochs, status, duration
    best_hparams.json    the best configuration, read by ``train.py --best``
    trials.png           the trials at a glance
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
from pathlib import Path

import pipeline  # noqa: E402, I001  (first: TensorFlow is imported quietly below)

pipeline.import_tensorflow_quietly()

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import hypermodel  # noqa: E402

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
        choices=("val_dice", "val_f2"),
        default="val_dice",
        help="pixel Dice or the competition's instance F2, on whole val images",
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


class TimedHyperband(keras_tuner.Hyperband):
    """Hyperband that records how long each trial took, in the trial's folder."""

    def run_trial(self, trial, *args, **kwargs):  # noqa: D102
        start = time.perf_counter()
        try:
            return super().run_trial(trial, *args, **kwargs)
        finally:
            pipeline.write_json_atomically(
                Path(self.get_trial_dir(trial.trial_id)) / "timing.json",
                {"seconds": time.perf_counter() - start, "tuner_id": self.tuner_id},
            )


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
    try:
        tuner = make_tuner(args, project_dir, model_space, validation)
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
    start = time.perf_counter()
    tuner.search(
        pipeline.training_dataset(train_table, input_config, args.seed),
        callbacks=[tensorboard],
        verbose=args.verbose,
    )
    wall_seconds = time.perf_counter() - start
    if role == "worker":
        print(f"Worker {os.environ['KERASTUNER_TUNER_ID']} finished; the chief writes the results.")
        return {"project_dir": project_dir, "trials": None, "best": None}

    trials, best = export_results(tuner, project_dir, settings, wall_seconds)
    print_summary(trials, project_dir, args.objective)
    return {"project_dir": project_dir, "trials": trials, "best": best}


def make_tuner(args: argparse.Namespace, project_dir: Path, space, validation) -> TimedHyperband:
    """The Hyperband tuner over the ship U-Net HyperModel, stored under ``project_dir/tuner``."""
    return TimedHyperband(
        hypermodel.ShipUNetHyperModel(
            space, validation, args.images_per_epoch, args.seed, args.max_parameters
        ),
        objective=keras_tuner.Objective(args.objective, direction="max"),
        max_epochs=args.max_epochs,
        factor=args.factor,
        hyperband_iterations=args.iterations,
        executions_per_trial=args.executions_per_trial,
        seed=args.seed,
        directory=str(project_dir),
        project_name="tuner",
        overwrite=args.overwrite,
        # None: failed trials are recorded and the search goes on, however many fail in a row.
        max_consecutive_failed_trials=None,
        distribution_strategy=_mirrored_strategy() if args.multi_gpu else None,
    )


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


def _mirrored_strategy():
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


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
        for metric in ("val_dice", "val_dice_ship_images", "val_f2", "val_ship_accuracy"):
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
        row["tuner_id"] = timing.get("tuner_id", "")
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
