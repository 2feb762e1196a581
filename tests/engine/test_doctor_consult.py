"""``consult`` on plain failure histories: which decision wins, when the models are asked, what an
unusable or over-budget Doctor leaves behind."""

from __future__ import annotations

import json

import pytest

from autopack.engine.doctor import consult
from autopack.errors import ProviderUnavailable
from autopack.governance.classify import FailureClass
from autopack.governance.doctor import FailureRecord
from autopack.strategy import DoctorConfig

CFG = DoctorConfig(model="cheap", strong_model="strong", escalate_below_confidence=0.7, max_calls_per_phase=2, max_calls_per_run=5)
TWICE = [FailureRecord(FailureClass.TEST_FAILURE, "a"), FailureRecord(FailureClass.TEST_FAILURE, "b")]


def _answer(action: str, confidence: float, hint: str = "h") -> str:
    return json.dumps({"action": action, "confidence": confidence, "hint": hint, "reason": f"{action} at {confidence}"})


def _ask(answers: dict[str, str], asked: list[str]):  # type: ignore[no-untyped-def]
    def ask(model: str) -> str:
        asked.append(model)
        answer = answers[model]
        if answer == "down":
            raise ProviderUnavailable("p", "overloaded", 529)
        return answer
    return ask


def _consult(answers: dict[str, str], failures=TWICE, *, cfg=CFG, replanned=False, replan=None, phase_calls=0, run_calls=0):  # type: ignore[no-untyped-def]
    asked: list[str] = []
    rec = consult(failures, cfg=cfg, already_replanned=replanned, replan_reason=replan, phase_calls=phase_calls,
                  run_calls=run_calls, ask=_ask(answers, asked))
    return rec, asked


def test_the_similarity_replan_comes_first() -> None:
    rec, asked = _consult({}, replan="failed the same way twice")
    assert (rec["action"], rec["source"], rec["reason"], asked) == ("replan", "rules", "failed the same way twice", [])


@pytest.mark.parametrize(("cls", "burns"), [(FailureClass.PROVIDER_ERROR, False), (FailureClass.INFRASTRUCTURE, False),
                                            (FailureClass.TEST_FAILURE, True)])
def test_first_failures_are_the_rules_call(cls: FailureClass, burns: bool) -> None:
    rec, asked = _consult({}, [FailureRecord(cls, "boom")])
    assert rec["action"] == "retry_with_fix" and rec["source"] == "rules" and rec["burns_attempt"] is burns and asked == []
    assert rec["class"] == cls.value


def test_a_confident_cheap_answer_is_final() -> None:
    rec, asked = _consult({"cheap": _answer("replan", 0.8)})
    assert asked == ["cheap"] and rec["action"] == "replan" and rec["source"] == "model" and rec["confidence"] == 0.8


def test_an_unsure_cheap_answer_asks_the_strong_model() -> None:
    rec, asked = _consult({"cheap": _answer("skip_phase", 0.2), "strong": _answer("mark_fatal", 0.9)})
    assert asked == ["cheap", "strong"] and rec["action"] == "mark_fatal"
    assert [c["model"] for c in rec["calls"]] == ["cheap", "strong"]


def test_a_failing_strong_model_leaves_the_cheap_answer() -> None:
    rec, asked = _consult({"cheap": _answer("skip_phase", 0.2), "strong": "down"})
    assert asked == ["cheap", "strong"] and rec["action"] == "skip_phase" and "ProviderUnavailable" in rec["calls"][1]["error"]


@pytest.mark.parametrize("action", ["mark_fatal", "rollback_run"])
@pytest.mark.parametrize("strong", ["down", _answer("mark_fatal", 0.3, "look at the parser")], ids=["strong-down", "strong-unsure"])
def test_an_unsure_answer_never_ends_the_run_or_rolls_it_back(action: str, strong: str) -> None:
    """Ending the run or throwing its completed phases away is done only on a sure answer: an unsure
    one (the strong model out, or unsure too) is a retry with the hint, within the phase's attempts."""
    rec, asked = _consult({"cheap": _answer(action, 0.1, "look at the parser"), "strong": strong})
    assert asked == ["cheap", "strong"]
    assert (rec["action"], rec["source"], rec["hint"]) == ("retry_with_fix", "model", "look at the parser")
    assert "too unsure to act on" in rec["reason"]


@pytest.mark.parametrize("action", ["mark_fatal", "rollback_run"])
def test_a_sure_answer_may_end_the_run_or_roll_it_back(action: str) -> None:
    rec, asked = _consult({"cheap": _answer(action, 0.1), "strong": _answer(action, 0.9)})
    assert asked == ["cheap", "strong"] and rec["action"] == action
    rec, asked = _consult({"cheap": _answer(action, 0.8)})
    assert asked == ["cheap"] and rec["action"] == action


def test_a_failing_cheap_model_goes_to_the_strong_one() -> None:
    rec, asked = _consult({"cheap": "no json here", "strong": _answer("retry_with_fix", 0.9, "fix the loop")})
    assert asked == ["cheap", "strong"] and rec["hint"] == "fix the loop"


def test_replan_after_a_replan_becomes_a_retry_with_the_hint() -> None:
    rec, _ = _consult({"cheap": _answer("replan", 0.9, "narrow the goal")}, replanned=True)
    assert rec["action"] == "retry_with_fix" and rec["hint"] == "narrow the goal" and "already re-planned" in rec["reason"]


@pytest.mark.parametrize(("phase_calls", "run_calls", "asked_models"), [(2, 0, []), (0, 5, []), (1, 0, ["cheap"]), (0, 4, ["cheap"])])
def test_call_budget(phase_calls: int, run_calls: int, asked_models: list[str]) -> None:
    rec, asked = _consult({"cheap": _answer("skip_phase", 0.1), "strong": _answer("mark_fatal", 0.9)},
                          phase_calls=phase_calls, run_calls=run_calls)
    assert asked == asked_models
    assert rec["action"] == ("retry_with_fix" if not asked_models else "skip_phase")


def test_no_model_configured() -> None:
    rec, asked = _consult({}, cfg=DoctorConfig(model=None))
    assert asked == [] and rec["action"] == "retry_with_fix" and rec["reason"].startswith("no Doctor model is configured")


def test_without_ask_a_needed_model_is_none_and_rules_still_decide() -> None:
    """decide consults without a model: None means "hand over to the diagnose step"."""
    none = consult(TWICE, cfg=CFG, already_replanned=False, replan_reason=None, phase_calls=0, run_calls=0, ask=None)
    assert none is None
    first = consult(TWICE[:1], cfg=CFG, already_replanned=False, replan_reason=None, phase_calls=0, run_calls=0, ask=None)
    assert first is not None and first["source"] == "rules" and first["action"] == "retry_with_fix"
    spent = consult(TWICE, cfg=CFG, already_replanned=False, replan_reason=None, phase_calls=2, run_calls=0, ask=None)
    assert spent is not None and spent["reason"].startswith("the Doctor's call budget is spent")
    replan = consult(TWICE, cfg=CFG, already_replanned=False, replan_reason="alike", phase_calls=0, run_calls=0, ask=None)
    assert replan is not None and replan["action"] == "replan"
