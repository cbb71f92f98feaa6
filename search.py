"""Hyperparameter search over the ship U-Net: ``python search.py [--data-dir DIR] [options]``.

Keras Tuner's Hyperband by default (``--tuner random`` or ``bayesian`` for the others); without
``--data-dir``, on the synthetic dataset with a budget of minutes. Everything goes under
``results/<project>/`` (the files: docs/guide.md); rerunning the same command resumes, keeping
every completed trial. The work is ``shipseg.search.run``; this file is its command line.
"""

from __future__ import annotations

import argparse
import sys

from shipseg.core import runtime  # noqa: I001  (first: it imports TensorFlow quietly)

runtime.import_tensorflow_quietly()

from shipseg import cli
from shipseg.data.inputs import InputConfig
from shipseg.model import encoders
from shipseg.model.space import DEFAULT_SPACE
from shipseg.search import trials, tuning
from shipseg.search.run import run_search, write_report
from shipseg.search.settings import SearchSettings, project_name, settings_from

DEFAULTS, INPUT = cli.defaults_of(SearchSettings), cli.defaults_of(InputConfig)


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
        default=INPUT.mode,
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
        default=INPUT.empty_image_fraction,
        help="share of images without ships in training batches",
    )
    group.add_argument(
        "--ship-crop-probability",
        type=float,
        default=INPUT.ship_crop_probability,
        help="chance that a crop of a ship image contains a ship",
    )
    group.add_argument("--val-fraction", type=float, default=DEFAULTS.val_fraction)
    group.add_argument("--test-fraction", type=float, default=DEFAULTS.test_fraction)
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
        default=DEFAULTS.tuner,
        help="Keras Tuner's algorithm: Hyperband (many short trials, the best trained longer), "
        "random search, or Bayesian optimisation (a Gaussian process proposes each trial)",
    )
    group.add_argument(
        "--max-epochs",
        type=int,
        help="most epochs for one model: Hyperband's longest trials, every trial of random or "
        "Bayesian search (default 10 on real data, 6 on synthetic)",
    )
    group.add_argument(
        "--factor", type=int, default=DEFAULTS.factor, help="Hyperband's reduction factor"
    )
    group.add_argument(
        "--max-trials",
        type=int,
        default=DEFAULTS.max_trials,
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
    group.add_argument(
        "--iterations", type=int, default=DEFAULTS.iterations, help="Hyperband iterations"
    )
    group.add_argument("--executions-per-trial", type=int, default=DEFAULTS.executions_per_trial)
    group.add_argument(
        "--images-per-epoch",
        type=int,
        help="training images per epoch (default 512 real, 192 synthetic)",
    )
    group.add_argument(
        "--max-parameters",
        type=int,
        default=DEFAULTS.max_parameters,
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
        + "; ".join(f"{d.name} [{d.describe()}]" for d in DEFAULT_SPACE),
    )
    group.add_argument(
        "--encoder-weights",
        default=DEFAULTS.encoder_weights,
        metavar=encoders.WEIGHT_CHOICES,
        help="initial weights of pretrained encoders: ImageNet's (from Keras's cache, or "
        "downloaded), none (random) or a weights file; with weights the encoder is mobilenet_v2 "
        "unless --hp encoder=... names others",
    )
    group.add_argument(
        "--objective",
        choices=trials.OBJECTIVES,
        default=DEFAULTS.objective,
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
    group.add_argument("--results-dir", default=DEFAULTS.results_dir)
    group.add_argument(
        "--project", help="results/<project> (default: the data folder's name, or 'synthetic')"
    )
    group.add_argument(
        "--seed", type=int, default=DEFAULTS.seed, help="fixes split, sampling and initialisation"
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
    group.add_argument(
        "--verbose",
        type=int,
        default=DEFAULTS.verbose,
        choices=(0, 1, 2),
        help="Keras verbosity",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return cli.main(
        "search.py",
        build_parser(),
        lambda args: (
            write_report(args.results_dir, project_name(args.project, args.data_dir))
            if args.report
            else run_search(settings_from(vars(args)))
        ),
        argv,
        on_interrupt="rerun the same command to resume (completed trials are kept)",
    )


if __name__ == "__main__":
    sys.exit(main())
