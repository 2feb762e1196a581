"""Three-level issue tracking: issues raised on an attempt (phase level), rolled up per run and per
project, de-duplicated by a stable key; a tier with too many open major issues is NOT_CLEAN."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from autopack.db.models import Attempt, Issue, IssueOccurrence, Project, Run, as_utc, utcnow
from autopack.normalize import strip_volatile


def issue_key(source: str, summary: str, path: str) -> str:
    """Stable across runs: the source, the file and the summary without what differs from run to run
    (timestamps, ids, addresses; blanks folded). Numbers and URL paths stay: "no authentication on
    /admin/delete_user" and "... on /api/export", or the regressions of ``test_x[1]`` and
    ``test_x[2]``, are different issues."""
    norm = strip_volatile(summary).lower()
    return f"{source}:{hashlib.sha256(f'{path}|{norm}'.encode()).hexdigest()[:16]}"


# The Doctor's decisions that say something is wrong beyond one attempt, and how serious that is.
DOCTOR_ISSUES = {"mark_fatal": "major", "rollback_run": "major", "replan": "minor", "skip_phase": "minor"}


def raised_on(a: Attempt) -> list[dict[str, str]]:
    """The issues an attempt raised: auditor issues, gate regressions and flaky tests, edits the
    Builder had refused (scope, protected paths) and the Doctor's verdicts on the phase."""
    out: list[dict[str, str]] = []
    audit = a.audit or {}
    for issue in audit.get("issues") or []:
        out.append({"source": "auditor", "severity": issue.get("severity", "major"), "summary": issue.get("summary", ""),
                    "path": issue.get("path", "")})
    gate = a.gate or {}
    for test in gate.get("regressions", []):
        out.append({"source": "gate", "severity": "major", "summary": f"regression: {test}", "path": test.split("::")[0]})
    for test in gate.get("flaky", []):
        out.append({"source": "gate", "severity": "minor", "summary": f"flaky test: {test}", "path": test.split("::")[0]})
    for path, why in a.refusals or []:
        out.append({"source": "builder", "severity": "minor", "summary": f"edit refused: {why}", "path": path})
    doctor = a.doctor or {}
    if doctor.get("source") == "model" and doctor.get("action") in DOCTOR_ISSUES:
        out.append({"source": "doctor", "severity": DOCTOR_ISSUES[doctor["action"]],
                    "summary": f"{doctor['action']}: {doctor.get('reason', '')}", "path": ""})
    return out


def record(session: Session, a: Attempt, accepted: bool) -> int:
    """Record ``a``'s issues. Those of the attempt that settles its phase (``accepted``: it completed
    the phase, or the phase ends here failed or skipped) stay open; those of an attempt that is
    retried are recorded as seen but not open: the retry is there to fix them."""
    ph = a.phase
    run = ph.run
    now = utcnow()
    n = 0
    for item in raised_on(a):
        key = issue_key(item["source"], item["summary"], item["path"])
        issue = session.scalar(select(Issue).where(Issue.project_id == run.project_id, Issue.key == key))
        if issue is None:
            # Open only once an attempt that settles its phase raises it: one a retry fixed is seen, not open.
            issue = Issue(project_id=run.project_id, key=key, source=item["source"], severity=item["severity"],
                          summary=item["summary"][:2000], path=item["path"], count=0, first_seen=now,
                          status="open" if accepted else "seen")
            session.add(issue)
            session.flush()
        if session.scalar(select(IssueOccurrence.id).where(IssueOccurrence.issue_id == issue.id, IssueOccurrence.attempt_id == a.id)):
            continue
        if accepted:
            issue.status = "open"
        same_build = _occurrence_of_build(session, issue.id, run.id, a.candidate_commit)
        if same_build is not None:
            # The same candidate again (a re-audit of a build whose auditor was out): one occurrence.
            same_build.open = same_build.open or accepted
            if item["severity"] == "major":
                same_build.severity = "major"
            continue
        issue.count += 1
        issue.last_seen = now
        if item["severity"] == "major":
            issue.severity = "major"  # the project-wide worst; a run counts its own occurrences' severity
        session.add(IssueOccurrence(issue_id=issue.id, run_id=run.id, phase_key=ph.key, tier_key=ph.tier.key, attempt_id=a.id,
                                    open=accepted, severity=item["severity"]))
        n += 1
    return n


