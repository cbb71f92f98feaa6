"""Hyperparameter search over the ship U-Net: ``python search.py [--data-dir DIR] [options]``.

The algorithm is Keras Tuner's Hyperband by default (``--tuner random`` and ``--tuner bayesian``
choose its random search or Bayesian optimisation).

Without ``--data-dir`` the search runs on the synthetic dataset (generated on first use) with a
budget of a few minutes on a laptop CPU. Everything goes under ``results/<project>/``:

    search_config.json   every setting of the run, the data directory and the split file
    split.csv            the train/val/test split shared by search, training and evaluation,
                         with each image's overlap group (a group is never divided)
    overlaps.csv         the overlapping tiles found in the data (pairs and their shift)
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
import contextlib
import os
import sys
import time
from pathlib import Path

from shipseg.core import runtime  # noqa: I001  (first: it imports TensorFlow quietly)

runtime.import_tensorflow_quietly()

import keras
import keras_tuner
import pandas as pd

import hypermodel
import pipeline
from shipseg import cli
from shipseg.core import atomic, budget, errors, locks
from shipseg.data import airbus, overlaps, splits, synthetic
from shipseg.model import encoders
from shipseg.search import isolation, report, tuning
from shipseg.search import settings as search_settings
from shipseg.search import trials as results
from shipseg.search.settings import SearchSettings
from shipseg.train.validation import WholeImageValidation

# On the synthetic default, a budget that ends in a few minutes on two CPU cores.
SYNTHETIC_DEFAULTS = {"input_size": 128, "max_epochs": 6, "images_per_epoch": 192}
# ... and a space without the slowest U-Nets (5 levels, 32 filters); --hp overrides these too.
SYNTHETIC_SPACE = ["levels=2:4", "base_filters=8,16"]
# On real data, whole-image validation is capped: 1,000 images at about 3 images/s is already
# 5 minutes per epoch on a CPU (the share of empty images is kept).
REAL_DEFAULTS = {"input_size": 256, "max_epochs": 10, "images_per_epoch": 512, "val_images": 1000}
# The options that become settings as they are (the others get the data's defaults).
PASSED_THROUGH = (
    "objective",
    "tuner",
    "factor",
    "max_trials",
    "initial_trials",
    "iterations",
    "executions_per_trial",
    "val_fraction",
    "test_fraction",
    "max_parameters",
    "seed",
    "multi_gpu",
    "time_budget",
    "overwrite",
    "verbose",
)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``search.py``."""
    parser = argparse.ArgumentParser(
        description="Hyperparameter search (Hyperband by default) over U-Nets for ship "
        "segmentation.",
        formatter_class=cli.HelpFormatter,
    )
    _data_options(parser.add_argument_group("data"))
    _budget_options(parser.add_argument_group("search budget"))
    _space_options(parser.add_argument_group("search space"))
    _run_options(parser.add_argument_group("run"))
    return parser


def _data_options(group) -> None:
    """Where the images come from and how they become input."""
    group.add_argument("--data-dir", help="dataset in the Kaggle layout (default: synthetic data)")
    group.add_argument(
        "--mode",
        choices=("crop", "resize"),
        default="crop",
        help="train on full-resolution crops or on resized whole images",
    )
    group.add_argument(
        "--input-size",
        type=int,
        help="crop size (or resize target): 256 on real data, 128 on synthetic",
    )
    group.add_argument(
        "--empty-fraction",
        type=float,
        default=0.2,
        help="share of images without ships in training batches",
    )
    group.add_argument(
        "--ship-crop-probability",
        type=float,
        default=0.9,
        help="chance that a crop of a ship image contains a ship",
    )
    group.add_argument("--val-fraction", type=float, default=0.15)
    group.add_argument("--test-fraction", type=float, default=0.15)
    group.add_argument(
        "--val-images",
        type=int,
        help="validate on at most this many whole val images, keeping the share of empty ones "
        "(default: 1000 on real data, all on synthetic)",
    )


