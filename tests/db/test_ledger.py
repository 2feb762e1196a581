"""Budget reservation: spent + reserved never exceeds a cap, also under concurrent reservations."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text

from autopack.db.migrate import upgrade
from autopack.db.models import Project, ProjectSpend, Run, StepRow
from autopack.db.session import session_scope
from autopack.engine.ledger import reserve, settle
from autopack.errors import BudgetExceeded


def _run(url: str, token_cap: int = 1000, cost_cap: float = 1.0, project: str = "p") -> str:
    with session_scope(url) as s:
        p = s.scalar(select(Project).where(Project.name == project))
        if p is None:
            p = Project(name=project, repo_path="/nonexistent", base_branch="main")
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
        held = reserve(s, run_id, None, 600, 0.1, None)
    with pytest.raises(BudgetExceeded) as err:
        with session_scope(sqlite_url) as s:
            reserve(s, run_id, None, 500, 0.1, None)
    assert err.value.kind == "tokens"
    assert _row(sqlite_url, run_id).tokens_reserved == 600  # the refused reservation changed nothing
    with session_scope(sqlite_url) as s:
        settle(s, held, 250, 0.04)
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


def test_project_daily_cap_spans_runs(sqlite_url: str) -> None:
    a, b = _run(sqlite_url, token_cap=10_000), _run(sqlite_url, token_cap=10_000)
    caps = {"daily_token_cap": 500, "daily_cost_cap": 1.0}
    with session_scope(sqlite_url) as s:
        first = reserve(s, a, None, 300, 0.01, None, **caps)
    with pytest.raises(BudgetExceeded, match="project daily tokens cap"):
        with session_scope(sqlite_url) as s:
            reserve(s, b, None, 300, 0.01, None, **caps)
    assert _row(sqlite_url, b).tokens_reserved == 0  # the refused call reserved nothing anywhere
    with session_scope(sqlite_url) as s:
        settle(s, first, 100, 0.005)
    with session_scope(sqlite_url) as s:
        reserve(s, b, None, 300, 0.01, None, **caps)  # fits now: 100 used + 300 reserved <= 500
        spend = s.get(ProjectSpend, (first.project_id, first.day))
        assert (spend.tokens_used, spend.tokens_reserved) == (100, 300)


@pytest.mark.postgres
def test_twenty_concurrent_reservations_never_exceed_the_project_daily_cap(pg_url: str) -> None:
    upgrade(pg_url)
    runs = [_run(pg_url, token_cap=100_000, cost_cap=100.0) for _ in range(4)]  # one project, four runs
    barrier = threading.Barrier(20)
    results: list[bool] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        barrier.wait()
        try:
            with session_scope(pg_url) as s:
                reserve(s, runs[i % 4], None, 100, 0.001, None, daily_token_cap=1000, daily_cost_cap=100.0)
            ok = True
        except BudgetExceeded:
            ok = False
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 10 + [True] * 10
    with session_scope(pg_url) as s:
        spend = s.scalars(select(ProjectSpend)).all()
        assert len(spend) == 1 and spend[0].tokens_reserved == 1000
        assert sum(s.get(Run, r).tokens_reserved for r in runs) == 1000


@pytest.mark.postgres
def test_a_call_is_charged_to_the_databases_day_whatever_the_workers_clock_says(pg_url: str) -> None:
    """Two workers, one clock two days behind: both charge the project's spend of the database
    server's UTC day, one row, not one per worker clock."""
    from tests.engine.harness import as_worker_with_clock

    upgrade(pg_url)
    run_id = _run(pg_url, token_cap=10_000)
    caps = {"daily_token_cap": 5_000, "daily_cost_cap": 1.0}
    code = ("from autopack.db.session import session_scope\nfrom autopack.engine.ledger import reserve\n"
            f"with session_scope(url) as s:\n    print(reserve(s, {run_id!r}, None, 100, 0.01, None, **{caps!r}).day)\n")
    behind = as_worker_with_clock("-2 days", pg_url, code)
    with session_scope(pg_url) as s:
        here = reserve(s, run_id, None, 200, 0.01, None, **caps).day
        server_day = s.scalar(text("select to_char(now() at time zone 'utc', 'YYYY-MM-DD')"))
    assert behind == here == server_day
    with session_scope(pg_url) as s:
        spend = s.scalars(select(ProjectSpend)).all()
        assert [(row.day, row.tokens_reserved) for row in spend] == [(server_day, 300)]


