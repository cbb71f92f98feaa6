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
from shipseg.predict import latency
from shipseg.search import trials, tuning
from shipseg.search.run import run_search, write_report
from shipseg.search.settings import REAL_DEFAULTS as REAL
from shipseg.search.settings import SYNTHETIC_DEFAULTS as SYNTHETIC
from shipseg.search.settings import SearchSettings, project_name, settings_from

DEFAULTS, INPUT = cli.defaults_of(SearchSettings), cli.defaults_of(InputConfig)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``search.py``."""
    parser = argparse.ArgumentParser(
        description="Hyperparameter search over U-Nets for ship segmentation.",
        formatter_class=cli.HelpFormatter,
    )
    _data_options(parser.add_argument_group("data"))
    _budget_options(parser.add_argument_group("search budget"))
    _space_options(parser.add_argument_group("search space"))
    _speed_options(parser.add_argument_group("speed"))
    _run_options(parser.add_argument_group("run"))
    return parser


# One option a statement, so that the parser reads as a table.
# fmt: off
def _data_options(group) -> None:
    """Where the images come from and how they become input."""
    group.add_argument("--data-dir", help="dataset in the Kaggle layout (default: synthetic data)")
    group.add_argument("--mode", choices=("crop", "resize"), default=INPUT.mode,
                       help="train on full-resolution crops or on resized whole images")
    group.add_argument("--input-size", type=int, help="crop size (or resize target): "
                       f"{REAL['input_size']} on real data, {SYNTHETIC['input_size']} synthetic")
    group.add_argument("--empty-fraction", type=float, default=INPUT.empty_image_fraction,
                       help="share of images without ships in training batches")
    group.add_argument("--ship-crop-probability", type=float,
                       default=INPUT.ship_crop_probability,
                       help="chance that a crop of a ship image contains a ship")
    group.add_argument("--val-fraction", type=float, default=DEFAULTS.val_fraction)
    group.add_argument("--test-fraction", type=float, default=DEFAULTS.test_fraction)
    group.add_argument("--val-images", type=int, help="validate on at most this many whole val "
                       f"images, the share of empty ones kept ({REAL['val_images']} on real data)")


def _budget_options(group) -> None:
    """Which algorithm searches, and how much it may spend: epochs, trials, wall time."""
    group.add_argument("--tuner", choices=tuple(tuning.ORACLES), default=DEFAULTS.tuner,
                       help="Keras Tuner's Hyperband, random search or Bayesian optimisation")
    group.add_argument("--max-epochs", type=int, help="most epochs for one model "
                       f"({REAL['max_epochs']} on real data, {SYNTHETIC['max_epochs']} synthetic)")
    group.add_argument("--factor", type=int, default=DEFAULTS.factor,
                       help="Hyperband's reduction factor")
    group.add_argument("--max-trials", type=int, default=DEFAULTS.max_trials,
                       help="trials of random or Bayesian search (Hyperband sets its own)")
    group.add_argument("--time-budget", help="wall time for the whole project, e.g. 45m or "
                       "1h30m; a rerun resumes with what is left, a larger one extends it")
    group.add_argument("--initial-trials", type=int, help="random trials before Bayesian "
                       "optimisation takes over (default: a third of --max-trials, at least 2)")
    group.add_argument("--iterations", type=int, default=DEFAULTS.iterations,
                       help="Hyperband iterations")
    group.add_argument("--executions-per-trial", type=int, default=DEFAULTS.executions_per_trial)
    group.add_argument("--images-per-epoch", type=int, help="training images per epoch "
                       f"({REAL['images_per_epoch']} real, {SYNTHETIC['images_per_epoch']} "
                       "synthetic)")
    group.add_argument("--max-parameters", type=int, default=DEFAULTS.max_parameters,
                       help="trials with bigger models fail at once instead of exhausting memory")


def _space_options(group) -> None:
    """What the search ranks by and which hyperparameters it varies."""
    known = "; ".join(f"{d.name} [{d.describe()}]" for d in DEFAULT_SPACE)
    group.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                       help="fix (levels=4), restrict (base_filters=16,32) or narrow "
                       f"(learning_rate=1e-4:1e-3) a hyperparameter; repeatable. Known: {known}")
    group.add_argument("--encoder-weights", default=DEFAULTS.encoder_weights,
                       metavar=encoders.WEIGHT_CHOICES, help="pretrained encoders' initial "
                       "weights; with weights the encoder is mobilenet_v2 unless --hp encoder=")
    group.add_argument("--start-from", help="the first trial's hyperparameters: best_hparams.json, "
                       "a trial.json or a JSON object (default: the space's defaults)")
    group.add_argument("--objective", choices=trials.OBJECTIVES, default=DEFAULTS.objective,
                       help="on whole val images: pixel Dice, instance F2 at fixed thresholds, "
                       "or F2 with the ship / no-ship threshold tuned (what train.py reaches)")


def _speed_options(group) -> None:
    """How each trial's model is timed, and the latency it must meet."""
    group.add_argument("--latency-format", choices=latency.FORMATS, default=DEFAULTS.latency_format,
                       help="time each trial's model as Keras or as TFLite (batch 1)")
    group.add_argument("--latency-size", type=int, default=DEFAULTS.latency_size,
                       help="side of the square image each model is timed on")
    group.add_argument("--latency-runs", type=int, default=DEFAULTS.latency_runs,
                       help="timed calls at most (after 3 warm-up calls; fewer past 3 s)")
    group.add_argument("--max-latency", help="a latency budget, e.g. 100ms: a trial's model "
                       "slower an image is recorded as over it, not trained, and cannot win")


def _run_options(group) -> None:
    """Where results go, the seed, resuming, devices and verbosity."""
    group.add_argument("--report", action="store_true",
                       help="only (re)write the project's report.md from its trials.csv")
    group.add_argument("--results-dir", default=DEFAULTS.results_dir)
    group.add_argument("--project", help="results/<project> (default: the data folder's name)")
    group.add_argument("--seed", type=int, default=DEFAULTS.seed,
                       help="fixes split, sampling and initialisation")
    group.add_argument("--overwrite", action="store_true",
                       help="start afresh (default: resume, keeping completed trials)")
    group.add_argument("--multi-gpu", action="store_true",
                       help="train each trial on all local GPUs (MirroredStrategy)")
    group.add_argument("--mixed-precision", action="store_true",
                       help="float16 compute, float32 weights and outputs (recent GPUs)")
    group.add_argument("--jit-compile", action="store_true",
                       help="compile training steps with XLA (2.5x slower on this CPU)")
    group.add_argument("--verbose", type=int, default=DEFAULTS.verbose, choices=(0, 1, 2))
# fmt: on


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
