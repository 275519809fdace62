"""Loading a model the user named by a TF Hub handle: a URL or a local SavedModel directory.

`load` is `hub.load` with the user's mistakes told apart from bugs: a local path that does
not exist raises `tfcap.errors.MissingInput`, and a handle that cannot be loaded as a
SavedModel (another kind of directory, a corrupt file, an unreachable URL) `BadInput`, each
naming the handle and what it was for.
"""

from __future__ import annotations

import os
from typing import Any

from tfcap.errors import BadInput, MissingInput


def load(handle: str, what: str) -> Any:
    """`hub.load(handle)`; `what` (e.g. "detector") names its role in error messages.

    >>> load("/nonexistent", "detector")
    Traceback (most recent call last):
    tfcap.errors.MissingInput: detector /nonexistent: no such SavedModel directory
    """
    if "://" not in handle and not os.path.exists(handle):
        raise MissingInput(f"{what} {handle}: no such SavedModel directory")
    import tensorflow_hub as hub

    try:
        return hub.load(handle)
    except (OSError, ValueError) as err:  # no or a corrupt saved_model.pb; URL unreachable
        raise BadInput(f"{what} {handle}: cannot be loaded as a SavedModel: {err}") from err
