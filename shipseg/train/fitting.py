"""Training one model: callbacks, the fit with a time budget and early stopping, its history.

``train_model`` is what ``train.py`` runs once (or once per fold): the configuration's U-Net,
whole-image validation each epoch, the best epoch kept atomically, the learning rate halved on
a plateau, early stopping and the wall-time budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pandas as pd

from shipseg.core import atomic, budget, errors, runtime
from shipseg.data import inputs
from shipseg.model import encoders, space
from shipseg.train.hypermodel import ShipUNetHyperModel
from shipseg.train.validation import WholeImageValidation


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
            with encoders.unfrozen(self.model):
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
        encoder_weights: A pretrained encoder's initial weights (``imagenet``, ``none``, a file).
        multi_gpu: Train on every local GPU (``runtime.mirrored_strategy``): the batch is the
            global one, split across the replicas.
        mixed_precision: Train under ``mixed_float16`` (float16 compute, float32 weights).
        jit_compile: Compile the training step with XLA.
    """

    input_config: inputs.InputConfig
    monitor: str
    epochs: int
    images_per_epoch: int
    patience: int
    seed: int
    verbose: int = 1
    deadline: float | None = None
    encoder_weights: str = "none"
    multi_gpu: bool = False
    mixed_precision: bool = False
    jit_compile: bool = False


def training_callbacks(
    settings: TrainSettings, out_dir: Path, validated: bool
) -> tuple[AtomicCheckpoint, list]:
    """The checkpoint, and every callback of a training (logs, stopping, budget).

    Args:
        settings: Monitor, patience, time budget and verbosity of the training.
        out_dir: Where the checkpoint (``model.keras``), the epochs' log and ``logs/`` go.
        validated: Whether whole-image validation runs each epoch: then ``settings.monitor``
            picks the epoch kept and stops training early; else the last epoch is kept.

    Returns:
        The checkpoint (which knows the best epoch afterwards) and the list to pass to ``fit``.
    """
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
        values: Hyperparameters (see ``space.DEFAULT_SPACE``).
        train_table: Training images.
        validation_table: Whole-image validation images, or None (then the last epoch is kept
            and there is no early stopping).
        settings: Input, monitor, epochs, patience, seed and time budget.
        out_dir: Where ``model.keras``, ``history.csv`` and ``logs/`` go.

    Returns:
        ``{"history": DataFrame, "best_epoch": int, "seconds": float,
        "stopped_by_budget": bool, "replicas": int}`` (``replicas``: the devices trained on).
    """
    # First, before anything starts TensorFlow's devices (logical CPU replicas need that).
    strategy = runtime.mirrored_strategy() if settings.multi_gpu else None
    validation = None
    if validation_table is not None:
        validation = WholeImageValidation(validation_table, settings.input_config)
    dimensions = space.search_space([f"{name}={value}" for name, value in values.items()])
    model_builder = ShipUNetHyperModel(
        dimensions,
        validation,
        settings.images_per_epoch,
        settings.seed,
        encoder_weights=settings.encoder_weights,
        mixed_precision=settings.mixed_precision,
        jit_compile=settings.jit_compile,
    )
    hp = space.fixed_hyperparameters(values)
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = model_builder.build(hp)
    checkpoint, callbacks = training_callbacks(settings, out_dir, validation is not None)
    start = time.perf_counter()
    dataset = inputs.training_dataset(train_table, settings.input_config, settings.seed)
    fit_keeping_the_best(model_builder, hp, model, dataset, settings, callbacks, checkpoint)
    seconds = time.perf_counter() - start
    history = _finish_history(out_dir)
    return {
        "history": history,
        "best_epoch": int(checkpoint.best_epoch) + 1,
        "seconds": seconds,
        "stopped_by_budget": any(isinstance(c, budget.TimeBudget) and c.stopped for c in callbacks),
        "replicas": int(model.distribute_strategy.num_replicas_in_sync),
    }


def fit_keeping_the_best(
    model_builder: ShipUNetHyperModel,
    hp: keras_tuner.HyperParameters,
    model: keras.Model,
    dataset,
    settings: TrainSettings,
    callbacks: list[keras.callbacks.Callback],
    checkpoint: AtomicCheckpoint,
) -> None:
    """Runs the fit; a training that diverged or kept no epoch is a one-line error.

    Args:
        model_builder: The hypermodel that built ``model``; its ``fit`` batches and validates.
        hp: The fixed hyperparameters the model was built with (batch size, frozen epochs).
        model: The compiled U-Net to train.
        dataset: The endless, unbatched ``tf.data`` stream of ``(image, mask)`` crops.
        settings: Epochs and verbosity.
        callbacks: Every callback of the training (``training_callbacks``), checkpoint included.
        checkpoint: The checkpoint among ``callbacks``, asked afterwards which epoch it kept.

    Raises:
        errors.UserError: When training stopped on a non-finite loss (naming the best epoch
            kept before it, if any), or ended without any epoch to keep.
    """
    try:
        model_builder.fit(
            hp,
            model,
            dataset,
            epochs=settings.epochs,
            callbacks=callbacks,
            verbose=settings.verbose,
        )
    except keras_tuner.errors.FailedTrialError as error:
        kept = (
            f"; the best epoch before it ({checkpoint.best_epoch + 1}) is in {checkpoint.path} "
            "until the next run discards it"
            if checkpoint.best_epoch is not None
            else ""
        )
        raise errors.UserError(f"training stopped: {error}{kept}") from None
    if checkpoint.best_epoch is None:
        watched = f"loss and {checkpoint.monitor}" if checkpoint.monitor else "loss"
        raise errors.UserError(f"{checkpoint.path}: not written, no epoch had a finite {watched}")


def _finish_history(out_dir: Path) -> pd.DataFrame:
    """Publishes the epochs' log (written as the epochs ran) as ``history.csv``, atomically."""
    partial = out_dir / ".history.csv.partial"
    history = pd.read_csv(partial)
    atomic.write_atomically(
        out_dir / "history.csv", lambda temporary: history.to_csv(temporary, index=False)
    )
    partial.unlink()
    return history


def plot_history(history: pd.DataFrame, monitor: str, path: Path) -> None:
    """Loss and validation scores per epoch; saved atomically.

    Args:
        history: One row per epoch (``history.csv``): ``epoch``, ``loss`` and the scores.
        monitor: The score the checkpoint watched, named in the plot's title.
        path: The PNG file to write.
    """
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
