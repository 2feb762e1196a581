"""Parse pytest's JUnit XML into ``{test id: outcome}``.

Test ids are pytest node ids (``tests/test_mod.py::TestClass::test_x[param]``) so
they are stable across runs and can be handed back to pytest as a selection.
Outcomes are ``"passed" | "failed" | "error" | "skipped"`` (pytest reports xfail as
skipped). A test reported more than once keeps its worst outcome.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from autopack.errors import AutopackError

OUTCOMES = ("passed", "failed", "error", "skipped")
_SEVERITY = {"skipped": 0, "passed": 1, "failed": 2, "error": 3}


class JUnitError(AutopackError):
    """The JUnit XML is malformed or is not a test report."""


@dataclass
class TestRun:
    """One test run, as the gate and the attempt record see it."""

    __test__ = False  # not a pytest test class

    outcomes: dict[str, str]
    exit_code: int | None
    killed: str | None
    duration_s: float
    output_tail: str = ""


def node_id(classname: str, name: str, file: str | None = None) -> str:
    """Rebuild pytest's node id from a JUnit testcase's attributes."""
    segments = [s for s in classname.split(".") if s] if classname else []
    if file:
        path = file.replace("\\", "/")
        module = path[:-3] if path.endswith(".py") else path
        dotted = module.replace("/", ".").split(".")
        if segments[: len(dotted)] == dotted:
            return "::".join([path, *segments[len(dotted):], name])
    if not segments:
        return name
    # pytest writes the dotted module path, then the class names (CamelCase).
    split = len(segments)
    while split > 1 and segments[split - 1][:1].isupper():
        split -= 1
    module_path = "/".join(segments[:split]) + ".py"
    return "::".join([module_path, *segments[split:], name])


def _outcome(case: ET.Element) -> str:
    tags = {child.tag for child in case}
    if "error" in tags:
        return "error"
    if "failure" in tags:
        return "failed"
    if "skipped" in tags:
        return "skipped"
    return "passed"


def parse_junit(xml: str) -> dict[str, str]:
    """Map each test case's node id to its outcome; raise ``JUnitError`` when malformed."""
    if "<!DOCTYPE" in xml.upper()[:4096] or "<!ENTITY" in xml.upper():
        raise JUnitError("JUnit XML with a DTD or entities is refused")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise JUnitError(f"malformed JUnit XML: {exc}") from exc
    if root.tag not in ("testsuites", "testsuite"):
        raise JUnitError(f"not a JUnit report: root element is <{root.tag}>")
    outcomes: dict[str, str] = {}
    for case in root.iter("testcase"):
        name = case.get("name")
        if not name:
            raise JUnitError("a <testcase> has no name")
        tid = node_id(case.get("classname", ""), name, case.get("file"))
        outcome = _outcome(case)
        previous = outcomes.get(tid)
        if previous is None or _SEVERITY[outcome] > _SEVERITY[previous]:
            outcomes[tid] = outcome
    return outcomes


def failure_messages(xml: str) -> dict[str, str]:
    """The first line of each failing or erroring test case's message (``message`` attribute of
    its <failure>/<error>), by node id. Call after ``parse_junit`` accepted the report."""
    root = ET.fromstring(xml)
    out: dict[str, str] = {}
    for case in root.iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                text = (child.get("message") or child.text or child.tag).strip().splitlines()
                out[node_id(case.get("classname", ""), case.get("name", ""), case.get("file"))] = (text[0] if text else child.tag)[:300]
                break
    return out