def _step(url: str, run_id: str, *, fence: int, expires_in_s: float | None, done: bool = False) -> int:
    from datetime import datetime, timedelta, timezone

    from autopack.db.models import StepRow

    now = datetime.now(timezone.utc)
    with session_scope(url) as s:
        row = StepRow(run_id=run_id, name="build", arg="1", fence=fence,
                      lease_expires_at=None if expires_in_s is None else now + timedelta(seconds=expires_in_s),
                      done_at=now if done else None)
        s.add(row)
        s.flush()
        return row.id


def _reserved(url: str, run_id: str) -> tuple[int, int, int, int]:
    with session_scope(url) as s:
        run = s.get(Run, run_id)
        assert run is not None
        spend = s.scalar(select(ProjectSpend).where(ProjectSpend.project_id == run.project_id))
        assert spend is not None
        return run.tokens_reserved, run.tokens_used, spend.tokens_reserved, spend.tokens_used


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_reconciler_charges_what_a_dead_worker_reserved(backend: str, request: pytest.FixtureRequest) -> None:
    """A worker that died between its call and the settlement leaves a reservation behind: once its
    step can no longer settle it, it is charged at its worst case (moved from reserved to spent), and
    a late settlement replaces that charge by the reported usage, once."""
    from autopack.db.models import BudgetReservation, StepRow
    from autopack.engine.ledger import charge_orphans

    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    upgrade(url)
    run_id = _run(url, token_cap=1000)
    caps = {"daily_token_cap": 10_000, "daily_cost_cap": 10.0}
    live, expired, reclaimed, done = (_step(url, run_id, fence=1, expires_in_s=60) for _ in range(4))
    with session_scope(url) as s:
        held = reserve(s, run_id, None, 100, 0.01, None, step=(live, 1), **caps)
        dead = reserve(s, run_id, None, 200, 0.01, None, step=(expired, 1), **caps)
        reserve(s, run_id, None, 300, 0.01, None, step=(reclaimed, 1), **caps)
        reserve(s, run_id, None, 50, 0.01, None, step=(done, 1), **caps)
    assert _reserved(url, run_id) == (650, 0, 650, 0)
    # Then the workers of three of them are lost: a lease runs out, a step is claimed again (fence 2),
    # a step is closed (its run ended, say).
    with session_scope(url) as s:
        s.get(StepRow, expired).lease_expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)  # type: ignore[union-attr]
        s.get(StepRow, reclaimed).fence = 2  # type: ignore[union-attr]
        s.get(StepRow, done).done_at = datetime.now(timezone.utc)  # type: ignore[union-attr]
    with session_scope(url) as s:
        assert charge_orphans(s) == 3
    # Only the live step's reservation is still held; the three orphans count as spent at worst.
    assert _reserved(url, run_id) == (100, 550, 100, 550)
    with session_scope(url) as s:
        assert charge_orphans(s) == 0  # idempotent
        # The paused worker comes back and settles: its charge becomes the reported usage.
        settle(s, dead, 120, 0.005)
        settle(s, held, 80, 0.004)
    assert _reserved(url, run_id) == (0, 550 - 200 + 120 + 80, 0, 550 - 200 + 120 + 80)
    with session_scope(url) as s:
        run = s.get(Run, run_id)
        assert run is not None
        assert run.cost_usd == pytest.approx(0.01 + 0.01 + 0.005 + 0.004)
        states = sorted(r.state for r in s.scalars(select(BudgetReservation)))
        assert states == ["charged", "charged", "settled", "settled"]
        # With the step finished, nothing is left open.
        s.get(StepRow, live).done_at = s.get(StepRow, done).done_at  # type: ignore[union-attr]
    with session_scope(url) as s:
        assert charge_orphans(s) == 0


