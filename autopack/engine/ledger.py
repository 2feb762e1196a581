"""Budget reservation: the worst case of a model call is reserved with a conditional update before
the call, and settled with the provider's reported usage after. ``spent + reserved <= cap`` always."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from autopack.db.models import Phase, Run
from autopack.errors import BudgetExceeded


def estimate_tokens(text: str) -> int:
    """A deliberately high estimate of the prompt's token count (about 3 characters per token)."""
    return len(text) // 3 + 16


def reserve(session: Session, run_id: str, phase_id: int | None, tokens: int, cost: float, phase_token_cap: int | None) -> None:
    """Reserve ``tokens`` and ``cost`` on the run, or raise ``BudgetExceeded`` and reserve nothing."""
    if phase_id is not None and phase_token_cap is not None:
        ph = session.get(Phase, phase_id)
        if ph is not None and ph.tokens_used + tokens > phase_token_cap:
            raise BudgetExceeded(
                "tokens", f"phase token cap {phase_token_cap} reached ({ph.tokens_used} used, call needs up to {tokens})"
            )
    res = session.execute(
        update(Run)
        .where(
            Run.id == run_id,
            Run.tokens_used + Run.tokens_reserved + tokens <= Run.token_cap,
            Run.cost_usd + Run.cost_reserved_usd + cost <= Run.cost_cap_usd,
        )
        .values(tokens_reserved=Run.tokens_reserved + tokens, cost_reserved_usd=Run.cost_reserved_usd + cost)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount == 1:  # type: ignore[attr-defined]
        return
    run = session.get(Run, run_id)
    assert run is not None
    session.refresh(run)
    if run.tokens_used + run.tokens_reserved + tokens > run.token_cap:
        raise BudgetExceeded("tokens", f"run token cap {run.token_cap} reached ({run.tokens_used} used, call needs up to {tokens})")
    raise BudgetExceeded("cost", f"run cost cap ${run.cost_cap_usd:.2f} reached (${run.cost_usd:.4f} spent, call needs up to ${cost:.4f})")


def settle(
    session: Session,
    run_id: str,
    phase_id: int | None,
    reserved_tokens: int,
    reserved_cost: float,
    used_tokens: int,
    used_cost: float,
) -> None:
    """Replace a reservation by what the provider reported."""
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(
            tokens_reserved=Run.tokens_reserved - reserved_tokens,
            cost_reserved_usd=Run.cost_reserved_usd - reserved_cost,
            tokens_used=Run.tokens_used + used_tokens,
            cost_usd=Run.cost_usd + used_cost,
        )
        .execution_options(synchronize_session=False)
    )
    if phase_id is not None:
        session.execute(
            update(Phase)
            .where(Phase.id == phase_id)
            .values(tokens_used=Phase.tokens_used + used_tokens, cost_usd=Phase.cost_usd + used_cost)
            .execution_options(synchronize_session=False)
        )
