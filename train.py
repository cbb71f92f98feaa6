"""Retrain the best configuration fully and evaluate it honestly: ``python train.py --best``.

Takes the best trial of a search (the latest one in ``results/`` unless ``--project`` names it)
with the search's data directory and split, or any configuration given with ``--hparams``.
It trains with checkpointing of the best epoch, early stopping, learning-rate reduction and
TensorBoard, tunes the post-processing on the validation images, then scores the saved model
on the untouched test split, on whole images. Everything goes to ``results/<project>/final/``:

    model.keras          the best epoch's model (reloads after ``import hypermodel``)
    config.json          hyperparameters, input and post-processing that inference repeats
    metrics.json         test (and validation) scores, and the no-ship baseline
    history.csv/.png     the training curves
    test_examples.png    test images with true (green) and predicted (red) ships
    logs/                TensorBoard
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

from shipseg import runtime  # noqa: I001  (first: it imports TensorFlow quietly)

runtime.import_tensorflow_quietly()

import keras
import keras_tuner
import numpy as np
import pandas as pd

import evaluation
import hypermodel
import pipeline
from shipseg import (
    airbus,
    atomic,
    budget,
    cli,
    drawing,
    splits,
)
from shipseg.validation import WholeImageValidation

# The post-processing grid tried on validation images (the image-level threshold is found
# exactly for each setting); the best F2 becomes inference's default.
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_SHIP_PIXELS = (0, 10, 30, 100)
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


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``train.py``."""
    parser = argparse.ArgumentParser(
        description="Retrain a searched U-Net configuration and evaluate it on the test split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--best",
        action="store_true",
        help="the best trial of the search (latest project unless --project)",
    )
    source.add_argument(
        "--hparams",
        help="a JSON file of hyperparameters (best_hparams.json or "
        "a plain {name: value} object) instead of the best trial",
    )
    parser.add_argument("--project", help="results/<project> of the search (default: the latest)")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--epochs", type=int, default=30, help="most epochs")
    parser.add_argument(
        "--images-per-epoch", type=int, help="training images per epoch (default: as in the search)"
    )
    parser.add_argument(
        "--patience", type=int, default=6, help="epochs without improvement before stopping early"
    )
    parser.add_argument(
        "--time-budget",
        help="wall time for training, e.g. 60m or 1h30m: stops at it and keeps the best epoch "
        "(post-processing tuning and the test evaluation follow); with --folds, for all folds",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="flip test-time augmentation: tune and evaluate on predictions averaged over the "
        "image and its two flips (3x slower); inference then repeats it",
    )
    parser.add_argument(
        "--folds",
        type=int,
        help="K-fold cross-validation over train + val instead of one training: each fold is "
        "tested once, the next fold validates, the rest trains; reports mean and spread of the "
        "F2 and of its gain over the no-ship baseline (results/<project>/folds/)",
    )
    parser.add_argument(
        "--monitor",
        choices=("val_dice", "val_f2", "val_f2_tuned"),
        help="score that picks the best epoch and stops early (default: the search's objective)",
    )
    parser.add_argument(
        "--val-images",
        type=int,
        default=VAL_IMAGES,
        help="validate on at most this many whole val images (share of empty ones kept)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="train on train + val for exactly --epochs (no early stopping)",
    )
    parser.add_argument("--seed", type=int, help="default: the search's seed")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    return parser


# ---------------------------------------------------------------------------------------------
# Finding the search and the configuration
# ---------------------------------------------------------------------------------------------


def find_project(results_dir: Path, project: str | None) -> Path:
    """The project folder: the named one, or the one whose search finished last."""
    if project:
        project_dir = results_dir / project
        if not (project_dir / "search_config.json").is_file():
            raise cli.UserError(f"{project_dir}: no search here (search_config.json is missing)")
        return project_dir
    searches = sorted(
        results_dir.glob("*/best_hparams.json"), key=lambda path: path.stat().st_mtime
    )
    if not searches:
        raise cli.UserError(f"{results_dir}: no finished search found; run python search.py first")
    return searches[-1].parent


