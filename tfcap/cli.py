"""Running an entry point: user mistakes as one line on stderr, bugs with their traceback.

    if __name__ == "__main__":
        cli.run(main)

`run` is `absl.app.run` with two more rules: an `absl.app.UsageError` (a flag
missing or inconsistent with another) and a `tfcap.errors.UserError` (a file,
directory, dataset or record at fault) print `PROGRAM: error: MESSAGE` on one
line and exit with status 2 and 1; anything else propagates with its
traceback, as a bug should. Flag values that fail their own validation are
reported by absl before `main` runs (one `FATAL Flags parsing error` line).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from absl import app

from tfcap import errors

USAGE_EXIT, INPUT_EXIT = 2, 1


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (newlines folded).

    >>> one_line(ValueError("a\\n  b"))
    'a b'
    """
    return " ".join(str(error).split())


def guarded(main: Callable, program: str | None = None) -> Callable:
    """`main` with user mistakes turned into one line on stderr and an exit status."""
    name = program or os.path.basename(sys.argv[0])

    def wrapper(argv):
        try:
            return main(argv)
        except app.UsageError as e:
            print(f"{name}: error: {one_line(e)} (--helpshort lists the flags)", file=sys.stderr)
            sys.exit(USAGE_EXIT)
        except errors.UserError as e:
            print(f"{name}: error: {one_line(e)}", file=sys.stderr)
            sys.exit(INPUT_EXIT)

    return wrapper


def run(main: Callable) -> None:
    """`absl.app.run(main)` with `guarded`'s rules, the program named by its module."""
    module = getattr(sys.modules.get("__main__"), "__spec__", None)
    app.run(guarded(main, f"python -m {module.name}" if module else None))
