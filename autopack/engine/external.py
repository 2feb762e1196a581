"""External Builders: a phase whose plan names ``builder: external`` waits for edits posted by a
person or another agent; they are stored on the waiting attempt and the phase's build step applies
them through the same governance, gate and audit as a model's."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.orm import Session

from autopack.db.models import Attempt, Phase, utcnow
from autopack.edits.parse import parse_edits
from autopack.engine.leases import add_steps
from autopack.engine.runs import get_run
from autopack.engine.store import emit
from autopack.errors import Conflict, EditParseError, InvalidRequest, NotFound
from autopack.states import PhaseState, is_terminal_run

MAX_SUBMISSION_BYTES = 1_000_000
AWAITING = "AWAITING_BUILDER"


@dataclass(frozen=True)
class Submitted:
    attempt: Attempt
    steps: list[tuple[int, str]]  # (step id, name) to enqueue once the caller has committed
    replayed: bool = False  # the same submission (Idempotency-Key) came again: nothing was done


def submit_builder_result(session: Session, run_id: str, phase_key: str, edits: object, by: object = None,
                          idempotency_key: str | None = None) -> Submitted:
    """Store ``edits`` (text in any edit format a Builder may answer in) on the phase's waiting
    attempt and add its build step. Raises ``NotFound``, ``Conflict`` (not waiting) or
    ``InvalidRequest``.

    With ``idempotency_key``, a submission sent again (its answer was lost) finds the attempt the
    first one went to, whatever became of it since, instead of becoming the next attempt's edits:
    the same failing edits would be applied twice and use up another of the phase's attempts."""
    run = get_run(session, run_id)
    ph = next((p for p in run.phases if p.key == phase_key), None)
    if ph is None:
        raise NotFound(f"run {run_id} has no phase {phase_key!r}")
    if not isinstance(edits, str) or not edits.strip():
        raise InvalidRequest("edits", "must be a non-empty string of edits (whole files, search/replace blocks or a unified diff)")
    if len(edits.encode()) > MAX_SUBMISSION_BYTES:
        raise InvalidRequest("edits", f"larger than {MAX_SUBMISSION_BYTES} bytes")
    if by is not None and (not isinstance(by, str) or len(by) > 200):
        raise InvalidRequest("by", "must be a string of at most 200 characters")
    try:
        parse_edits(edits)  # read now for a quick 422 (raises on an answer without any edit too)
    except EditParseError as exc:
        raise InvalidRequest("edits", f"cannot be read: {exc}") from None
    if ph.spec.get("builder") != "external":
        raise Conflict(f"phase {phase_key} is built by a model, not by an external Builder")
    digest = hashlib.sha256(edits.encode()).hexdigest()
    earlier = _submitted_with(ph, idempotency_key, digest)
    if earlier is not None:
        return Submitted(earlier, [], replayed=True)
    attempt = _waiting_attempt(session, ph)
    if is_terminal_run(run.state) or attempt is None:
        raise Conflict(f"phase {phase_key} is not waiting for a Builder result (run {run.state}, phase {ph.state})")
    # Compare-and-set: of two submissions racing for one waiting attempt, exactly one is taken.
    submission = {"edits": edits, "by": by, "received_at": utcnow().isoformat(), "key": idempotency_key, "sha256": digest}
    taken = session.execute(
        update(Attempt).where(Attempt.id == attempt.id, Attempt.state == AWAITING).values(state="SUBMITTED", submission=submission)
    ).rowcount
    session.refresh(attempt)
    if taken != 1:
        if idempotency_key is not None and _submitted_with(ph, idempotency_key, digest) is attempt:
            return Submitted(attempt, [], replayed=True)  # the same submission, concurrently: that one took it
        raise Conflict(f"phase {phase_key} already has a Builder result for attempt {attempt.number}")
    emit(session, run.id, "attempt.submitted", phase_key=ph.key, attempt_id=attempt.id, number=attempt.number, by=by,
         bytes=len(edits.encode()))
    step = add_steps(session, run.id, [("build", ph.id)])[0]
    return Submitted(attempt, [(step.id, step.name)])


def _submitted_with(ph: Phase, key: str | None, digest: str) -> Attempt | None:
    """The attempt of ``ph`` a submission with Idempotency-Key ``key`` went to; ``InvalidRequest``
    if that submission's edits were other ones."""
    if key is None:
        return None
    for a in ph.attempts:
        sub = a.submission or {}
        if sub.get("key") == key:
            if sub.get("sha256") != digest:
                raise InvalidRequest("Idempotency-Key", f"was sent with other edits (attempt {a.number}): use a new key for new edits")
            return a
    return None


def _waiting_attempt(session: Session, ph: Phase) -> Attempt | None:
    if ph.state != PhaseState.EXECUTING or ph.current_attempt_id is None:
        return None
    a = session.get(Attempt, ph.current_attempt_id)
    if a is None or a.state != AWAITING or a.submission is not None:
        return None
    return a
