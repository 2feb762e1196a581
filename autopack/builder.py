"""The Builder step: context → prompt → model → edits, with the fix-up loop. Plain functions.

Model calls go through the ``call`` callable the engine provides (it reserves budget, records the
exchange and settles usage), so this module never touches the database or the disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from autopack.edits.govern import EditPolicy, govern
from autopack.edits.parse import parse_edits
from autopack.errors import EditApplyError, EditParseError, EditRefused
from autopack.llm.base import LLMResponse, Message
from autopack.prompts import LESSONS_NOTE, PromptLibrary

MAX_FILE_CHARS = 40_000
MAX_CONTEXT_CHARS = 160_000
MAX_TREE_ENTRIES = 400


@dataclass(frozen=True)
class PhaseContext:
    phase_id: str
    goal: str
    category: str
    complexity: str
    description: str
    scope: tuple[str, ...]
    deliverables: tuple[str, ...]
    acceptance: tuple[str, ...]
    tree: tuple[str, ...]
    files: dict[str, str]
    acceptance_files: dict[str, str]
    feedback: str | None = None
    rules_text: str = ""


def _fence(path: str, text: str) -> str:
    if len(text) > MAX_FILE_CHARS:
        text = text[:MAX_FILE_CHARS] + "\n… (truncated by Autopack)\n"
    fence = "```"
    while fence in text:
        fence += "`"
    return f"### {path}\n{fence}\n{text}{'' if text.endswith(chr(10)) or not text else chr(10)}{fence}\n"


def _bullets(items: tuple[str, ...] | list[str], empty: str = "(none)") -> str:
    return "\n".join(f"- {i}" for i in items) if items else empty


def render_builder_prompt(lib: PromptLibrary, ctx: PhaseContext) -> tuple[str, str]:
    """(system, user) prompt for the Builder. Deterministic: the same context gives the same text."""
    system = lib.render("builder_system", edit_formats=lib.template("edit_formats").template.strip())
    files_parts: list[str] = []
    budget = MAX_CONTEXT_CHARS
    for path in sorted(ctx.files):
        block = _fence(path, ctx.files[path])
        if len(block) > budget:
            files_parts.append(f"### {path}\n(omitted: context limit reached)\n")
            continue
        budget -= len(block)
        files_parts.append(block)
    acceptance = _bullets(ctx.acceptance)
    for path in sorted(ctx.acceptance_files):
        acceptance += "\n\n" + _fence(path, ctx.acceptance_files[path])
    tree = list(ctx.tree)
    tree_text = "\n".join(tree[:MAX_TREE_ENTRIES])
    if len(tree) > MAX_TREE_ENTRIES:
        tree_text += f"\n… and {len(tree) - MAX_TREE_ENTRIES} more"
    feedback = lib.render("builder_feedback", feedback=ctx.feedback.strip()) if ctx.feedback else ""
    rules = f"\n## Project rules learned from earlier runs\n{LESSONS_NOTE}\n{ctx.rules_text}\n" if ctx.rules_text else ""
    user = lib.render(
        "builder",
        phase_id=ctx.phase_id,
        goal=ctx.goal.strip(),
        category=ctx.category,
        complexity=ctx.complexity,
        description=(ctx.description.strip() + "\n") if ctx.description.strip() else "",
        scope=_bullets(ctx.scope),
        deliverables=_bullets(ctx.deliverables),
        acceptance=acceptance,
        tree=tree_text or "(empty repository)",
        files="\n".join(files_parts) or "(no files in scope yet)",
        rules=rules,
        feedback=feedback,
    )
    return system, user


@dataclass
class BuildRound:
    """One model answer and what became of it."""

    round: int
    max_tokens: int
    stop_reason: str
    outcome: str  # "ok" | "parse_error" | "apply_error" | "refused" | "truncated"
    error: str = ""
    refusals: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class BuildOutcome:
    ok: bool
    changes: dict[str, str | None] | None
    rounds: list[BuildRound]
    failure: str | None = None
    failure_class: str | None = None  # "edit_invalid" | "edit_refused" | "truncated"
    answer: str = ""

    @property
    def refusals(self) -> list[tuple[str, str]]:
        return [r for rd in self.rounds for r in rd.refusals]


Call = Callable[[str, list[Message], int], LLMResponse]
Reader = Callable[[str], str | None]


def _check_round(n: int, limit: int, stop_reason: str, text: str, read: Reader,
                 policy: EditPolicy) -> tuple[BuildRound, dict[str, str | None] | None, str, str]:
    """One answer through parsing, application and governance: (round, changes or None, error, failure class)."""
    try:
        changes = govern(parse_edits(text), read, policy)
    except EditRefused as exc:
        error = "These edits were refused by Autopack's governance:\n" + "\n".join(f"- {p}: {r}" for p, r in exc.reasons)
        return BuildRound(n, limit, stop_reason, "refused", str(exc), list(exc.reasons)), None, error, "edit_refused"
    except (EditParseError, EditApplyError) as exc:
        outcome = "parse_error" if isinstance(exc, EditParseError) else "apply_error"
        return BuildRound(n, limit, stop_reason, outcome, str(exc)), None, str(exc), "edit_invalid"
    return BuildRound(n, limit, stop_reason, "ok"), changes, "", ""


def check_submission(text: str, read: Reader, policy: EditPolicy) -> BuildOutcome:
    """Edits from an external Builder, checked exactly as a model's answer is (one round, no fixes:
    the submitter sees the failure on the attempt and submits again on the next one)."""
    rnd, changes, error, kind = _check_round(1, 0, "external", text, read, policy)
    if changes is None:
        return BuildOutcome(False, None, [rnd], error, kind, text)
    return BuildOutcome(True, changes, [rnd], answer=text)


def run_builder(
    *,
    lib: PromptLibrary,
    system: str,
    user: str,
    call: Call,
    read: Reader,
    policy: EditPolicy,
    max_tokens: int,
    fix_rounds: int,
) -> BuildOutcome:
    """Ask for edits until they parse, apply and pass governance, or the fix rounds run out.

    A malformed, non-matching or refused edit goes back to the model with the exact error; this does
    not consume a phase attempt. A truncated answer is retried once with twice the limit and is
    never applied.
    """
    messages = [Message(role="user", content=user)]
    rounds: list[BuildRound] = []
    limit = max_tokens
    truncation_retried = False
    fixes_left = fix_rounds
    while True:
        resp = call(system, messages, limit)
        n = len(rounds) + 1
        if resp.truncated:
            rounds.append(BuildRound(n, limit, resp.stop_reason, "truncated", "answer stopped at max_tokens"))
            if truncation_retried:
                return BuildOutcome(False, None, rounds, "the model's answer was truncated twice", "truncated", resp.text)
            truncation_retried = True
            limit *= 2
            continue
        if resp.incomplete:  # stopped by the provider (a refusal, a content filter): no edits to take from it
            rounds.append(BuildRound(n, limit, resp.stop_reason, "truncated", f"the provider stopped the answer ({resp.stop_reason})"))
            return BuildOutcome(False, None, rounds, f"the model's answer was stopped by the provider ({resp.stop_reason})",
                                "truncated", resp.text)
        rnd, changes, error, kind = _check_round(n, limit, resp.stop_reason, resp.text, read, policy)
        rounds.append(rnd)
        if changes is not None:
            return BuildOutcome(True, changes, rounds, answer=resp.text)
        if fixes_left <= 0:
            return BuildOutcome(False, None, rounds, error, kind, resp.text)
        fixes_left -= 1
        messages = [
            *messages,
            Message(role="assistant", content=resp.text),
            Message(role="user", content=lib.render("builder_fix", error=error)),
        ]
