"""Reaching the CJ database: the async engine for a URL, and its alembic migrations.

SQLite (``sqlite+aiosqlite:///…``) or PostgreSQL (``postgresql+asyncpg://…``), chosen by
``CJLLM_DATABASE_URL``. Migrations ship inside the package (``cj/migrations``), so they run
from an installed wheel; ``migrate`` is called at start-up. A new, empty SQLite database
(every ``cjllm rank --out`` folder starts with one) skips alembic: the model's tables are
created directly and stamped with :data:`HEAD`, the schema ``upgrade head`` builds (tests
compare the two), in a fraction of the time (no alembic environment or scripts to load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    event,
    inspect,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from cjllm.cj.tables import Base

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 0x636A6C6C6D  # "cjllm": one migrator at a time per database
WRITE_OPTION = "cj_write"
VERSION_TABLE = "cj_alembic_version"
HEAD = "0001"  # the newest migration's revision (a test checks it against the scripts)


def create_engine(url: str) -> AsyncEngine:
    """An async engine. SQLite gets WAL (``synchronous=NORMAL``: a crashed process loses no
    committed transaction), foreign keys, and ``BEGIN IMMEDIATE`` for write transactions
    (execution option ``cj_write``), so writers in different processes queue for the lock
    instead of failing on a lock upgrade; readers use a plain ``BEGIN`` and never block."""
    if not url.startswith("sqlite"):
        return create_async_engine(url, pool_pre_ping=True)
    engine = create_async_engine(url, connect_args={"timeout": 60})
    memory = ":memory:" in url or url.rstrip("/").endswith("sqlite+aiosqlite:")

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "sqlite" and not inspect(connection).get_table_names():
        _create_at_head(connection)
    else:
        upgrade_to_head(connection)


def upgrade_to_head(connection: Connection) -> None:
    """alembic ``upgrade head`` on ``connection`` (PostgreSQL: one migrator at a time)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})"))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _create_at_head(connection: Connection) -> None:
    """An empty database: the model's tables, and alembic's version table at :data:`HEAD`
    (as alembic creates it), so later migrations start from there."""
    Base.metadata.create_all(connection)
    versions = Table(
        VERSION_TABLE,
        MetaData(),
        Column("version_num", String(32), nullable=False),
        PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
    )
    versions.create(connection)
    connection.execute(versions.insert().values(version_num=HEAD))


async def migrate(engine: AsyncEngine) -> None:
    """Bring the database to the newest schema (alembic ``upgrade head``), in one transaction."""
    async with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
        await conn.run_sync(_upgrade)
