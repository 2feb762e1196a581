"""The postmortem of a finished run: facts computed from the database, rendered as Markdown.
A model may add a short narrative; with none configured the facts stand alone."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from autopack.db.models import Event, ModelCall, Phase, Rule, Run
from autopack.engine.issues import run_issues
from autopack.engine.runs import charged_at_worst_case


def collect_facts(session: Session, run: Run) -> dict[str, Any]:
    phases = []
    fixes = []
    failures: dict[str, int] = defaultdict(int)
    # Phases and their attempts in two statements (not one per phase).
    for ph in session.scalars(select(Phase).where(Phase.run_id == run.id).order_by(Phase.index).options(selectinload(Phase.attempts))):
        attempts = []
        for a in ph.attempts:
            attempts.append({
                "number": a.number, "model": a.model, "decision": a.decision, "failure_class": a.failure_class,
                "failure": (a.failure or "").splitlines()[0][:200] if a.failure else None,
                "classification": a.classification, "action": (a.doctor or {}).get("action"),
                "action_by": (a.doctor or {}).get("source"), "action_reason": ((a.doctor or {}).get("reason") or "")[:200] or None,
                "commit": a.candidate_commit, "tokens": a.tokens_used, "cost_usd": round(a.cost_usd, 6),
                "started": a.created_at.isoformat(), "finished": a.finished_at.isoformat() if a.finished_at else None,
            })
            if a.failure_class:
                failures[a.failure_class] += 1
        failed = [x for x in attempts if x["failure_class"]]
        accepted = [x for x in attempts if x["decision"] == "complete"]
        if failed and accepted:
            fixes.append({"phase": ph.key, "failed": [f["failure_class"] for f in failed], "fixed_by_attempt": accepted[0]["number"],
                          "model": accepted[0]["model"]})
        phases.append({"id": ph.key, "state": ph.state, "attempts": attempts})
    cost: dict[str, dict[str, float]] = defaultdict(lambda: {"calls": 0, "tokens": 0, "cost_usd": 0.0})
    # The figures only (whole rows carried every prompt and answer of the run).
    for c in session.execute(select(ModelCall.role, ModelCall.model, ModelCall.input_tokens, ModelCall.output_tokens,
                                    ModelCall.cost_usd).where(ModelCall.run_id == run.id)):
        row = cost[f"{c.role} · {c.model}"]
        row["calls"] += 1
        row["tokens"] += c.input_tokens + c.output_tokens
        row["cost_usd"] = round(row["cost_usd"] + c.cost_usd, 6)
    applied: set[int] = set()
    prompt_tokens = rule_tokens = 0
    for c in session.execute(select(ModelCall.rules, ModelCall.input_tokens, ModelCall.rules_tokens)
                             .where(ModelCall.run_id == run.id, ModelCall.role == "builder")):
        applied |= set(c.rules or [])
        prompt_tokens += c.input_tokens
        rule_tokens += c.rules_tokens
    promoted = [e.payload.get("rule_id") for e in session.scalars(select(Event).where(Event.run_id == run.id, Event.type == "rule.promoted"))]
    learned = [r for r in (session.get(Rule, i) for i in promoted if i is not None) if r is not None]
    return {
        "rules_applied_ids": sorted(applied), "rule_tokens": rule_tokens, "builder_prompt_tokens": prompt_tokens,
        "run_id": run.id, "project": run.project.name, "state": run.state, "failure_reason": run.failure_reason,
        "branch": run.branch, "base_commit": run.base_commit, "head_commit": run.head_commit,
        "tokens": run.tokens_used, "cost_usd": round(run.cost_usd, 6), "phases": phases,
        "failures_by_class": dict(sorted(failures.items())), "fixes": fixes, "cost_by_role_model": dict(sorted(cost.items())),
        "charged_at_worst_case": charged_at_worst_case(session, run.id),
        "rules_applied": [f"rule {i}" for i in sorted(applied)],
        "rules_learned": [f"rule {r.id} ({r.scope_pattern}): {r.text}" for r in learned],
        "open_issues": [f"[{i['severity']}] {i['source']}: {i['summary'][:200]} (phases {', '.join(i['phases'])})"
                        for i in run_issues(session, run)["issues"] if i["open_in_run"]],
    }


_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def md_inline(text: object) -> str:
    """Untrusted text (a model's reason, a test's failure, an auditor's issue, a rule) as one inline
    run of Markdown: its line breaks become spaces, so it cannot start a heading, a list item or a
    fake **Outcome:** line; HTML is escaped, and so is an inline link's ``](`` (a reference link's
    definition would need a line of its own)."""
    return " ".join(str(text).split()).translate(_HTML).replace("](", "]\\(")


def render(facts: dict[str, Any], narrative: str | None = None) -> str:
    """The facts as Markdown. Every string that came from a model, a test run or a plan goes through
    :func:`md_inline`; the facts themselves (the JSON form) keep the text as it was."""
    md = md_inline
    out = [f"# Postmortem of run {facts['run_id']} ({md(facts['project'])})", ""]
    out += [f"**Outcome:** {facts['state']}" + (f" — {md(facts['failure_reason'])}" if facts.get("failure_reason") else ""),
            f"**Branch:** `{facts['branch']}` ({(facts.get('base_commit') or '')[:10]} → {(facts.get('head_commit') or '')[:10]})",
            f"**Spend:** {facts['tokens']} tokens, ${facts['cost_usd']:.4f}", ""]
    if narrative:
        out += ["## Summary", "", md(narrative), ""]
    out += ["## Timeline", ""]
    for ph in facts["phases"]:
        out.append(f"- **{md(ph['id'])}** — {ph['state']}")
        for a in ph["attempts"]:
            what = a["decision"] or "unfinished"
            why = f" ({a['failure_class']}: {md(a['failure'])})" if a["failure_class"] else ""
            if a.get("action"):
                why += (f"; {md(a.get('classification') or a['failure_class'])} → {md(a['action'])} by {md(a['action_by'])}: "
                        f"{md(a['action_reason'])}")
            out.append(f"  - attempt {a['number']} with {md(a['model'])}: {what}{why}")
    out += ["", "## Failures and what fixed them", ""]
    if facts["failures_by_class"]:
        out += [f"- {cls}: {n}" for cls, n in facts["failures_by_class"].items()]
        out += [f"- phase {md(x['phase'])}: {', '.join(x['failed'])} fixed by attempt {x['fixed_by_attempt']} ({md(x['model'])})"
                for x in facts["fixes"]]
    else:
        out.append("- none")
    out += ["", "## Cost by role and model", "", "| role · model | calls | tokens | cost |", "|---|---|---|---|"]
    out += [f"| {md(k).replace('|', '/')} | {v['calls']} | {v['tokens']} | ${v['cost_usd']:.4f} |" for k, v in facts["cost_by_role_model"].items()]
    charged = facts.get("charged_at_worst_case") or {}
    if charged.get("calls"):
        out.append(f"| charged at worst case (usage never reported) | {charged['calls']} | {charged['tokens']} | ${charged['cost_usd']:.4f} |")
    share = f" ({facts['rule_tokens']} of {facts['builder_prompt_tokens']} Builder prompt tokens)" if facts.get("rule_tokens") else ""
    out += ["", "## Rules", "", f"- applied: {', '.join(facts['rules_applied']) or 'none'}{share}",
            f"- learned: {', '.join(md(r) for r in facts['rules_learned']) or 'none'}", "", "## Open issues", ""]
    out += [f"- {md(i)}" for i in facts["open_issues"]] or ["- none"]
    return "\n".join(out) + "\n"