def _occurrence_of_build(session: Session, issue_id: int, run_id: str, commit: str | None) -> IssueOccurrence | None:
    """The occurrence of ``issue_id`` in ``run_id`` on an attempt of the same candidate ``commit``."""
    if commit is None:
        return None
    return session.scalar(select(IssueOccurrence).join(Attempt, Attempt.id == IssueOccurrence.attempt_id)
                          .where(IssueOccurrence.issue_id == issue_id, IssueOccurrence.run_id == run_id,
                                 Attempt.candidate_commit == commit).limit(1))


def _severity(occ: IssueOccurrence, issue: Issue) -> str:
    """The severity an occurrence was raised with (its issue's, for rows from before it was kept)."""
    return occ.severity or issue.severity


def open_major_in_tier(session: Session, run_id: str, tier_key: str) -> int:
    q = (select(IssueOccurrence.issue_id).join(Issue, IssueOccurrence.issue_id == Issue.id)
         .where(IssueOccurrence.run_id == run_id, IssueOccurrence.tier_key == tier_key, IssueOccurrence.open.is_(True),
                func.coalesce(IssueOccurrence.severity, Issue.severity) == "major"))
    return len(set(session.scalars(q)))


def _age_days(dt: datetime, now: datetime) -> float:
    return round((now - as_utc(dt)).total_seconds() / 86400, 3)


def _issue_view(i: Issue, now: datetime) -> dict[str, Any]:
    return {"id": i.id, "key": i.key, "source": i.source, "severity": i.severity, "summary": i.summary, "path": i.path,
            "status": i.status, "count": i.count, "first_seen": i.first_seen.isoformat(), "last_seen": i.last_seen.isoformat(),
            "age_days": _age_days(i.first_seen, now)}


def run_issues(session: Session, run: Run) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    rows = session.execute(select(IssueOccurrence, Issue).join(Issue, IssueOccurrence.issue_id == Issue.id)
                           .where(IssueOccurrence.run_id == run.id).order_by(IssueOccurrence.id)).all()
    by_key: dict[str, dict[str, Any]] = {}
    for occ, issue in rows:
        view = by_key.setdefault(issue.key, {**_issue_view(issue, now), "severity": "minor", "project_severity": issue.severity,
                                             "in_run": 0, "open_in_run": False, "phases": []})
        view["in_run"] += 1
        view["open_in_run"] = view["open_in_run"] or occ.open
        if _severity(occ, issue) == "major":  # in this run: the worst its occurrences here were raised with
            view["severity"] = "major"
        if occ.phase_key not in view["phases"]:
            view["phases"].append(occ.phase_key)
    issues = list(by_key.values())
    return {"run_id": run.id, "issues": issues,
            "open": {"major": sum(1 for i in issues if i["open_in_run"] and i["severity"] == "major"),
                     "minor": sum(1 for i in issues if i["open_in_run"] and i["severity"] == "minor")}}


def backlog(session: Session, project: Project) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    issues = session.scalars(select(Issue).where(Issue.project_id == project.id, Issue.status == "open")
                             .order_by(Issue.severity, Issue.first_seen)).all()
    views = [_issue_view(i, now) for i in issues]
    return {"project": project.name, "open": len(views),
            "by_severity": {s: sum(1 for v in views if v["severity"] == s) for s in ("major", "minor")},
            "oldest_age_days": max((v["age_days"] for v in views), default=0.0), "issues": views}
