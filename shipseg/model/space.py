"""The search space over the ship U-Net: every hyperparameter and its default range.

``Dimension`` and ``DEFAULT_SPACE`` name each hyperparameter and the values a search may try;
``search_space`` applies command-line overrides (``--hp``). The ``keras_tuner.HyperModel`` that
samples this space is ``shipseg.train.hypermodel.ShipUNetHyperModel``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras_tuner

from shipseg.model import encoders
from shipseg.model.losses import PIXEL_LOSSES
from shipseg.model.unet import (
    MAX_LEVELS,
    MIN_LEVELS,
)


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One hyperparameter: its name and the values the search may try.

    Attributes:
        name: The hyperparameter's name (as in ``best_hparams.json``).
        kind: ``"int"``, ``"float"``, ``"choice"`` or ``"bool"``.
        values: The choices (``choice``, ``bool``) or ``(low, high)`` (``int``, ``float``).
        step: Grid step for ``int`` / ``float`` ranges (None: continuous floats).
        log: Sample a float range on a log scale.
        limits: Hard bounds a user may narrow within, for ``int`` / ``float``.
        help: One line for ``--help``.
        allowed: For a ``choice`` of names: every name a user may ask for (default: ``values``),
            when the default range is narrower (the pretrained encoders).
        default: The trusted value: the search's first trial (``start_value``) and Keras
            Tuner's default. None: the low end, or the first choice.
    """

    name: str
    kind: str
    values: tuple
    step: float | None = None
    log: bool = False
    limits: tuple | None = None
    help: str = ""
    allowed: tuple | None = None
    default: object = None

    @property
    def fixed(self) -> bool:
        """Whether the search has one value to try (``--hp name=value``)."""
        ranged = self.kind in ("int", "float")
        return len(self.values) == 1 or (ranged and self.values[0] == self.values[1])

    def start_value(self):
        """The trusted value within this dimension's current range.

        ``default`` where the range holds it; else the range's nearest end (a narrowed range),
        or its first choice (restricted choices).
        """
        if self.fixed:
            return self.values[0]
        if self.kind in ("int", "float"):
            low, high = self.values
            value = low if self.default is None else min(max(self.default, low), high)
            return int(value) if self.kind == "int" else float(value)
        if self.kind == "bool":
            return bool(self.default) if self.default is not None else False
        return self.default if self.default in self.values else self.values[0]

    def contains(self, value) -> bool:
        """Whether ``value`` is one this dimension's trials may take."""
        if self.kind in ("int", "float") and not self.fixed:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            return self.values[0] <= value <= self.values[1]
        return value in self.values

    def define(self, hp: keras_tuner.HyperParameters):
        """Registers this dimension with ``hp`` and returns the trial's value."""
        if self.fixed:
            return hp.Fixed(self.name, self.values[0])
        default = self.start_value()
        if self.kind == "int":
            step = int(self.step or 1)
            return hp.Int(self.name, self.values[0], self.values[1], step=step, default=default)
        if self.kind == "float":
            sampling = "log" if self.log else "linear"
            return hp.Float(
                self.name,
                self.values[0],
                self.values[1],
                step=None if self.log else self.step,
                sampling=sampling,
                default=default,
            )
        if self.kind == "bool":
            return hp.Boolean(self.name, default=default)
        return hp.Choice(self.name, list(self.values), default=default)

    def describe(self) -> str:
        """The range as a user would write it (``2:5``, ``8,16,32``)."""
        if self.kind in ("int", "float") and len(self.values) == 2:
            return f"{self.values[0]:g}:{self.values[1]:g}" + (" (log)" if self.log else "")
        text = ",".join(
            str(value).lower() if isinstance(value, bool) else str(value) for value in self.values
        )
        others = [value for value in self.allowed or () if value not in self.values]
        return f"{text} (also {','.join(others)})" if others else text

    def parse(self, text: str) -> Dimension:
        """A copy fixed or narrowed by a command-line value.

        ``value`` fixes it, ``a,b,c`` restricts it to choices, ``low:high`` narrows a range.

        Raises:
            ValueError: With a message naming the hyperparameter and the accepted values.
        """

        def convert(token: str):
            token = token.strip()
            try:
                if self.kind == "int":
                    return int(token)
                if self.kind == "float":
                    return float(token)
                if self.kind == "bool":
                    return {"true": True, "false": False, "1": True, "0": False}[token.lower()]
                if isinstance(self.values[0], int):
                    # Numeric choices (filters, batch size) accept any value within the limits.
                    return int(token)
                if token not in (self.allowed or self.values):
                    raise KeyError(token)
                return token
            except (ValueError, KeyError):
                allowed = ",".join(self.allowed) if self.allowed else self.describe()
                raise ValueError(
                    f"{self.name}: {token!r} is not valid (allowed: {allowed})"
                ) from None

        def check(value):
            if self.limits and not self.limits[0] <= value <= self.limits[1]:
                raise ValueError(
                    f"{self.name}: {value} is outside [{self.limits[0]}, {self.limits[1]}]"
                )
            return value

        if ":" in text and self.kind in ("int", "float"):
            low, high = (check(convert(part)) for part in text.split(":", 1))
            if low > high:
                raise ValueError(f"{self.name}: range {text} has low > high")
            return dataclasses.replace(self, values=(low, high))
        values = tuple(dict.fromkeys(check(convert(part)) for part in text.split(",")))
        return dataclasses.replace(self, kind="choice", values=values, log=False)