def _budget_options(group) -> None:
    """Which algorithm searches, and how much it may spend: epochs, trials, wall time."""
    group.add_argument(
        "--tuner",
        choices=tuple(tuning.ORACLES),
        default="hyperband",
        help="Keras Tuner's algorithm: Hyperband (many short trials, the best trained longer), "
        "random search, or Bayesian optimisation (a Gaussian process proposes each trial)",
    )
    group.add_argument(
        "--max-epochs",
        type=int,
        help="most epochs for one model: Hyperband's longest trials, every trial of random or "
        "Bayesian search (default 10 on real data, 6 on synthetic)",
    )
    group.add_argument("--factor", type=int, default=3, help="Hyperband's reduction factor")
    group.add_argument(
        "--max-trials",
        type=int,
        default=10,
        help="trials of random or Bayesian search (Hyperband sets its own from --max-epochs "
        "and --factor); a --time-budget may end the search sooner",
    )
    group.add_argument(
        "--time-budget",
        help="wall time for the whole project, e.g. 45m or 1h30m: no trial starts once it is "
        "spent and the running one stops at it; a rerun resumes with what is left, and a larger "
        "budget extends it (default: none, Hyperband's own budget)",
    )
    group.add_argument(
        "--initial-trials",
        type=int,
        help="random trials before Bayesian optimisation's Gaussian process takes over "
        "(default: a third of --max-trials, at least 2)",
    )
    group.add_argument("--iterations", type=int, default=1, help="Hyperband iterations")
    group.add_argument("--executions-per-trial", type=int, default=1)
    group.add_argument(
        "--images-per-epoch",
        type=int,
        help="training images per epoch (default 512 real, 192 synthetic)",
    )
    group.add_argument(
        "--max-parameters",
        type=int,
        default=40_000_000,
        help="trials with bigger models fail at once instead of exhausting memory",
    )


def _space_options(group) -> None:
    """What the search ranks by and which hyperparameters it varies."""
    group.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="fix (levels=4), restrict (base_filters=16,32) or narrow "
        "(learning_rate=1e-4:1e-3) a hyperparameter; repeatable. Known: "
        + "; ".join(f"{d.name} [{d.describe()}]" for d in hypermodel.DEFAULT_SPACE),
    )
    group.add_argument(
        "--encoder-weights",
        default="none",
        metavar=encoders.WEIGHT_CHOICES,
        help="initial weights of pretrained encoders: ImageNet's (from Keras's cache, or "
        "downloaded), none (random) or a weights file; with weights the encoder is mobilenet_v2 "
        "unless --hp encoder=... names others",
    )
    group.add_argument(
        "--objective",
        choices=results.OBJECTIVES,
        default="val_dice",
        help="on whole val images: pixel Dice, the competition's instance F2 with fixed 0.5 "
        "thresholds, or that F2 with the image-level ship threshold tuned (val_f2_tuned: what "
        "train.py will reach; rewards a better ship / no-ship decision)",
    )


def _run_options(group) -> None:
    """Where results go, the seed, resuming, devices and verbosity."""
    group.add_argument(
        "--report",
        action="store_true",
        help="only (re)write the project's report.md from its trials.csv: the best trials and "
        "how much each hyperparameter mattered (written after every search too)",
    )
    group.add_argument("--results-dir", default="results")
    group.add_argument(
        "--project", help="results/<project> (default: the data folder's name, or 'synthetic')"
    )
    group.add_argument(
        "--seed", type=int, default=0, help="fixes split, sampling and initialisation"
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh (default: resume the project, keeping completed trials)",
    )
    group.add_argument(
        "--multi-gpu",
        action="store_true",
        help="train each trial on all local GPUs (tf.distribute.MirroredStrategy)",
    )
    group.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="Keras verbosity")


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


def resolve_settings(args: argparse.Namespace) -> SearchSettings:
    """The search's settings: the command line with the defaults of its data filled in."""
    on_synthetic = args.data_dir is None
    defaults = SYNTHETIC_DEFAULTS if on_synthetic else REAL_DEFAULTS
    given = {name: getattr(args, name) for name in defaults}
    chosen = {name: defaults[name] if value is None else value for name, value in given.items()}
    try:
        input_config = pipeline.InputConfig(
            mode=args.mode,
            size=chosen["input_size"],
            ship_crop_probability=args.ship_crop_probability,
            empty_image_fraction=args.empty_fraction,
        )
    except ValueError as error:
        raise errors.UserError(str(error)) from None
    settings = SearchSettings(
        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None,
        project=project_name(args),
        results_dir=args.results_dir,
        input_config=input_config,
        hp=(*(SYNTHETIC_SPACE if on_synthetic else ()), *args.hp),
        max_epochs=chosen["max_epochs"],
        images_per_epoch=chosen["images_per_epoch"],
        val_images=chosen.get("val_images", args.val_images),
        encoder_weights=encoders.resolve_weights(args.encoder_weights),
        **{name: getattr(args, name) for name in PASSED_THROUGH},
    )
    search_settings.check_space(settings)
    return settings