def test_a_frozen_workers_late_settlement_cannot_push_spend_past_the_cap(sqlite_url: str) -> None:
    """The reason orphans are charged, not freed: a worker frozen mid-call (SIGSTOP, a long GC, a
    partition) may have been billed. Its room stays taken until it settles, so a second worker
    cannot reserve the same room, and when the first resumes spent never exceeds the cap."""
    from autopack.engine.ledger import charge_orphans

    run_id = _run(sqlite_url, token_cap=1000, cost_cap=1.0)
    frozen_step = _step(sqlite_url, run_id, fence=1, expires_in_s=-1)  # its lease ran out while frozen
    with session_scope(sqlite_url) as s:
        frozen = reserve(s, run_id, None, 600, 0.6, None, step=(frozen_step, 1))
        assert charge_orphans(s) == 1
    with pytest.raises(BudgetExceeded):  # the takeover's call does not fit beside the frozen one's
        with session_scope(sqlite_url) as s:
            reserve(s, run_id, None, 500, 0.5, None)
    with session_scope(sqlite_url) as s:
        settle(s, frozen, 590, 0.59)  # it resumes: it really was billed (nearly) its worst case
    run = _row(sqlite_url, run_id)
    assert (run.tokens_used, run.tokens_reserved) == (590, 0)
    assert run.tokens_used <= run.token_cap and run.cost_usd <= run.cost_cap_usd
    with pytest.raises(BudgetExceeded):
        with session_scope(sqlite_url) as s:
            reserve(s, run_id, None, 500, 0.5, None)
    with session_scope(sqlite_url) as s:  # what is really left can still be used
        reserve(s, run_id, None, 400, 0.4, None)


def test_a_charge_counts_on_the_phase_and_is_corrected_there(sqlite_url: str) -> None:
    from autopack.db.models import Phase, Tier
    from autopack.engine.ledger import charge_orphans

    run_id = _run(sqlite_url, token_cap=10_000, cost_cap=10.0)
    with session_scope(sqlite_url) as s:
        tier = Tier(run_id=run_id, key="t", name="t", index=0)
        s.add(tier)
        s.flush()
        ph = Phase(run_id=run_id, tier_id=tier.id, key="p", index=0, spec={}, budget={"token_cap": 1000},
                   max_attempts=3)
        s.add(ph)
        s.flush()
        phase_id = ph.id
    step = _step(sqlite_url, run_id, fence=1, expires_in_s=-1)
    with session_scope(sqlite_url) as s:
        r = reserve(s, run_id, phase_id, 700, 0.07, None, step=(step, 1))
        assert charge_orphans(s) == 1
    with pytest.raises(BudgetExceeded, match="phase token cap 1000"):
        with session_scope(sqlite_url) as s:
            reserve(s, run_id, phase_id, 400, 0.04, None)
    with session_scope(sqlite_url) as s:
        settle(s, r, 300, 0.03)
    with session_scope(sqlite_url) as s:
        ph = s.get(Phase, phase_id)
        assert ph is not None
        assert ph.tokens_used == 300 and ph.cost_usd == pytest.approx(0.03)
        reserve(s, run_id, phase_id, 400, 0.04, None)  # fits again


def test_a_reservation_outside_a_step_is_charged_when_its_run_ends(sqlite_url: str) -> None:
    from autopack.engine.ledger import charge_orphans

    run_id = _run(sqlite_url)
    with session_scope(sqlite_url) as s:
        reserve(s, run_id, None, 100, 0.01, None, daily_token_cap=10_000, daily_cost_cap=10.0)
        assert charge_orphans(s) == 0
        run = s.get(Run, run_id)
        assert run is not None
        run.state = "DONE_FAILED_INFRASTRUCTURE"
    with session_scope(sqlite_url) as s:
        assert charge_orphans(s) == 1
    assert _reserved(sqlite_url, run_id) == (0, 100, 0, 100)


