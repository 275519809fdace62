"""Small local stand-ins for the repositories Bazel 4.2.3 would otherwise download.

Debian's `bazel-bootstrap` ships without the bundled `rules_cc`, `rules_java` and
`remote_coverage_tools` archives, and `@bazel_tools` loads them while setting up
any build (even a Python-only one). There is no network here, so WORKSPACE
declares these repositories with `stub_repo` below: each is written on the fly
into Bazel's output base from the strings in this file. Nothing is fetched.

The `rules_cc` / `rules_java` stubs forward every rule to the native rule that
Bazel 4 still has built in, so `@bazel_tools` analyses as usual. The coverage
tools are scripts that fail loudly: `bazel coverage` is not supported offline.
"""

def _forwarders(names):
    out = []
    for name in names:
        out.append("def %s(**kwargs):\n    native.%s(**kwargs)\n" % (name, name))
    return "\n".join(out)

_CC_RULES = [
    "cc_binary",
    "cc_import",
    "cc_library",
    "cc_proto_library",
    "cc_shared_library",
    "cc_test",
    "cc_toolchain",
    "cc_toolchain_suite",
    "fdo_prefetch_hints",
    "fdo_profile",
    "objc_import",
    "objc_library",
]

_JAVA_RULES = [
    "java_binary",
    "java_import",
    "java_library",
    "java_lite_proto_library",
    "java_package_configuration",
    "java_plugin",
    "java_proto_library",
    "java_runtime",
    "java_test",
    "java_toolchain",
]

_HEADER = '"""Offline stub written by //third_party/bazel:stub_repos.bzl."""\n\n'

RULES_CC_FILES = {
    "BUILD.bazel": "",
    "cc/BUILD.bazel": 'package(default_visibility = ["//visibility:public"])\n\n' +
                      'exports_files(["defs.bzl"])\n\n' +
                      'alias(name = "toolchain_type", actual = "@bazel_tools//tools/cpp:toolchain_type")\n',
    "cc/defs.bzl": _HEADER + _forwarders(_CC_RULES),
}

RULES_JAVA_FILES = {
    "BUILD.bazel": "",
    "java/BUILD.bazel": 'package(default_visibility = ["//visibility:public"])\n\nexports_files(["defs.bzl"])\n',
    "java/defs.bzl": _HEADER + _forwarders(_JAVA_RULES),
}

_NO_COVERAGE = """#!/bin/sh
echo "tfcap: coverage tools are stubbed (offline Bazel); use pytest --cov instead" >&2
exit 1
"""

REMOTE_COVERAGE_TOOLS_FILES = {
    "BUILD.bazel": 'package(default_visibility = ["//visibility:public"])\n\n' +
                   'sh_binary(name = "coverage_report_generator", srcs = ["no_coverage.sh"])\n\n' +
                   'sh_binary(name = "lcov_merger", srcs = ["no_coverage.sh"])\n',
    "no_coverage.sh": _NO_COVERAGE,
}

def _stub_repo_impl(ctx):
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    for path, content in ctx.attr.files.items():
        ctx.file(path, content, executable = path.endswith(".sh"))

stub_repo = repository_rule(
    implementation = _stub_repo_impl,
    attrs = {"files": attr.string_dict(mandatory = True)},
    local = True,
    doc = "A repository made only of the given files (path -> content).",
)

def tfcap_stub_repositories():
    """Declares the offline stand-ins; call from WORKSPACE before anything else."""
    stub_repo(name = "rules_cc", files = RULES_CC_FILES)
    stub_repo(name = "rules_java", files = RULES_JAVA_FILES)
    stub_repo(name = "remote_coverage_tools", files = REMOTE_COVERAGE_TOOLS_FILES)
