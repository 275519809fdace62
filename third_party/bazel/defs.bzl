"""tfcap_py_tests: one Bazel py_test per pytest file, found by glob.

Each test file `tests/a/test_b.py` becomes the target `//:tests/a/test_b`, whose
`main` is //third_party/bazel:pytest_runner.py running pytest on that one file
(so fixtures, marks, parametrize and conftest.py work as under plain pytest).
New test files are picked up with no edit to BUILD.
"""

_RUNNER = "//third_party/bazel:pytest_runner.py"

# Per-file settings tfcap_py_tests accepts in `overrides`.
_OVERRIDABLE = ["size", "timeout", "tags", "data", "deps", "flaky", "shard_count", "args", "env"]

def tfcap_test_name(src):
    """Target name for a test file: its path without `.py`."""
    if not src.endswith(".py"):
        fail("tfcap_py_test: %s is not a .py file" % src)
    return src[:-len(".py")]

def tfcap_py_test(src, deps = [], data = [], tags = [], size = "medium", args = [], **kwargs):
    """A py_test that runs pytest on `src` (a workspace-relative path)."""
    native.py_test(
        name = tfcap_test_name(src),
        srcs = [src, _RUNNER],
        main = _RUNNER,
        args = ["$(rootpath %s)" % src] + args,
        deps = deps,
        data = data,
        tags = tags,
        size = size,
        python_version = "PY3",
        srcs_version = "PY3",
        # Keep the runfiles tree as in the checkout: no generated __init__.py
        # files, so pytest imports test modules exactly as it does outside Bazel.
        legacy_create_init = False,
        **kwargs
    )

def tfcap_py_tests(srcs, fast = [], overrides = {}, deps = [], data = [], tags = [], **kwargs):
    """tfcap_py_test for every file in `srcs`.

    Args:
      srcs: test files, normally glob(["tests/**/test_*.py"]).
      fast: files whose targets get the `fast` tag (the CI subset).
      overrides: file -> dict of per-file settings (size, timeout, tags, data,
        deps, flaky, shard_count, args, env); tags/data/deps add to the common
        ones, the rest replace the defaults.
      deps, data, tags: common to every test.
      **kwargs: passed to every py_test.

    Every file named in `fast` or `overrides` must be one of `srcs`, so a
    renamed or deleted test cannot leave a stale entry behind.
    """
    for f in fast + overrides.keys():
        if f not in srcs:
            fail("tfcap_py_tests: %s is named in BUILD but is not a test file matched by the glob" % f)
    for src in srcs:
        o = dict(overrides.get(src, {}))
        for key in o.keys():
            if key not in _OVERRIDABLE:
                fail("tfcap_py_tests: unknown override %r for %s" % (key, src))
        extra = dict(kwargs)
        extra.update(o)
        extra["tags"] = tags + (["fast"] if src in fast else []) + o.get("tags", [])
        extra["data"] = data + o.get("data", [])
        extra["deps"] = deps + o.get("deps", [])
        tfcap_py_test(src, **extra)

def tfcap_py_doctest(name, packages, **kwargs):
    """A py_test running the `>>>` examples of every module in `packages` (dirs)."""
    native.py_test(
        name = name,
        srcs = [_RUNNER],
        main = _RUNNER,
        args = ["--doctest-modules"] + packages,
        python_version = "PY3",
        srcs_version = "PY3",
        legacy_create_init = False,
        **kwargs
    )
