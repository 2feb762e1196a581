"""Alembic environment: the URL comes from Autopack's settings unless the caller set one."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, event, pool, text

from autopack.db.locks import lock_key
from autopack.db.models import Base
from autopack.settings import get_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().db_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """The whole upgrade in one transaction that one migrator holds at a time: two started together
    (a deploy's migrate service beside an ``autopack up``) run one after the other, the second
    finding nothing left to do; and one that fails part-way leaves the last complete revision, so
    running it again finishes the job."""
    sqlite = url.startswith("sqlite")
    engine = create_engine(url, poolclass=pool.NullPool, **({"connect_args": {"timeout": 300}} if sqlite else {}))
    if sqlite:
        # pysqlite commits before every DDL statement on its own: it is told to leave transactions
        # to the BEGIN below, and SQLite's DDL is then transactional like PostgreSQL's.
        @event.listens_for(engine, "connect")
        def _manual(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _exclusive(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN EXCLUSIVE")  # another migrator waits here (the connect timeout)

    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True, transactional_ddl=True)
        with context.begin_transaction():
            if engine.dialect.name == "postgresql":  # held until the transaction ends
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key("autopack-migrate")})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
