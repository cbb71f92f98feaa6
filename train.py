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

With ``--folds K``, one such folder per fold in ``results/<project>/folds/`` and their summary.
The work itself is ``shipseg.train.run``'s; this script reads the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from shipseg.core import runtime  # noqa: I001  (first: it imports TensorFlow quietly)

runtime.import_tensorflow_quietly()

from shipseg import cli
from shipseg.core import locks
from shipseg.model import encoders
from shipseg.search import trials
from shipseg.train.run import TrainOptions, find_project, run_folds, run_training


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``train.py``."""
    parser = argparse.ArgumentParser(
        description="Retrain a searched U-Net configuration and evaluate it on the test split.",
        formatter_class=cli.HelpFormatter,
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
    source.add_argument("--trial", metavar="ID", help="this trial of the search (trials.csv)")
    parser.add_argument(
        "--max-latency",
        help="with --best: the best trial whose model the search timed at or under this, "
        "e.g. 100ms (judged against the start as the search's winner is)",
    )
    parser.add_argument("--project", help="results/<project> of the search (default: the latest)")
    defaults = cli.defaults_of(TrainOptions)
    parser.add_argument("--results-dir", default=defaults.results_dir)
    parser.add_argument("--seed", type=int, help="default: the search's seed")
    parser.add_argument("--verbose", type=int, default=defaults.verbose, choices=(0, 1, 2))
    _training_options(parser.add_argument_group("training"), defaults)
    _evaluation_options(parser.add_argument_group("evaluation"))
    devices = parser.add_argument_group("devices")
    devices.add_argument("--multi-gpu", action="store_true", help="all local GPUs, mirrored")
    devices.add_argument("--mixed-precision", action="store_true", help="float16 compute")
    devices.add_argument("--jit-compile", action="store_true", help="XLA-compiled steps")
    return parser


def _training_options(group, defaults) -> None:
    """How long to train, on what, and which epoch to keep."""
    group.add_argument("--epochs", type=int, default=defaults.epochs, help="most epochs")
    group.add_argument(
        "--images-per-epoch", type=int, help="training images per epoch (default: as in the search)"
    )
    group.add_argument(
        "--patience",
        type=int,
        default=defaults.patience,
        help="epochs without improvement before stopping early",
    )
    group.add_argument(
        "--time-budget",
        help="wall time for training, e.g. 60m or 1h30m: stops at it and keeps the best epoch "
        "(post-processing tuning and the test evaluation follow); with --folds, for all folds",
    )
    group.add_argument(
        "--monitor",
        choices=trials.OBJECTIVES,
        help="score that picks the best epoch and stops early (default: the search's objective)",
    )
    group.add_argument(
        "--encoder-weights",
        metavar=encoders.WEIGHT_CHOICES,
        help="a pretrained encoder's initial weights (default: as in the search)",
    )
    group.add_argument(
        "--val-images",
        type=int,
        default=defaults.val_images,
        help="validate on at most this many whole val images (share of empty ones kept); "
        "with --folds a fold validates on the whole next fold",
    )
    group.add_argument(
        "--full",
        action="store_true",
        help="train on train + val for exactly --epochs (no early stopping)",
    )


def _evaluation_options(group) -> None:
    """Test-time augmentation and K-fold cross-validation."""
    group.add_argument(
        "--tta",
        action="store_true",
        help="flip test-time augmentation: tune and evaluate on predictions averaged over the "
        "image and its two flips (3x slower); inference then repeats it",
    )
    group.add_argument(
        "--folds",
        type=int,
        help="K-fold cross-validation over train + val instead of one training: each fold is "
        "tested once, the next fold validates, the rest trains; reports mean and spread of the "
        "F2 and of its gain over the no-ship baseline (results/<project>/folds/); folds that "
        "finished with the same configuration are kept, so a stopped run goes on where it was",
    )
    group.add_argument(
        "--only-folds",
        type=int,
        nargs="+",
        metavar="K",
        help="with --folds: train just these folds (numbered from 0), e.g. one per machine or "
        "per session; the summary covers every fold finished so far",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return cli.main(
        "train.py", build_parser(), lambda args: run_command(TrainOptions(**vars(args))), argv
    )


def run_command(options: TrainOptions) -> None:
    """K-fold cross-validation with ``--folds``, one training otherwise, owning the project.

    The project's lock keeps a second training, or a search of the same project, out.
    ``--trial`` and ``--max-latency`` choose the search's trial first (a file beside
    ``best_hparams.json`` records which, and why).
    """
    project_dir = find_project(Path(options.results_dir), options.project)
    with locks.hold(project_dir, "--project"):
        if options.trial is not None or options.max_latency is not None:
            chosen = trials.choose_trial(project_dir, options.trial, options.max_latency_ms)
            options = dataclasses.replace(
                options, hparams=str(chosen), best=False, trial=None, max_latency=None
            )
        run_folds(options) if options.folds is not None else run_training(options)


if __name__ == "__main__":
    sys.exit(main())
