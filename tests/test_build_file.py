"""The Bazel build covers the tree: every test file has a py_test, every module a py_library.

BUILD is Starlark, which parses as Python; this test reads it with `ast`
(no Bazel needed), evaluates its `glob()` patterns against the checkout the way
Bazel would, and checks:

- every tests/**/test_*.py is matched by the glob given to `tfcap_py_tests`
  (so it gets its own py_test, `//:tests/<dir>/test_<name>`);
- every tfcap/**/*.py and export/**/*.py is in the srcs glob of a py_library;
- no BUILD file below the root hides files from those globs (a subpackage
  would silently cut them out of the root package);
- the `fast` list (the subset .ci/bazel_test runs) and per-file overrides name
  existing test files;
- the toolchain wiring files exist and CI runs the fast subset.

Runs the same under plain pytest and under `bazel test` (where the runfiles
symlinks are resolved back to the checkout).
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "BUILD"
# Directories Bazel never looks into (.bazelignore) plus VCS / output dirs.
SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules"}


# ---------------------------------------------------------------- BUILD parsing


def _build_tree() -> ast.Module:
    return ast.parse(BUILD.read_text(), filename=str(BUILD))


def _calls(tree: ast.Module, func: str) -> list[ast.Call]:
    return [
        node.value
        for node in tree.body
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == func
    ]


def _kwarg(call: ast.Call, name: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _constants(tree: ast.Module) -> dict[str, ast.expr]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                out[target.id] = node.value
    return out


def _literal(node: ast.expr, consts: dict[str, ast.expr]):
    """Evaluates a literal, resolving module-level names (FAST_TESTS, _NOT_SOURCE)."""
    if isinstance(node, ast.Name):
        return _literal(consts[node.id], consts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _literal(node.left, consts) + _literal(node.right, consts)
    if isinstance(node, ast.List):
        return [_literal(e, consts) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {
            _literal(k, consts): _literal(v, consts)
            for k, v in zip(node.keys, node.values, strict=True)
        }
    return ast.literal_eval(node)


class Glob:
    """A BUILD `glob(include, exclude=...)` call."""

    def __init__(self, call: ast.Call, consts: dict[str, ast.expr]):
        self.include = _literal(call.args[0], consts)
        exclude = _kwarg(call, "exclude")
        self.exclude = _literal(exclude, consts) if exclude is not None else []

    def matches(self, path: str) -> bool:
        return any(_glob_match(p, path) for p in self.include) and not any(
            _glob_match(p, path) for p in self.exclude
        )


def _globs_in(node: ast.expr | None, consts: dict[str, ast.expr]) -> list[Glob]:
    """All glob() calls inside an attribute value such as `["x"] + glob([...])`."""
    if node is None:
        return []
    if isinstance(node, ast.Name) and node.id in consts:
        node = consts[node.id]
    return [
        Glob(n, consts)
        for n in ast.walk(node)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "glob"
    ]


def _glob_match(pattern: str, path: str) -> bool:
    """Bazel glob semantics: `**` spans zero or more directories, `*` stays in one."""
    regex = ""
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
            continue
        regex += "[^/]*".join(re.escape(piece) for piece in part.split("*"))
        if not last:
            regex += "/"
    return re.fullmatch(regex, path) is not None


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("tests/**/test_*.py", "tests/test_build_file.py", True),
        ("tests/**/test_*.py", "tests/data/test_shapes.py", True),
        ("tests/**/test_*.py", "tests/a/b/test_x.py", True),
        ("tests/**/test_*.py", "tests/data/helpers.py", False),
        ("tests/**/test_*.py", "tfcap/test_x.py", False),
        ("tfcap/**/*.py", "tfcap/__init__.py", True),
        ("tfcap/**/*.py", "tfcap/data/records.py", True),
        ("tfcap/**/*.py", "tfcap/data/records.pyc", False),
        ("**/__pycache__/**", "tfcap/__pycache__/x.pyc", True),
        ("configs/*.flags", "configs/demo.flags", True),
        ("configs/*.flags", "configs/sub/demo.flags", False),
    ],
)
def test_glob_matcher(pattern, path, expected):
    assert _glob_match(pattern, path) is expected


# ---------------------------------------------------------------- the checkout


def _files(top: str) -> list[str]:
    """Workspace-relative paths of all files under `top`."""
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT / top):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in filenames:
            out.append((Path(dirpath) / name).relative_to(ROOT).as_posix())
    return sorted(out)


def _test_files() -> list[str]:
    return [f for f in _files("tests") if _glob_match("tests/**/test_*.py", f)]


def _tests_call(tree: ast.Module) -> ast.Call:
    calls = _calls(tree, "tfcap_py_tests")
    assert len(calls) == 1, "BUILD must call tfcap_py_tests exactly once"
    return calls[0]


def test_build_parses_and_loads_the_macro():
    tree = _build_tree()
    loads = _calls(tree, "load")
    assert any(
        isinstance(c.args[0], ast.Constant) and c.args[0].value == "//third_party/bazel:defs.bzl"
        for c in loads
    )
    _tests_call(tree)


def test_every_test_file_has_a_py_test():
    tree = _build_tree()
    consts = _constants(tree)
    globs = _globs_in(_kwarg(_tests_call(tree), "srcs"), consts)
    assert globs, "tfcap_py_tests(srcs = ...) must use glob()"
    tests = _test_files()
    assert "tests/test_build_file.py" in tests
    missing = [f for f in tests if not any(g.matches(f) for g in globs)]
    assert not missing, f"test files without a py_test in BUILD: {missing}"


def test_every_module_is_in_a_py_library():
    tree = _build_tree()
    consts = _constants(tree)
    globs = [
        g for call in _calls(tree, "py_library") for g in _globs_in(_kwarg(call, "srcs"), consts)
    ]
    modules = [f for f in _files("tfcap") + _files("export") if f.endswith(".py")]
    assert "tfcap/__init__.py" in modules
    missing = [f for f in modules if not any(g.matches(f) for g in globs)]
    assert not missing, f"modules in no py_library of BUILD: {missing}"


def test_no_subpackage_hides_files_from_the_root_globs():
    nested = [
        f
        for top in ("tfcap", "export", "tests", "configs")
        for f in _files(top)
        if Path(f).name in ("BUILD", "BUILD.bazel")
    ]
    assert not nested, (
        f"BUILD files below the root cut their files out of the root package's globs: {nested}; "
        "keep targets in the root BUILD"
    )


def test_fast_subset_and_overrides_name_existing_test_files():
    tree = _build_tree()
    consts = _constants(tree)
    call = _tests_call(tree)
    tests = set(_test_files())
    fast = _literal(_kwarg(call, "fast"), consts)
    assert "tests/test_build_file.py" in fast
    assert len(fast) >= 2, "the fast subset should run at least one library test besides this one"
    assert not set(fast) - tests, f"FAST_TESTS names missing files: {sorted(set(fast) - tests)}"
    overrides = _kwarg(call, "overrides")
    named = set(_literal(overrides, consts)) if overrides is not None else set()
    assert not named - tests, f"overrides name missing files: {sorted(named - tests)}"


def test_toolchain_wiring_files_exist():
    workspace = (ROOT / "WORKSPACE").read_text()
    for repo in ("rules_cc", "rules_java", "remote_coverage_tools"):
        assert f'"{repo}"' in (ROOT / "third_party/bazel/stub_repos.bzl").read_text()
    assert "tfcap_stub_repositories()" in workspace
    assert "//third_party/bazel:venv_py_toolchain" in workspace
    wrapper = ROOT / "third_party/bazel/venv_python3"
    assert os.access(wrapper, os.X_OK), f"{wrapper} must be executable"
    assert ".venv" in (ROOT / ".bazelignore").read_text().split()


def test_ci_runs_the_fast_subset():
    script = ROOT / ".ci" / "bazel_test"
    assert os.access(script, os.X_OK), f"{script} must be executable"
    assert "--test_tag_filters=fast" in script.read_text()


@pytest.mark.skipif(
    "TEST_SRCDIR" not in os.environ, reason="checks the environment under `bazel test`"
)
def test_bazel_runs_tests_with_the_venv_python_and_shared_data():
    import sys

    venv = Path(os.environ.get("TFCAP_VENV", ROOT / ".venv")).resolve()
    assert Path(sys.prefix).resolve() == venv, (sys.prefix, venv)
    # Tests and libraries come from the runfiles tree (declared deps), not the checkout.
    import tfcap

    assert Path(__file__).parent.parent != ROOT
    assert Path(tfcap.__file__).parent.parent != ROOT
    assert Path(tfcap.__file__).resolve() == ROOT / "tfcap" / "__init__.py"
    assert os.environ["TMPDIR"] == os.environ["TEST_TMPDIR"]
    # The real photos and captions are declared inputs (tests/assets/ in :test_support).
    assets = Path(__file__).parent / "assets"
    assert len(list((assets / "coco_val2014_samples").glob("*.jpg"))) == 15
    assert (assets / "karpathy" / "captions_val5k.json").is_file()
