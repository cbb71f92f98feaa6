"""What ``train.py`` runs: a searched configuration retrained, tuned and scored honestly.

``run_training`` retrains the best trial of a search (or a given configuration) on the
search's training split with the best epoch kept, tunes the post-processing on the validation
images and scores the model on the untouched test split, on whole images, with bootstrap
intervals and the no-ship baseline beside it; ``run_folds`` does the same once per fold of
train + val (``shipseg.data.kfold`` says which images each fold uses). Each result folder is
written whole or not at all.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import keras
import pandas as pd

from shipseg.core import atomic, budget, errors, runtime
from shipseg.data import airbus, inputs, kfold, overlaps, splits
from shipseg.model import encoders, space, unet
from shipseg.predict import drawing, latency, prediction
from shipseg.predict.postprocess import tune_postprocess
from shipseg.train import fitting

# Validation images train.py scores per epoch by default: all of them on any dataset of up to
# this many (the whole Airbus validation split would be sampled down to it).
VAL_IMAGES = 3000
# What a finished training leaves in results/<project>/final/ (besides logs/).
FINAL_FILES = (
    "model.keras",
    "config.json",
    "metrics.json",
    "history.csv",
    "history.png",
    "test_examples.png",
)


# ---------------------------------------------------------------------------------------------
# Finding the search and the configuration
# ---------------------------------------------------------------------------------------------


def find_project(results_dir: Path, project: str | None) -> Path:
    """The project folder: the named one, or the one whose search finished last."""
    if project:
        project_dir = results_dir / project
        if not (project_dir / "search_config.json").is_file():
            raise errors.UserError(f"{project_dir}: no search here (search_config.json is missing)")
        return project_dir
    searches = sorted(
        results_dir.glob("*/best_hparams.json"), key=lambda path: path.stat().st_mtime
    )
    if not searches:
        raise errors.UserError(
            f"{results_dir}: no finished search found; run python search.py first"
        )
    return searches[-1].parent


def load_hyperparameters(path: Path) -> dict:
    """Reads hyperparameters from ``best_hparams.json`` or a plain JSON object, and checks them."""
    data = atomic.read_json(path)
    values = data.get("hyperparameters", data) if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise errors.UserError(f"{path}: expected a JSON object of hyperparameters")
    names = [dimension.name for dimension in space.DEFAULT_SPACE]
    values = {**space.ADDED_LATER, **values}
    missing = [name for name in names if name not in values]
    unknown = [name for name in values if name not in names]
    if missing or unknown:
        raise errors.UserError(
            f"{path}: "
            + "; ".join(
                part
                for part in (
                    missing and f"missing {', '.join(missing)}",
                    unknown and f"unknown {', '.join(unknown)}",
                )
                if part
            )
        )
    try:
        space.search_space([f"{name}={values[name]}" for name in names])
    except ValueError as error:
        raise errors.UserError(f"{path}: {error}") from None
    return {name: values[name] for name in names}


@dataclasses.dataclass
class Run:
    """What a training run starts from: the search's project, data, split and configuration."""

    project_dir: Path
    search_config: dict
    values: dict
    hparams_path: Path
    table: pd.DataFrame
    split: pd.DataFrame
    settings: fitting.TrainSettings


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """What one ``train.py`` run is told (see ``--help``), built once from its command line.

    ``fitting.TrainSettings`` is what the fit itself needs, resolved against the search's
    project in ``load_run``.
    """

    best: bool = False
    hparams: str | None = None
    trial: str | None = None
    max_latency: str | None = None
    project: str | None = None
    results_dir: str = "results"
    seed: int | None = None
    verbose: int = 1
    epochs: int = 30
    images_per_epoch: int | None = None
    patience: int = 6
    time_budget: str | None = None
    monitor: str | None = None
    encoder_weights: str | None = None
    val_images: int = VAL_IMAGES
    full: bool = False
    tta: bool = False
    folds: int | None = None
    only_folds: tuple[int, ...] | None = None
    multi_gpu: bool = False
    mixed_precision: bool = False
    jit_compile: bool = False

    @property
    def max_latency_ms(self) -> float | None:
        """``--max-latency`` in milliseconds, or None."""
        return latency.budget_ms(self.max_latency)

    def __post_init__(self):
        """Raises ``errors.UserError`` (naming the option) for a count out of its range."""
        counts = ("epochs", 1), ("val_images", 1), ("images_per_epoch", 1), ("patience", 0)
        for name, least in counts:
            value = getattr(self, name)
            if value is not None and value < least:
                raise errors.UserError(f"--{name.replace('_', '-')} must be at least {least}")
        if self.max_latency is not None:
            if not self.best:
                raise errors.UserError("--max-latency goes with --best (a trial within it)")
            try:
                latency.parse_milliseconds(self.max_latency)
            except ValueError as error:
                raise errors.UserError(f"--max-latency: {error}") from None
        if self.full and self.folds is not None:
            raise errors.UserError(
                "--full cannot go with --folds (each fold validates on the next fold)"
            )
        if self.folds is not None and self.folds < 3:
            raise errors.UserError(
                "--folds must be at least 3 (a test fold, a validation fold, one to train on)"
            )
        if self.only_folds is not None:
            object.__setattr__(self, "only_folds", tuple(sorted(set(self.only_folds))))
            if self.folds is None:
                raise errors.UserError("--only-folds needs --folds (how many folds there are)")
            if not set(self.only_folds) <= set(range(self.folds)):
                raise errors.UserError(
                    f"--only-folds: --folds {self.folds} numbers the folds 0 to {self.folds - 1}"
                )


