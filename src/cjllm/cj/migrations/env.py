"""Alembic environment for the CJ database.

Used two ways: programmatically by :func:`cjllm.cj.store.migrate`, which hands over an open
connection in ``config.attributes["connection"]``; or from the ``alembic`` command line with
``-x url=...`` (or ``CJLLM_DATABASE_URL``), which opens an async engine here.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from cjllm.cj.database import VERSION_TABLE
from cjllm.cj.tables import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "CJLLM_DATABASE_URL"
    )
    if not url:
        raise RuntimeError("give the database URL: alembic -x url=... or CJLLM_DATABASE_URL")
    return url


async def _run_async() -> None:
    engine = create_async_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    shared = config.attributes.get("connection")
    if shared is not None:
        _configure(shared)
    else:
        asyncio.run(_run_async())
