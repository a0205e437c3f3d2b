"""A batch's comparisons as evidence: who met whom, in which position, who won, how sure,
why, and which provider call answered.

One :class:`Judgement` per comparison row, read from the CJ database by :func:`judgements`,
served by ``GET /api/v1/assessments/{cj_batch_id}/comparisons`` and written by the report
into ``comparisons.csv`` and under each essay of ``report.html``. Nothing here is computed:
every field is what the row recorded (a pending or failed comparison has no winner).
"""

from __future__ import annotations

from pydantic import BaseModel, TypeAdapter

from cjllm.cj.store import Store
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


async def judgements(store: Store, batch_id: str) -> list[Judgement]:
    """Every comparison of the batch, in the order they were planned (read as plain columns
    and validated as one list: ORM rows and a model each took 2.3–2.9 s at 50,000)."""
    values = []
    for row in await store.comparison_columns(batch_id, _FIELDS):
        value = dict(zip(_FIELDS, row, strict=True))
        value["request_correlation_id"] = str(value["request_correlation_id"])
        if value["winner"] not in ("Essay A", "Essay B"):
            value["winner"] = None
        values.append(value)
    return _MANY.validate_python(values)