def load_run(options: TrainOptions) -> Run:
    """Reads the project, the configuration and the data, and checks the settings."""
    project_dir = find_project(Path(options.results_dir), options.project)
    search_config = atomic.read_json(project_dir / "search_config.json")
    hparams_path = Path(options.hparams) if options.hparams else project_dir / "best_hparams.json"
    if not hparams_path.is_file():
        raise errors.UserError(
            f"{hparams_path}: file not found"
            + ("" if options.hparams else " (the search has no completed trial yet)")
        )
    values = load_hyperparameters(hparams_path)
    try:
        unet.check_input_size(search_config["input"]["size"], values["levels"])
    except ValueError as error:
        raise errors.UserError(f"{hparams_path}: {error} (the search's input size)") from None
    try:
        seconds = budget.parse_duration(options.time_budget) if options.time_budget else None
    except ValueError as error:
        raise errors.UserError(f"--time-budget: {error}") from None
    weights = encoders.resolve_weights(
        options.encoder_weights or search_config.get("encoder_weights", "none")
    )
    encoders.check_weights([values["encoder"]], weights)
    table = airbus.read_dataset(search_config["resolved_data_dir"])
    settings = fitting.TrainSettings(
        input_config=inputs.InputConfig(**search_config["input"]),
        monitor=options.monitor or search_config["objective"],
        epochs=options.epochs,
        images_per_epoch=options.images_per_epoch or search_config["images_per_epoch"],
        patience=options.patience,
        seed=search_config["seed"] if options.seed is None else options.seed,
        verbose=options.verbose,
        deadline=None if seconds is None else time.time() + seconds,
        encoder_weights=weights,
        multi_gpu=options.multi_gpu,
        mixed_precision=options.mixed_precision,
        jit_compile=options.jit_compile,
    )
    split = splits.load_split(search_config["split_file"], table)
    print(overlaps.group_summary(overlaps.describe_groups(split.group)))
    return Run(project_dir, search_config, values, hparams_path, table, split, settings)


def run_config(run: Run, options: TrainOptions, **extra) -> dict:
    """The ``config.json`` record of a training: everything needed to repeat it."""
    return {
        "project": run.project_dir.name,
        "hyperparameters": run.values,
        "hyperparameters_from": str(run.hparams_path.resolve()),
        "input": run.search_config["input"],
        "input_note": "RGB float 0-255 (the model rescales); crop mode predicts whole images at "
        "full resolution, resize mode resizes to input.size and back",
        "data_dir": run.search_config["resolved_data_dir"],
        "split_file": run.search_config["split_file"],
        "monitor": run.settings.monitor,
        "epochs": run.settings.epochs,
        "images_per_epoch": run.settings.images_per_epoch,
        "patience": run.settings.patience,
        "encoder_weights": run.settings.encoder_weights,
        "time_budget": options.time_budget,
        "flip_tta": options.tta,
        "seed": run.settings.seed,
        "devices": {
            "multi_gpu": run.settings.multi_gpu,
            "mixed_precision": run.settings.mixed_precision,
            "jit_compile": run.settings.jit_compile,
        },
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "versions": runtime.library_versions(),
        **extra,
    }