def load_hyperparameters(path: Path) -> dict:
    """Reads hyperparameters from ``best_hparams.json`` or a plain JSON object, and checks them."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise cli.UserError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise cli.UserError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    values = data.get("hyperparameters", data) if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise cli.UserError(f"{path}: expected a JSON object of hyperparameters")
    names = [dimension.name for dimension in hypermodel.DEFAULT_SPACE]
    values = {**hypermodel.ADDED_LATER, **values}
    missing = [name for name in names if name not in values]
    unknown = [name for name in values if name not in names]
    if missing or unknown:
        raise cli.UserError(
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
        hypermodel.search_space([f"{name}={values[name]}" for name in names])
    except ValueError as error:
        raise cli.UserError(f"{path}: {error}") from None
    return {name: values[name] for name in names}


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the model when ``monitor`` improves (or every epoch without one), atomically.

    Keras's ModelCheckpoint writes the zip in place; an interrupted write would leave a
    ``model.keras`` that looks complete but does not load.
    """

    def __init__(self, path: Path, monitor: str | None):
        super().__init__()
        self.path, self.monitor = Path(path), monitor
        self.best, self.best_epoch = -np.inf, None

    def on_epoch_end(self, epoch, logs=None):  # noqa: D102
        logs = logs or {}
        if not np.isfinite(logs.get("loss", np.nan)):
            return  # a diverged epoch is never the one to keep
        value = logs.get(self.monitor, np.nan) if self.monitor else float(epoch)
        if np.isfinite(value) and value > self.best:
            self.best, self.best_epoch = value, epoch
            atomic.write_atomically(self.path, self.model.save)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How one configuration is trained (the same for the final model and for every fold).

    Attributes:
        input_config: Crops or resizing, as in the search.
        monitor: ``val_dice``, ``val_f2`` or ``val_f2_tuned``: picks the best epoch.
        epochs: Most epochs.
        images_per_epoch: Training images per epoch.
        patience: Epochs without improvement before stopping.
        seed: Fixes initialisation and sampling.
        verbose: Keras verbosity.
        deadline: ``time.time()`` at which training stops (the time budget), or None.
    """

    input_config: pipeline.InputConfig
    monitor: str
    epochs: int
    images_per_epoch: int
    patience: int
    seed: int
    verbose: int = 1
    deadline: float | None = None


def training_callbacks(
    settings: TrainSettings, out_dir: Path, validated: bool
) -> tuple[AtomicCheckpoint, list]:
    """The checkpoint, and every callback of a training (logs, stopping, budget)."""
    checkpoint = AtomicCheckpoint(out_dir / "model.keras", settings.monitor if validated else None)
    callbacks = [
        checkpoint,
        keras.callbacks.CSVLogger(str(out_dir / ".history.csv.partial")),
        keras.callbacks.TensorBoard(str(out_dir / "logs"), write_graph=False, profile_batch=0),
    ]
    if validated:
        callbacks += [
            keras.callbacks.EarlyStopping(
                settings.monitor, mode="max", patience=settings.patience, verbose=1
            ),
            keras.callbacks.ReduceLROnPlateau(
                settings.monitor,
                mode="max",
                factor=0.5,
                patience=max(1, settings.patience // 2),
                verbose=1,
            ),
        ]
    else:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau("loss", factor=0.5, patience=3, verbose=1)
        )
    if settings.deadline is not None:
        callbacks.append(budget.TimeBudget(settings.deadline, verbose=bool(settings.verbose)))
    return checkpoint, callbacks


def train_model(
    values: dict,
    train_table: pd.DataFrame,
    validation_table: pd.DataFrame | None,
    settings: TrainSettings,
    out_dir: Path,
) -> dict:
    """Trains one configuration with checkpointing, early stopping, a time budget and logs.

    Args:
        values: Hyperparameters (see ``hypermodel.DEFAULT_SPACE``).
        train_table: Training images.
        validation_table: Whole-image validation images, or None (then the last epoch is kept
            and there is no early stopping).
        settings: Input, monitor, epochs, patience, seed and time budget.
        out_dir: Where ``model.keras``, ``history.csv`` and ``logs/`` go.

    Returns:
        ``{"history": DataFrame, "best_epoch": int, "seconds": float,
        "stopped_by_budget": bool}``.
    """
    validation = None
    if validation_table is not None:
        validation = WholeImageValidation(validation_table, settings.input_config)
    space = hypermodel.search_space([f"{name}={value}" for name, value in values.items()])
    model_builder = hypermodel.ShipUNetHyperModel(
        space, validation, settings.images_per_epoch, settings.seed
    )
    hp = hypermodel.fixed_hyperparameters(values)
    model = model_builder.build(hp)
    checkpoint, callbacks = training_callbacks(settings, out_dir, validation is not None)
    start = time.perf_counter()
    try:
        model_builder.fit(
            hp,
            model,
            pipeline.training_dataset(train_table, settings.input_config, settings.seed),
            epochs=settings.epochs,
            callbacks=callbacks,
            verbose=settings.verbose,
        )
    except keras_tuner.errors.FailedTrialError as error:
        kept = (
            f"; the best epoch before it ({checkpoint.best_epoch + 1}) is in {checkpoint.path}"
            if checkpoint.best_epoch is not None
            else ""
        )
        raise cli.UserError(f"training stopped: {error}{kept}") from None
    seconds = time.perf_counter() - start
    history_partial = out_dir / ".history.csv.partial"
    history = pd.read_csv(history_partial)
    atomic.write_atomically(
        out_dir / "history.csv", lambda temporary: history.to_csv(temporary, index=False)
    )
    history_partial.unlink()
    return {
        "history": history,
        "best_epoch": int(checkpoint.best_epoch) + 1,
        "seconds": seconds,
        "stopped_by_budget": any(isinstance(c, budget.TimeBudget) and c.stopped for c in callbacks),
    }


# ---------------------------------------------------------------------------------------------
# Post-processing tuned on validation images, evaluation on the test split
# ---------------------------------------------------------------------------------------------


def tune_postprocess(
    model, table: pd.DataFrame, input_config: pipeline.InputConfig, flip_tta: bool = False
) -> dict:
    """Chooses the pixel threshold, minimum ship size and image-level threshold on ``table``.

    Streams over the images: the network runs once per image, its components are labelled once
    per pixel threshold, and every minimum size is scored from that one IoU matrix (a size
    filter only removes predicted columns). The image-level threshold, on the ship head's
    probability or (without a head) on the top pixel probability, is then found exactly for
    each setting by ``evaluation.best_gate``, not from a grid. Memory grows by a few numbers
    per image. Ties keep the stricter setting (fewer false ships). With ``flip_tta`` the
    probabilities are averaged over flips, and the chosen setting keeps doing so.

    Returns:
        ``{"config": PostprocessConfig, "f2": float, "tried": int, "images": int}``.
    """
    grid = list(itertools.product(THRESHOLDS, MIN_SHIP_PIXELS))
    f2_open = [[] for _ in grid]
    scores, f2_closed, head = [], [], False
    for prediction, truth in evaluation.labelled_predictions(model, table, input_config, flip_tta):
        probabilities = prediction.probabilities
        head = prediction.ship_probability is not None
        scores.append(evaluation.ship_score(prediction))
        f2_closed.append(0.0 if truth.any() else 1.0)
        for threshold in THRESHOLDS:
            components = evaluation.split_ships(probabilities > threshold)
            areas = np.bincount(components.ravel())[1:]
            ious = evaluation.iou_matrix(truth, components)
            for index, (pixel_threshold, min_size) in enumerate(grid):
                if pixel_threshold == threshold:
                    f2_open[index].append(
                        evaluation.f2_from_ious(ious[:, areas >= max(min_size, 1)])
                    )
    if not scores:
        raise cli.UserError("no validation image could be read to tune the post-processing")
    gates = [evaluation.best_gate(scores, opened, f2_closed) for opened in f2_open]
    # The grid runs from loose to strict: >= lets a stricter setting win a tie.
    best = max(range(len(grid)), key=lambda index: (gates[index][1], index))
    (threshold, min_size), (gate, f2) = grid[best], gates[best]
    if head:
        config = evaluation.PostprocessConfig(threshold, threshold, min_size, flip_tta, gate)
    else:
        config = evaluation.PostprocessConfig(threshold, max(gate, threshold), min_size, flip_tta)
    return {"config": config, "f2": f2, "tried": len(grid), "images": len(scores)}


def plot_history(history: pd.DataFrame, monitor: str, path: Path) -> None:
    """Loss and validation scores per epoch; saved atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = history.epoch + 1
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(epochs, history.loss, marker="o", label="training loss")
    axes[0].set(title="Training loss", xlabel="epoch", ylabel="loss")
    for column in ("dice", "val_dice", "val_dice_ship_images", "val_f2"):
        if column in history:
            axes[1].plot(epochs, history[column], marker="o", label=column)
    axes[1].set(
        title=f"Scores (checkpoint on {monitor})", xlabel="epoch", ylabel="score", ylim=(0, 1.02)
    )
    for axis in axes:
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    atomic.write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=90, format="png"))
    plt.close(figure)


