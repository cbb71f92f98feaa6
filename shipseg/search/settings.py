"""What a search was asked to do: one frozen ``SearchSettings``, its record, and its oracle.

``settings_from`` builds the settings once from ``search.py``'s options (the defaults of the
synthetic or the real data filled in, every count checked) and the run passes them down;
``record`` is what ``search_config.json`` keeps, and what a resumed run must match
(``check_resumable``).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import keras_tuner

from shipseg.core import atomic, budget, errors, runtime
from shipseg.data import synthetic
from shipseg.data.inputs import InputConfig
from shipseg.model import encoders
from shipseg.model.space import Dimension, search_space
from shipseg.model.unet import check_input_size
from shipseg.predict import latency

# On the synthetic default, a budget that ends in a few minutes on two CPU cores.
SYNTHETIC_DEFAULTS = {"input_size": 128, "max_epochs": 6, "images_per_epoch": 192}
# ... and a space without the slowest U-Nets (5 levels, 32 filters); --hp overrides these too.
SYNTHETIC_SPACE = ("levels=2:4", "base_filters=8,16")
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
    "tuner",
    "max_epochs",
    "factor",
    "seed",
    "space",
    "images_per_epoch",
    "val_images",
    "executions_per_trial",
    "encoder_weights",
    "latency_format",
    "latency_size",
    "max_latency",
)
# What a project searched before a setting existed had, for resuming it.
BEFORE_KEYS = {
    "tuner": "hyperband",
    "latency_format": latency.LatencyProtocol.format,
    "latency_size": latency.LatencyProtocol.image_size,
}
# ... of which these only matter to Hyperband (--max-trials may grow on resume, as the budget).
HYPERBAND_KEYS = ("factor", "iterations")
# Counts that must be at least 1 (None: not given, where that is allowed).
COUNTS = (
    "max_epochs",
    "max_trials",
    "iterations",
    "executions_per_trial",
    "images_per_epoch",
    "val_images",
    "initial_trials",
    "latency_runs",
    "latency_size",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """Every setting of one search (see ``python search.py --help`` for each).

    Attributes:
        data_dir: The dataset's absolute path, or None for the synthetic dataset.
        project: The project's name: its folder is ``results_dir / project``.
        hp: The search-space overrides (``name=value``), the synthetic default's first.
        encoder_weights: ``imagenet``, ``none`` or a weights file's absolute path.
        initial_trials: Bayesian optimisation's random trials, None for the default
            (``bayesian_initial_trials``).
        time_budget: The project's wall-time budget as written (``90m``), or None.
        start_from: A file of the first trial's hyperparameters (``best_hparams.json``, a
            trial's ``trial.json`` or a plain object), or None for the space's defaults.
        latency_format: What each trial's model is timed as (``latency.FORMATS``).
        latency_size: The side of the square image each trial's model is timed on.
        latency_runs: Timed calls at most (fewer past a few seconds, ``LatencyProtocol``).
        max_latency: The latency budget as written (``100ms``): a trial whose model takes
            longer an image is recorded as over it, is not trained, and cannot win.
    """

    data_dir: str | None
    project: str
    input_config: InputConfig
    hp: tuple[str, ...]
    results_dir: str = "results"
    objective: str = "val_dice"
    tuner: str = "hyperband"
    max_epochs: int = 10
    factor: int = 3
    max_trials: int = 10
    initial_trials: int | None = None
    iterations: int = 1
    executions_per_trial: int = 1
    images_per_epoch: int = 512
    val_images: int | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    max_parameters: int = 40_000_000
    encoder_weights: str = "none"
    seed: int = 0
    multi_gpu: bool = False
    mixed_precision: bool = False
    jit_compile: bool = False
    start_from: str | None = None
    time_budget: str | None = None
    latency_format: str = "keras"
    latency_size: int = latency.LatencyProtocol.image_size
    latency_runs: int = latency.LatencyProtocol.runs
    max_latency: str | None = None
    overwrite: bool = False
    verbose: int = 1

    def __post_init__(self):
        """Raises ``errors.UserError`` (naming the option) for a setting out of its range."""
        if self.initial_trials is not None and self.tuner != "bayesian":
            raise errors.UserError("--initial-trials is for --tuner bayesian only")
        for name in COUNTS:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise errors.UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.factor < 2:
            raise errors.UserError("--factor must be at least 2")
        if self.time_budget is not None:
            try:
                budget.parse_duration(self.time_budget)
            except ValueError as error:
                raise errors.UserError(f"--time-budget: {error}") from None
        if self.latency_format not in latency.FORMATS:
            raise errors.UserError(f"--latency-format must be one of {', '.join(latency.FORMATS)}")
        if self.max_latency is not None:
            try:
                latency.parse_milliseconds(self.max_latency)
            except ValueError as error:
                raise errors.UserError(f"--max-latency: {error}") from None

    @property
    def latency_protocol(self) -> latency.LatencyProtocol:
        """How each trial's model is timed."""
        return latency.LatencyProtocol(
            format=self.latency_format, image_size=self.latency_size, runs=self.latency_runs
        )

    @property
    def max_latency_ms(self) -> float | None:
        """The latency budget in milliseconds an image, or None without one."""
        return latency.budget_ms(self.max_latency)

    @property
    def project_dir(self) -> Path:
        """Where every file of the search goes."""
        return Path(self.results_dir) / self.project

    @property
    def space(self) -> tuple[Dimension, ...]:
        """The search space with ``hp`` applied (a pretrained encoder when weights are given)."""
        return search_space(self.hp, pretrained=self.encoder_weights != "none")

    def start_values(self) -> dict:
        """The first trial's hyperparameters: ``start_from``'s, else the space's defaults.

        A dimension that ``--hp`` fixes keeps its one value; ``start_from`` may leave out
        hyperparameters (they take their defaults) but not go outside the space.

        Raises:
            errors.UserError: Naming the file and the hyperparameter outside the space.
        """
        given = {} if self.start_from is None else read_start(Path(self.start_from))
        values = {}
        for dimension in self.space:
            value = given.get(dimension.name, dimension.start_value())
            if dimension.fixed:
                value = dimension.values[0]
            elif dimension.kind == "float" and isinstance(value, int | float):
                value = float(value)
            elif dimension.kind == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
            if not dimension.contains(value):
                raise errors.UserError(
                    f"--start-from {self.start_from}: {dimension.name}={value} is outside the "
                    f"search space ({dimension.describe()}); widen it with --hp {dimension.name}="
                )
            values[dimension.name] = value
        return values

    @property
    def bayesian_initial_trials(self) -> int:
        """Random trials before Bayesian optimisation's Gaussian process proposes the others.

        Keras Tuner's default is three per hyperparameter, 36 for this space: a search of fewer
        trials would be a random search (measured: seed-0 Bayesian and random searches of 6
        trials tried the same configurations). A third of ``max_trials``, at least 2, by default.
        """
        return self.initial_trials or max(2, self.max_trials // 3)

    def record(self) -> dict:
        """The run's configuration as ``search_config.json`` keeps it (and resuming compares)."""
        return {
            "data_dir": self.data_dir,
            "synthetic": None if self.data_dir else dataclasses.asdict(synthetic.SyntheticConfig()),
            "project": self.project,
            "input": dataclasses.asdict(self.input_config),
            "objective": self.objective,
            "tuner": self.tuner,
            "max_epochs": self.max_epochs,
            "factor": self.factor,
            "max_trials": self.max_trials,
            "initial_trials": self.bayesian_initial_trials if self.tuner == "bayesian" else None,
            "iterations": self.iterations,
            "executions_per_trial": self.executions_per_trial,
            "images_per_epoch": self.images_per_epoch,
            "val_images": self.val_images,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "max_parameters": self.max_parameters,
            "encoder_weights": self.encoder_weights,
            "seed": self.seed,
            "space": {d.name: d.describe() for d in self.space},
            "hp_overrides": list(self.hp),
            "multi_gpu": self.multi_gpu,
            "mixed_precision": self.mixed_precision,
            "jit_compile": self.jit_compile,
            "start_from": self.start_from,
            "time_budget": self.time_budget,
            "latency_format": self.latency_format,
            "latency_size": self.latency_size,
            "latency_runs": self.latency_runs,
            "max_latency": self.max_latency,
            "versions": runtime.library_versions(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        }


def check_space(settings: SearchSettings) -> None:
    """Checks the space against the input size and finds the pretrained encoders' weights.

    Raises:
        errors.UserError: For a bad override, an input size the deepest U-Net cannot halve,
            or weights that cannot be had.
    """
    try:
        space = {dimension.name: dimension for dimension in settings.space}
    except ValueError as error:
        raise errors.UserError(str(error)) from None
    try:
        # Ranges are (low, high) and choices a tuple: either way the deepest is the largest.
        check_input_size(settings.input_config.size, int(max(space["levels"].values)))
    except ValueError as error:
        raise errors.UserError(f"--input-size: {error}") from None
    try:
        check_input_size(settings.latency_size, int(max(space["levels"].values)))
    except ValueError as error:
        raise errors.UserError(f"--latency-size: {error}") from None
    runtime.hide_gpus()  # checking the weights builds the encoders: not on the trials' GPU
    encoders.check_weights(space["encoder"].values, settings.encoder_weights)


def check_resumable(project_dir: Path, record: dict) -> bool:
    """Whether the project holds a search to resume; refuses one made with other settings."""
    config_path = project_dir / "search_config.json"
    if not config_path.is_file():
        return False
    # Projects searched before an option existed ran with its BEFORE_KEYS value.
    previous = {**BEFORE_KEYS, **atomic.read_json(config_path)}
    hyperband = record["tuner"] == "hyperband"
    keys = [key for key in RESUME_KEYS if hyperband or key not in HYPERBAND_KEYS]
    changed = [key for key in keys if previous.get(key) != record.get(key)]
    if changed:
        raise errors.UserError(
            f"{config_path}: this project was searched with other settings "
            f"({', '.join(_describe_change(key, previous, record) for key in changed)}); "
            "rerun with --overwrite to start afresh, or choose another --project"
        )
    return True


def _describe_change(key: str, previous: dict, record: dict) -> str:
    """A changed setting in words; for the space, each changed range and the --hp restoring it.

    The default space itself changes between versions (the pretrained one did on 2026-12-07):
    the message then says which ranges moved, so ``--hp`` can bring the old ones back.
    """
    if key != "space" or not isinstance(previous.get(key), dict):
        return key
    old, new = previous[key], record[key]
    moved = [name for name in {**old, **new} if old.get(name) != new.get(name)]
    ranges = ", ".join(f"{name} {old.get(name)} -> {new.get(name)}" for name in moved)
    restore = " ".join(f"--hp {name}={old[name].split(' ')[0]}" for name in moved if old.get(name))
    return f"space: {ranges}; to resume as before: {restore}"


def oracle_settings(settings: SearchSettings) -> dict:
    """Arguments of the ``tuner``'s Keras Tuner oracle."""
    common = {
        "objective": keras_tuner.Objective(settings.objective, direction="max"),
        "seed": settings.seed,
        # None: failed trials are recorded and the search goes on, however many fail in a row.
        "max_consecutive_failed_trials": None,
    }
    if settings.tuner == "hyperband":
        hyperband = {"max_epochs": settings.max_epochs, "factor": settings.factor}
        return {**common, **hyperband, "hyperband_iterations": settings.iterations}
    if settings.tuner == "bayesian":
        initial = settings.bayesian_initial_trials
        return {**common, "max_trials": settings.max_trials, "num_initial_points": initial}
    return {**common, "max_trials": settings.max_trials}


def settings_from(options: dict) -> SearchSettings:
    """The search's settings from ``search.py``'s options, with its data's defaults filled in.

    Args:
        options: The parsed command line by option name (``vars(args)``): every field of
            ``SearchSettings`` that the command offers, plus ``mode``, ``input_size``,
            ``ship_crop_probability`` and ``empty_fraction`` (which make ``input_config``).
            A None count takes the synthetic or real data's default.

    Raises:
        errors.UserError: Naming the option that is out of range.
    """
    data_dir = options["data_dir"]
    chosen = dict(options)
    for name, value in (REAL_DEFAULTS if data_dir else SYNTHETIC_DEFAULTS).items():
        chosen[name] = value if chosen.get(name) is None else chosen[name]
    try:
        input_config = InputConfig(
            mode=chosen["mode"],
            size=chosen["input_size"],
            ship_crop_probability=chosen["ship_crop_probability"],
            empty_image_fraction=chosen["empty_fraction"],
        )
    except ValueError as error:
        raise errors.UserError(str(error)) from None
    fields = {field.name for field in dataclasses.fields(SearchSettings)}
    values = {name: value for name, value in chosen.items() if name in fields}
    values.update(
        data_dir=str(Path(data_dir).resolve()) if data_dir else None,
        project=project_name(chosen["project"], data_dir),
        input_config=input_config,
        hp=(*(() if data_dir else SYNTHETIC_SPACE), *chosen["hp"]),
        encoder_weights=encoders.resolve_weights(chosen["encoder_weights"]),
    )
    settings = SearchSettings(**values)
    check_space(settings)
    return settings


def project_name(project: str | None, data_dir: str | None) -> str:
    """``--project``, or the data folder's name, or ``synthetic``."""
    if project:
        return project
    return Path(data_dir).resolve().name if data_dir else "synthetic"


def read_start(path: Path) -> dict:
    """Hyperparameters from ``best_hparams.json``, a Keras Tuner ``trial.json`` or a plain object.

    Raises:
        errors.UserError: For a missing or unreadable file, or one holding no object of values.
    """
    data = atomic.read_json(path)
    if isinstance(data, dict) and isinstance(data.get("hyperparameters"), dict):
        data = data["hyperparameters"]  # best_hparams.json, or a trial.json (with "values")
        data = data.get("values", data) if isinstance(data.get("values"), dict) else data
    if not isinstance(data, dict):
        raise errors.UserError(f"{path}: expected a JSON object of hyperparameters")
    return {name: value for name, value in data.items() if not name.startswith("tuner/")}