def test_a_phases_caps_bound_every_call_made_for_it(sqlite_url: str) -> None:
    from autopack.db.models import Phase, Tier

    run_id = _run(sqlite_url)
    with session_scope(sqlite_url) as s:
        tier = Tier(run_id=run_id, key="t", name="t", index=0)
        s.add(tier)
        s.flush()
        ph = Phase(run_id=run_id, tier_id=tier.id, key="p", index=0, spec={}, budget={"token_cap": 500, "cost_cap_usd": 0.05},
                   max_attempts=3, tokens_used=400, cost_usd=0.04)
        s.add(ph)
        s.flush()
        phase_id = ph.id
    with session_scope(sqlite_url) as s:  # an auditor's call: no explicit cap, the phase's apply
        with pytest.raises(BudgetExceeded, match="phase token cap 500"):
            reserve(s, run_id, phase_id, 150, 0.001, None)
    with session_scope(sqlite_url) as s:
        with pytest.raises(BudgetExceeded, match=r"phase cost cap \$0.05") as exc:
            reserve(s, run_id, phase_id, 50, 0.02, None)
        assert exc.value.kind == "cost"
    with session_scope(sqlite_url) as s:
        reserve(s, run_id, phase_id, 100, 0.01, None)


def test_a_settlement_of_a_reservation_an_older_version_released_counts_the_spend(sqlite_url: str) -> None:
    """Rows an older version freed (state ``released``): the room is gone, the spend is still counted once."""
    from autopack.db.models import BudgetReservation

    run_id = _run(sqlite_url)
    with session_scope(sqlite_url) as s:
        r = reserve(s, run_id, None, 100, 0.01, None, daily_token_cap=10_000, daily_cost_cap=10.0)
    with session_scope(sqlite_url) as s:  # what the old reconciler did
        row = s.get(BudgetReservation, r.id)
        assert row is not None
        row.state = "released"
        run = s.get(Run, run_id)
        assert run is not None
        run.tokens_reserved, run.cost_reserved_usd = 0, 0.0
        spend = s.scalar(select(ProjectSpend))
        assert spend is not None
        spend.tokens_reserved, spend.cost_reserved_usd = 0, 0.0
    with session_scope(sqlite_url) as s:
        settle(s, r, 80, 0.008)
    assert _reserved(sqlite_url, run_id) == (0, 80, 0, 80)


# --------------------------------------------------------------------------- what a review found


def test_the_estimate_bounds_every_character_but_ascii_letters_by_its_bytes() -> None:
    from autopack.engine.ledger import estimate_tokens

    cjk = "# 计算平均值和中位数，返回浮点数。\n" * 500  # about a token a character, some characters two
    assert estimate_tokens(cjk) >= 2 * len(cjk)
    assert estimate_tokens("🙂" * 100) >= 400 and estimate_tokens("0123456789" * 100) >= 1000
    code = "def average(values):\n    return sum(values) / len(values)\n" * 100
    assert len(code) / 3 < estimate_tokens(code) < len(code) / 1.8  # code: about 2 characters a token


def _phase(url: str, run_id: str, budget: dict) -> int:
    from autopack.db.models import Phase, Tier

    with session_scope(url) as s:
        tier = Tier(run_id=run_id, key="t", name="t", index=0)
        s.add(tier)
        s.flush()
        ph = Phase(run_id=run_id, tier_id=tier.id, key="ph", index=0, spec={}, budget=budget, max_attempts=3)
        s.add(ph)
        s.flush()
        return ph.id


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_phases_caps_count_its_calls_in_flight(backend: str, request: pytest.FixtureRequest) -> None:
    """A worker that lost its lease mid-call (paused, partitioned) still has its call open when the
    step's next holder reserves: both used to pass the phase's cap, which counted only what was spent."""
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    upgrade(url)
    run_id = _run(url, token_cap=100_000, cost_cap=10.0)
    phase_id = _phase(url, run_id, {"token_cap": 1000, "cost_cap_usd": 0.10})
    with session_scope(url) as s:
        first = reserve(s, run_id, phase_id, 600, 0.06, None)
    with pytest.raises(BudgetExceeded, match=r"phase token cap 1000 reached \(0 used, 600 in calls in flight"):
        with session_scope(url) as s:
            reserve(s, run_id, phase_id, 500, 0.01, None)
    with pytest.raises(BudgetExceeded, match=r"phase cost cap \$0.10 reached .*in calls in flight"):
        with session_scope(url) as s:
            reserve(s, run_id, phase_id, 100, 0.05, None)
    with session_scope(url) as s:
        settle(s, first, 300, 0.03)
        reserve(s, run_id, phase_id, 500, 0.05, None)  # 300 spent + 500: fits now


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_step_that_lost_its_lease_reserves_nothing(backend: str, request: pytest.FixtureRequest) -> None:
    from autopack.engine.leases import StaleLease

    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    upgrade(url)
    run_id = _run(url)
    reclaimed = _step(url, run_id, fence=2, expires_in_s=60)
    finished = _step(url, run_id, fence=1, expires_in_s=None, done=True)
    for step in ((reclaimed, 1), (finished, 1)):
        with pytest.raises(StaleLease, match="no model call for it"):
            with session_scope(url) as s:
                reserve(s, run_id, None, 100, 0.01, None, step=step)
    assert _row(url, run_id).tokens_reserved == 0
    with session_scope(url) as s:
        reserve(s, run_id, None, 100, 0.01, None, step=(reclaimed, 2))  # its current holder may


