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

def _merge(base, extra):
    """Overrides `extra` on top of `base`; tags/data/deps are concatenated."""
    out = dict(base)
    for key, value in extra.items():
        if key not in _OVERRIDABLE:
            fail("tfcap_py_tests: unknown override %r" % key)
        if key in ("tags", "data", "deps"):
            out[key] = out.get(key, []) + value
        else:
            out[key] = value
    return out

def tfcap_py_tests(srcs, fast = [], dir_overrides = {}, overrides = {}, **kwargs):
    """tfcap_py_test for every file in `srcs`.

    Args:
      srcs: test files, normally glob(["tests/**/test_*.py"]).
      fast: files whose targets get the `fast` tag (the CI subset).
      dir_overrides: directory prefix ("tests/e2e/") -> settings for every
        test file below it.
      overrides: file -> settings for that file. Settings are any of size,
        timeout, tags, data, deps, flaky, shard_count, args, env; tags/data/deps
        add to the common ones, the rest replace them.
      **kwargs: common to every py_test (deps, data, tags, size, ...).

    Every file named in `fast` or `overrides` must be one of `srcs`, so a
    renamed or deleted test cannot leave a stale entry behind.
    """
    for f in fast + overrides.keys():
        if f not in srcs:
            fail("tfcap_py_tests: %s is named in BUILD but is not a test file matched by the glob" % f)
    for src in srcs:
        attrs = dict(kwargs)
        for prefix, settings in dir_overrides.items():
            if src.startswith(prefix):
                attrs = _merge(attrs, settings)
        attrs = _merge(attrs, overrides.get(src, {}))
        if src in fast:
            attrs["tags"] = attrs.get("tags", []) + ["fast"]
        tfcap_py_test(src, **attrs)

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
