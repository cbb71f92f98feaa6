"""The ship U-Net and the search space over it: the names a user of the toolkit calls.

The implementations live in the package, below the commands:

* ``shipseg.model.unet``: ``build_unet``, a pure factory from plain arguments (plain or pretrained
  encoder, decoder, optional image-level ship head), and ``compile_unet``. Importing it
  registers the custom losses and metrics, so a saved ``.keras`` model reloads anywhere.
* ``shipseg.model.space``: every hyperparameter (``DEFAULT_SPACE``) and command-line
  overrides (``search_space``).
* ``shipseg.train.hypermodel``: ``ShipUNetHyperModel``, the ``keras_tuner.HyperModel`` the
  search runs and ``train.py`` retrains with.

Example:
    >>> import hypermodel
    >>> model = hypermodel.build_unet(levels=3, base_filters=8, ship_head=True)
"""

from __future__ import annotations

from shipseg.model.space import (
    ADDED_LATER,
    DEFAULT_SPACE,
    Dimension,
    fixed_hyperparameters,
    search_space,
)
from shipseg.model.unet import (
    MAX_LEVELS,
    MIN_LEVELS,
    build_unet,
    check_input_size,
    compile_unet,
    has_ship_head,
)
from shipseg.train.hypermodel import ShipUNetHyperModel

__all__ = [
    "ADDED_LATER",
    "DEFAULT_SPACE",
    "MAX_LEVELS",
    "MIN_LEVELS",
    "Dimension",
    "ShipUNetHyperModel",
    "build_unet",
    "check_input_size",
    "compile_unet",
    "fixed_hyperparameters",
    "has_ship_head",
    "search_space",
]
