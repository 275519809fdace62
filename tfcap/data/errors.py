"""What readers do with malformed input records: raise, or skip and count.

Every reader in `tfcap.data` takes `skip_bad: bool | BadRecords`:

- `False` (the default): the first bad record raises `tfcap.errors.BadInput("WHERE: WHY")`
  (a `ValueError`).
- `True`: bad records are skipped, logged (the first few), and a summary is
  logged when the reader finishes.
- a `BadRecords` instance: bad records are skipped and tallied into it, so one
  instance can be shared by several readers and reported once at the end.

`WHERE` names the file and the record (`path:line (image 42)` for line-based
files, `path: annotation 7 (image 42)` for json); `WHY` reads `"reason: detail"`,
and the summary groups by the reason (the text before the first colon).

>>> bad = BadRecords(max_logged=0)
>>> bad.add("f.tsv:3 (image 9)", "bad base64 in features: Incorrect padding")
>>> bad.add("f.tsv:5", "wrong field count: got 2, expected 6")
>>> bad.add("f.tsv:8", "wrong field count: got 1, expected 6")
>>> bad.count, dict(bad.by_reason)
(3, {'bad base64 in features': 1, 'wrong field count': 2})
>>> for part in bad.summary().split("; "):
...     print(part)
3 bad records skipped (2 wrong field count, 1 bad base64 in features)
first: f.tsv:3 (image 9): bad base64 in features: Incorrect padding
"""

from __future__ import annotations

import collections

from absl import logging

from tfcap.errors import BadInput


class BadRecords:
    """Tally of skipped records, or (with `raise_errors=True`) the policy to raise.

    Args:
        raise_errors: bool. If True, `add` raises `BadInput` (a `ValueError`) instead of counting.
        max_logged: int. How many skipped records are logged one by one (warning).
        max_examples: int. How many `"where: why"` strings `examples` keeps.
    """

    def __init__(self, raise_errors: bool = False, max_logged: int = 10, max_examples: int = 5):
        self.raise_errors = raise_errors
        self.max_logged = max_logged
        self.max_examples = max_examples
        self.count = 0
        self.by_reason: collections.Counter[str] = collections.Counter()
        self.examples: list[str] = []

    def add(self, where: str, why: str) -> None:
        """Records one bad record (or raises `BadInput(f"{where}: {why}")`)."""
        message = f"{where}: {why}"
        if self.raise_errors:
            raise BadInput(message) from None  # Hide the reader's internal exception.
        self.count += 1
        self.by_reason[why.split(":", 1)[0]] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(message)
        if self.count <= self.max_logged:
            logging.warning("Skipping bad record: %s", message)
            if self.count == self.max_logged:
                logging.warning("Further bad records are counted but not logged.")

    def summary(self) -> str:
        """One line: how many were skipped, by reason, and the first example."""
        if not self.count:
            return "no bad records"
        reasons = ", ".join(f"{n} {why}" for why, n in self.by_reason.most_common())
        return f"{self.count} bad records skipped ({reasons}); first: {self.examples[0]}"


def resolve(skip_bad: bool | BadRecords) -> tuple[BadRecords, bool]:
    """Turns a reader's `skip_bad` argument into a `BadRecords`.

    Returns:
        The instance to `add` to, and whether the reader created it itself (and
        so should log its summary when done).
    """
    if isinstance(skip_bad, BadRecords):
        return skip_bad, False
    if not isinstance(skip_bad, bool):
        raise TypeError(f"skip_bad must be a bool or BadRecords, got {type(skip_bad).__name__}")
    return BadRecords(raise_errors=not skip_bad), True


def log_summary(bad: BadRecords, what: str) -> None:
    """Logs `bad.summary()` for a reader that owns `bad` (warning if anything was skipped)."""
    if bad.count:
        logging.warning("%s: %s", what, bad.summary())
