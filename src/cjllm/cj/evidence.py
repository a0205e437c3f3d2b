"""A batch's comparisons as evidence: who met whom, in which position, who won, how sure,
why, and which provider call answered.

One :class:`Judgement` per comparison row, read from the CJ database by :func:`judgements`,
served by ``GET /api/v1/assessments/{cj_batch_id}/comparisons`` and written by the report
into ``comparisons.csv`` and under each essay of ``report.html``. Nothing here is computed:
every field is what the row recorded (a pending or failed comparison has no winner).

:class:`SettledEvidence` reads a running batch's evidence round by round as its rounds
close, so that a job's report waits only for what was not read yet.
"""

from __future__ import annotations

import asyncio
import heapq
import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, TypeAdapter
from sqlalchemy import TextClause, bindparam, text

from cjllm.cj.store import Store
from cjllm.cj.tables import Comparison
from cjllm.contracts import Winner


class Judgement(BaseModel):
    """One comparison. ``essay_a_id`` was shown first (position A), ``essay_b_id`` second."""

    round_number: int
    request_correlation_id: str
    essay_a_id: str
    essay_b_id: str
    status: str
    winner: Winner | None = None
    confidence: float | None = None
    justification: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempt: int = 1
    bundle_id: str | None = None
    bundle_index: int | None = None
    bundle_size: int | None = None
    provider: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_estimate: float = 0.0
    response_time_ms: int | None = None

    @property
    def winner_id(self) -> str | None:
        """The id of the essay the judge chose, or None when there is no decision."""
        if self.winner == "Essay A":
            return self.essay_a_id
        if self.winner == "Essay B":
            return self.essay_b_id
        return None


class BatchJudgements(BaseModel):
    """The body of ``GET /api/v1/assessments/{cj_batch_id}/comparisons``."""

    cj_batch_id: str
    comparisons: list[Judgement]


_FIELDS = tuple(Judgement.model_fields)  # each a column of the comparison row
_MANY = TypeAdapter(list[Judgement])
_SELECT = f"SELECT id, {', '.join(_FIELDS)} FROM {Comparison.__tablename__} WHERE batch_id = :b"
_ALL = text(f"{_SELECT} ORDER BY id")
_ROUND = text(f"{_SELECT} AND round_number = :r ORDER BY id")
_OTHER_ROUNDS = text(f"{_SELECT} AND round_number NOT IN :rs ORDER BY id").bindparams(
    bindparam("rs", expanding=True)
)

Numbered = list[tuple[int, Judgement]]
"""Judgements with their rows' ids (the order they were planned in), in that order."""


async def judgements(store: Store, batch_id: str) -> list[Judgement]:
    """Every comparison of the batch, in the order they were planned."""
    return [j for _, j in await _read(store, _ALL, {"b": batch_id})]


async def _read(store: Store, query: TextClause, params: dict[str, Any]) -> Numbered:
    """The rows ``query`` selects as judgements. Read as the database's own values, without
    SQLAlchemy's per-column type conversion, and validated as one list in a worker thread
    (the event loop stays free): at 50,000 rows the ORM took 2.3–2.9 s, typed columns
    ~1.9 s, this about half (docs/performance.md)."""
    async with store.read() as s:
        rows = (await s.execute(query, params)).all()
    return await asyncio.to_thread(_numbered, rows)


def _numbered(rows: Sequence[Sequence[Any]]) -> Numbered:
    values = []
    for row in rows:
        value = dict(zip(_FIELDS, row[1:], strict=True))
        value["request_correlation_id"] = _uuid_text(value["request_correlation_id"])
        if value["winner"] not in ("Essay A", "Essay B"):
            value["winner"] = None
        values.append(value)
    return list(zip((row[0] for row in rows), _MANY.validate_python(values), strict=True))


def _uuid_text(value: object) -> str:
    """The id as ``str(uuid.UUID(...))`` writes it (SQLite holds 32 hex digits, PostgreSQL
    a native uuid)."""
    if isinstance(value, str) and len(value) == 32:
        return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}".lower()
    return str(uuid.UUID(str(value)))


class SettledEvidence:
    """The judgements of one running batch, each closed round read as it closes.

    A round none of whose comparisons is pending never changes again (a row changes only
    ``WHERE status = 'pending'``; :mod:`cjllm.cj.settled_rounds`), so its rows can be read
    the moment it closes, while the batch is fitted and the next round planned. Call
    :meth:`round_closed` from the workflow's progress hook (on this event loop);
    :meth:`judgements` then reads only the rounds not read yet (closed before this
    process, or whose read failed) and returns what :func:`judgements` would: every
    comparison, in planned order. :meth:`aclose` drops reads in flight.
    """

    def __init__(self, batch_id: str) -> None:
        self.batch_id = batch_id
        self._store: Store | None = None
        self._reads: dict[int, asyncio.Task[Numbered]] = {}

    def attach(self, store: Store) -> None:
        """Read from ``store`` from now on (rounds that closed before: at the end)."""
        self._store = store

    @property
    def rounds_read(self) -> list[int]:
        """The rounds read (or being read) so far, in order."""
        return sorted(self._reads)

    def round_closed(self, batch_id: str, round_number: int) -> None:
        if batch_id != self.batch_id or self._store is None or round_number in self._reads:
            return
        params = {"b": batch_id, "r": round_number}
        self._reads[round_number] = asyncio.create_task(_read(self._store, _ROUND, params))

    async def judgements(self) -> list[Judgement]:
        if self._store is None:
            raise RuntimeError("SettledEvidence.judgements before attach")
        if self._reads:
            await asyncio.wait(self._reads.values())
        read = {
            n: task.result()
            for n, task in self._reads.items()
            if not task.cancelled() and task.exception() is None
        }
        if read:
            params: dict[str, Any] = {"b": self.batch_id, "rs": list(read)}
            rest = await _read(self._store, _OTHER_ROUNDS, params)
        else:
            rest = await _read(self._store, _ALL, {"b": self.batch_id})
        merged = heapq.merge(*read.values(), rest, key=lambda numbered: numbered[0])
        return [j for _, j in merged]

    async def aclose(self) -> None:
        for task in self._reads.values():
            task.cancel()
        await asyncio.gather(*self._reads.values(), return_exceptions=True)