def train_and_evaluate(
    run: Run,
    tables: dict[str, pd.DataFrame],
    out_dir: Path,
    config: dict,
    settings: fitting.TrainSettings | None = None,
) -> dict:
    """Trains on ``tables["train"]``, tunes post-processing on ``"val"``, scores ``"test"``.

    With ``full`` in ``config["trained_on"]`` the validation images are trained on too and
    nothing stops early. Writes ``model.keras``, ``config.json``, ``metrics.json``, the
    history and the example figure to ``out_dir``, all or nothing: into a staging folder
    beside it, swapped in when complete (``atomic.staged_folder``), so an interrupted training
    leaves the previous results as they were.

    Args:
        run: The project, data and hyperparameters (``load_run``) of the model to train.
        tables: ``"train"``, ``"val"`` and ``"test"`` images (``airbus.read_dataset`` rows).
            ``"val"`` picks the best epoch (unless ``full``) and tunes the post-processing;
            ``"test"`` is only scored, once, at the end.
        out_dir: The result folder (``final/`` or ``folds/fold_<k>/``), replaced when complete.
        config: The ``config.json`` record (``run_config``); its ``trained_on`` (``"train+val"``
            for ``--full``) and ``flip_tta`` are read here.
        settings: How to train; None takes ``run.settings`` (folds pass a copy whose
            ``deadline`` is their share of the time budget).

    Returns:
        The content of ``metrics.json``.
    """
    settings = settings or run.settings
    with atomic.staged_folder(out_dir) as staging:
        metrics = _train_and_evaluate_into(run, tables, staging, config, settings)
    return metrics


def _train_and_evaluate_into(
    run: Run,
    tables: dict[str, pd.DataFrame],
    out_dir: Path,
    config: dict,
    settings: fitting.TrainSettings,
) -> dict:
    """``train_and_evaluate``'s work, in the staging folder ``out_dir``.

    ``config.json`` says "training" until the metrics are written, then "complete" with the
    tuned post-processing: a folder is only ever taken for finished when it is.
    """
    full = config["trained_on"] == "train+val"
    atomic.write_json_atomically(out_dir / "config.json", {**config, "status": "training"})
    keras.utils.set_random_seed(settings.seed)
    print(
        f"Training {run.values} on {len(tables['train'])} images for up to {settings.epochs} "
        f"epochs (checkpoint on {settings.monitor}); writing to {out_dir} until it completes"
    )
    trained = fitting.train_model(
        run.values, tables["train"], None if full else tables["val"], settings, out_dir
    )
    fitting.plot_history(trained["history"], settings.monitor, out_dir / "history.png")
    model = unet.in_float32(keras.saving.load_model(out_dir / "model.keras"))
    metrics = evaluate_trained(model, tables, settings.input_config, out_dir, config["flip_tta"])
    metrics.update(
        best_epoch=trained["best_epoch"],
        epochs_run=int(len(trained["history"])),
        stopped_by_budget=trained["stopped_by_budget"],
        replicas=trained["replicas"],
        train_seconds=round(trained["seconds"], 1),
    )
    if full:
        metrics["postprocess_tuning"] += " (validation images were also trained on: --full)"
    atomic.write_json_atomically(out_dir / "metrics.json", metrics)
    atomic.write_json_atomically(
        out_dir / "config.json",
        {**config, "postprocess": metrics["postprocess"], "status": "complete"},
    )
    return metrics