# The defaults are a configuration known to train well: the search's first trial (what every
# later trial is judged against) and what ``--hp`` leaves a dimension at when it narrows others.
# From scratch: the from-scratch recipe's U-Net (4 levels, 8 filters, batch 8, with the ship
# head); with pretrained weights ``PRETRAINED_DEFAULTS`` below (the pretrained recipe).
DEFAULT_SPACE: tuple[Dimension, ...] = (
    Dimension(
        "levels",
        "int",
        (3, 5),
        limits=(MIN_LEVELS, MAX_LEVELS),
        help="U-Net depth: number of down-sampling levels",
        default=4,
    ),
    Dimension(
        "base_filters",
        "choice",
        (8, 16, 32),
        limits=(1, 512),
        help="filters of the first level, doubling per level",
        default=8,
    ),
    Dimension(
        "dropout",
        "float",
        (0.0, 0.3),
        step=0.1,
        limits=(0.0, 0.9),
        help="spatial dropout rate",
        default=0.0,
    ),
    Dimension(
        "batch_norm",
        "bool",
        (True, False),
        help="batch normalisation after convolutions",
        default=True,
    ),
    Dimension(
        "upsampling",
        "choice",
        ("transpose", "resize"),
        help="decoder upsampling",
        default="transpose",
    ),
    Dimension(
        "learning_rate",
        "float",
        (1e-4, 3e-3),
        log=True,
        limits=(1e-6, 1.0),
        help="Adam learning rate",
        default=1e-3,
    ),
    Dimension(
        "pixel_loss",
        "choice",
        tuple(PIXEL_LOSSES),
        help="pixel-wise part of the loss",
        default="bce",
    ),
    Dimension(
        "pixel_weight",
        "float",
        (0.0, 1.0),
        step=0.25,
        limits=(0.0, 1.0),
        help="loss = w * pixel_loss + (1 - w) * dice",
        default=0.5,
    ),
    Dimension(
        "batch_size",
        "choice",
        (4, 8, 16),
        limits=(1, 4096),
        help="training batch size",
        default=8,
    ),
    Dimension(
        "ship_loss_weight",
        "float",
        (0.0, 1.0),
        step=0.25,
        limits=(0.0, 10.0),
        help="weight of the image-level ship head's loss; 0: no head (pixel maximum decides)",
        default=0.5,
    ),
    Dimension(
        "encoder",
        "choice",
        (encoders.PLAIN,),
        allowed=encoders.ENCODERS,
        help=f"encoder: the U-Net's own, or pretrained ({', '.join(encoders.BACKBONES)})",
    ),
    Dimension(
        "encoder_frozen_epochs",
        "choice",
        (0, 2),
        limits=(0, 10_000),
        help="first epochs with a pretrained encoder's weights fixed (searched only with one)",
        default=2,
    ),
)
# Hyperparameters added after searches were run: their value when a saved configuration lacks
# them (the model it describes had no such part).
ADDED_LATER = {"ship_loss_weight": 0.0, "encoder": encoders.PLAIN, "encoder_frozen_epochs": 0}


# The encoder of a search given pretrained weights and no ``encoder`` override: the one the
# real-data recipe measured (docs/results.md) and whose ImageNet file ../shared/weights holds.
PRETRAINED_DEFAULT = "mobilenet_v2"
# With pretrained weights: the ranges that make sense for an ImageNet encoder (its features
# need small steps: the searched 4e-4 to 8e-4 were high for it, docs/results.md), each
# dimension's default the pretrained recipe's value (docs/results.md: +0.065 to +0.075 over
# "no ship" on three seeds).
PRETRAINED_SPACE = {
    "levels": ("3:5", 4),
    "base_filters": ("8,16,32", 16),
    "dropout": ("0:0.2", 0.1),
    "upsampling": ("transpose,resize", "resize"),
    "learning_rate": ("5e-5:1e-3", 3e-4),
    "pixel_weight": ("0.25:1", 0.5),
    "ship_loss_weight": ("0.25:1", 0.5),
    "encoder_frozen_epochs": ("0,1,2,4", 2),
}


def search_space(overrides: Sequence[str] = (), pretrained: bool = False) -> tuple[Dimension, ...]:
    """The default search space with command-line overrides applied.

    Args:
        overrides: ``name=value`` (fix), ``name=a,b`` (choices) or ``name=low:high`` (range).
        pretrained: Pretrained weights were given: the encoder is ``PRETRAINED_DEFAULT`` unless
            an override names it (weights for no pretrained encoder would be a silent no-op).

    Raises:
        ValueError: For an unknown name, a malformed override or a value out of bounds.
    """
    space = {dimension.name: dimension for dimension in DEFAULT_SPACE}
    if pretrained:
        space["encoder"] = space["encoder"].parse(PRETRAINED_DEFAULT)
        for name, (text, default) in PRETRAINED_SPACE.items():
            space[name] = dataclasses.replace(space[name].parse(text), default=default)
    for override in overrides:
        name, separator, text = override.partition("=")
        name = name.strip()
        if not separator or not text.strip():
            raise ValueError(f"hyperparameter override {override!r} must look like name=value")
        if name not in space:
            raise ValueError(f"unknown hyperparameter {name!r} (known: {', '.join(space)})")
        space[name] = space[name].parse(text.strip())
    if not set(space["encoder"].values) & set(encoders.BACKBONES):
        # Freezing concerns pretrained encoders only: without one, searching it wastes trials.
        space["encoder_frozen_epochs"] = space["encoder_frozen_epochs"].parse("0")
    return tuple(space.values())


def fixed_hyperparameters(values: dict) -> keras_tuner.HyperParameters:
    """HyperParameters holding exactly ``values`` (for rebuilding a chosen configuration)."""
    hp = keras_tuner.HyperParameters()
    for name, value in values.items():
        if not name.startswith("tuner/"):
            hp.Fixed(name, value)
    return hp
