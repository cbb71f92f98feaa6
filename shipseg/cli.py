"""What the command-line scripts share: ``main()`` around a run, printing the toolkit's errors.

A user's mistake (a missing folder, a bad option, a broken CSV) is one line on stderr naming
the file or option and the problem, and exit status 2; never a traceback. Everything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from shipseg.errors import ShipsegError


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
