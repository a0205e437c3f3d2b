"""The CJ database on SQLite and real PostgreSQL: migrations, once-only state changes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from cjllm.cj.database import HEAD, MIGRATIONS, create_engine, upgrade_to_head
from cjllm.cj.records import NewComparison
from cjllm.cj.round_rows import RoundExists
from cjllm.cj.store import Store
from cjllm.cj.tables import Base, ComparisonStatus
from tests.cj.batch_rows import new_batch


async def fresh_pg_database(postgres_url: str) -> str:
    """Create an empty PostgreSQL database on the test server; return its URL."""
    name = f"cj_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return postgres_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/store.sqlite"
    else:
        url = await fresh_pg_database(request.getfixturevalue("postgres_url"))
    the_store = await Store.open(url)
    yield the_store
    await the_store.close()


def _diff(connection: Connection) -> list[object]:
    def ours(name: str | None, kind: str, _parent: object) -> bool:
        return not (kind == "table" and name == "cj_alembic_version")

    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_name": ours}
    )
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_build_exactly_the_model_schema(store: Store) -> None:
    async with store.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert {"cj_batches", "cj_essays", "cj_rounds", "cj_comparisons", "cj_dead_letters"} <= tables
    assert "cj_alembic_version" in tables


async def test_migrating_again_is_a_no_op(store: Store) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    again = await Store.open(url)
    await again.close()


async def test_a_round_number_can_be_started_once(store: Store) -> None:
    batch_id = await new_batch(store)
    await store.add_round(batch_id, 1, 2, [NewComparison("e0", "e1")])
    with pytest.raises(RoundExists):
        await store.add_round(batch_id, 1, 2, [NewComparison("e2", "e3")])
    assert len(await store.outcomes(batch_id)) == 1  # the loser wrote nothing


async def test_a_batch_counts_its_own_essays(store: Store) -> None:
    first, second = await new_batch(store, essays=4), await new_batch(store, essays=7)
    assert [await store.essay_count(b) for b in (first, second)] == [4, 7]
    assert await store.essay_count(str(uuid.uuid4())) == 0


async def test_concurrent_closers_close_a_round_once(store: Store) -> None:
    batch_id = await new_batch(store)
    rows = await store.add_round(
        batch_id, 1, 2, [NewComparison("e0", "e1"), NewComparison("e2", "e3")]
    )
    assert not await store.close_round_if_done(batch_id, 1)
    failed = await asyncio.gather(
        *(store.fail_pending(r.request_correlation_id, "x", "y") for r in rows)
    )
    assert failed == [(batch_id, 1), (batch_id, 1)]
    closes = await asyncio.gather(*(store.close_round_if_done(batch_id, 1) for _ in range(8)))
    assert sorted(closes) == [False] * 7 + [True]


async def test_a_pending_row_changes_once(store: Store) -> None:
    batch_id = await new_batch(store)
    (row,) = await store.add_round(batch_id, 1, 1, [NewComparison("e0", "e1")])
    results = await asyncio.gather(
        *(store.fail_pending(row.request_correlation_id, f"code{i}", "m") for i in range(6))
    )
    assert sum(r is not None for r in results) == 1
    (outcome,) = await store.outcomes(batch_id)
    assert outcome.status is ComparisonStatus.FAILED


async def test_unsubmitted_rows_are_found_until_accepted(store: Store) -> None:
    batch_id = await new_batch(store)
    rows = await store.add_round(
        batch_id, 1, 2, [NewComparison("e0", "e1"), NewComparison("e2", "e3")]
    )
    assert len(await store.unsubmitted(batch_id)) == 2
    await store.mark_submitted([(rows[0].request_correlation_id, str(uuid.uuid4()))])
    (left,) = await store.unsubmitted(batch_id)
    assert left.request_correlation_id == rows[1].request_correlation_id


def _sqlite_schema(connection: Connection) -> list[tuple[str, str, str]]:
    """Every table and index of a SQLite database as SQLite stores its definition
    (whitespace normalised), so two databases compare by their exact DDL."""
    rows = connection.exec_driver_sql(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    ).all()
    return [(kind, name, " ".join((sql or "").split())) for kind, name, sql in rows]


async def test_a_new_sqlite_database_gets_the_schema_the_migrations_build(tmp_path: Path) -> None:
    fresh = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/fresh.sqlite")  # no alembic
    migrated = create_engine(f"sqlite+aiosqlite:///{tmp_path}/migrated.sqlite")
    try:
        async with migrated.begin() as conn:
            await conn.run_sync(upgrade_to_head)  # what alembic builds, migration by migration
        async with migrated.connect() as conn:
            expected = await conn.run_sync(_sqlite_schema)
            head = await conn.exec_driver_sql("SELECT version_num FROM cj_alembic_version")
            assert head.scalar_one() == HEAD  # HEAD names the newest migration
        async with fresh.engine.connect() as conn:
            assert await conn.run_sync(_sqlite_schema) == expected
            stamped = await conn.exec_driver_sql("SELECT version_num FROM cj_alembic_version")
            assert stamped.scalars().all() == [HEAD]
        assert len(expected) >= 8  # five tables, alembic's version table and the indexes
    finally:
        await fresh.close()
        await migrated.dispose()


def test_head_is_the_newest_migration() -> None:
    scripts = ScriptDirectory.from_config(_alembic_config())
    assert scripts.get_heads() == [HEAD]


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config