def plot_examples(
    model, table: pd.DataFrame, input_config, postprocess, path: Path, count: int = 6
) -> None:
    """Test images (ship images first) with true ships green and predicted ships red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = pd.concat(
        [table[table.ship_count > 0].head(count - 2), table[table.ship_count == 0].head(2)]
    )
    chosen = chosen.head(count).reset_index(drop=True)
    columns = min(3, len(chosen))
    rows = -(-len(chosen) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.4 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for scored, axis in zip(
        evaluation.score_table(model, chosen, input_config, postprocess), axes.ravel(), strict=False
    ):
        row = chosen.iloc[scored.prediction.position]
        truth, predicted = scored.truth, scored.predicted
        image = pipeline.decode_image(row.path).numpy()
        axis.imshow(drawing.mask_overlay(image, truth > 0, predicted > 0, max_side=512))
        axis.set_title(
            f"{row.ImageId}: {row.ship_count} true, {predicted.max()} predicted\n"
            f"F2 {evaluation.image_f2(truth, predicted):.2f}",
            fontsize=9,
        )
    figure.suptitle("Test images: true ships green, predicted red, overlap yellow")
    figure.tight_layout()
    atomic.write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=80, format="png"))
    plt.close(figure)


def clear_previous_training(out_dir: Path) -> None:
    """Empties ``final/`` of an earlier training, so old metrics never sit beside a new model."""
    for name in (*FINAL_FILES, ".history.csv.partial"):
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "logs", ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)


@dataclasses.dataclass
class Run:
    """What a training run starts from: the search's project, data, split and configuration."""

    project_dir: Path
    search_config: dict
    values: dict
    hparams_path: Path
    table: pd.DataFrame
    split: pd.DataFrame
    settings: TrainSettings


