"""README figures that the test suite can check: the bad-input inventory line."""

import subprocess
import sys

from conftest import REPO


def test_readme_quotes_the_current_bad_input_inventory():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "bad_input", "--collect-only", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    line = proc.stdout.splitlines()[0]
    assert line.startswith("bad_input inventory: ") and int(line.split()[2]) >= 100
    assert line in (REPO / "README.md").read_text(), f"README.md should quote: {line}"
