"""Learning, wired to the database: hints from fixed failures, promotion to project rules, rule
selection for prompts, measured effect and retirement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from autopack import rules as rl
from autopack.db.models import Attempt, Hint, ModelCall, Phase, Project, Rule, Run, as_utc, utcnow
from autopack.engine.store import emit
from autopack.strategy import LearningConfig


# Failures that say nothing about the change: a provider outage, a lost worker, the sandbox or git
# failing, a budget stop. The next attempt did not pass because it did something differently.
NOT_LESSONS = frozenset({"provider_error", "infrastructure", "worker_lost", "sandbox_unavailable", "git_error", "budget"})


def teaches(attempt: Attempt) -> bool:
    """Whether a failed attempt holds a lesson for the attempts after it. One that strict CI blocked
    only for a flaky test does not (the next attempt passed by luck, not by its change), nor one
    that failed for a reason outside the change (``NOT_LESSONS``, by its recorded class or by the
    Doctor's classification)."""
    if not attempt.failure_key or (attempt.gate or {}).get("blocked_as_flaky"):
        return False
    return attempt.failure_class not in NOT_LESSONS and attempt.classification not in NOT_LESSONS


def record_hint(session: Session, phase: Phase, lesson: str | None = None) -> Hint | None:
    """When an attempt of ``phase`` failed (and :func:`teaches`) and a later one was accepted: the
    hint (once per phase)."""
    attempts = sorted(phase.attempts, key=lambda a: a.number)
    accepted = next((a for a in attempts if a.decision == "complete"), None)
    failed = [a for a in attempts if teaches(a) and accepted is not None and a.number < accepted.number]
    if accepted is None or not failed:
        return None
    existing = session.scalar(select(Hint).where(Hint.run_id == phase.run_id, Hint.phase_key == phase.key))
    if existing is not None:
        return existing
    last = failed[-1]
    paths = sorted(accepted.edits or [])
    hint = Hint(
        project_id=phase.run.project_id, run_id=phase.run_id, phase_key=phase.key, key=last.failure_key or "",
        failure_class=last.failure_class or "", signature=last.failure_signature or "", category=phase.spec["category"],
        scope=list(phase.spec["scope"]), paths=paths,
        lesson=lesson or rl.lesson_for(last.failure_class or "", last.failure_signature or "", paths),
        evidence={"failed_attempts": [a.id for a in failed], "fixed_by": accepted.id},
    )
    session.add(hint)
    session.flush()
    return hint


def promote(session: Session, project_id: int, key: str, cfg: LearningConfig, run_id: str | None = None) -> Rule | None:
    """A hint key seen in at least ``promotion_threshold`` phases of the project becomes a rule.

    The project's row is locked first (FOR NO KEY UPDATE, as the flaky-test fold does): two runs of
    a project promoting one key together both inserted the rule, and one of them failed on the
    unique key (or, for a new key, each saw only its own hint and neither promoted it)."""
    session.execute(select(Project.id).where(Project.id == project_id).with_for_update(key_share=True))
    hints = session.scalars(select(Hint).where(Hint.project_id == project_id, Hint.key == key).order_by(Hint.id)).all()
    if len(hints) < cfg.promotion_threshold:
        return None
    provenance = {"hints": [h.id for h in hints], "runs": sorted({h.run_id for h in hints}),
                  "phases": [f"{h.run_id}/{h.phase_key}" for h in hints]}
    rule = session.scalar(select(Rule).where(Rule.project_id == project_id, Rule.key == key))
    if rule is not None:
        # The phases it was learned from stay as they were: later hints are recurrences. What else
        # the record holds (when a person re-enabled it) stays too.
        old = rule.provenance or {}
        rule.provenance = {**old, **provenance, "learned_from": old.get("learned_from", provenance["phases"])}
        return rule
    provenance["learned_from"] = list(provenance["phases"])
    categories = {h.category for h in hints}
    rule = Rule(
        project_id=project_id, key=key, text=hints[-1].lesson,
        scope_pattern=rl.generalize_scope([p for h in hints for p in (h.paths or h.scope)]),
        category=categories.pop() if len(categories) == 1 else None, provenance=provenance,
    )
    session.add(rule)
    session.flush()
    if run_id is not None:
        emit(session, run_id, "rule.promoted", rule_id=rule.id, key=key, scope=rule.scope_pattern)
    return rule


def auditor_guidance(session: Session, phase: Phase, cfg: LearningConfig) -> tuple[str, list[int], int]:
    """(text, rule ids, tokens): the project's rules matching the phase, for the Auditor's prompt."""
    views = [rl.RuleView(r.id, r.text, r.scope_pattern, r.category, len(r.provenance.get("hints", [])), r.status)
             for r in session.scalars(select(Rule).where(Rule.project_id == phase.run.project_id, Rule.status == "active"))]
    sel = rl.select_rules(views, phase.spec["scope"], phase.spec["category"], cfg.rules_token_cap)
    return sel.text, [v.id for v in sel.rules], sel.tokens


def prompt_guidance(session: Session, phase: Phase, cfg: LearningConfig, *, count: bool = True) -> tuple[str, list[int], list[int], int]:
    """(text, rule ids, hint ids, tokens) for the Builder prompt of ``phase``: the project's rules
    that match its scope and category, then this run's hints from earlier phases that match.
    ``count``: the rules' ``times_applied`` goes up (once per attempt: not for a redelivered build
    step, which builds the same attempt's prompt again)."""
    run = phase.run
    views = [rl.RuleView(r.id, r.text, r.scope_pattern, r.category, len(r.provenance.get("hints", [])), r.status)
             for r in session.scalars(select(Rule).where(Rule.project_id == run.project_id, Rule.status == "active"))]
    sel = rl.select_rules(views, phase.spec["scope"], phase.spec["category"], cfg.rules_token_cap)
    ruled = {r.key for r in session.scalars(select(Rule).where(Rule.id.in_([v.id for v in sel.rules])))} if sel.rules else set()
    lines = [sel.text] if sel.text else []
    hint_ids: list[int] = []
    for h in session.scalars(select(Hint).where(Hint.run_id == run.id).order_by(Hint.id)):
        if h.key in ruled or h.phase_key == phase.key:
            continue
        # The same files only: a lesson about calc/ does not belong in a docs/ prompt because both
        # phases are features (rules need scope and category alike).
        if not any(rl.scopes_overlap(a, b) for a in h.scope for b in phase.spec["scope"]):
            continue
        line = f"- (hint from phase {h.phase_key} of this run) {h.lesson}"
        if rl.estimate_tokens("\n".join([*lines, line])) > cfg.rules_token_cap:
            continue
        lines.append(line)
        hint_ids.append(h.id)
    text = "\n".join(lines)
    now = utcnow()
    for r in session.scalars(select(Rule).where(Rule.id.in_([v.id for v in sel.rules]))):
        r.times_applied += 1 if count else 0
        r.last_matched_at = now
    return text, [v.id for v in sel.rules], hint_ids, rl.estimate_tokens(text) if text else 0


def reenabled_at(rule: Rule) -> datetime | None:
    """When a person last made the rule active again (after it was retired or disabled), if ever."""
    when = (rule.provenance or {}).get("reenabled_at")
    return as_utc(datetime.fromisoformat(when)) if isinstance(when, str) else None


def reenable(rule: Rule, now: datetime | None = None) -> None:
    """A person makes ``rule`` active again: what retired it is kept in the record, and from now its
    retirement is judged on the phases after this only (else the same evidence, and its staleness,
    retired it again at the next run's end)."""
    now = now or datetime.now(timezone.utc)
    if rule.status != "active":
        rule.provenance = {**(rule.provenance or {}), "reenabled_at": now.isoformat(),
                           "reenabled_from": {"status": rule.status, "reason": rule.status_reason}}
        rule.last_matched_at = now
    rule.status, rule.status_reason = "active", None


@dataclass(frozen=True)
class _PhaseRecord:
    """What a rule's effect needs of one phase of the project (read once for all its rules)."""
    name: str  # "<run id>/<phase key>", as provenance names the phases a rule was learned from
    scope: tuple[str, ...]
    run_created: datetime
    failure_keys: frozenset[str]
    first_call_rules: frozenset[int]  # the rules its first Builder call carried
    any_call_rules: frozenset[int]  # the rules any of its Builder calls carried


def _phase_records(session: Session, project_id: int, since: datetime | None = None) -> list[_PhaseRecord]:
    """The project's phases that had an attempt, in three statements whatever the project's age (one
    per phase, for every rule, at every run end, before)."""
    q = (select(Phase.id, Phase.run_id, Phase.key, Phase.spec, Run.created_at).join(Run, Phase.run_id == Run.id)
         .where(Run.project_id == project_id))
    if since is not None:
        q = q.where(Run.created_at >= since)
    phases = session.execute(q).all()
    ids = [p.id for p in phases]
    if not ids:
        return []
    keys: dict[int, set[str]] = {}
    for phase_id, key in session.execute(select(Attempt.phase_id, Attempt.failure_key).join(Phase, Attempt.phase_id == Phase.id)
                                         .join(Run, Phase.run_id == Run.id).where(Run.project_id == project_id)):
        keys.setdefault(phase_id, set()).update([key] if key else [])
    first: dict[int, frozenset[int]] = {}
    every: dict[int, set[int]] = {}
    for phase_id, rules in session.execute(select(ModelCall.phase_id, ModelCall.rules).join(Phase, ModelCall.phase_id == Phase.id)
                                           .join(Run, Phase.run_id == Run.id)
                                           .where(Run.project_id == project_id, ModelCall.role == "builder")
                                           .order_by(ModelCall.phase_id, ModelCall.id)):
        first.setdefault(phase_id, frozenset(rules or []))
        every.setdefault(phase_id, set()).update(rules or [])
    return [_PhaseRecord(f"{p.run_id}/{p.key}", tuple(p.spec.get("scope") or ()), as_utc(p.created_at),
                         frozenset(keys[p.id]), first.get(p.id, frozenset()), frozenset(every.get(p.id, ())))
            for p in phases if p.id in keys]  # a phase with no attempt says nothing


def _effect(rule: Rule, phases: list[_PhaseRecord], since: datetime | None = None) -> dict[str, Any]:
    carried: list[bool] = []
    other: list[bool] = []
    learned_from = set(rule.provenance.get("learned_from", rule.provenance.get("phases", [])))
    for ph in phases:
        if ph.name in learned_from or (since is not None and ph.run_created < since):
            continue
        occurred = rule.key in ph.failure_keys
        if rule.id in ph.first_call_rules:
            carried.append(occurred)
        elif rule.id not in ph.any_call_rules and any(rl.scopes_overlap(rule.scope_pattern, s) for s in ph.scope):
            other.append(occurred)
    return rl.measure_effect(carried, other)


def rule_effect(session: Session, rule: Rule, since: datetime | None = None) -> dict[str, Any]:
    """How often the rule's key occurred in the project's phases that carried it from their first
    Builder call vs the phases of its scope that never carried it (of the runs submitted ``since``,
    when given: a person re-enabled the rule then).

    The phases the rule was learned from are left out of the comparison: they were chosen for having
    the failure, so counting them made the rule look helpful whatever it did. A phase that got the
    rule only on a retry counts on neither side."""
    return _effect(rule, _phase_records(session, rule.project_id, since))


def _phases_of(session: Session, rules: list[Rule]) -> dict[int, list[_PhaseRecord]]:
    """The phase records of each project of ``rules``, read once per project."""
    return {pid: _phase_records(session, pid) for pid in dict.fromkeys(r.project_id for r in rules)}


def rule_effects(session: Session, rules: list[Rule]) -> dict[int, dict[str, Any]]:
    """:func:`rule_effect` of each of ``rules``, each project's phases read once for all its rules."""
    phases = _phases_of(session, rules)
    return {rule.id: _effect(rule, phases[rule.project_id]) for rule in rules}


def retire_rules(session: Session, cfg: LearningConfig, now: datetime | None = None, project_id: int | None = None) -> list[tuple[int, str]]:
    """Refresh the measured effect of active rules and retire those that stopped paying.

    With ``project_id``, the project's row is locked first (as :func:`promote` does): two runs of a
    project ending together each retired, and announced, the same rules."""
    now = now or datetime.now(timezone.utc)
    retired = []
    q = select(Rule).where(Rule.status == "active")
    if project_id is not None:
        session.execute(select(Project.id).where(Project.id == project_id).with_for_update(key_share=True))
        q = q.where(Rule.project_id == project_id)
    rules = list(session.scalars(q))
    phases = _phases_of(session, rules)
    for rule in rules:
        effect = _effect(rule, phases[rule.project_id])
        rule.effect = effect
        created, last = as_utc(rule.created_at), as_utc(rule.last_matched_at)
        since = reenabled_at(rule)
        if since is not None:  # a person re-enabled it: judged on what happened since, not on what retired it
            effect, created = _effect(rule, phases[rule.project_id], since), since
        reason = rl.retire_reason(effect, last, created, now, stale_after=timedelta(days=cfg.stale_after_days), min_carried=cfg.min_carried)
        if reason:
            rule.status, rule.status_reason = "retired", reason
            retired.append((rule.id, reason))
    return retired


def rule_view(session: Session, rule: Rule, effect: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": rule.id, "key": rule.key, "text": rule.text, "scope": rule.scope_pattern, "category": rule.category,
        "status": rule.status, "status_reason": rule.status_reason, "times_applied": rule.times_applied,
        "provenance": rule.provenance, "effect": effect if effect is not None else rule_effect(session, rule),
        "created_at": rule.created_at.isoformat(), "last_matched_at": rule.last_matched_at.isoformat() if rule.last_matched_at else None,
    }


def project_rules(session: Session, project: Project) -> list[dict[str, Any]]:
    rules = list(session.scalars(select(Rule).where(Rule.project_id == project.id).order_by(Rule.id)))
    effects = rule_effects(session, rules)
    return [rule_view(session, r, effects[r.id]) for r in rules]



def export_json(session: Session, project: Project) -> str:
    """The project's rules as ``project_learned_rules.json``: stable order, human-readable."""
    import json

    rules = [{k: v for k, v in r.items() if k != "last_matched_at"} for r in project_rules(session, project)]
    return json.dumps({"project": project.name, "rules": rules}, indent=2, sort_keys=True) + "\n"


def analyze(session: Session, project: Project | None = None) -> dict[str, Any]:
    """Rules by category and status, top failure keys, promotions per day, effect summary."""
    from collections import Counter

    q = select(Rule)
    hq = select(Hint)
    if project is not None:
        q, hq = q.where(Rule.project_id == project.id), hq.where(Hint.project_id == project.id)
    rules = session.scalars(q.order_by(Rule.id)).all()
    hints = session.scalars(hq).all()
    effects = list(rule_effects(session, list(rules)).values())
    return {
        "rules": len(rules),
        "by_category": dict(Counter(r.category or "(any)" for r in rules)),
        "by_status": dict(Counter(r.status for r in rules)),
        "top_failure_keys": Counter(h.key for h in hints).most_common(10),
        "promotions_by_day": dict(sorted(Counter(r.created_at.date().isoformat() for r in rules).items())),
        "times_applied": sum(r.times_applied for r in rules),
        "carried_phases": sum(e["carried_phases"] for e in effects),
        "carried_failures": sum(e["carried_failures"] for e in effects),
        "other_phases": sum(e["other_phases"] for e in effects),
        "other_failures": sum(e["other_failures"] for e in effects),
    }
