"""Bundle answers: the schema a judge answers in, and how an answer is checked.

The answer is untrusted. :func:`reconcile` sorts it into answered-and-valid, missing,
invalid, duplicate and unknown ids against the ids that were sent; only valid answers
become success callbacks, and only missing and invalid items are retried.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

WINNERS = ("Essay A", "Essay B")

OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "comparisons": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "custom_id": {"type": "string"},
                    "winner": {"type": "string", "enum": list(WINNERS)},
                    "justification": {"type": "string"},
                    "confidence": {
                        "type": "number",
                        "description": "1 (a guess) to 5 (certain)",
                    },
                },
                "required": ["custom_id", "winner", "justification", "confidence"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["comparisons"],
    "additionalProperties": False,
}
OUTPUT_SCHEMA_NAME = "cj_comparisons"


@dataclass(frozen=True)
class ItemAnswer:
    custom_id: str
    winner: str
    justification: str
    confidence: float


@dataclass
class Reconciled:
    """An answer sorted against the ids sent. Only ``answers`` and ``missing`` change state:
    answers become success callbacks, missing and invalid items are retried alone."""

    answers: dict[str, ItemAnswer] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    invalid: dict[str, str] = field(default_factory=dict)
    duplicates: set[str] = field(default_factory=set)
    unknown: list[str] = field(default_factory=list)
    salvaged: bool = False

    def retry_ids(self) -> set[str]:
        return self.missing | set(self.invalid)


class MalformedOutput(ValueError):
    """The answer holds no usable JSON at all (a call-level failure)."""


def _salvage(text: str) -> list[Any]:
    """Complete objects from a truncated ``{"comparisons": [ {...}, {...}, {...`` answer."""
    start = text.find("[")
    if start < 0:
        return []
    decoder = json.JSONDecoder()
    pos, found = start + 1, list[Any]()
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] != "{":
            return found
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return found
        found.append(obj)


def _check(entry: Any) -> tuple[str | None, ItemAnswer | str]:
    """Validate one entry: ``(custom_id, answer)`` or ``(custom_id, reason)``."""
    if not isinstance(entry, dict):
        return None, "entry is not an object"
    cid = entry.get("custom_id")
    if not isinstance(cid, str):
        return None, "custom_id missing"
    winner, just, conf = entry.get("winner"), entry.get("justification"), entry.get("confidence")
    if winner not in WINNERS:
        return cid, f"winner must be 'Essay A' or 'Essay B', got {winner!r}"
    if not isinstance(just, str) or not just.strip():
        return cid, "justification missing"
    if isinstance(conf, bool) or not isinstance(conf, int | float) or not 1 <= conf <= 5:
        return cid, f"confidence must be a number from 1 to 5, got {conf!r}"
    return cid, ItemAnswer(cid, winner, just.strip(), float(conf))


def reconcile(sent_ids: Sequence[str], text: str | Any) -> Reconciled:
    """Sort a bundle answer (JSON text, or an already-parsed object) against the ids sent.

    Raises :class:`MalformedOutput` when nothing usable can be read.
    """
    salvaged = False
    if isinstance(text, str):
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            entries = _salvage(text)
            if not entries:
                raise MalformedOutput(
                    "the answer is not JSON and no item could be salvaged"
                ) from exc
            data, salvaged = {"comparisons": entries}, True
    else:
        data = text
    if not isinstance(data, dict) or not isinstance(data.get("comparisons"), list):
        raise MalformedOutput('the answer has no "comparisons" list')
    sent = set(sent_ids)
    out = Reconciled(salvaged=salvaged)
    seen: set[str] = set()
    for entry in data["comparisons"]:
        cid, result = _check(entry)
        if cid is None:
            continue
        if cid not in sent:
            out.unknown.append(cid)
            continue
        if cid in seen:
            out.duplicates.add(cid)
            continue
        seen.add(cid)
        if isinstance(result, ItemAnswer):
            out.answers[cid] = result
        else:
            out.invalid[cid] = result
    for cid in out.duplicates:
        # answered more than once: ambiguous, so no answer is trusted and the item is retried
        out.answers.pop(cid, None)
        out.invalid[cid] = "answered more than once"
    out.missing = sent - seen
    return out


def reconcile_answer(
    sent_ids: Sequence[str],
    answer: str | Any,
    *,
    truncated: bool = False,
    refused: str | None = None,
) -> Reconciled:
    """:func:`reconcile` for an answer whose generation stopped early or was refused.

    ``refused`` (a reason): every item is invalid with that reason, retried alone later.
    ``truncated`` (the output-token cap was hit): complete items are kept and the rest are
    missing, even when nothing at all could be salvaged. Otherwise this is :func:`reconcile`
    and raises :class:`MalformedOutput` for an unusable answer.
    """
    if refused is not None:
        return Reconciled(invalid=dict.fromkeys(sent_ids, refused))
    try:
        return reconcile(sent_ids, answer)
    except MalformedOutput:
        if not truncated:
            raise
        return Reconciled(missing=set(sent_ids), salvaged=True)