def test_a_run_that_is_over_takes_no_more_calls_but_its_postmortem(sqlite_url: str) -> None:
    from autopack.engine.leases import StaleLease

    run_id = _run(sqlite_url)
    with session_scope(sqlite_url) as s:
        s.get(Run, run_id).state = "CANCELLED"  # type: ignore[union-attr]
    with pytest.raises(StaleLease, match="is over \\(CANCELLED\\)"):
        with session_scope(sqlite_url) as s:
            reserve(s, run_id, None, 100, 0.01, None)
    with session_scope(sqlite_url) as s:
        reserve(s, run_id, None, 100, 0.01, None, after_end=True)
    assert _row(sqlite_url, run_id).tokens_reserved == 100


def test_charging_orphans_does_not_deadlock_a_worker_of_another_run(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reconciler charged the orphans of two runs of a project in one transaction: it held run A
    and the project's day while a worker of run B held run B and waited for the day."""
    import time

    from autopack.engine import ledger

    upgrade(pg_url)
    caps = {"daily_token_cap": 10_000_000, "daily_cost_cap": 1000.0}
    run_a, run_b = _run(pg_url, token_cap=10**6, cost_cap=100.0), _run(pg_url, token_cap=10**6, cost_cap=100.0)
    for run_id in (run_a, run_b):  # one orphan in each: reserved, then the worker's lease ran out
        step = _step(pg_url, run_id, fence=1, expires_in_s=60)
        with session_scope(pg_url) as s:
            ledger.reserve(s, run_id, None, 100, 0.01, None, step=(step, 1), **caps)
        with session_scope(pg_url) as s:
            s.get(StepRow, step).lease_expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)  # type: ignore[union-attr]
    first_charged = threading.Event()
    real = ledger._add_phase

    def slow_add_phase(*args: object) -> None:
        real(*args)  # type: ignore[arg-type]
        if not first_charged.is_set():  # between the first and the second orphan of the pass
            first_charged.set()
            time.sleep(1.0)

    monkeypatch.setattr(ledger, "_add_phase", slow_add_phase)
    errors: list[BaseException] = []

    def reconciler() -> None:
        try:
            with session_scope(pg_url) as s:
                assert ledger.charge_orphans(s) == 2
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def worker_of_run_b() -> None:
        first_charged.wait(10)
        try:
            with session_scope(pg_url) as s:
                ledger.reserve(s, run_b, None, 100, 0.01, None, **caps)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reconciler), threading.Thread(target=worker_of_run_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert _reserved(pg_url, run_b) == (100, 100, 100, 200)


def test_the_cost_reports_days_are_the_budgets_utc_days(pg_url: str) -> None:
    import psycopg

    from autopack.db.models import ModelCall
    from autopack.engine.costs import report

    name = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{name}\" SET timezone TO 'America/New_York'")  # a server not on UTC
    upgrade(pg_url)
    run_id = _run(pg_url)
    at = datetime(2026, 3, 10, 2, 0, tzinfo=timezone.utc)  # 21:00 on the 9th in New York
    with session_scope(pg_url) as s:
        s.add(ModelCall(run_id=run_id, role="builder", provider="anthropic", model="m", request_key="k", prompt={},
                        input_tokens=10, output_tokens=10, cost_usd=0.5, created_at=at))
    with session_scope(pg_url) as s:
        assert list(report(s, None, None)["by_day"]) == ["2026-03-10"]
