"""Start-up of a fresh CJ database: alembic ``upgrade head`` against this checkout's path for an
empty SQLite file (tables created and stamped at the head revision), side by side.

    python bench/fresh_database.py

Alternates the two on new files 25 times and prints the median wall and CPU milliseconds of
each (the first three of each left out: one-time imports and caches).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

from cjllm.cj.database import WRITE_OPTION, create_engine, migrate, upgrade_to_head


async def _once(folder: str, i: int, alembic: bool) -> tuple[float, float]:
    engine = create_engine(
        f"sqlite+aiosqlite:///{folder}/{'alembic' if alembic else 'new'}{i}.sqlite"
    )
    wall, cpu = time.perf_counter(), time.process_time()
    if alembic:
        async with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
            await conn.run_sync(upgrade_to_head)
    else:
        await migrate(engine)  # an empty SQLite file: created at the head revision
    spent = time.perf_counter() - wall, time.process_time() - cpu
    await engine.dispose()
    return spent


async def main() -> None:
    folder = tempfile.mkdtemp()
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for i in range(25):
        for alembic in (True, False):
            runs[alembic].append(await _once(folder, i, alembic))
    for alembic, label in ((True, "alembic upgrade head"), (False, "created at head")):
        kept = runs[alembic][3:]
        wall = 1000 * statistics.median(w for w, _ in kept)
        cpu = 1000 * statistics.median(c for _, c in kept)
        print(f"{label:>22}: wall {wall:6.1f} ms, CPU {cpu:6.1f} ms (medians of {len(kept)})")


if __name__ == "__main__":
    asyncio.run(main())
