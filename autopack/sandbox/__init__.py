"""Run the target's tests on a throw-away copy of the workspace, in a sandbox."""

from autopack.sandbox.commands import pytest_argv, run_pytest
from autopack.sandbox.junit import JUnitError, TestRun, parse_junit, node_id
from autopack.sandbox.limits import SandboxLimits
from autopack.sandbox.runner import (
    BwrapSandbox,
    Sandbox,
    SandboxResult,
    UnsandboxedRunner,
    check_bwrap,
)

__all__ = [
    "BwrapSandbox",
    "JUnitError",
    "Sandbox",
    "SandboxLimits",
    "SandboxResult",
    "TestRun",
    "UnsandboxedRunner",
    "check_bwrap",
    "parse_junit",
    "pytest_argv",
    "run_pytest",
    "node_id",
]
