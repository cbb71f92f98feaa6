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
import itertools
import json
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

import evaluation  # noqa: E402
import hypermodel  # noqa: E402

# The post-processing grid tried on validation images; the best F2 becomes inference's default.
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
IMAGE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MIN_SHIP_PIXELS = (0, 10, 30, 100)
# What a finished training leaves in results/<project>/final/ (besides logs/).
FINAL_FILES = (
    "model.keras",
    "config.json",
    "metrics.json",
    "history.csv",
    "history.png",
    "test_examples.png",
)


class TrainError(Exception):
    """A user error in the training's settings or inputs: printed as one line."""


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
            raise TrainError(f"{project_dir}: no search here (search_config.json is missing)")
        return project_dir
    searches = sorted(
        results_dir.glob("*/best_hparams.json"), key=lambda path: path.stat().st_mtime
    )
    if not searches:
        raise TrainError(f"{results_dir}: no finished search found; run python search.py first")
    return searches[-1].parent


def load_hyperparameters(path: Path) -> dict:
    """Reads hyperparameters from ``best_hparams.json`` or a plain JSON object, and checks them."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TrainError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise TrainError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    values = data.get("hyperparameters", data) if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise TrainError(f"{path}: expected a JSON object of hyperparameters")
    names = [dimension.name for dimension in hypermodel.DEFAULT_SPACE]
    missing = [name for name in names if name not in values]
    unknown = [name for name in values if name not in names]
    if missing or unknown:
        raise TrainError(
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
        raise TrainError(f"{path}: {error}") from None
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
            pipeline.write_atomically(self.path, self.model.save)


def train_model(
    values: dict,
    train_table: pd.DataFrame,
    validation_table: pd.DataFrame | None,
    input_config: pipeline.InputConfig,
    out_dir: Path,
    monitor: str,
    epochs: int,
    images_per_epoch: int,
    patience: int,
    seed: int,
    verbose: int = 1,
) -> dict:
    """Trains one configuration with checkpointing, early stopping and logs.

    Args:
        values: Hyperparameters (see ``hypermodel.DEFAULT_SPACE``).
        train_table: Training images.
        validation_table: Whole-image validation images, or None (then the last epoch is kept
            and there is no early stopping).
        input_config: Crops or resizing, as in the search.
        out_dir: Where ``model.keras``, ``history.csv`` and ``logs/`` go.
        monitor: ``val_dice`` or ``val_f2``.
        epochs: Most epochs.
        images_per_epoch: Training images per epoch.
        patience: Epochs without improvement before stopping.
        seed: Fixes initialisation and sampling.
        verbose: Keras verbosity.

    Returns:
        ``{"history": DataFrame, "best_epoch": int, "seconds": float}``.
    """
    space = hypermodel.search_space([f"{name}={value}" for name, value in values.items()])
    model_builder = hypermodel.ShipUNetHyperModel(
        space,
        hypermodel.WholeImageValidation(validation_table, input_config)
        if validation_table is not None
        else None,
        images_per_epoch,
        seed,
    )
    hp = hypermodel.fixed_hyperparameters(values)
    model = model_builder.build(hp)
    checkpoint = AtomicCheckpoint(
        out_dir / "model.keras", monitor if validation_table is not None else None
    )
    history_partial = out_dir / ".history.csv.partial"
    callbacks = [
        checkpoint,
        keras.callbacks.CSVLogger(str(history_partial)),
        keras.callbacks.TensorBoard(str(out_dir / "logs"), write_graph=False, profile_batch=0),
    ]
    if validation_table is not None:
        callbacks += [
            keras.callbacks.EarlyStopping(monitor, mode="max", patience=patience, verbose=1),
            keras.callbacks.ReduceLROnPlateau(
                monitor, mode="max", factor=0.5, patience=max(1, patience // 2), verbose=1
            ),
        ]
    else:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau("loss", factor=0.5, patience=3, verbose=1)
        )
    start = time.perf_counter()
    try:
        model_builder.fit(
            hp,
            model,
            pipeline.training_dataset(train_table, input_config, seed),
            epochs=epochs,
            callbacks=callbacks,
            verbose=verbose,
        )
    except keras_tuner.errors.FailedTrialError as error:
        kept = (
            f"; the best epoch before it ({checkpoint.best_epoch + 1}) is in {checkpoint.path}"
            if checkpoint.best_epoch is not None
            else ""
        )
        raise TrainError(f"training stopped: {error}{kept}") from None
    seconds = time.perf_counter() - start
    history = pd.read_csv(history_partial)
    pipeline.write_atomically(
        out_dir / "history.csv", lambda temporary: history.to_csv(temporary, index=False)
    )
    history_partial.unlink()
    return {"history": history, "best_epoch": int(checkpoint.best_epoch) + 1, "seconds": seconds}


# ---------------------------------------------------------------------------------------------
# Post-processing tuned on validation images, evaluation on the test split
# ---------------------------------------------------------------------------------------------


def tune_postprocess(model, table: pd.DataFrame, input_config: pipeline.InputConfig) -> dict:
    """Chooses the thresholds and minimum ship size that maximise the F2 on ``table``.

    Streams over the images: the network runs once per image, its components are labelled once
    per pixel threshold, and every image threshold and minimum size of the grid is scored from
    that one IoU matrix (a size filter only removes predicted columns). Memory does not grow
    with the number of images. Ties keep the stricter setting (fewer false ships).

    Returns:
        ``{"config": PostprocessConfig, "f2": float, "tried": int, "images": int}``.
    """
    grid = list(
        dict.fromkeys(
            (threshold, max(image_threshold, threshold), min_size)
            for threshold, image_threshold, min_size in itertools.product(
                THRESHOLDS, IMAGE_THRESHOLDS, MIN_SHIP_PIXELS
            )
        )
    )
    totals = np.zeros(len(grid))
    images = 0
    for position, probabilities in evaluation.predict_table(model, table, input_config):
        truth = evaluation.true_labels_for(table.iloc[position], probabilities.shape)
        top = float(probabilities.max(initial=0.0))
        for threshold in THRESHOLDS:
            components = evaluation.split_ships(probabilities > threshold)
            areas = np.bincount(components.ravel())[1:]
            ious = evaluation.iou_matrix(truth, components)
            for index, (pixel_threshold, image_threshold, min_size) in enumerate(grid):
                if pixel_threshold != threshold:
                    continue
                kept = (
                    areas >= max(min_size, 1)
                    if top >= image_threshold
                    else np.zeros(len(areas), bool)
                )
                totals[index] += evaluation.f2_from_ious(ious[:, kept])
        images += 1
    if images == 0:
        raise TrainError("no validation image could be read to tune the post-processing")
    scores = totals / images
    # The grid runs from loose to strict: >= lets a stricter setting win a tie.
    best = max(range(len(grid)), key=lambda index: (scores[index], index))
    return {
        "config": evaluation.PostprocessConfig(*grid[best]),
        "f2": float(scores[best]),
        "tried": len(grid),
        "images": images,
    }


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
    pipeline.write_atomically(
        path, lambda temporary: figure.savefig(temporary, dpi=90, format="png")
    )
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
    for (position, probabilities), axis in zip(
        evaluation.predict_table(model, chosen, input_config), axes.ravel(), strict=False
    ):
        row = chosen.iloc[position]
        truth = evaluation.true_labels_for(row, probabilities.shape)
        predicted = evaluation.probabilities_to_ships(probabilities, postprocess)
        image = pipeline.decode_image(row.path).numpy()
        axis.imshow(hypermodel.mask_overlay(image, truth > 0, predicted > 0, max_side=512))
        axis.set_title(
            f"{row.ImageId}: {row.ship_count} true, {predicted.max()} predicted\n"
            f"F2 {evaluation.image_f2(truth, predicted):.2f}",
            fontsize=9,
        )
    figure.suptitle("Test images: true ships green, predicted red, overlap yellow")
    figure.tight_layout()
    pipeline.write_atomically(
        path, lambda temporary: figure.savefig(temporary, dpi=80, format="png")
    )
    plt.close(figure)


def clear_previous_training(out_dir: Path) -> None:
    """Empties ``final/`` of an earlier training, so old metrics never sit beside a new model."""
    for name in (*FINAL_FILES, ".history.csv.partial"):
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "logs", ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def run_training(args: argparse.Namespace) -> dict:
    """Retrains, tunes post-processing on val, evaluates on test; writes ``final/``.

    Returns:
        The content of ``metrics.json``.
    """
    results_dir = Path(args.results_dir)
    project_dir = find_project(results_dir, args.project)
    search_config = json.loads((project_dir / "search_config.json").read_text())
    hparams_path = Path(args.hparams) if args.hparams else project_dir / "best_hparams.json"
    if not hparams_path.is_file():
        raise TrainError(
            f"{hparams_path}: file not found"
            + ("" if args.hparams else " (the search has no completed trial yet)")
        )
    values = load_hyperparameters(hparams_path)
    if args.epochs < 1:
        raise TrainError("--epochs must be at least 1")
    try:
        hypermodel.check_input_size(search_config["input"]["size"], values["levels"])
    except ValueError as error:
        raise TrainError(f"{hparams_path}: {error} (the search's input size)") from None

    table = pipeline.read_dataset(search_config["resolved_data_dir"])
    split = pipeline.load_split(search_config["split_file"], table)
    input_config = pipeline.InputConfig(**search_config["input"])
    seed = search_config["seed"] if args.seed is None else args.seed
    monitor = search_config["objective"]
    train_table = pipeline.select_split(
        table, split, *(("train", "val") if args.full else ("train",))
    )
    # The same capped, share-keeping subset of validation images as the search.
    val_table = pipeline.sample_images(
        pipeline.select_split(table, split, "val"), search_config.get("val_images"), seed
    )
    test_table = pipeline.select_split(table, split, "test")
    if test_table.empty:
        raise TrainError(f"{search_config['split_file']}: the split has no test image")

    out_dir = project_dir / "final"
    clear_previous_training(out_dir)
    config = {
        "project": project_dir.name,
        "hyperparameters": values,
        "hyperparameters_from": str(hparams_path.resolve()),
        "input": search_config["input"],
        "input_note": "RGB float 0-255 (the model rescales); crop mode predicts whole images at "
        "full resolution, resize mode resizes to input.size and back",
        "data_dir": search_config["resolved_data_dir"],
        "split_file": search_config["split_file"],
        "trained_on": "train+val" if args.full else "train",
        "monitor": monitor,
        "epochs": args.epochs,
        "images_per_epoch": args.images_per_epoch or search_config["images_per_epoch"],
        "patience": args.patience,
        "seed": seed,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "versions": hypermodel.library_versions(),
    }
    pipeline.write_json_atomically(out_dir / "config.json", {**config, "status": "training"})
    keras.utils.set_random_seed(seed)
    print(
        f"Training {values} on {len(train_table)} images for up to {args.epochs} epochs "
        f"(checkpoint on {monitor}); results in {out_dir}"
    )
    trained = train_model(
        values,
        train_table,
        None if args.full else val_table,
        input_config,
        out_dir,
        monitor,
        args.epochs,
        config["images_per_epoch"],
        args.patience,
        seed,
        args.verbose,
    )
    plot_history(trained["history"], monitor, out_dir / "history.png")

    model = keras.saving.load_model(out_dir / "model.keras")
    print(f"Tuning post-processing on {len(val_table)} validation images ...")
    tuned = tune_postprocess(model, val_table, input_config)
    postprocess = tuned["config"]
    print(f"Evaluating on {len(test_table)} whole test images ...")
    test_scores = evaluation.evaluate_model(model, test_table, input_config, postprocess)
    val_scores = evaluation.evaluate_model(model, val_table, input_config, postprocess)
    plot_examples(model, test_table, input_config, postprocess, out_dir / "test_examples.png")

    metrics = {
        "test": test_scores,
        "validation": val_scores,
        "postprocess": postprocess.__dict__,
        "postprocess_tuning": f"grid of {tuned['tried']} settings on {tuned['images']} validation images, "
        f"best validation F2 {tuned['f2']:.4f}"
        + (" (validation images were also trained on: --full)" if args.full else ""),
        "best_epoch": trained["best_epoch"],
        "epochs_run": int(len(trained["history"])),
        "train_seconds": round(trained["seconds"], 1),
    }
    pipeline.write_json_atomically(out_dir / "metrics.json", metrics)
    pipeline.write_json_atomically(
        out_dir / "config.json",
        {**config, "postprocess": postprocess.__dict__, "status": "complete"},
    )
    print_metrics(metrics, out_dir)
    return metrics


def print_metrics(metrics: dict, out_dir: Path) -> None:
    """Prints the test scores next to the no-ship baseline."""
    test = metrics["test"]
    print(f"\nTest split ({test['images']} whole images, natural share of empty images):")
    print(
        f"  instance F2 (IoU 0.5-0.95)   {test['f2']:.4f}   no-ship baseline {test['f2_no_ship_baseline']:.4f}"
    )
    print(f"  pixel Dice, all images       {test['dice']:.4f}")
    print(f"  pixel Dice, ship images      {test['dice_ship_images']:.4f}")
    print(f"  pixel IoU                    {test['iou']:.4f}")
    print(f"  ship / no-ship accuracy      {test['ship_accuracy']:.4f}")
    print(f"Post-processing (tuned on validation): {metrics['postprocess']}")
    print(f"Saved in {out_dir}: {', '.join(FINAL_FILES)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        run_training(args)
    except (TrainError, pipeline.DataError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
