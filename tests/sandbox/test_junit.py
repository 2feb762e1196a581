"""parse_junit: node ids and outcomes from pytest's JUnit XML."""

from __future__ import annotations

import pytest

from autopack.sandbox.commands import pytest_argv
from autopack.sandbox.junit import JUnitError, node_id, parse_junit


def _xml(cases: str, root: str = "testsuites") -> str:
    suite = f'<testsuite name="pytest" tests="1">{cases}</testsuite>'
    return f'<?xml version="1.0" encoding="utf-8"?>' + (f"<testsuites>{suite}</testsuites>" if root == "testsuites" else suite)


@pytest.mark.parametrize(
    ("classname", "name", "file", "expected"),
    [
        ("tests.test_mod", "test_x", None, "tests/test_mod.py::test_x"),
        ("tests.test_mod.TestClass", "test_x[param]", None, "tests/test_mod.py::TestClass::test_x[param]"),
        ("tests.test_mod.TestA.TestB", "test_x", None, "tests/test_mod.py::TestA::TestB::test_x"),
        ("test_top", "test_x[a.b-1]", None, "test_top.py::test_x[a.b-1]"),
        ("tests.Integration.test_mod", "test_x", None, "tests/Integration/test_mod.py::test_x"),
        ("tests.test_mod.Suite", "test_x", None, "tests/test_mod.py::Suite::test_x"),
        # The file attribute (xunit1) settles what is module and what is class.
        ("tests.TestCase.TestA", "test_x", "tests/TestCase.py", "tests/TestCase.py::TestA::test_x"),
        ("pkg.v1.test_m", "test_x", "pkg/v1/test_m.py", "pkg/v1/test_m.py::test_x"),
        # Doctests: pytest's name is the dotted object path.
        ("pkg.mod", "pkg.mod.func", None, "pkg/mod.py::pkg.mod.func"),
        ("", "test_x", None, "test_x"),
    ],
)
def test_node_id(classname: str, name: str, file: str | None, expected: str) -> None:
    assert node_id(classname, name, file) == expected


def test_outcomes() -> None:
    xml = _xml(
        '<testcase classname="tests.test_a" name="test_pass" time="0.1"/>'
        '<testcase classname="tests.test_a" name="test_fail"><failure message="boom">tb</failure></testcase>'
        '<testcase classname="tests.test_a" name="test_err"><error message="fixture">tb</error></testcase>'
        '<testcase classname="tests.test_a" name="test_skip"><skipped message="no"/></testcase>'
        '<testcase classname="tests.test_a" name="test_out"><system-out>hi</system-out></testcase>'
        # pytest adds a teardown error to a test that passed: the worst outcome wins
        '<testcase classname="tests.test_a" name="test_td"/>'
        '<testcase classname="tests.test_a" name="test_td"><error message="teardown"/></testcase>'
    )
    assert parse_junit(xml) == {
        "tests/test_a.py::test_pass": "passed",
        "tests/test_a.py::test_fail": "failed",
        "tests/test_a.py::test_err": "error",
        "tests/test_a.py::test_skip": "skipped",
        "tests/test_a.py::test_out": "passed",
        "tests/test_a.py::test_td": "error",
    }


def test_single_testsuite_root_and_empty_report() -> None:
    assert parse_junit(_xml('<testcase classname="t" name="test_1"/>', root="testsuite")) == {"t.py::test_1": "passed"}
    assert parse_junit(_xml("")) == {}


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not xml at all",
        "<testsuites><testsuite>",  # truncated, as when a run is killed mid-write
        "<html><body/></html>",
        '<testsuites><testsuite><testcase classname="t"/></testsuite></testsuites>',
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><testsuites/>',
    ],
)
def test_malformed_raises_junit_error(bad: str) -> None:
    with pytest.raises(JUnitError):
        parse_junit(bad)


def test_pytest_argv() -> None:
    assert pytest_argv("/py", "out.xml") == ["/py", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", "out.xml"]
    assert pytest_argv("/py", "o.xml", ["tests/a.py::t", "tests/b.py"])[-2:] == ["tests/a.py::t", "tests/b.py"]