def evaluate_trained(
    model: keras.Model,
    tables: dict[str, pd.DataFrame],
    input_config: inputs.InputConfig,
    out_dir: Path,
    flip_tta: bool = False,
) -> dict:
    """Tunes the post-processing on the validation images, then scores the test images.

    Args:
        model: The trained U-Net, as reloaded from its best-epoch ``model.keras``.
        tables: ``"val"`` images to tune on and ``"test"`` images to score
            (``airbus.read_dataset`` rows); the test images never choose a setting.
        input_config: The training's input settings, repeated when predicting.
        out_dir: Where ``test_examples.png`` is written.
        flip_tta: Average each prediction over flips (3 passes an image) in tuning, and keep
            doing so in the tuned post-processing.

    Returns:
        ``test`` scores (with bootstrap intervals) and ``validation`` scores (see
        ``prediction.evaluate_model``), the tuned ``postprocess`` as a dict and a
        ``postprocess_tuning`` note: ``metrics.json``'s content before the training's figures.
    """
    print(f"Tuning post-processing on {len(tables['val'])} validation images ...")
    tuned = tune_postprocess(model, tables["val"], input_config, flip_tta)
    postprocess = tuned["config"]
    print(f"Evaluating on {len(tables['test'])} whole test images ...")
    test = prediction.evaluate_model(
        model, tables["test"], input_config, postprocess, intervals=True
    )
    validation = prediction.evaluate_model(model, tables["val"], input_config, postprocess)
    drawing.plot_examples(
        model, tables["test"], input_config, postprocess, out_dir / "test_examples.png"
    )
    return {
        "test": test,
        "validation": validation,
        "postprocess": dataclasses.asdict(postprocess),
        "postprocess_tuning": f"{tuned['tried']} settings, each with its image-level threshold "
        f"chosen exactly, on {tuned['images']} validation images; best validation F2 "
        f"{tuned['f2']:.4f}",
    }


def print_verdict(project_dir: Path) -> None:
    """Prints how sure the search was of the configuration ``--best`` retrains (if it says)."""
    summary = project_dir / "search_summary.json"
    lines = atomic.read_json(summary).get("winner", {}).get("lines") if summary.is_file() else None
    if lines:
        print("The search's winner, as its report judges it:", *lines, sep="\n")


def run_training(options: TrainOptions) -> dict:
    """Retrains, tunes post-processing on val, evaluates on test; writes ``final/``.

    Returns:
        The content of ``metrics.json``.
    """
    run = load_run(options)
    if options.best:
        print_verdict(run.project_dir)
    # Every validation image up to a few thousand (share-keeping sample beyond): early
    # stopping, the checkpoint and the post-processing all hang on these scores, and on 40
    # images the val Dice of one training swung between 0.06 and 0.50 from epoch to epoch.
    tables = {
        "train": splits.select_split(
            run.table, run.split, *(("train", "val") if options.full else ("train",))
        ),
        "val": splits.sample_images(
            splits.select_split(run.table, run.split, "val"), options.val_images, run.settings.seed
        ),
        "test": splits.select_split(run.table, run.split, "test"),
    }
    if tables["test"].empty:
        raise errors.UserError(f"{run.search_config['split_file']}: the split has no test image")
    out_dir = run.project_dir / "final"
    config = run_config(
        run,
        options,
        trained_on="train+val" if options.full else "train",
        val_images=len(tables["val"]),
    )
    metrics = train_and_evaluate(run, tables, out_dir, config)
    print_metrics(metrics, out_dir)
    return metrics


