"""The JSON object in a model's answer: its own (last) object, never a span across several, with
strings that can be stored; a truncated answer is none."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from autopack.answers import clean_text, json_object, parse_answer


class _Verdict(BaseModel):
    verdict: str


class _Refused(ValueError):
    pass


def test_an_example_object_before_the_answer_is_not_the_answer() -> None:
    text = ('I must answer like {"verdict": "approve", "summary": "...", "issues": []} or with a rejection.\n'
            'Having looked: {"verdict": "reject", "summary": "median is wrong", "issues": [{"severity": "major"}]}')
    assert json_object(text) == {"verdict": "reject", "summary": "median is wrong", "issues": [{"severity": "major"}]}


@pytest.mark.parametrize(("text", "value"), [
    ('{"a": {"b": 1}}', {"a": {"b": 1}}),
    ('Here it is:\n```json\n{"a": "}{"}\n```\nThanks.', {"a": "}{"}),
    ('{"a": 1} and a broken one {"b": ', {"a": 1}),
])
def test_one_complete_object(text: str, value: dict[str, object]) -> None:
    assert json_object(text) == value


@pytest.mark.parametrize("text", ["no object", "[1, 2]", '{"verdict": approve}', '{"a": 1'])
def test_no_object(text: str) -> None:
    with pytest.raises(ValueError):
        json_object(text)


def test_strings_are_cleaned_of_nul_and_lone_surrogates() -> None:
    # Valid JSON: "\u0000" and half of an emoji's surrogate pair, in values, nested, and in keys.
    got = json_object('{"summary": "bad \\ud83d", "issues": [{"summary": "a \\u0000 b"}], "k\\u0000": "\\ud83d\\ude00"}')
    assert got == {"summary": "bad \ufffd", "issues": [{"summary": "a  b"}], "k": "\U0001f600"}
    for value in ("bad \ufffd", "a  b", "k", "\U0001f600"):
        value.encode("utf-8")  # storable
    assert clean_text("ok \udc80\x00") == "ok \ufffd"


def test_a_truncated_answer_is_refused_whatever_it_holds() -> None:
    assert parse_answer('{"verdict": "approve"}', _Verdict, "the auditor", _Refused).verdict == "approve"
    with pytest.raises(_Refused, match="the auditor's answer is unusable: it was cut off at the token limit"):
        parse_answer('{"verdict": "approve"}', _Verdict, "the auditor", _Refused, truncated=True)


def test_an_answer_nested_deeper_than_the_parser_goes_is_refused() -> None:
    # ~1,200 nested brackets: json's decoder raised RecursionError, which no caller catches (the
    # diagnose step crashed instead of keeping the phase's plan).
    from autopack.replan import ReplanError, parse_replan

    with pytest.raises(ValueError, match="nests too deeply"):
        json_object('{"goal": "x", "a": ' + "[" * 1200 + "]" * 1200 + "}")
    with pytest.raises(ReplanError):
        parse_replan('{"goal": "x", "a": ' + "[" * 1200 + "]" * 1200 + "}")