def load_run(args: argparse.Namespace) -> Run:
    """Reads the project, the configuration and the data, and checks the settings."""
    project_dir = find_project(Path(args.results_dir), args.project)
    search_config = json.loads((project_dir / "search_config.json").read_text())
    hparams_path = Path(args.hparams) if args.hparams else project_dir / "best_hparams.json"
    if not hparams_path.is_file():
        raise cli.UserError(
            f"{hparams_path}: file not found"
            + ("" if args.hparams else " (the search has no completed trial yet)")
        )
    values = load_hyperparameters(hparams_path)
    if args.epochs < 1:
        raise cli.UserError("--epochs must be at least 1")
    try:
        hypermodel.check_input_size(search_config["input"]["size"], values["levels"])
    except ValueError as error:
        raise cli.UserError(f"{hparams_path}: {error} (the search's input size)") from None
    try:
        seconds = budget.parse_duration(args.time_budget) if args.time_budget else None
    except ValueError as error:
        raise cli.UserError(f"--time-budget: {error}") from None
    table = airbus.read_dataset(search_config["resolved_data_dir"])
    settings = TrainSettings(
        input_config=pipeline.InputConfig(**search_config["input"]),
        monitor=args.monitor or search_config["objective"],
        epochs=args.epochs,
        images_per_epoch=args.images_per_epoch or search_config["images_per_epoch"],
        patience=args.patience,
        seed=search_config["seed"] if args.seed is None else args.seed,
        verbose=args.verbose,
        deadline=None if seconds is None else time.time() + seconds,
    )
    split = splits.load_split(search_config["split_file"], table)
    return Run(project_dir, search_config, values, hparams_path, table, split, settings)


def run_config(run: Run, args: argparse.Namespace, **extra) -> dict:
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
        "time_budget": args.time_budget,
        "flip_tta": args.tta,
        "seed": run.settings.seed,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "versions": runtime.library_versions(),
        **extra,
    }


