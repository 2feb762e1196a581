"""Budget reservation: spent + reserved never exceeds a cap, also under concurrent reservations."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from autopack.db.migrate import upgrade
from autopack.db.models import Project, Run
from autopack.db.session import session_scope
from autopack.engine.ledger import reserve, settle
from autopack.errors import BudgetExceeded


def _run(url: str, token_cap: int = 1000, cost_cap: float = 1.0) -> str:
    with session_scope(url) as s:
        p = Project(name="p", repo_path="/nonexistent", base_branch="main")
        s.add(p)
        s.flush()
        run = Run(project_id=p.id, plan={}, strategy={}, base_branch="main", branch="b", commit_epoch=0,
                  token_cap=token_cap, cost_cap_usd=cost_cap)
        s.add(run)
        s.flush()
        return run.id


def _row(url: str, run_id: str) -> Run:
    with session_scope(url) as s:
        run = s.get(Run, run_id)
        assert run is not None
        return run


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'l.sqlite'}"
    upgrade(url)
    return url


def test_reserve_settle_and_refuse(sqlite_url: str) -> None:
    run_id = _run(sqlite_url)
    with session_scope(sqlite_url) as s:
        reserve(s, run_id, None, 600, 0.1, None)
    with pytest.raises(BudgetExceeded) as err:
        with session_scope(sqlite_url) as s:
            reserve(s, run_id, None, 500, 0.1, None)
    assert err.value.kind == "tokens"
    assert _row(sqlite_url, run_id).tokens_reserved == 600  # the refused reservation changed nothing
    with session_scope(sqlite_url) as s:
        settle(s, run_id, None, 600, 0.1, 250, 0.04)
    run = _row(sqlite_url, run_id)
    assert (run.tokens_reserved, run.tokens_used) == (0, 250)
    assert run.cost_reserved_usd == pytest.approx(0.0) and run.cost_usd == pytest.approx(0.04)
    with pytest.raises(BudgetExceeded) as err:
        with session_scope(sqlite_url) as s:
            reserve(s, run_id, None, 10, 0.97, None)
    assert err.value.kind == "cost"


@pytest.mark.postgres
def test_twenty_concurrent_reservations_never_exceed_the_cap(pg_url: str) -> None:
    upgrade(pg_url)
    run_id = _run(pg_url, token_cap=1000)
    barrier = threading.Barrier(20)
    results: list[bool] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        try:
            with session_scope(pg_url) as s:
                reserve(s, run_id, None, 100, 0.001, None)
            ok = True
        except BudgetExceeded:
            ok = False
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 10 + [True] * 10
    run = _row(pg_url, run_id)
    assert run.tokens_reserved == 1000 and run.tokens_used + run.tokens_reserved <= run.token_cap
