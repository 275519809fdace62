"""The test server's refusals (tests/export/serving_server.py): an HTTP status and a message."""

from __future__ import annotations


class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def clean_tf_message(message: str) -> str:
    """The informative lines of a TF runtime error (no node names or stack notes)."""
    skip = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[{{")
    lines = [ln.strip() for ln in message.splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith(skip)]
    return " ".join(kept) or message
