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
- $TFCAP_SHARED_DATA defaults to the real test data: `shared/data` in the
  runfiles (@shared//:data, see shared_data.bzl), else
  <source checkout>/../shared/data (found by resolving this file's symlink);
- pytest's exit code 5 ("no tests collected") is a failure.
"""

from __future__ import annotations

import os
import pathlib
import sys


def _shared_data() -> pathlib.Path | None:
    candidates = []
    if "TEST_SRCDIR" in os.environ:  # the declared input @shared//:data
        candidates.append(pathlib.Path(os.environ["TEST_SRCDIR"]) / "shared" / "data")
    # runfiles/__main__/third_party/bazel/pytest_runner.py -> <checkout>/third_party/bazel/...
    checkout = pathlib.Path(os.path.realpath(__file__)).parents[2]
    candidates.append(checkout.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir() and any(p.name != ".missing" for p in path.iterdir()):
            return path
    return None


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
    shared = _shared_data()
    if not os.environ.get("TFCAP_SHARED_DATA") and shared is not None:
        os.environ["TFCAP_SHARED_DATA"] = str(shared)

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
