"""The phase pipeline, one function per step (see DESIGN.md):

start_run → baseline → build → probe → audit → decide → (build of the next phase | retry | end)

Every step returns the steps to enqueue next as ``(step name, id)`` pairs; the task shell sends them
after this function's transaction has committed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import random
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from autopack import gate as gatelib
from autopack.answers import storable, unfinished
from autopack.auditor import NO_VERDICT, VerdictError, combine, needs_judge, parse_judge, parse_verdict, render_auditor_prompt
from autopack.builder import BuildOutcome, PhaseContext, check_submission, render_builder_prompt, run_builder
from autopack.db.models import Attempt, BudgetReservation, ModelCall, Phase, Run, Tier, utcnow
from autopack.db.problems import database_problem
from autopack.db.session import session_scope
from autopack.decide import NOT_BURNING, AttemptOutcome, decide, health_counts, health_exceeded
from autopack.edits.govern import EditPolicy, default_protected
from autopack.engine.faults import crash_point
from autopack.engine import issues
from autopack.engine.external import AWAITING
from autopack.engine.flakiness import quarantined_tests
from autopack.engine.doctor import classify_attempt, consult, failure_message, history, no_attempts_left
from autopack.strategy import DoctorConfig
from autopack.engine.routing import choose_model, fallback_chain, routing_record
from autopack.engine.leases import CURRENT_STEP, StepContext, record_clock
from autopack.engine.learning import auditor_guidance, promote, prompt_guidance, record_hint, teaches
from autopack.engine.ledger import charge, estimate_tokens, reserve, settle
from autopack.engine.services import Services
from autopack.engine.store import emit, transition
from autopack.errors import (BudgetExceeded, ConfigError, DoctorVerdictError, GitError, ProviderError, ProviderUnavailable,
                             SandboxUnavailable, UnsafePath)
from autopack.llm.base import LLMRequest, LLMResponse, Message
from autopack.escalation import effective_complexity, model_from_chain, trailing_same_kind
from autopack.governance.classify import AttemptFacts, FailureClass, NotAFailure, classify_failure
from autopack.governance.doctor import FailureRecord
from autopack.governance.doctor_prompt import render_doctor_prompt
from autopack.governance.routing import RouteDecision, backoff_seconds
from autopack.normalize import failure_key
from autopack.replan import Failure, ReplanError, parse_replan, should_replan_now
from autopack.sandbox.junit import JUnitError, failure_messages, parse_junit
from autopack.sandbox.limits import SandboxLimits
from autopack.states import PhaseState, RunState, TierState, is_terminal_run
from autopack.workspace import worktree as wt
from autopack.workspace.git import Git
from autopack.workspace.reader import TreeReader

log = logging.getLogger("autopack.engine")

Step = tuple[str, Any]
JUNIT = "autopack-junit.xml"


# ----------------------------------------------------------------------------------------------
# helpers


# A lock on the run's own branch older than this is the remains of a git process killed mid-update.
STALE_REF_LOCK_S = 60.0


def _worktree_path(services: Services, run: Run) -> Path:
    return services.settings.worktrees_dir / run.id


def _end_run(session: Session, run: Run, state: str, reason: str) -> None:
    transition(session, run, state, failure_reason=reason or None, finished_at=utcnow())
    emit(session, run.id, "run.finished", state=state, reason=reason)


def _fail_run_now(services: Services, ctx: StepContext | None, run_id: str, state: str, reason: str) -> None:
    """End the run now (fenced by ``ctx`` when a step does it)."""
    with session_scope(services.db_url) as s:
        if ctx is not None:
            ctx.guard(s)
        run = s.get(Run, run_id)
        if run is not None and not is_terminal_run(run.state):
            _end_run(s, run, state, reason)
        if ctx is not None:
            ctx.finish(s, [], outcome="failed")


# A re-run selection longer than this runs the whole test command instead: the sandbox passes its
# command line as one argument, which Linux caps at 128 KiB (a change that breaks a shared fixture of
# a large suite makes thousands of tests newly fail).
MAX_SELECTION_BYTES = 64 * 1024


def _test_argv(services: Services, strategy: dict[str, Any], selection: list[str] | None = None) -> list[str]:
    argv = [a.replace("{python}", services.python) for a in strategy["test_command"]]
    argv += ["--junitxml", JUNIT]
    if selection and sum(len(t.encode()) + 1 for t in selection) <= MAX_SELECTION_BYTES:
        argv += selection
    return argv


def _limits(strategy: dict[str, Any]) -> SandboxLimits:
    timeout = int(strategy["run"]["test_timeout_s"])
    # a run that started before test_memory_mb existed has none in its snapshot
    memory = int(strategy["run"].get("test_memory_mb", SandboxLimits.total_memory_mb))
    return SandboxLimits(timeout_s=timeout, cpu_s=timeout, total_memory_mb=memory)


def _run_tests(services: Services, repo: Path, commit: str, argv: list[str], limits: SandboxLimits) -> dict[str, Any]:
    """Run the test command on a throw-away copy of ``commit`` in the sandbox; outcomes from JUnit."""
    with tempfile.TemporaryDirectory(prefix="autopack-tree-") as tmp:
        tree = wt.export_tree(repo, commit, Path(tmp) / "tree")
        res = services.sandbox.run(tree, argv, limits, collect=[JUNIT], consume=True)  # moved, not copied again
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    error = None
    xml = res.files.get(JUNIT)
    if xml:
        try:
            outcomes = parse_junit(xml)
            messages = failure_messages(xml)
        except JUnitError as exc:
            error = f"unreadable JUnit report: {exc}"
    else:
        error = "the test command wrote no JUnit report"
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o] = counts.get(o, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no tests"
    if res.killed:
        summary += f" (killed: {res.killed})"
    if res.oom_kills and res.killed != "memory":
        summary += f" ({res.oom_kills} process(es) killed at the run's memory cap)"
    return {
        "outcomes": outcomes,
        "messages": {k: stable_output(v) for k, v in messages.items()},
        "exit_code": res.exit_code,
        "killed": res.killed,
        "oom_kills": res.oom_kills,
        "duration_s": round(res.duration_s, 3),
        "summary": summary,
        "error": error,
        "output_tail": stable_output((res.stdout[-3000:] + ("\n" + res.stderr[-2000:] if res.stderr else "")).strip()),
    }


_DURATION = re.compile(r"\b\d+(?:\.\d+)?s\b")


def stable_output(text: str) -> str:
    """Test output with timings masked, so feedback built from it (and the prompts that carry it)
    is the same on every machine and every replay."""
    return _DURATION.sub("<t>s", text)


def _matches(path: str, patterns: list[str]) -> bool:
    for pat in patterns:
        if pat.endswith("/**"):
            if path == pat[:-3] or path.startswith(pat[:-2]):
                return True
        if fnmatch.fnmatchcase(path, pat) or path == pat:
            return True
    return False


def _acceptance_files(spec: dict[str, Any], files: list[str]) -> list[str]:
    out = []
    for entry in spec.get("acceptance_tests", []):
        path = entry.split("::", 1)[0]
        out += [f for f in files if f == path or (f.startswith(path.rstrip("/") + "/") and f.endswith(".py"))]
    return sorted(set(out))


def _policy(spec: dict[str, Any], tree: TreeReader) -> EditPolicy:
    entries = tree.entries()
    return EditPolicy(scope=tuple(spec["scope"]), protected=default_protected(_acceptance_files(spec, sorted(entries))), tree=entries)


# ----------------------------------------------------------------------------------------------
# model calls: reserve, call, record, settle


@dataclass
class CallScope:
    run_id: str
    phase_id: int | None
    attempt_id: int | None
    role: str
    model: str
    phase_token_cap: int | None
    rules: tuple[int, ...] = ()
    hints: tuple[int, ...] = ()
    rules_tokens: int = 0
    after_end: bool = False  # a call made once the run is over (the postmortem's narrative)


def make_call(services: Services, scope: CallScope) -> Callable[[str, list[Message], int], LLMResponse]:
    client = services.clients(scope.model)
    pricing = services.config.pricing
    # Calls are recorded under the provider's name in models.yaml: quotas and outages are kept by it.
    models = services.config.models
    provider = models.provider_of(scope.model) if scope.model in models.models else getattr(client, "provider", "?")

    def call(system: str, messages: list[Message], max_tokens: int) -> LLMResponse:
        req = LLMRequest(model=scope.model, system=system, messages=messages, max_tokens=max_tokens)
        est_in = estimate_tokens(system + "".join(m.content for m in messages))
        worst_tokens = est_in + max_tokens
        worst_cost = pricing.cost(scope.model, est_in, max_tokens)
        rb = services.config.strategy.run
        with session_scope(services.db_url) as s:
            reservation = reserve(s, scope.run_id, scope.phase_id, worst_tokens, worst_cost, scope.phase_token_cap,
                                  daily_token_cap=rb.project_daily_token_cap, daily_cost_cap=rb.project_daily_cost_cap_usd,
                                  step=CURRENT_STEP.get(), after_end=scope.after_end)
        # Stored as the database can hold it (a NUL from a repository file or a model would fail the
        # insert after the call was paid for, and end the run); the call itself gets the raw text.
        prompt = {"system": storable(system), "messages": [{**m.model_dump(), "content": storable(m.content)} for m in messages]}
        try:
            resp = client.complete(req)
        except Exception as exc:
            # The provider refused the call (an error status, no connection): nothing was billed.
            # Otherwise its answer was lost (a read timeout, a dropped connection, the step stopped
            # mid-call) and it may have been billed in full: counted at its worst case.
            refused = isinstance(exc, ProviderError) and not exc.maybe_billed
            failure = storable(f"{type(exc).__name__}: {exc}" + ("" if refused else " (usage unknown: counted at its worst case)"))

            def record_failure(s: Session) -> None:
                if refused:
                    settle(s, reservation, 0, 0.0)
                else:
                    charge(s, reservation)
                s.add(
                    ModelCall(
                        run_id=scope.run_id, phase_id=scope.phase_id, attempt_id=scope.attempt_id, role=scope.role,
                        provider=provider, model=scope.model, request_key=_key(req),
                        prompt=prompt, max_tokens=max_tokens,
                        error=failure,
                        input_tokens=0 if refused else est_in, output_tokens=0 if refused else max_tokens,
                        cost_usd=0.0 if refused else worst_cost,
                        rules=list(scope.rules), hints=list(scope.hints), rules_tokens=scope.rules_tokens,
                        created_at=record_clock(s),
                    )
                )
                if not refused:
                    _add_to_attempt(s, scope.attempt_id, worst_tokens, worst_cost)

            _record_through_outage(services, record_failure, reservation.id, "settled" if refused else "charged")
            raise
        used = resp.usage.input_tokens + resp.usage.output_tokens
        cost = pricing.cost(scope.model, resp.usage.input_tokens, resp.usage.output_tokens)

        def record_answer(s: Session) -> None:
            settle(s, reservation, used, cost)
            s.add(
                ModelCall(
                    run_id=scope.run_id, phase_id=scope.phase_id, attempt_id=scope.attempt_id, role=scope.role,
                    provider=provider, model=resp.model, request_key=_key(req), prompt=prompt,
                    response_text=storable(resp.text), stop_reason=resp.stop_reason, max_tokens=max_tokens,
                    input_tokens=resp.usage.input_tokens, output_tokens=resp.usage.output_tokens, cost_usd=cost,
                    rules=list(scope.rules), hints=list(scope.hints), rules_tokens=scope.rules_tokens,
                    created_at=record_clock(s),
                )
            )
            _add_to_attempt(s, scope.attempt_id, used, cost)

        _record_through_outage(services, record_answer, reservation.id, "settled")
        crash_point("after_model_answer")
        return resp

    return call


def _add_to_attempt(s: Session, attempt_id: int | None, tokens: int, cost: float) -> None:
    """Add a call's spend to its attempt in the database (not to a loaded copy: the step's new holder
    and a paused worker coming back may both be recording a call of the attempt)."""
    if attempt_id is not None:
        s.execute(update(Attempt).where(Attempt.id == attempt_id)
                  .values(tokens_used=Attempt.tokens_used + tokens, cost_usd=Attempt.cost_usd + cost)
                  .execution_options(synchronize_session=False))


# How long a paid call's record is retried while the database is away (a restart, a failover):
# given up, the answer is lost and the step's next delivery pays for the call again.
RECORD_RETRY_S = (0.5, 1.0, 2.0, 4.0, 8.0)


def _record_through_outage(services: Services, write: Callable[[Session], None], reservation_id: int, closed: str) -> None:
    """Run ``write`` (which closes reservation ``reservation_id`` as ``closed``) in a transaction,
    again after a pause (``RECORD_RETRY_S``) while the database is unavailable; any other error, or
    the last one, is raised. A try after one whose commit may have gone through (the connection
    dropped at the commit) writes nothing if the reservation is closed so already."""
    for n, pause in enumerate((*RECORD_RETRY_S, None)):
        try:
            with session_scope(services.db_url) as s:
                if n and s.scalar(select(BudgetReservation.state).where(BudgetReservation.id == reservation_id)) == closed:
                    return
                write(s)
            return
        except Exception as exc:
            if pause is None or database_problem(exc) != "unavailable":
                raise
            log.warning("the database is unavailable while recording a model call (%s); trying again in %.1fs",
                        type(exc).__name__, pause)
            time.sleep(pause)


def fallback_call(services: Services, scope: CallScope, chain: list[str]) -> tuple[Callable[[str, list[Message], int], LLMResponse], list[str]]:
    """A call that moves along ``chain`` when a provider is unavailable (outage, 429/529/5xx after
    the SDK's retries), after an exponential backoff with jitter, recording each fallback as an
    event; ``used`` lists the models tried."""
    used = [chain[0]]
    rcfg = services.config.strategy.run.routing

    def call(system: str, messages: list[Message], max_tokens: int) -> LLMResponse:
        while True:
            try:
                return make_call(services, dataclasses.replace(scope, model=used[-1]))(system, messages, max_tokens)
            except ProviderUnavailable as exc:
                nxt = _next_in_chain(services, chain, used[-1])
                if nxt >= len(chain):
                    raise
                with session_scope(services.db_url) as s:
                    ph = s.get(Phase, scope.phase_id) if scope.phase_id else None
                    delay = backoff_seconds(len(used) - 1, random.random, rcfg.backoff_base_s, rcfg.backoff_cap_s)
                    emit(s, scope.run_id, "model.fallback", phase_key=ph.key if ph else None, attempt_id=scope.attempt_id,
                         from_model=used[-1], to_model=chain[nxt], reason=str(exc)[:500], backoff_s=round(delay, 3))
                time.sleep(delay)
                used.append(chain[nxt])

    return call, used


def _next_in_chain(services: Services, chain: list[str], failed: str) -> int:
    """The index of the model a call falls back to after ``failed``'s provider went out: the next of
    ``chain`` on another provider (its other models are in that outage too), else the next one."""
    provider_of = services.config.models.provider_of
    at = chain.index(failed)
    out = provider_of(failed)
    return next((i for i in range(at + 1, len(chain)) if provider_of(chain[i]) != out), at + 1)


def _key(req: LLMRequest) -> str:
    from autopack.llm.cassette import request_key

    return request_key(req)


# ----------------------------------------------------------------------------------------------
# steps


def start_run(services: Services, run_id: str, ctx: StepContext) -> list[Step]:
    """QUEUED → PLANNING: resolve the base commit, create the run's branch and worktree."""
    with session_scope(services.db_url) as s:
        ctx.guard(s)
        run = s.get(Run, run_id)
        if run is None:
            return []
        if run.state == RunState.QUEUED:
            transition(s, run, RunState.PLANNING)
            emit(s, run.id, "run.planning")
        elif not (run.state == RunState.PLANNING and run.base_commit is None):
            return []  # already past this step
        repo = Path(run.project.repo_path)
        base_branch, branch = run.base_branch, run.branch
    try:
        # A delivery of this step that died before recording the base made the run's branch at the
        # base branch's tip then (nothing else makes autopack/<run id>): that is the base, even if the
        # base branch has moved since; reading the tip again failed the run on the existing branch.
        base = Git(repo).rev_parse(f"refs/heads/{branch}")
        if base is None:
            base = Git(repo).rev_parse(f"refs/heads/{base_branch}")
            if base is None:
                raise GitError(f"base branch {base_branch!r} does not exist in {repo.name}")
            wt.create_branch(repo, branch, base)
        wt.ensure_worktree(repo, services.settings.worktrees_dir / run_id, base)
    except (GitError, OSError) as exc:
        _fail_run_now(services, ctx, run_id, RunState.DONE_FAILED_SETUP, f"repository setup failed: {exc}")
        return []
    with session_scope(services.db_url) as s:
        run = s.get(Run, run_id)
        assert run is not None
        ctx.guard(s)
        if run.state != RunState.PLANNING:
            return []
        run.base_commit = base
        run.head_commit = base
        emit(s, run.id, "run.branch_created", branch=branch, base_commit=base)
        return ctx.finish(s, [("baseline", run_id)])


def take_baseline(services: Services, run_id: str, ctx: StepContext) -> list[Step]:
    """T0: the test suite on the base commit, once per run. PLANNING → RUNNING."""
    with session_scope(services.db_url) as s:
        run = s.get(Run, run_id)
        if run is None or run.state != RunState.PLANNING or run.baseline is not None or run.base_commit is None:
            return []
        repo, base, strategy = Path(run.project.repo_path), run.base_commit, run.strategy
    try:
        result = _run_tests(services, repo, base, _test_argv(services, strategy), _limits(strategy))
    except SandboxUnavailable as exc:
        _fail_run_now(services, ctx, run_id, RunState.DONE_FAILED_SETUP, str(exc))
        return []
    if result["error"] or result["killed"]:
        # Without a readable T0 report no phase could be judged: stop before spending on models.
        problem = result["error"] or f"killed: {result['killed']}"
        _fail_run_now(services, ctx, run_id, RunState.DONE_FAILED_SETUP, f"baseline tests could not run ({problem}):\n{result['output_tail'][-1500:]}")
        return []
    with session_scope(services.db_url) as s:
        ctx.guard(s)
        run = s.get(Run, run_id)
        assert run is not None
        if run.state != RunState.PLANNING:
            return []
        run.baseline = result
        emit(s, run.id, "run.baseline", summary=result["summary"], error=result["error"])
        transition(s, run, RunState.RUNNING)
        emit(s, run.id, "run.running")
        return ctx.finish(s, _start_next_tier(s, run))


def _start_next_tier(s: Session, run: Run) -> list[Step]:
    for tier in run.tiers:
        if tier.state == TierState.PENDING:
            transition(s, tier, TierState.RUNNING)
            emit(s, run.id, "tier.started", tier=tier.key)
            return _start_next_phase(s, run, tier)
    _end_run(s, run, RunState.DONE_SUCCESS, "")
    return []


def _start_next_phase(s: Session, run: Run, tier: Tier) -> list[Step]:
    # The tier's first queued phase, by one indexed query (not the tier's every phase, each decide).
    ph = s.scalars(select(Phase).where(Phase.tier_id == tier.id, Phase.state == PhaseState.QUEUED)
                   .order_by(Phase.index).limit(1)).first()
    if ph is not None:
        emit(s, run.id, "phase.queued", phase_key=ph.key)
        return [("build", ph.id)]
    rb = run.strategy["run"]
    majors = issues.open_major_in_tier(s, run.id, tier.key)
    if majors > int(rb.get("tier_major_issue_threshold", 2)):
        transition(s, tier, TierState.NOT_CLEAN)
        emit(s, run.id, "tier.not_clean", tier=tier.key, open_major_issues=majors)
        if rb.get("on_not_clean", "continue") == "stop":
            _end_run(s, run, RunState.DONE_FAILED_TIER_BLOCKED, f"tier {tier.key} is not clean: {majors} open major issues")
            return []
        return _start_next_tier(s, run)
    transition(s, tier, TierState.COMPLETE)
    emit(s, run.id, "tier.complete", tier=tier.key)
    return _start_next_tier(s, run)


def _context(services: Services, tree: TreeReader, spec: dict[str, Any], feedback: str | None) -> PhaseContext:
    entries = tree.entries()
    files = sorted(entries)
    scope = list(spec["scope"])
    scoped = [f for f in files if _matches(f, scope) and entries[f] in ("100644", "100755")]
    acc = _acceptance_files(spec, files)
    texts = tree.read_many(scoped + list(acc))
    in_scope = {f: texts[f] or "" for f in scoped}
    acc_files = {f: texts[f] or "" for f in acc}
    ctx = PhaseContext(
        phase_id=spec["id"],
        goal=spec["goal"],
        category=spec["category"],
        complexity=spec["complexity"],
        description=spec.get("description", ""),
        scope=tuple(scope),
        deliverables=tuple(spec.get("deliverables", [])),
        acceptance=tuple(spec.get("acceptance_tests", [])),
        tree=tuple(files),
        files=in_scope,
        acceptance_files=acc_files,
        feedback=feedback,
    )
    return ctx


def build_phase(services: Services, phase_id: int, ctx: StepContext) -> list[Step]:
    """QUEUED|RETRY → EXECUTING: a new attempt; Builder → governed edits → deterministic candidate commit.

    A redelivered build (the worker died mid-step) continues the same attempt: the same inputs give
    the same candidate commit."""
    with session_scope(services.db_url) as s:
        ctx.guard(s)
        ph = s.get(Phase, phase_id)
        if ph is None:
            return []
        run = ph.run
        if is_terminal_run(run.state):
            return []
        current = s.get(Attempt, ph.current_attempt_id) if ph.current_attempt_id else None
        external = ph.spec.get("builder") == "external"
        if external and ph.state in (PhaseState.QUEUED, PhaseState.RETRY):
            return ctx.finish(s, _await_external_builder(s, run, ph))
        if ph.state in (PhaseState.QUEUED, PhaseState.RETRY):
            burned = sum(1 for x in ph.attempts if x.failure_class and x.failure_class not in NOT_BURNING)
            level = effective_complexity(ph.spec["complexity"], burned, int(run.strategy["run"].get("escalate_after_failures", 2)))
            model = services.model_for("builder", level)
            base_model = services.model_for("builder", ph.spec["complexity"])
            why = f"builder model for {level} complexity"
            if model != base_model:
                emit(s, run.id, "attempt.escalated", phase_key=ph.key, level=level, model=model, from_model=base_model, failures=burned)
                why = f"escalated from {ph.spec['complexity']} to {level} after {burned} failed attempts"
            elif ph.attempts_used == 0:
                prev = _last_model_of_category(s, run, ph)
                if prev is not None and prev != model:
                    emit(s, run.id, "phase.deescalated", phase_key=ph.key, model=model, previous_model=prev)
                    why += f"; de-escalated from {prev}, which completed the previous {ph.spec['category']} phase"
            kinds = [x.classification or x.failure_class for x in sorted(ph.attempts, key=lambda x: x.number)
                     if x.failure_class and x.failure_class not in NOT_BURNING and (x.routing or {}).get("level") == level]
            if kinds:
                same = trailing_same_kind(kinds)
                chain_model = model_from_chain(services.config.models.roles["builder"].escalation_chain(level, model), same,
                                               services.config.strategy.run.model_after_failures)
                if chain_model != model:
                    emit(s, run.id, "attempt.escalated", phase_key=ph.key, level=level, model=chain_model, from_model=model,
                         failures=same, kind=kinds[-1])
                    why += f"; {same} consecutive {kinds[-1]} failures at {level}: next model of its escalation chain"
                    model = chain_model
            high = bool(ph.budget.get("high_risk"))
            chain = [model, *services.config.models.roles["builder"].fallback]
            route = choose_model(s, services.config.models, services.config.strategy.run.routing, role="builder", complexity=level,
                                 category=ph.spec["category"], high_risk=high, chain=chain)
            routing = routing_record(route, role="builder", wanted=model, level=level, why=why)
            transition(s, ph, PhaseState.EXECUTING, attempts_used=ph.attempts_used + 1)
            attempt = Attempt(phase_id=ph.id, run_id=run.id, number=ph.attempts_used, model=route.model or model,
                              parent_commit=run.head_commit, routing=routing)
            s.add(attempt)
            s.flush()
            ph.current_attempt_id = attempt.id
            if route.skipped:
                emit(s, run.id, "model.routed", phase_key=ph.key, attempt_id=attempt.id, wanted=model, model=route.model,
                     skipped=routing["skipped"], stop_reason=route.stop_reason)
            if route.model is None:
                # Nothing usable: a high-risk phase never downgrades, and no model at all cannot build.
                reason = f"phase {ph.key}: {route.stop_reason}: " + "; ".join(f"{m}: {r}" for m, r in route.skipped)
                attempt.state, attempt.failure_class, attempt.failure = "FAILED", "provider_error", reason
                attempt.decision, attempt.finished_at = "fail", utcnow()
                transition(s, ph, PhaseState.FAILED, feedback=reason)
                emit(s, run.id, "phase.failed", phase_key=ph.key, attempt_id=attempt.id, reason=reason)
                transition(s, ph.tier, TierState.BLOCKED)
                _end_run(s, run, RunState.DONE_FAILED_INFRASTRUCTURE, reason)
                return ctx.finish(s, [], outcome="failed")
            model = route.model
            emit(s, run.id, "attempt.started", phase_key=ph.key, attempt_id=attempt.id, number=attempt.number, model=model)
            fresh = True
        elif ph.state == PhaseState.EXECUTING and current is not None and current.decision is None and current.failure_class is None:
            if external and current.submission is None:
                return ctx.finish(s, [])  # still waiting for the external Builder
            attempt = current  # redelivery (or the external Builder's edits): the same attempt again
            model = attempt.model or services.model_for("builder", ph.spec["complexity"])
            emit(s, run.id, "attempt.resumed", phase_key=ph.key, attempt_id=attempt.id, number=attempt.number)
            fresh = False
        else:
            return []
        guidance, rule_ids, hint_ids, guidance_tokens = prompt_guidance(s, ph, services.config.strategy.learning, count=fresh)
        repo, head, spec, feedback = Path(run.project.repo_path), attempt.parent_commit, dict(ph.spec), ph.feedback
        budget, run_id, epoch, index = dict(ph.budget), run.id, run.commit_epoch, ph.index
        attempt_id, number = attempt.id, attempt.number
        submission = str((attempt.submission or {}).get("edits", ""))
        skipped_models = {x["model"] for x in (attempt.routing or {}).get("skipped", [])}
        worktree_path = _worktree_path(services, run)
    assert head is not None
    tree = TreeReader(repo, head)  # the parent's files, each read once for context, edits and governance
    if external:
        outcome = check_submission(submission, tree.read, _policy(spec, tree))
        used = ["external"]
        return _commit_candidate(services, ctx, phase_id, attempt_id, outcome, used, repo, worktree_path, tree, spec,
                                 run_id, number, epoch, index)
    ctx_ = _context(services, tree, spec, feedback)
    ctx_ = dataclasses.replace(ctx_, rules_text=guidance)
    system, user = render_builder_prompt(services.prompts, ctx_)
    scope = CallScope(run_id, phase_id, attempt_id, "builder", model, int(budget["token_cap"]), tuple(rule_ids), tuple(hint_ids), guidance_tokens)
    chain = fallback_chain(model, services.config.models.roles["builder"].fallback, skipped_models, bool(budget.get("high_risk")))
    call, used = fallback_call(services, scope, chain)
    try:
        outcome = run_builder(
            lib=services.prompts,
            system=system,
            user=user,
            call=call,
            read=tree.read,
            policy=_policy(spec, tree),
            max_tokens=int(budget["builder_max_tokens"]),
            fix_rounds=int(budget["edit_fix_rounds"]),
        )
    except BudgetExceeded as exc:
        return _budget_stop(services, ctx, phase_id, attempt_id, exc)
    except ProviderUnavailable as exc:
        if budget.get("high_risk"):
            _fail_run_now(services, ctx, run_id, RunState.DONE_FAILED_INFRASTRUCTURE,
                          f"phase {spec['id']} is high-risk ({spec['category']}): {model} is unavailable ({exc}); "
                          "high-risk work never falls back to a weaker model")
            return []
        return _attempt_failed(services, ctx, attempt_id, "provider_error", str(exc), used=used)
    except ProviderError as exc:
        return _attempt_failed(services, ctx, attempt_id, "provider_error", str(exc), used=used)
    return _commit_candidate(services, ctx, phase_id, attempt_id, outcome, used, repo, worktree_path, tree, spec,
                             run_id, number, epoch, index)


def _await_external_builder(s: Session, run: Run, ph: Phase) -> list[Step]:
    """A new attempt that waits for edits at ``POST /runs/<id>/phases/<phase>/builder_result``."""
    transition(s, ph, PhaseState.EXECUTING, attempts_used=ph.attempts_used + 1)
    routing = routing_record(RouteDecision("external", None), role="builder", wanted="external", level=ph.spec["complexity"],
                             why="the plan names an external Builder for this phase")
    attempt = Attempt(phase_id=ph.id, run_id=run.id, number=ph.attempts_used, model="external", parent_commit=run.head_commit,
                      state=AWAITING, routing=routing)
    s.add(attempt)
    s.flush()
    ph.current_attempt_id = attempt.id
    emit(s, run.id, "attempt.started", phase_key=ph.key, attempt_id=attempt.id, number=attempt.number, model="external")
    emit(s, run.id, "phase.awaiting_builder", phase_key=ph.key, attempt_id=attempt.id, number=attempt.number,
         url=f"/runs/{run.id}/phases/{ph.key}/builder_result", feedback=(ph.feedback or "")[:2000])
    return []


def _commit_candidate(services: Services, ctx: StepContext, phase_id: int, attempt_id: int, outcome: BuildOutcome,
                      used: list[str], repo: Path, worktree_path: Path, tree: TreeReader, spec: dict[str, Any], run_id: str,
                      number: int, epoch: int, index: int) -> list[Step]:
    """Governed edits → the deterministic candidate commit (kept under the run's refs) → the gate."""
    rounds = [r.__dict__ for r in outcome.rounds]
    if not outcome.ok or outcome.changes is None:
        return _attempt_failed(services, ctx, attempt_id, outcome.failure_class or "edit_invalid", outcome.failure or "", rounds, used)
    trailers = {"Autopack-Run": run_id, "Autopack-Phase": spec["id"], "Autopack-Attempt": str(number)}
    goal_line = spec["goal"].strip().splitlines()[0][:72]
    try:
        wt.ensure_worktree(repo, worktree_path, tree.commit)  # clean at the parent (recreated if it cannot be)
        sha = wt.commit_candidate(
            worktree_path, tree.commit, outcome.changes, message=f"{spec['id']}: {goal_line}", trailers=trailers,
            timestamp=epoch + 60 * index, parent_entries=tree.entries(), reset_first=False,
        )
        wt.keep_ref(repo, f"refs/autopack/{run_id}/{spec['id']}/{number}", sha, stale_lock_s=STALE_REF_LOCK_S)
    except UnsafePath as exc:  # the edits name a path git will not record: the edit's fault
        return _attempt_failed(services, ctx, attempt_id, "edit_refused", f"apply failed: {exc}", rounds, used)
    except GitError as exc:
        # git itself failed (a lock another git holds, the worktree): not the edit's fault. Classed as
        # infrastructure it uses no attempt (the health budget bounds it) and teaches nothing.
        return _attempt_failed(services, ctx, attempt_id, "infrastructure", f"git failed while committing the candidate: {exc}", rounds, used)
    crash_point("after_commit")
    with session_scope(services.db_url) as s:
        ctx.guard(s)
        a = s.get(Attempt, attempt_id)
        ph = s.get(Phase, phase_id)
        assert a is not None and ph is not None
        if is_terminal_run(ph.run.state) or ph.state != PhaseState.EXECUTING:
            return []
        a.state = "BUILT"
        _record_models(a, used)
        a.candidate_commit = sha
        a.edits = sorted(outcome.changes)
        a.edit_rounds = rounds
        a.refusals = [list(r) for r in outcome.refusals]
        transition(s, ph, PhaseState.GATE)
        emit(s, ph.run_id, "attempt.built", phase_key=ph.key, attempt_id=a.id, commit=sha, files=a.edits, rounds=len(rounds))
        return ctx.finish(s, [("probe", attempt_id)])


def take_back_ref_move(repo: Path, branch: str, head: str | None, moved_to: str | None) -> None:
    """The run ended (a cancel, its maximum runtime, a decide step given up) between a decide step
    moving the integration branch (to the accepted candidate, or to the base for the Doctor's
    ``rollback_run``) and recording it: the
    branch is moved back to the run's head, so it holds exactly the commits of the phases recorded
    complete. Only from the candidate (compare-and-set; a branch elsewhere is left as it is); a
    failure is logged, the run being over either way."""
    if head is None or moved_to is None:
        return
    try:
        if Git(repo).rev_parse(f"refs/heads/{branch}") != moved_to:
            return  # the move never happened (or the branch was moved since): nothing to take back
        wt.update_ref_cas(repo, f"refs/heads/{branch}", head, moved_to, stale_lock_s=STALE_REF_LOCK_S)
        log.warning("run ended before %s was recorded on %s: the branch is back at %s", moved_to[:10], branch, head[:10])
    except GitError as exc:
        log.warning("run ended before %s was recorded on %s, and the branch could not be moved back: %s", moved_to[:10], branch, exc)


def _last_model_of_category(s: Session, run: Run, ph: Phase) -> str | None:
    """The model that completed the latest earlier phase of the same category in this run.

    Reads the earlier complete phases' ids and specs (no ORM objects, no attempts) and the accepted
    attempt of the latest one that matches: loading every phase of the run with its attempts made
    each build slower the longer the plan."""
    earlier = s.execute(
        select(Phase.id, Phase.spec)
        .where(Phase.run_id == run.id, Phase.index < ph.index, Phase.state == PhaseState.COMPLETE)
        .order_by(Phase.index.desc())
    )
    category = ph.spec.get("category")
    match = next((pid for pid, spec in earlier if spec.get("category") == category), None)
    if match is None:
        return None
    return s.scalar(select(Attempt.model).where(Attempt.phase_id == match, Attempt.decision == "complete")
                    .order_by(Attempt.number.desc()).limit(1))


def _record_models(a: Attempt, used: list[str]) -> None:
    """The attempt's model is the one that answered last; the ones it fell back from are kept."""
    a.model = used[-1]
    if len(used) > 1:
        a.routing = {**(a.routing or {}), "model": used[-1], "fallbacks": used[1:]}


def _attempt_failed(
    services: Services, ctx: StepContext, attempt_id: int, failure_class: str, failure: str, rounds: list[dict[str, Any]] | None = None,
    used: list[str] | None = None,
) -> list[Step]:
    with session_scope(services.db_url) as s:
        ctx.guard(s)
        a = s.get(Attempt, attempt_id)
        assert a is not None
        if a.decision is not None or is_terminal_run(a.phase.run.state):
            return []  # decided already, or the run ended (cancelled) while this attempt was built
        a.state = "FAILED"
        if used:
            _record_models(a, used)
        a.failure_class = failure_class
        a.failure = failure
        a.failure_signature = stable_output(failure.strip().splitlines()[0] if failure.strip() else failure_class)
        a.failure_key = failure_key(failure_class, a.failure_signature)
        if rounds is not None:
            a.edit_rounds = rounds
            a.refusals = [r for rd in rounds for r in rd.get("refusals", [])]
        emit(s, a.run_id, "attempt.build_failed", phase_key=a.phase.key, attempt_id=a.id, failure_class=failure_class, failure=failure[:2000])
        return ctx.finish(s, [("decide", attempt_id)])


def _budget_stop(services: Services, ctx: StepContext, phase_id: int, attempt_id: int, exc: BudgetExceeded) -> list[Step]:
    state = RunState.DONE_FAILED_TOKEN_CAP_EXCEEDED if exc.kind == "tokens" else RunState.DONE_FAILED_BUDGET_EXHAUSTED
    with session_scope(services.db_url) as s:
        ctx.guard(s)
        a = s.get(Attempt, attempt_id)
        ph = s.get(Phase, phase_id)
        assert a is not None and ph is not None
        a.state = "FAILED"
        a.failure_class = "budget"
        a.failure = str(exc)
        a.decision = "fail"
        a.finished_at = utcnow()
        run = ph.run
        if not is_terminal_run(run.state):
            if ph.state not in (PhaseState.COMPLETE, PhaseState.FAILED, PhaseState.SKIPPED):
                transition(s, ph, PhaseState.FAILED)
            emit(s, run.id, "phase.failed", phase_key=ph.key, attempt_id=a.id, reason=str(exc))
            if ph.tier.state == TierState.RUNNING:
                transition(s, ph.tier, TierState.BLOCKED)
            _end_run(s, run, state, f"phase {ph.key}: {exc}")
        return ctx.finish(s, [], outcome="budget")


def probe(services: Services, attempt_id: int, ctx: StepContext) -> list[Step]:
    """The test gate: the candidate's tests in the sandbox against the T0 baseline. A newly failing
    test is re-run once; a quarantined one (known flaky in the project) up to ``quarantine_reruns``
    more times while it keeps failing, as long as the ci queue's time limit leaves room for a run."""
    started = time.monotonic()
    with session_scope(services.db_url) as s:
        a = s.get(Attempt, attempt_id)
        if a is None or a.test_result is not None or a.candidate_commit is None:
            return []
        ph, run = a.phase, a.phase.run
        if is_terminal_run(run.state) or ph.state != PhaseState.GATE:
            return []
        repo, sha, strategy, spec = Path(run.project.repo_path), a.candidate_commit, dict(run.strategy), dict(ph.spec)
        baseline = (run.baseline or {}).get("outcomes", {})
        ci_profile, audit_mode, project_id = ph.budget["ci_profile"], ph.budget["audit"], run.project_id
    limits = _limits(strategy)
    quarantined: frozenset[str] = frozenset()
    extra: list[dict[str, str]] = []
    try:
        result = _run_tests(services, repo, sha, _test_argv(services, strategy), limits)
        rerun_ids = gatelib.tests_to_rerun(baseline, result["outcomes"])
        rerun = None
        if rerun_ids and not result["killed"]:
            rr = _run_tests(services, repo, sha, _test_argv(services, strategy, rerun_ids), limits)
            rerun = rr["outcomes"]
            result["rerun"] = {"tests": rerun_ids, "outcomes": rerun}
            quarantined = _quarantined(services, project_id)
            for _ in range(_quarantine_reruns(services, strategy)):
                again = gatelib.quarantined_to_rerun(quarantined, rerun_ids, [rerun, *extra])
                if not again or rr["killed"]:  # a re-run that hung or crashed: no more of them
                    break
                if time.monotonic() - started + limits.timeout_s > services.settings.ci_time_limit - CI_LIMIT_MARGIN_S:
                    result["rerun"]["extra_skipped"] = "no room left under the ci queue's time limit"
                    break
                rr = _run_tests(services, repo, sha, _test_argv(services, strategy, again), limits)
                extra.append(rr["outcomes"])
                result["rerun"].setdefault("extra", []).append({"tests": again, "outcomes": rr["outcomes"], "killed": rr["killed"]})
    except SandboxUnavailable as exc:
        _fail_run_now(services, ctx, a.run_id, RunState.DONE_FAILED_SETUP, str(exc))
        return []
    entries = Git(repo).list_entries(sha)
    missing = tuple(d for d in spec.get("deliverables", []) if d not in entries)
    verdict = gatelib.evaluate(
        gatelib.GateInput(
            baseline=baseline,
            candidate=result["outcomes"],
            rerun=rerun,
            acceptance=tuple(spec.get("acceptance_tests", [])),
            missing_deliverables=missing,
            killed=result["killed"],
            quarantined=quarantined,
            extra_reruns=tuple(extra),
        )
    )
    # Strict CI blocks on every flaky test, quarantined ones too: a project's record cannot tell a
    # test that flakes anyway from one this candidate made flaky (a high-risk change may do that).
    passed = verdict.passed and not (ci_profile == "strict" and verdict.flaky)
    reason = verdict.reason if passed == verdict.passed else f"strict CI: flaky tests block ({', '.join(verdict.flaky)})"
    gate = {
        "passed": passed,
        "reason": reason,
        "regressions": list(verdict.regressions),
        "flaky": list(verdict.flaky),
        "known_flaky": list(verdict.known_flaky),
        "acceptance_failed": list(verdict.acceptance_failed),
        "acceptance_missing": list(verdict.acceptance_missing),
        "missing_deliverables": list(verdict.missing_deliverables),
        "ci_profile": ci_profile,
        # Only flakiness failed it (strict CI): nothing a later attempt's change fixes, so no lesson.
        "blocked_as_flaky": verdict.passed and not passed,
    }
    with session_scope(services.db_url) as s:
        ctx.guard(s)
        a = s.get(Attempt, attempt_id)
        assert a is not None
        if a.test_result is not None:
            return []
        if is_terminal_run(a.phase.run.state) or a.phase.state != PhaseState.GATE:
            return []  # the run ended (cancelled) while its tests ran
        result["outcomes_count"] = len(result["outcomes"])
        a.test_result = result
        a.gate = gate
        a.state = "TESTED"
        if not passed:
            a.failure_class = _gate_failure_class(gate, result, verdict.regressions)
            failing = [*verdict.regressions, *verdict.acceptance_failed]
            signature = "\n".join(sorted({result["messages"].get(t, "") for t in failing} - {""})) or reason
            a.failure_signature = signature
            a.failure_key = failure_key(a.failure_class, signature)
            a.failure = reason + ("\n\nTest output (tail):\n" + result["output_tail"][-2500:] if result["output_tail"] else "")
        emit(s, a.run_id, "attempt.tested", phase_key=a.phase.key, attempt_id=a.id, passed=passed, summary=result["summary"], reason=reason)
        return ctx.finish(s, [("audit" if passed and audit_mode != "off" else "decide", attempt_id)])


def _gate_failure_class(gate: dict[str, Any], result: dict[str, Any], regressions: tuple[str, ...]) -> str:
    """The failure class a failed gate records. A test run killed from outside (SIGTERM, SIGHUP…)
    is infrastructure, as the classifier (and so the Doctor and the health budget) sees it: it uses
    no attempt. Otherwise (a run without a readable report included: see classify_failure) a
    regression or a test failure (the classifier refines timeouts and resource limits)."""
    facts = AttemptFacts(gate={**gate, "killed": result.get("killed"), "error": result.get("error")})
    try:
        if classify_failure(facts) is FailureClass.INFRASTRUCTURE:
            return "infrastructure"
    except NotAFailure:  # pragma: no cover - the gate failed
        pass
    return "regression" if regressions else "test_failure"


# Extra re-runs of quarantined tests stop where one more full test run could reach the ci queue's
# hard time limit (its soft limit is 30 s below it).
CI_LIMIT_MARGIN_S = 60


def _quarantine_reruns(services: Services, strategy: dict[str, Any]) -> int:
    """The extra re-runs a quarantined test gets, from the run's strategy snapshot like the gate's
    other settings (the live config's for a run snapshotted before the snapshot carried them)."""
    live = services.config.strategy.flakiness.quarantine_reruns
    return int((strategy.get("flakiness") or {}).get("quarantine_reruns", live))


def _quarantined(services: Services, project_id: int) -> frozenset[str]:
    """The project's quarantined tests (read only when a test needed a re-run)."""
    with session_scope(services.db_url) as s:
        return quarantined_tests(s, project_id)


def audit(services: Services, attempt_id: int, ctx: StepContext) -> list[Step]:
    """One Auditor reviews the diff and the gate result and returns a typed verdict."""
    with session_scope(services.db_url) as s:
        a = s.get(Attempt, attempt_id)
        if a is None or a.audit is not None or a.candidate_commit is None or a.parent_commit is None:
            return []
        ph, run = a.phase, a.phase.run
        if is_terminal_run(run.state) or ph.state != PhaseState.GATE:
            return []
        repo, spec, gate = Path(run.project.repo_path), dict(ph.spec), dict(a.gate or {})
        parent, sha, run_id, phase_id = a.parent_commit, a.candidate_commit, run.id, ph.id
        model = _auditor_model(services, ph, a, spec["complexity"])
        summary = (a.test_result or {}).get("summary", "")
        rules_text, rule_ids, rules_tokens = auditor_guidance(s, ph, services.config.strategy.learning)
        dual = bool(ph.budget.get("dual_audit"))
        second = _auditor_model(services, ph, a, spec["complexity"], "second_auditor") if dual else ""
        skipped: list[tuple[str, str]] = []
        if not dual:
            # A single audit moves past a provider near its quota or out; a dual audit keeps its two
            # providers (and a high-risk review never goes to a weaker model).
            route = choose_model(s, services.config.models, services.config.strategy.run.routing, role="auditor",
                                 complexity=spec["complexity"], category=spec["category"], high_risk=False,
                                 chain=[model, *services.config.models.roles["auditor"].fallback])
            if route.model is not None and route.model != model:
                skipped, model = route.skipped, route.model  # recorded on the audit
    diff = wt.diff(repo, parent, sha)
    gate_text = f"{'passed' if gate.get('passed') else 'failed'}: {gate.get('reason', '')}; tests: {summary}"
    system, user = render_auditor_prompt(
        services.prompts, phase_id=spec["id"], goal=spec["goal"], category=spec["category"],
        deliverables=spec.get("deliverables", []), gate=gate_text, diff=diff, rules_text=rules_text,
    )
    def review(role: str, model: str) -> dict[str, Any]:
        scope = CallScope(run_id, phase_id, attempt_id, role, model, None, tuple(rule_ids), (), rules_tokens)
        # A single audit moves along the auditor's chain on an outage; a dual audit keeps its providers.
        chain = fallback_chain(model, services.config.models.roles["auditor"].fallback, (m for m, _ in skipped), dual)
        call, used = fallback_call(services, scope, chain)
        try:
            resp = call(system, [Message(role="user", content=user)], 1500)
            verdict = parse_verdict(resp.text, truncated=resp.incomplete, stop_reason=resp.stop_reason)
            out = {**verdict.model_dump(), "approved": verdict.approved}
        except VerdictError as exc:
            out = {"verdict": "invalid", "approved": None, "summary": str(exc), "issues": []}
        except ProviderError as exc:
            out = {"verdict": "error", "approved": None, "summary": str(exc), "issues": []}
        model = used[-1]
        return {"model": model, "provider": services.config.models.provider_of(model), **out,
                **({"fallbacks": used[1:]} if len(used) > 1 else {})}

    try:
        record = review("auditor", model)
        if skipped:
            record["skipped"] = [{"model": m, "reason": r} for m, r in skipped]
        if dual:
            if services.config.models.provider_of(second) == services.config.models.provider_of(model):
                raise ConfigError(f"dual audit needs two providers: {model} and {second} are both {services.config.models.provider_of(model)}")
            records = [record, review("second_auditor", second)]
            # Only a real split goes to the judge: a reviewer whose provider failed or whose answer
            # was no verdict makes the whole audit "error" (re-audited, no attempt used) or "invalid".
            judge = _judge(services, run_id, phase_id, attempt_id, spec["complexity"], user, records) if needs_judge(records) else None
            record = combine(records, judge)
    except BudgetExceeded as exc:
        return _budget_stop(services, ctx, phase_id, attempt_id, exc)
    with session_scope(services.db_url) as s:
        ctx.guard(s)
        a = s.get(Attempt, attempt_id)
        assert a is not None
        if a.audit is not None:
            return []
        if is_terminal_run(a.phase.run.state) or a.phase.state != PhaseState.GATE:
            return []  # the run ended (cancelled) while the auditors were reviewing
        a.audit = record
        if a.phase.budget["audit"] == "required":
            _record_audit_failure(a, record)
        emit(s, a.run_id, "attempt.audited", phase_key=a.phase.key, attempt_id=a.id, verdict=record["verdict"], summary=record["summary"])
        return ctx.finish(s, [("decide", attempt_id)])


def _record_audit_failure(a: Attempt, record: dict[str, Any]) -> None:
    """Record on ``a`` how its required audit failed, if it did. No auditor reached is a provider
    error (no attempt used). Anything else without an approval is an auditor rejection, counted like
    every other failure (attempts, escalation, health budget); a rejection on its merits carries the
    auditors' objections as its failure and signature, so the Doctor, the re-plan rule and the
    planner see them. An answer that was no verdict says nothing about the change: it gets no
    signature (never "alike" another failure) and no failure key (no lesson)."""
    if record["verdict"] == "error":
        # No auditor could be reached: not the change's fault, so no attempt is used up.
        a.failure_class, a.failure = "provider_error", f"auditor unavailable: {record['summary']}"[:4000]
        return
    if record.get("approved") is True:
        return
    text = _audit_text(record)
    a.failure_class = "auditor_rejection"
    a.failure = f"auditor rejected: {text or 'no approval'}"[:4000]
    if record["verdict"] in ("approve", "reject"):
        a.failure_signature = stable_output(text)[:2000]
        a.failure_key = failure_key("auditor_rejection", a.failure_signature)
    else:
        a.failure_signature, a.failure_key = "", None


def _review_of(audit: dict[str, Any], index: int) -> dict[str, Any]:
    """The review of the first (0) or the second (1) auditor in a single or a dual audit record."""
    if audit.get("mode") == "dual":
        verdicts = audit.get("verdicts") or []
        return verdicts[index] if index < len(verdicts) else {}
    return audit if index == 0 else {}


def _auditor_model(services: Services, ph: Phase, current: Attempt, complexity: str, role: str = "auditor") -> str:
    """The model of ``role`` (auditor or second_auditor) for ``current``: along the level's
    escalation chain after that auditor's answers on the phase's earlier attempts were repeatedly no
    usable verdict."""
    index = 0 if role == "auditor" else 1
    reviews = [_review_of(x.audit or {}, index) for x in sorted(ph.attempts, key=lambda x: x.number) if x.id != current.id]
    kinds = ["unusable" if r.get("verdict") in NO_VERDICT else "verdict" for r in reviews if r]
    same = trailing_same_kind(kinds) if kinds and kinds[-1] == "unusable" else 0
    model = services.model_for(role, complexity)
    return model_from_chain(services.config.models.roles[role].escalation_chain(complexity, model), same,
                            services.config.strategy.run.model_after_failures)


def _judge(services: Services, run_id: str, phase_id: int, attempt_id: int, complexity: str, review: str,
           records: list[dict[str, Any]]) -> dict[str, Any]:
    """The judge's decision between two disagreeing auditors."""
    import json as _json

    model = services.model_for("judge", complexity)
    verdicts = "\n".join(f"- {r['model']} ({r['provider']}): " + _json.dumps({k: r.get(k) for k in ("verdict", "summary", "issues")})
                          for r in records)
    user = services.prompts.render("judge", review=review, verdicts=verdicts)
    call = make_call(services, CallScope(run_id, phase_id, attempt_id, "judge", model, None))
    try:
        resp = call(services.prompts.render("judge_system"), [Message(role="user", content=user)], 800)
        decision = parse_judge(resp.text, truncated=resp.incomplete, stop_reason=resp.stop_reason)
        return {"model": model, "verdict": decision.verdict, "reasoning": decision.reasoning}
    except VerdictError as exc:
        return {"model": model, "verdict": "invalid", "reasoning": str(exc)}
    except ProviderError as exc:
        return {"model": model, "verdict": "error", "reasoning": str(exc)}


def decide_attempt(services: Services, attempt_id: int, ctx: StepContext) -> list[Step]:
    """Complete the phase (move the branch by compare-and-set), or classify the failure and act on
    it: retry with feedback (and the Doctor's hint), re-plan, skip the phase, fail it, or roll the
    run back. Every decision is recorded on the attempt."""
    with session_scope(services.db_url) as s:
        a = s.get(Attempt, attempt_id)
        if a is None or a.decision is not None:
            return []
        ph, run = a.phase, a.phase.run
        if is_terminal_run(run.state) or ph.state not in (PhaseState.EXECUTING, PhaseState.GATE):
            return []
        gate, aud = a.gate or {}, a.audit or {}
        # One count per failure class over the run's attempts (not every attempt row, at every decide).
        by_class = s.execute(select(Attempt.failure_class, func.count()).where(Attempt.run_id == run.id, Attempt.failure_class.is_not(None))
                             .group_by(Attempt.failure_class)).all()
        health = health_counts([cls for cls, n in by_class for _ in range(n)])
        rb = run.strategy["run"]
        spent = health_exceeded(health, int(rb.get("max_provider_errors", 6)), int(rb.get("max_edit_failures", 12)),
                                int(rb.get("max_total_failures", 20)))
        if spent is not None:
            a.decision, a.finished_at = "fail", utcnow()
            transition(s, ph, PhaseState.FAILED, feedback=spent)
            emit(s, run.id, "phase.failed", phase_key=ph.key, attempt_id=a.id, reason=f"health budget: {spent}")
            transition(s, ph.tier, TierState.BLOCKED)
            _end_run(s, run, RunState.DONE_FAILED_HEALTH_BUDGET, f"health budget spent: {spent}")
            return ctx.finish(s, [])
        burned = sum(1 for x in ph.attempts if x.failure_class not in NOT_BURNING)
        outcome = AttemptOutcome(
            built=a.candidate_commit is not None and a.failure_class not in ("edit_invalid", "edit_refused", "truncated", "provider_error"),
            build_failure=a.failure,
            failure_class=a.failure_class,
            gate_passed=gate.get("passed") if gate else None,
            gate_reason=a.failure or gate.get("reason", ""),
            audit_mode=ph.budget["audit"],
            audit_approved=aud.get("approved") if aud else None,
            audit_summary=_audit_text(aud),
            attempts_used=burned,
            max_attempts=ph.max_attempts,
        )
        decision = decide(outcome)
        cls = classify_attempt(a, ph.budget["audit"]) if decision.action != "complete" else None
        diagnosis = a.doctor  # recorded by the diagnose step (or a redelivered decide's first pass)
        if decision.action == "complete" and a.lesson is None and _wants_lesson(services, ph, a):
            # The lesson model's call runs on the agents queue too; decide comes back to complete.
            ctx.guard(s)
            return ctx.finish(s, [("diagnose", attempt_id)])
        lesson = a.lesson or None
        if decision.action == "retry" and diagnosis is None and cls is not None:
            args = _consult_args(s, services, ph, a, cls)
            diagnosis = consult(args.failures, cfg=_doctor_config(services, run), already_replanned=args.already_replanned,
                                replan_reason=args.replan_reason, phase_calls=args.phase_calls, run_calls=args.run_calls, ask=None)
            if diagnosis is None or diagnosis["action"] == "replan":
                # The Doctor's and the planner's model calls run on the agents queue; decide comes back.
                ctx.guard(s)
                return ctx.finish(s, [("diagnose", attempt_id)])
        repo, branch, head, sha, base = Path(run.project.repo_path), run.branch, run.head_commit, a.candidate_commit, run.base_commit
    if decision.action == "fail" and diagnosis is None:
        diagnosis = no_attempts_left(cls.value if cls else a.failure_class, decision.reason)
    action = diagnosis["action"] if decision.action == "retry" and diagnosis else decision.action
    replanned = None
    if action == "replan" and diagnosis and diagnosis.get("plan"):
        plan = diagnosis["plan"]
        replanned = (plan["goal"], plan["approach"], diagnosis["reason"], plan["model"])
    if decision.action == "complete" or action == "rollback_run":
        target = sha if decision.action == "complete" else base
        assert target is not None and head is not None
        try:
            wt.update_ref_cas(repo, f"refs/heads/{branch}", target, head, stale_lock_s=STALE_REF_LOCK_S)
        except GitError as exc:
            # A worker whose lease was taken over finds the ref moved on: it stops here, silently.
            _fail_run_now(services, ctx, a.run_id, RunState.DONE_FAILED_INFRASTRUCTURE, f"integration branch moved unexpectedly: {exc}")
            return []
        crash_point("after_ref_moved")
    with session_scope(services.db_url) as s:
        ctx.guard(s)
        a = s.get(Attempt, attempt_id)
        assert a is not None
        ph, run = a.phase, a.phase.run
        if a.decision is not None or is_terminal_run(run.state):
            if a.decision is None and decision.action == "complete":
                take_back_ref_move(repo, branch, head, sha)
            elif a.decision is None and action == "rollback_run":
                take_back_ref_move(repo, branch, head, base)  # the run keeps its completed phases: so does its branch
            return []
        a.decision = decision.action if action in ("retry_with_fix", "replan") else action
        a.finished_at = utcnow()
        if diagnosis is not None:
            a.classification, a.doctor = diagnosis["class"], diagnosis
            emit(s, run.id, "attempt.diagnosed", phase_key=ph.key, attempt_id=a.id, failure_class=diagnosis["class"],
                 action=diagnosis["action"], source=diagnosis["source"], reason=diagnosis["reason"][:500])
        issues.record(s, a, accepted=action not in ("retry_with_fix", "replan"))
        if decision.action == "complete":
            a.state = "ACCEPTED"
            run.head_commit = sha
            transition(s, ph, PhaseState.COMPLETE, commit_sha=sha, feedback=None)
            emit(s, run.id, "phase.complete", phase_key=ph.key, attempt_id=a.id, commit=sha, reason=decision.reason)
            # Learn before the next phase is built, so what it is given does not depend on timing.
            hint = record_hint(s, ph, lesson)
            if hint is not None:
                emit(s, run.id, "hint.recorded", phase_key=ph.key, hint_id=hint.id, key=hint.key)
                promote(s, run.project_id, hint.key, services.config.strategy.learning, run_id=run.id)
            return ctx.finish(s, _start_next_phase(s, run, ph.tier))
        if a.state not in ("FAILED",):
            a.state = "REJECTED"
        if action in ("retry_with_fix", "replan"):
            feedback = decision.feedback
            if replanned is not None:
                new_goal, approach, why, model = replanned
                ph.plan_history = [*(ph.plan_history or []), {"goal": ph.spec["goal"], "description": ph.spec.get("description", ""),
                                                             "replaced_after_attempt": a.number, "reason": why, "model": model}]
                ph.spec = {**ph.spec, "goal": new_goal, "description": approach}
                ph.replans += 1
                emit(s, run.id, "phase.replanned", phase_key=ph.key, attempt_id=a.id, reason=why, goal=new_goal)
            elif diagnosis and diagnosis["source"] == "model" and diagnosis["hint"]:
                feedback += f"\n\nThe Doctor's advice: {diagnosis['hint']}"
            transition(s, ph, PhaseState.RETRY, feedback=feedback)
            emit(s, run.id, "phase.retry", phase_key=ph.key, attempt_id=a.id, reason=decision.reason)
            if replanned is None and _auditor_was_out(a):
                return ctx.finish(s, [("audit", _reaudit(s, run, ph, a))])
            return ctx.finish(s, [("build", ph.id)])
        if action == "skip_phase":
            transition(s, ph, PhaseState.SKIPPED, feedback=None)
            emit(s, run.id, "phase.skipped", phase_key=ph.key, attempt_id=a.id, reason=diagnosis["reason"] if diagnosis else "")
            return ctx.finish(s, _start_next_phase(s, run, ph.tier))
        transition(s, ph, PhaseState.FAILED, feedback=decision.feedback)
        if action == "fail":
            reason = f"phase {ph.key} failed: {decision.reason}"
            emit(s, run.id, "phase.failed", phase_key=ph.key, attempt_id=a.id, reason=decision.reason)
        else:
            reason = f"phase {ph.key}: the Doctor chose {action}: {diagnosis['reason'] if diagnosis else ''}"
            emit(s, run.id, "phase.failed", phase_key=ph.key, attempt_id=a.id, reason=reason)
        transition(s, ph.tier, TierState.BLOCKED)
        emit(s, run.id, "tier.blocked", tier=ph.tier.key)
        if action == "rollback_run":
            run.head_commit = run.base_commit
            emit(s, run.id, "run.rolled_back", branch=run.branch, commit=run.base_commit)
            _end_run(s, run, RunState.DONE_FAILED_ROLLED_BACK, reason)
        else:
            _end_run(s, run, RunState.DONE_FAILED_TIER_BLOCKED, reason)
        return ctx.finish(s, [])


def _auditor_was_out(a: Attempt) -> bool:
    """Whether ``a`` failed only because no auditor of its required audit answered: its candidate
    was built and passed the gate, so it needs another review, not another Builder call."""
    return (a.failure_class == "provider_error" and (a.audit or {}).get("verdict") == "error"
            and a.candidate_commit is not None and bool((a.gate or {}).get("passed")))


def _reaudit(s: Session, run: Run, ph: Phase, a: Attempt) -> int:
    """A new attempt holding ``a``'s candidate, already built and tested, for the audit step. It uses up
    no attempt (``a`` failed as a provider error) and pays for no second build; returns its id."""
    transition(s, ph, PhaseState.EXECUTING, attempts_used=ph.attempts_used + 1)
    again = Attempt(phase_id=ph.id, run_id=run.id, number=ph.attempts_used, model=a.model, parent_commit=a.parent_commit,
                    candidate_commit=a.candidate_commit, edits=a.edits, refusals=a.refusals, edit_rounds=a.edit_rounds,
                    test_result=a.test_result, gate=a.gate, routing=a.routing, submission=a.submission, state="TESTED")
    s.add(again)
    s.flush()
    ph.current_attempt_id = again.id
    transition(s, ph, PhaseState.GATE)
    emit(s, run.id, "attempt.started", phase_key=ph.key, attempt_id=again.id, number=again.number, model=again.model,
         reaudit_of=a.id)
    return again.id


def _doctor_config(services: Services, run: Run) -> DoctorConfig:
    """The Doctor's settings the run was submitted with (the live ones for a run from before they
    were kept in its strategy)."""
    kept = run.strategy["run"].get("doctor")
    return DoctorConfig.model_validate(kept) if kept is not None else services.config.strategy.run.doctor


@dataclass
class _ConsultArgs:
    failures: list[Any]
    phase_calls: int
    run_calls: int
    already_replanned: bool
    replan_reason: str | None
    burned: int


def _consult_args(s: Session, services: Services, ph: Phase, current: Attempt, cls: Any) -> _ConsultArgs:
    """What the Doctor needs, read in a transaction: the phase's failures, the Doctor's calls so far
    and whether the re-plan rule (alike failures, a fatal type) fires."""
    # The run's own settings (its strategy was fixed when it was submitted); a run from before they
    # were kept in it has the live ones.
    live, kept = services.config.strategy.run, ph.run.strategy["run"]
    similarity = float(kept.get("replan_similarity", live.replan_similarity))
    max_replans = int(kept.get("max_replans", live.max_replans))
    failures = history([x for x in ph.attempts if x.id != current.id], ph.budget["audit"])
    failures.append(FailureRecord(cls, failure_message(current)))
    replan_failures = [Failure(x.cls.value, x.message) for x in failures if x.cls.value not in NOT_BURNING]
    go, why = should_replan_now(replan_failures, ph.replans, similarity, max_replans)
    doctor_calls = select(func.count(ModelCall.id)).where(ModelCall.role == "doctor")
    return _ConsultArgs(
        failures=failures,
        phase_calls=int(s.scalar(doctor_calls.where(ModelCall.phase_id == ph.id)) or 0),
        run_calls=int(s.scalar(doctor_calls.where(ModelCall.run_id == ph.run_id)) or 0),
        already_replanned=ph.replans >= max_replans,
        replan_reason=why if go else None,
        burned=sum(1 for x in ph.attempts if x.failure_class not in NOT_BURNING),
    )


def diagnose(services: Services, attempt_id: int, ctx: StepContext) -> list[Step]:
    """On the agents queue, the model calls a decision needs, recorded on the attempt: for a failed
    attempt the Doctor's decision (cheap model, then the strong one when unsure) or the planner's
    new plan; for a passing one that fixed earlier failures, the lesson model's lesson. Then decide
    again, which acts on it."""
    with session_scope(services.db_url) as s:
        a = s.get(Attempt, attempt_id)
        if a is None or a.decision is not None:
            return []
        ph, run = a.phase, a.phase.run
        if is_terminal_run(run.state):
            return []
        cls = classify_attempt(a, ph.budget["audit"])
        if cls is None:
            # A passing attempt that fixed earlier failures: the lesson model writes the hint's lesson.
            if a.lesson is not None or not _wants_lesson(services, ph, a):
                ctx.guard(s)
                return ctx.finish(s, [("decide", attempt_id)])
            repo = Path(run.project.repo_path)
        elif a.doctor is None:
            args = _consult_args(s, services, ph, a, cls)
    if cls is None:
        lesson = _model_lesson(services, ph, a, repo)
        with session_scope(services.db_url) as s:
            ctx.guard(s)
            a = s.get(Attempt, attempt_id)
            assert a is not None
            if is_terminal_run(a.phase.run.state):
                return []  # the run ended (cancelled) while the lesson model answered
            if a.lesson is None:
                a.lesson = lesson or ""  # "" : asked, no usable answer; the built-in lesson is used
            return ctx.finish(s, [("decide", attempt_id)])
    if a.doctor is not None:  # a redelivered diagnose: the record is kept, decide again
        with session_scope(services.db_url) as s:
            ctx.guard(s)
            return ctx.finish(s, [("decide", attempt_id)])
    cfg, spec = _doctor_config(services, ph.run), ph.spec

    def ask(model: str) -> str:
        system, user = render_doctor_prompt(
            services.prompts, phase_id=ph.key, category=spec["category"], goal=spec["goal"], scope=spec["scope"],
            history=args.failures, attempts_used=args.burned, max_attempts=ph.max_attempts, already_replanned=args.already_replanned,
        )
        call = make_call(services, CallScope(ph.run_id, ph.id, attempt_id, "doctor", model, None))
        resp = call(system, [Message(role="user", content=user)], cfg.max_tokens)
        if resp.incomplete:  # an unfinished answer (max_tokens, a refusal) is no decision, whatever object it holds
            raise DoctorVerdictError(f"Doctor answer: {unfinished(resp.stop_reason)}")
        return resp.text

    record = consult(args.failures, cfg=cfg, already_replanned=args.already_replanned, replan_reason=args.replan_reason,
                     phase_calls=args.phase_calls, run_calls=args.run_calls, ask=ask)
    assert record is not None  # with ``ask`` there is always a decision
    if record["action"] == "replan":
        plan = _replan(services, ph, a, record["reason"])
        record["plan"] = None if plan is None else {"goal": plan[0], "approach": plan[1], "model": plan[3]}
    with session_scope(services.db_url) as s:
        ctx.guard(s)
        a = s.get(Attempt, attempt_id)
        assert a is not None
        if is_terminal_run(a.phase.run.state):
            return []  # the run ended (cancelled) while the Doctor answered
        if a.decision is None and a.doctor is None:
            a.classification, a.doctor = record["class"], record
        return ctx.finish(s, [("decide", attempt_id)])


def _replan(services: Services, ph: Phase, current: Attempt, why: str) -> tuple[str, str, str, str] | None:
    """(new goal, approach, reason, model) from the planner model; None when it gives no usable
    answer (the phase then retries with its old plan)."""
    model = services.model_for("builder", "high")
    spec = ph.spec
    user = services.prompts.render(
        "replan", phase_id=ph.key, category=spec["category"], goal=spec["goal"].strip(), scope=", ".join(spec["scope"]),
        deliverables=", ".join(spec.get("deliverables", [])) or "(none)", acceptance=", ".join(spec.get("acceptance_tests", [])) or "(none)",
        failure=(current.failure or current.failure_signature or "")[:3000],
    )
    call = make_call(services, CallScope(ph.run_id, ph.id, current.id, "planner", model, None))
    try:
        resp = call(services.prompts.render("replan_system"), [Message(role="user", content=user)], 800)
        plan = parse_replan(resp.text, truncated=resp.incomplete, stop_reason=resp.stop_reason)
    except (BudgetExceeded, ProviderError, ReplanError) as exc:
        log.warning("re-planning phase %s failed (%s); retrying with the old plan", ph.key, exc)
        return None
    return plan.goal.strip(), plan.approach.strip(), why, model


def _wants_lesson(services: Services, ph: Phase, accepted: Attempt) -> bool:
    """Whether a lesson model is configured and ``accepted`` fixed earlier failures of its phase."""
    return bool(services.config.strategy.learning.lesson_model) and any(
        teaches(x) for x in ph.attempts if x.id != accepted.id)


def _model_lesson(services: Services, ph: Phase, accepted: Attempt, repo: Path) -> str | None:
    """The lesson of a fixed failure, written by the configured cheap model (None if it fails:
    the deterministic lesson is used instead)."""
    failed = [x for x in ph.attempts if teaches(x) and x.number < accepted.number]
    if not failed or accepted.parent_commit is None or accepted.candidate_commit is None:
        return None
    model = services.config.strategy.learning.lesson_model
    assert model is not None
    diff = wt.diff(repo, accepted.parent_commit, accepted.candidate_commit, max_bytes=4000)
    user = services.prompts.render("lesson", phase_id=ph.key, category=ph.spec["category"], goal=ph.spec["goal"].strip(),
                                   failure=(failed[-1].failure_signature or failed[-1].failure or "")[:1500], diff=diff)
    call = make_call(services, CallScope(ph.run_id, ph.id, accepted.id, "lesson", model, None))
    try:
        resp = call(services.prompts.render("lesson_system"), [Message(role="user", content=user)], 300)
    except (BudgetExceeded, ProviderError) as exc:
        log.warning("lesson model failed (%s); using the built-in lesson", exc)
        return None
    text = " ".join(resp.text.split())[:600]
    return text or None


def _audit_text(aud: dict[str, Any]) -> str:
    if not aud:
        return ""
    issues = "; ".join(f"[{i.get('severity')}] {i.get('summary')}" for i in aud.get("issues", []))
    return (aud.get("summary") or "") + (f" — issues: {issues}" if issues else "")


STEPS: dict[str, Callable[[Services, Any, StepContext], list[Step]]] = {
    "start_run": start_run,
    "baseline": take_baseline,
    "build": build_phase,
    "probe": probe,
    "audit": audit,
    "decide": decide_attempt,
    "diagnose": diagnose,
}
