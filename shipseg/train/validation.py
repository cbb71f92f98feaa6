"""Per-epoch validation on whole images: the scores the search and training rank by.

Crops cannot show what matters on this data (three images in four have no ship), so after each
epoch ``WholeImageValidation`` predicts whole validation images, scores them with the one
scoring path of ``evaluation``, and adds ``val_*`` values to the epoch's logs.
"""

from __future__ import annotations

from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pandas as pd

from shipseg.core import atomic
from shipseg.data import inputs
from shipseg.predict import prediction
from shipseg.predict.drawing import mask_overlay
from shipseg.scoring import metrics as scoring

# Scoreboard results that are counts, not scores: kept out of the epoch's logs.
COUNTS = (
    "images",
    "f2_no_ship_baseline",
    "ship_images",
    "ship_images_found",
    "empty_images_with_ships",
    "found_by_size",
)


class WholeImageValidation(keras.callbacks.Callback):
    """After each epoch, predicts whole validation images and adds ``val_*`` scores to the logs.

    Scores (see ``scoring.Scoreboard``): ``val_dice``, ``val_dice_ship_images``,
    ``val_iou``, ``val_f2``, ``val_f2_ship_images`` (the F2 over ship images alone),
    ``val_ship_accuracy``, ``val_ship_auc`` (how well the image-level
    evidence, the ship head or the top pixel, ranks ship images above empty ones) and
    ``val_f2_tuned`` (the F2 with the image-level threshold chosen on these images). They are computed on full-size images with
    the natural share of empty images, which crops cannot show. Because the values are added to
    the epoch's logs before later callbacks run, Keras Tuner, TensorBoard, checkpoints and
    early stopping all see them like any Keras metric.

    When a TensorBoard log directory is given, a few fixed validation images are drawn there
    each epoch with the true ships in green and the predicted ones in red.

    Args:
        table: Validation rows from ``airbus.read_dataset``.
        input_config: The training input settings (resize mode is repeated here).
        postprocess: How probabilities become ships for the F2.
        batch_size: Images per forward pass.
        image_log_dir: TensorBoard directory for the mask images, or None.
        images_to_log: How many validation images to draw (ship images first).
        monitor: The score that picks the best epoch (``val_f2_tuned``...), for
            ``image_scores_path``.
        image_scores_path: Where to write each image's scores (``ImageId``, ``f2``,
            ``f2_tuned``, ``dice``) whenever ``monitor`` improves, so that two trials can be
            compared image by image at their best epochs; None writes nothing.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        input_config: inputs.InputConfig | None = None,
        postprocess: scoring.PostprocessConfig = scoring.DEFAULT_POSTPROCESS,
        batch_size: int = 4,
        image_log_dir: str | None = None,
        images_to_log: int = 4,
        monitor: str | None = None,
        image_scores_path: str | None = None,
    ):
        super().__init__()
        self.monitor = monitor
        self.image_scores_path = image_scores_path
        self.best_monitored = -np.inf
        self.table = table.reset_index(drop=True)
        self.input_config = input_config
        self.postprocess = postprocess
        self.batch_size = batch_size
        self.image_log_dir = image_log_dir
        ship_first = self.table.sort_values(["ship_count", "ImageId"], ascending=[False, True])
        shown = list(ship_first.index[: max(images_to_log - 1, 0)])
        empty = self.table.index[self.table.ship_count == 0]
        if len(empty) and images_to_log:
            shown.append(empty[0])
        self.logged_positions = shown[:images_to_log]
        self.last_results: dict[str, float] = {}

    def on_epoch_end(self, epoch, logs=None):  # noqa: D102
        scoreboard = scoring.Scoreboard()
        drawn = []
        gate = {"scores": [], "open": [], "closed": [], "dice": [], "position": []}
        for scored in prediction.score_table(
            self.model, self.table, self.input_config, self.postprocess, self.batch_size
        ):
            evidence = prediction.ship_score(scored.prediction)
            scoreboard.add(scored.truth, scored.predicted, evidence)
            gate["scores"].append(evidence)
            gate["open"].append(scoring.image_f2(scored.truth, scored.ungated))
            gate["closed"].append(0.0 if scored.truth.any() else 1.0)
            gate["dice"].append(scoring.image_dice(scored.truth, scored.predicted))
            position = scored.prediction.position
            gate["position"].append(position)
            if position in self.logged_positions and self.image_log_dir:
                drawn.append((self.table.path[position], scored.truth > 0, scored.predicted > 0))
        if not np.all(np.isfinite(gate["scores"])):
            # A diverged network predicts NaN before its loss shows it: stop it, saying so.
            raise keras_tuner.errors.FailedTrialError(
                "the network's predictions became NaN or infinite; trial stopped"
            )
        self.last_results = scoreboard.results()
        threshold = None
        if self.last_results["images"]:
            # What the model scores once train.py tunes its image-level threshold: the metric
            # that sees a better ship / no-ship decision, which a fixed 0.5 gate hides.
            threshold, self.last_results["f2_tuned"] = scoring.best_gate(
                gate["scores"], gate["open"], gate["closed"]
            )
        if logs is not None:
            for name, value in self.last_results.items():
                if name not in COUNTS:
                    logs[f"val_{name}"] = value
            self._keep_image_scores(logs, scoreboard, gate, threshold)
        if drawn:
            self._log_images(epoch, drawn)

    def _keep_image_scores(self, logs: dict, scoreboard, gate: dict, threshold) -> None:
        """Writes each image's scores when the monitored score improves (see the class)."""
        value = logs.get(self.monitor, np.nan) if self.monitor else np.nan
        if not self.image_scores_path or threshold is None or not value > self.best_monitored:
            return
        self.best_monitored = value
        table = pd.DataFrame(
            {
                "ImageId": self.table.ImageId.to_numpy()[gate["position"]],
                "f2": scoreboard.f2_scores,
                "f2_tuned": scoring.gated_f2(
                    gate["scores"], gate["open"], gate["closed"], threshold
                ),
                "dice": gate["dice"],
            }
        )
        atomic.write_atomically(
            Path(self.image_scores_path), lambda path: table.to_csv(path, index=False)
        )

    def _log_images(self, epoch: int, drawn) -> None:
        import tensorflow as tf

        pictures = [
            mask_overlay(inputs.decode_image(path).numpy(), truth, predicted, max_side=256)
            for path, truth, predicted in drawn
        ]
        writer = tf.summary.create_file_writer(f"{self.image_log_dir}/masks")
        with writer.as_default():
            for index, picture in enumerate(pictures):
                tf.summary.image(
                    f"validation_image_{index}",
                    picture[None] / 255.0,
                    step=epoch,
                    description="green: true ships, red: predicted, yellow: both",
                )
        writer.close()