def train_and_evaluate(
    run: Run,
    tables: dict[str, pd.DataFrame],
    out_dir: Path,
    config: dict,
    settings: TrainSettings | None = None,
) -> dict:
    """Trains on ``tables["train"]``, tunes post-processing on ``"val"``, scores ``"test"``.

    With ``full`` in ``config["trained_on"]`` the validation images are trained on too and
    nothing stops early. Writes ``model.keras``, ``config.json``, ``metrics.json``, the
    history and the example figure to ``out_dir``.

    Returns:
        The content of ``metrics.json``.
    """
    settings = settings or run.settings
    full = config["trained_on"] == "train+val"
    clear_previous_training(out_dir)
    atomic.write_json_atomically(out_dir / "config.json", {**config, "status": "training"})
    keras.utils.set_random_seed(settings.seed)
    print(
        f"Training {run.values} on {len(tables['train'])} images for up to {settings.epochs} "
        f"epochs (checkpoint on {settings.monitor}); results in {out_dir}"
    )
    trained = train_model(
        run.values, tables["train"], None if full else tables["val"], settings, out_dir
    )
    plot_history(trained["history"], settings.monitor, out_dir / "history.png")
    model = keras.saving.load_model(out_dir / "model.keras")
    metrics = evaluate_trained(model, tables, settings.input_config, out_dir, config["flip_tta"])
    metrics.update(
        best_epoch=trained["best_epoch"],
        epochs_run=int(len(trained["history"])),
        stopped_by_budget=trained["stopped_by_budget"],
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
    model, tables: dict[str, pd.DataFrame], input_config, out_dir: Path, flip_tta: bool = False
) -> dict:
    """Tunes the post-processing on the validation images, then scores the test images."""
    print(f"Tuning post-processing on {len(tables['val'])} validation images ...")
    tuned = tune_postprocess(model, tables["val"], input_config, flip_tta)
    postprocess = tuned["config"]
    print(f"Evaluating on {len(tables['test'])} whole test images ...")
    test = evaluation.evaluate_model(
        model, tables["test"], input_config, postprocess, intervals=True
    )
    validation = evaluation.evaluate_model(model, tables["val"], input_config, postprocess)
    plot_examples(model, tables["test"], input_config, postprocess, out_dir / "test_examples.png")
    return {
        "test": test,
        "validation": validation,
        "postprocess": dataclasses.asdict(postprocess),
        "postprocess_tuning": f"{tuned['tried']} settings, each with its image-level threshold "
        f"chosen exactly, on {tuned['images']} validation images; best validation F2 "
        f"{tuned['f2']:.4f}",
    }


