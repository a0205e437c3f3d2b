"""The CJ database's transactions: one engine, write sessions that take turns, read sessions.

The statements are :class:`cjllm.cj.store.Store`'s (built on :class:`Sessions` through
:class:`cjllm.cj.round_rows.RoundRows`); the engine and migrations are :mod:`.database`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Self

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cjllm.cj.database import WRITE_OPTION, create_engine, migrate


class Sessions:
    """Transactions on the CJ database. Each store method is one short transaction.

    On SQLite, writes from this process take turns on an asyncio lock, so they never fall
    into SQLite's sleeping busy handler; other processes are held off by ``BEGIN IMMEDIATE``.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        writer = engine.execution_options(**{WRITE_OPTION: True})
        self._writer = async_sessionmaker(writer, expire_on_commit=False)
        self._reader = async_sessionmaker(engine, expire_on_commit=False)
        self._lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction, committed when the block ends without an exception."""
        async with self._lock or nullcontext(), self._writer.begin() as session:
            yield session

    def read(self) -> AsyncSession:
        """A session for reads (use as ``async with store.read() as s``)."""
        return self._reader()

    @classmethod
    async def open(cls, url: str, *, run_migrations: bool = True) -> Self:
        engine = create_engine(url)
        if run_migrations:
            await migrate(engine)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()
