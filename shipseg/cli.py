"""What the command-line scripts share: ``main()`` around a run, printing the toolkit's errors.

A user's mistake (a missing folder, a bad option, a broken CSV) is one line on stderr naming
the file or option and the problem, and exit status 2; never a traceback. Everything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
from collections.abc import Callable, Sequence

from shipseg.core.errors import ShipsegError
from shipseg.predict import tiling
from shipseg.scoring import outlines


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default once: appended only where the help names none.

    ``argparse.ArgumentDefaultsHelpFormatter`` appends "(default: ...)" to every option, also
    to those whose help already says what happens without them ("(default: the search's
    seed) (default: None)").
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def defaults_of(settings_class: type) -> types.SimpleNamespace:
    """The defaults a settings dataclass declares, by field name, for its command's parser.

    A parser writes ``default=DEFAULTS.epochs`` rather than the number itself, so each default
    is stated once, in the settings that a run records.
    """
    return types.SimpleNamespace(
        **{
            field.name: field.default
            for field in dataclasses.fields(settings_class)
            if field.default is not dataclasses.MISSING
        }
    )


def main(
    prog: str,
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], object],
    argv: Sequence[str] | None = None,
    on_interrupt: str | None = None,
) -> int:
    """Parses ``argv``, runs ``run(args)`` and turns user errors into one line and exit 2.

    Args:
        prog: The script's name, as the messages start with it (``search.py: error: ...``).
        parser: The script's argument parser.
        run: The script's work; an int it returns is the exit status (anything else: 0).
        argv: The arguments (default: ``sys.argv[1:]``).
        on_interrupt: What to tell the user after Ctrl-C (exit 130); None lets it through.

    Returns:
        The exit status.
    """
    args = parser.parse_args(argv)
    try:
        status = run(args)
        return status if isinstance(status, int) else 0
    except ShipsegError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if on_interrupt is None:
            raise
        print(f"\n{prog}: interrupted; {on_interrupt}", file=sys.stderr)
        return 130


def add_postprocess_options(group) -> None:
    """The flags that override a model's tuned post-processing (``inference.py``, ``serve.py``)."""
    group.add_argument(
        "--threshold", type=float, help="pixel probability threshold (default: tuned)"
    )
    group.add_argument(
        "--image-threshold",
        type=float,
        help="an image has ships only if its top probability reaches this (default: tuned)",
    )
    group.add_argument(
        "--ship-threshold",
        type=float,
        help="for a model with a ship head: an image has ships only if the head's probability "
        "reaches this (default: tuned)",
    )
    group.add_argument("--min-ship-pixels", type=int, help="drop smaller ships (default: tuned)")
    group.add_argument(
        "--ship-shape",
        choices=outlines.SHIP_SHAPES,
        help="outline ships as predicted (mask) or as their filled oriented box (default: tuned)",
    )
    group.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average predictions over flips, 3x slower (default: as tuned)",
    )


def postprocess_overrides(args: argparse.Namespace) -> dict:
    """``add_postprocess_options``' flags as ``detection.load_settings`` takes them."""
    names = ("threshold", "image_threshold", "ship_threshold", "min_ship_pixels", "ship_shape")
    return {**{name: getattr(args, name) for name in names}, "flip_tta": args.tta}


def add_scene_options(group) -> None:
    """When and how images are cut into overlapping tiles (``shipseg.predict.tiling``)."""
    group.add_argument(
        "--tile-above",
        type=int,
        default=tiling.DEFAULT_LIMIT,
        help="images with a side longer than this are predicted in overlapping tiles",
    )
    group.add_argument("--tile", type=int, default=tiling.DEFAULT_TILE, help="tile side")
    group.add_argument(
        "--overlap", type=int, default=tiling.DEFAULT_OVERLAP, help="pixels shared by tiles"
    )