def project_name(args: argparse.Namespace) -> str:
    """``--project``, or the data folder's name, or ``synthetic``."""
    if args.project:
        return args.project
    return Path(args.data_dir).resolve().name if args.data_dir else "synthetic"


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
    """The search proper, in a project this process may write to (see ``run_search``)."""
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
        images={name: int((split.split == name).sum()) for name in splits.SPLIT_NAMES},
        overlap_groups=overlaps.describe_groups(split.group),
    )
    if role != "worker":
        atomic.write_json_atomically(project_dir / "search_config.json", record)
    keras.utils.set_random_seed(settings.seed)
    tuner = make_tuner(settings, *search_tables(table, split, settings))
    start = time.perf_counter()
    tuner.search(callbacks=[_tensorboard(project_dir)], verbose=settings.verbose)
    wall_seconds = time.perf_counter() - start
    if role == "worker":
        print(f"Worker {os.environ['KERASTUNER_TUNER_ID']} finished; the chief writes the results.")
        return {"project_dir": project_dir, "trials": None, "best": None}
    trials, best = results.export_results(tuner, project_dir, record, wall_seconds)
    results.print_summary(trials, project_dir, settings.objective)
    return {"project_dir": project_dir, "trials": trials, "best": best}


def report_command(args: argparse.Namespace) -> None:
    """``--report``: writes an existing project's ``report.md`` from its ``trials.csv``."""
    project_dir = Path(args.results_dir) / project_name(args)
    trials_path = project_dir / "trials.csv"
    if not trials_path.is_file():
        raise errors.UserError(f"{trials_path}: no trials to report on (run the search first)")
    objective = atomic.read_json(project_dir / "search_config.json")["objective"]
    trials = pd.read_csv(trials_path, dtype={"trial_id": str})
    names = [dimension.name for dimension in hypermodel.DEFAULT_SPACE]
    with locks.hold(project_dir, "--project"):
        print(f"Wrote {report.write_report(trials, objective, names, project_dir)}")


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
    """The training images and the (capped) validation images of the search."""
    train_table = splits.select_split(table, split, "train")
    val_table = splits.sample_images(
        splits.select_split(table, split, "val"), settings.val_images, settings.seed
    )
    split_file = settings.project_dir / "split.csv"
    if train_table.empty or val_table.empty or not (val_table.ship_count > 0).any():
        raise errors.UserError(
            f"{split_file}: the split needs training images and validation images "
            f"with ships (has {len(train_table)} train, {len(val_table)} val, "
            f"{int((val_table.ship_count > 0).sum())} val with ships); use more data or a larger "
            "--val-fraction"
        )
    print(
        f"Searching: {len(train_table)} training and {len(val_table)} validation images, "
        f"{settings.input_config.mode} {settings.input_config.size} px, "
        f"objective {settings.objective}, results in {settings.project_dir}"
    )
    return train_table, val_table


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


def make_tuner(
    settings: SearchSettings, train_table: pd.DataFrame, val_table: pd.DataFrame
) -> tuning.IsolatedTuner:
    """The ``--tuner`` search over the ship U-Net HyperModel, stored under ``project_dir/tuner``."""
    project_dir, input_config = settings.project_dir, settings.input_config
    unet = hypermodel.ShipUNetHyperModel(
        settings.space,
        WholeImageValidation(val_table, input_config),
        settings.images_per_epoch,
        settings.seed,
        settings.max_parameters,
        settings.encoder_weights,
    )
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


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return cli.main(
        "search.py",
        build_parser(),
        lambda args: report_command(args) if args.report else run_search(resolve_settings(args)),
        argv,
        on_interrupt="rerun the same command to resume (completed trials are kept)",
    )


if __name__ == "__main__":
    sys.exit(main())
