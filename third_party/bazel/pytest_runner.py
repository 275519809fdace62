"""`main` of every tfcap py_test: runs pytest on one test file inside Bazel.

Usage (from the py_test's args): pytest_runner.py [pytest args...] PATH...

PATH is the runfiles path of a test file (`//:tests/a/test_b`) or of package
directories to collect doctests from (`//:doctests`).

Bazel starts tests in the runfiles tree (<target>.runfiles/__main__), which holds
the test file, the libraries it depends on, conftest.py files and
pyproject.toml, so pytest sees the project's usual configuration. This script
only bridges Bazel's test protocol and the repository layout:

- JUnit XML goes to $XML_OUTPUT_FILE; `--test_filter` becomes `pytest -k`;
- temporary files go under $TEST_TMPDIR (writable in the sandbox);
- the real test data are tests/assets/ in the runfiles (//:test_support), which
  tests/conftest.py reads unless $TFCAP_SHARED_DATA is passed (--test_env);
- pytest's exit code 5 ("no tests collected") is a failure.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: pytest_runner.py [pytest args...] PATH...", file=sys.stderr)
        return 2

    tmp = os.environ.get("TEST_TMPDIR")
    if tmp:
        os.environ["TMPDIR"] = tmp
        import tempfile

        tempfile.tempdir = None  # re-read TMPDIR
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.dont_write_bytecode = True

    import pytest

    args = ["-p", "no:cacheprovider", "-ra"]
    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:
        args += ["--junitxml", xml]
    only = os.environ.get("TESTBRIDGE_TEST_ONLY")
    if only:
        args += ["-k", only]
    code = int(pytest.main(args + argv[1:]))
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print(f"tfcap bazel: no tests collected from {argv[1:]}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