def print_metrics(metrics: dict, out_dir: Path) -> None:
    """Prints the test scores next to the no-ship baseline, with their 95 % intervals."""
    test = metrics["test"]
    low_high = test.get("intervals", {})

    def interval(name: str) -> str:
        return f"[{low_high[name][0]:.3f}, {low_high[name][1]:.3f}]" if name in low_high else ""

    print(f"\nTest split ({test['images']} whole images, natural share of empty images):")
    print(f"  instance F2 (IoU 0.5-0.95)   {test['f2']:.4f} {interval('f2')}")
    print(
        f"  no-ship baseline F2          {test['f2_no_ship_baseline']:.4f} "
        f"{interval('f2_no_ship_baseline')}"
    )
    print(
        f"  gain over the baseline       {test['f2'] - test['f2_no_ship_baseline']:+.4f} "
        f"{interval('gain')}  (95 % bootstrap intervals over images)"
    )
    print(f"  pixel Dice, all images       {test['dice']:.4f}")
    print(f"  pixel Dice, ship images      {test['dice_ship_images']:.4f}")
    print(f"  pixel IoU                    {test['iou']:.4f}")
    print(
        f"  ship images found            {test['ship_images_found']} of {test['ship_images']}; "
        f"empty images with a false ship: {test['empty_images_with_ships']} of "
        f"{test['images'] - test['ship_images']}"
    )
    sizes = ", ".join(f"{n} {v[0]} of {v[1]}" for n, v in test["found_by_size"].items())
    print(f"  found, by largest ship       {sizes}")
    print(f"  instance F2, ship images     {test['f2_ship_images']:.4f}")
    print(
        f"  ship / no-ship accuracy      {test['ship_accuracy']:.4f}  (ROC AUC {test['ship_auc']:.3f})"
    )
    print(f"Post-processing (tuned on validation): {metrics['postprocess']}")
    print(f"Saved in {out_dir}: {', '.join(FINAL_FILES)}")


def run_folds(options: TrainOptions) -> dict:
    """K-fold cross-validation over train + val (the test split stays untouched).

    Each fold trains a model as ``run_training`` does, so the spread across folds says how
    much one training's test figure can be trusted. Each fold is written whole or not at all
    to ``folds/fold_<k>/``, and one that finished earlier with the same configuration is kept
    (``kfold.finished_fold``): a run stopped by its session goes on where it was, and
    ``--only-folds`` shares the folds out among machines. ``folds/summary.json`` covers every
    finished fold and says how many of the K that is.

    Returns:
        The content of ``summary.json``.
    """
    run = load_run(options)
    pool = splits.select_split(run.table, run.split, "train", "val")
    try:
        groups = pool.ImageId.map(run.split.set_index("ImageId").group).to_numpy()
        assignment = splits.make_folds(pool, options.folds, run.settings.seed, groups)
    except ValueError as error:
        raise errors.UserError(f"--folds: {error}") from None
    folds_dir = run.project_dir / "folds"
    results = _train_folds(run, options, pool, assignment, folds_dir)
    rows = [
        kfold.fold_row(fold, kfold.fold_tables(pool, assignment, fold), metrics)
        for fold, metrics in sorted(results.items())
    ]
    summary = kfold.summarise_folds(pd.DataFrame(rows), options.folds)
    atomic.write_json_atomically(folds_dir / "summary.json", summary)
    kfold.print_folds(summary)
    return summary


def _train_folds(
    run: Run, options: TrainOptions, pool: pd.DataFrame, assignment: pd.Series, folds_dir: Path
) -> dict[int, dict]:
    """Trains the asked-for folds not finished yet; the metrics of every finished fold."""
    results, todo = {}, []
    for fold in range(options.folds):
        tables = kfold.fold_tables(pool, assignment, fold)
        config = run_config(
            run,
            options,
            trained_on=f"folds except {fold} and {(fold + 1) % options.folds}",
            folds=options.folds,
            fold=fold,
            fold_images=kfold.fold_images(tables),
        )
        metrics = kfold.finished_fold(folds_dir / f"fold_{fold}", config)
        if metrics is not None:
            results[fold] = metrics
            budget_note = (
                " (stopped by its time budget)" if metrics.get("stopped_by_budget") else ""
            )
            print(f"Fold {fold}: finished earlier with this configuration{budget_note}, kept")
        elif options.only_folds is None or fold in options.only_folds:
            todo.append((fold, tables, config))
    for index, (fold, tables, config) in enumerate(todo):
        settings = run.settings
        if settings.deadline is not None:  # What is left, shared by the remaining folds.
            share = (settings.deadline - time.time()) / (len(todo) - index)
            settings = dataclasses.replace(settings, deadline=time.time() + max(share, 0))
        results[fold] = train_and_evaluate(
            run, tables, folds_dir / f"fold_{fold}", config, settings
        )
        test = results[fold]["test"]
        print(f"Fold {fold}: F2 {test['f2']:.4f}, baseline {test['f2_no_ship_baseline']:.4f}")
    return results
