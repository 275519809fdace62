"""User mistakes, told apart from bugs: the exception types entry points print as one line.

A `UserError` says that something the user gave is at fault (a missing or
foreign file or directory, inconsistent flags, a bad dataset or record) and
names it. Entry points (`tfcap.cli.run`) print it as one line on stderr and
exit with status 1; any other exception is a bug and keeps its traceback.
Each concrete type is also the built-in exception callers already catch:

>>> issubclass(BadInput, ValueError), issubclass(MissingInput, FileNotFoundError)
(True, True)
"""

from typing import IO


class UserError(Exception):
    """Base of the user-mistake types (module docstring)."""


class BadInput(UserError, ValueError):
    """A file, record, flag value or request that cannot be used as given."""


class MissingInput(UserError, FileNotFoundError):
    """A file or directory that was named but does not exist, or lacks what it must hold."""


class NotAFile(UserError, IsADirectoryError):
    """A directory named where a file is read or written."""


class OutputExists(UserError, FileExistsError):
    """An output that would overwrite something without being told to."""


def open_input(path: str, mode: str = "r", **kwargs) -> IO:
    """`open(path, mode, **kwargs)` for reading a file the user named: a missing file
    raises `MissingInput`, a directory `NotAFile`, each naming `path`.

    >>> open_input("/nonexistent.json")
    Traceback (most recent call last):
    tfcap.errors.MissingInput: /nonexistent.json: no such file
    """
    try:
        return open(path, mode, **kwargs)
    except FileNotFoundError:
        raise MissingInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise NotAFile(f"{path}: is a directory, not a file") from None
