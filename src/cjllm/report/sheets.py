"""``ranking.csv`` and ``comparisons.csv``: what a spreadsheet opens.

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage
return) as a formula, so an essay id or a justification from an untrusted source could make
it compute, or fetch, something. Every text cell goes through :func:`safe_cell`, which puts
a ``'`` in front of such a value (the usual defence; spreadsheets show the text as written).
Numbers are written as numbers: a negative score is data, not a formula.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from cjllm.cj.evidence import Judgement

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
RANKING_COLUMNS = ["rank", "essay_id", "score", "se", "lower95", "upper95", "comparisons", "wins"]
COMPARISON_COLUMNS = [
    "round",
    "request_correlation_id",
    "essay_a_id",
    "essay_b_id",
    "status",
    "winner",
    "winner_position",
    "confidence",
    "justification",
    "error_code",
    "attempt",
    "bundle_id",
    "bundle_index",
    "bundle_size",
    "provider",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_estimate",
    "response_time_ms",
]


def safe_cell(value: Any) -> Any:
    """A text value a spreadsheet will not run as a formula; other values unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _csv(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: safe_cell(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def ranking_csv(rows: Sequence[dict[str, Any]]) -> str:
    """``ranking.csv``: the ranking rows, with grade columns only when anchors gave grades."""
    columns = list(RANKING_COLUMNS)
    if any(r["is_anchor"] for r in rows):
        columns.append("is_anchor")
    if any(r["projected_grade"] is not None for r in rows):
        columns += ["projected_grade", "grade_probability"]
    return _csv(columns, rows)


def comparisons_csv(judgements: Sequence[Judgement]) -> str:
    """``comparisons.csv``: every judgement, in the order the comparisons were planned."""
    rows = []
    for j in judgements:
        row = j.model_dump()
        row["round"] = j.round_number
        row["winner"] = j.winner_id
        row["winner_position"] = {"Essay A": "A", "Essay B": "B"}.get(j.winner or "")
        rows.append(row)
    return _csv(COMPARISON_COLUMNS, rows)
