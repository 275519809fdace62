"""`main` of every tfcap py_test: runs pytest on one test file inside Bazel.

Usage (from the py_test's args): pytest_runner.py RUNFILES_PATH_OF_TEST [pytest args...]

Bazel starts tests in the runfiles tree (<target>.runfiles/__main__), which holds
the test file, the libraries it depends on, conftest.py files and
pyproject.toml, so pytest sees the project's usual configuration. This script
only bridges Bazel's test protocol and the repository layout:

- JUnit XML goes to $XML_OUTPUT_FILE; `--test_filter` becomes `pytest -k`;
- temporary files go under $TEST_TMPDIR (writable in the sandbox);
- $TFCAP_SHARED_DATA defaults to <source checkout>/../shared/data, the real
  data the tests read (found by resolving this file's runfiles symlink);
- pytest's exit code 5 ("no tests collected") is a failure.
"""

from __future__ import annotations

import os
import pathlib
import sys


def _source_root() -> pathlib.Path:
    # runfiles/__main__/third_party/bazel/pytest_runner.py -> <checkout>/third_party/bazel/...
    return pathlib.Path(os.path.realpath(__file__)).parents[2]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: pytest_runner.py TEST_FILE [pytest args...]", file=sys.stderr)
        return 2
    test_file, extra = argv[1], argv[2:]

    tmp = os.environ.get("TEST_TMPDIR")
    if tmp:
        os.environ["TMPDIR"] = tmp
        import tempfile

        tempfile.tempdir = None  # re-read TMPDIR
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.dont_write_bytecode = True
    shared = _source_root().parent / "shared" / "data"
    if "TFCAP_SHARED_DATA" not in os.environ and shared.is_dir():
        os.environ["TFCAP_SHARED_DATA"] = str(shared)

    import pytest

    args = [test_file, "-p", "no:cacheprovider", "-o", "testpaths=", "-ra"]
    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:
        args += ["--junitxml", xml]
    only = os.environ.get("TESTBRIDGE_TEST_ONLY")
    if only:
        args += ["-k", only]
    code = int(pytest.main(args + extra))
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print(f"tfcap bazel: no tests collected from {test_file}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