def run_training(args: argparse.Namespace) -> dict:
    """Retrains, tunes post-processing on val, evaluates on test; writes ``final/``.

    Returns:
        The content of ``metrics.json``.
    """
    run = load_run(args)
    # Every validation image up to a few thousand (share-keeping sample beyond): early
    # stopping, the checkpoint and the post-processing all hang on these scores, and on 40
    # images the val Dice of one training swung between 0.06 and 0.50 from epoch to epoch.
    tables = {
        "train": splits.select_split(
            run.table, run.split, *(("train", "val") if args.full else ("train",))
        ),
        "val": splits.sample_images(
            splits.select_split(run.table, run.split, "val"), args.val_images, run.settings.seed
        ),
        "test": splits.select_split(run.table, run.split, "test"),
    }
    if tables["test"].empty:
        raise cli.UserError(f"{run.search_config['split_file']}: the split has no test image")
    out_dir = run.project_dir / "final"
    config = run_config(
        run,
        args,
        trained_on="train+val" if args.full else "train",
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
    print(
        f"  ship / no-ship accuracy      {test['ship_accuracy']:.4f}  (ROC AUC {test['ship_auc']:.3f})"
    )
    print(f"Post-processing (tuned on validation): {metrics['postprocess']}")
    print(f"Saved in {out_dir}: {', '.join(FINAL_FILES)}")


def fold_tables(pool: pd.DataFrame, folds: pd.Series, fold: int) -> dict[str, pd.DataFrame]:
    """Fold ``fold`` tests, the next fold validates, the others train (no image in two).

    Args:
        pool: The images the folds were made from (train + val; never the test split).
        folds: ``splits.make_folds`` of ``pool``.
        fold: The fold to test on.
    """
    count = int(folds.max()) + 1
    fold_of = pool.ImageId.map(folds)
    return {
        "test": pool[fold_of == fold].reset_index(drop=True),
        "val": pool[fold_of == (fold + 1) % count].reset_index(drop=True),
        "train": pool[~fold_of.isin([fold, (fold + 1) % count])].reset_index(drop=True),
    }


def run_folds(args: argparse.Namespace) -> dict:
    """K-fold cross-validation over train + val (the test split stays untouched).

    Each fold trains a model as ``run_training`` does, so the spread across folds says how
    much one training's test figure can be trusted. Writes ``folds/fold_<k>/`` and
    ``folds/summary.json``.

    Returns:
        The content of ``summary.json``.
    """
    run = load_run(args)
    pool = splits.select_split(run.table, run.split, "train", "val")
    try:
        folds = splits.make_folds(pool, args.folds, run.settings.seed)
    except ValueError as error:
        raise cli.UserError(f"--folds: {error}") from None
    rows = []
    for fold in range(args.folds):
        settings = run.settings
        if settings.deadline is not None:  # What is left, shared by the remaining folds.
            share = (settings.deadline - time.time()) / (args.folds - fold)
            settings = dataclasses.replace(settings, deadline=time.time() + max(share, 0))
        tables = fold_tables(pool, folds, fold)
        out_dir = run.project_dir / "folds" / f"fold_{fold}"
        config = run_config(
            run, args, trained_on=f"folds except {fold} and {(fold + 1) % args.folds}", fold=fold
        )
        metrics = train_and_evaluate(run, tables, out_dir, config, settings)
        rows.append(fold_row(fold, tables, metrics))
        print(f"Fold {fold}: F2 {rows[-1]['f2']:.4f}, baseline {rows[-1]['baseline']:.4f}")
    summary = summarise_folds(pd.DataFrame(rows))
    atomic.write_json_atomically(run.project_dir / "folds" / "summary.json", summary)
    print_folds(summary)
    return summary


def fold_row(fold: int, tables: dict[str, pd.DataFrame], metrics: dict) -> dict:
    """One fold's line of the summary."""
    test = metrics["test"]
    return {
        "fold": fold,
        "train_images": len(tables["train"]),
        "val_images": len(tables["val"]),
        "test_images": test["images"],
        "f2": test["f2"],
        "baseline": test["f2_no_ship_baseline"],
        "gain": test["f2"] - test["f2_no_ship_baseline"],
        "gain_interval": test["intervals"]["gain"],
        "dice_ship_images": test["dice_ship_images"],
        "ship_images_found": test["ship_images_found"],
        "empty_images_with_ships": test["empty_images_with_ships"],
        "train_seconds": metrics["train_seconds"],
    }


def summarise_folds(folds: pd.DataFrame) -> dict:
    """Mean and standard deviation across folds of the F2, the baseline and the gain."""
    summary = {"folds": folds.to_dict(orient="records")}
    for name in ("f2", "baseline", "gain", "dice_ship_images"):
        summary[name] = {
            "mean": float(folds[name].mean()),
            "std": float(folds[name].std(ddof=1)) if len(folds) > 1 else 0.0,
        }
    summary["folds_above_baseline"] = int((folds.gain > 0).sum())
    return summary


def print_folds(summary: dict) -> None:
    """Fold by fold, then the mean and spread."""
    print("\nfold  test images  F2      baseline  gain     95 % interval of the gain")
    for row in summary["folds"]:
        low, high = row["gain_interval"]
        print(
            f"{row['fold']:>4}  {row['test_images']:>11}  {row['f2']:.4f}  {row['baseline']:.4f}"
            f"    {row['gain']:+.4f}  [{low:+.3f}, {high:+.3f}]"
        )
    for name in ("f2", "baseline", "gain"):
        print(f"{name:>8}: mean {summary[name]['mean']:+.4f}, std {summary[name]['std']:.4f}")
    print(f"folds above the baseline: {summary['folds_above_baseline']} of {len(summary['folds'])}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return cli.main("train.py", build_parser(), run_command, argv)


def run_command(args: argparse.Namespace) -> None:
    """K-fold cross-validation with ``--folds``, one training otherwise."""
    run_folds(args) if args.folds else run_training(args)


if __name__ == "__main__":
    sys.exit(main())
