"""Bundle answers: the schema a judge answers in, and how an answer is checked.

The answer is untrusted. :func:`reconcile` sorts it into answered-and-valid, missing,
invalid, duplicate and unknown ids against the ids that were sent; only valid answers
become success callbacks, and only missing and invalid items are retried.
"""

from __future__ import annotations

import json
import re
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


JUSTIFICATION_MAX_CHARS = 400


def answer_schema(sent_ids: Sequence[str]) -> dict[str, Any]:
    """:data:`OUTPUT_SCHEMA` narrowed to one call, for servers that enforce a schema by
    constrained decoding (llama.cpp, vLLM, Ollama): exactly one entry per item, ``custom_id``
    one of the ids sent, confidence a whole number 1..5 and a bounded justification. A small
    model then cannot invent an id or a confidence of 2354976481450096; the answer is still
    checked as untrusted (a grammar does not stop an id answered twice)."""
    n = len(sent_ids)
    entry = {
        "type": "object",
        "properties": {
            "custom_id": {"type": "string", "enum": list(sent_ids)},
            "winner": {"type": "string", "enum": list(WINNERS)},
            "justification": {"type": "string", "maxLength": JUSTIFICATION_MAX_CHARS},
            "confidence": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
        },
        "required": ["custom_id", "winner", "justification", "confidence"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "comparisons": {"type": "array", "items": entry, "minItems": n, "maxItems": n}
        },
        "required": ["comparisons"],
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class ItemAnswer:
    custom_id: str
    winner: str
    justification: str
    confidence: float


@dataclass
class Reconciled:
    """An answer sorted against the ids sent. Only ``answers`` and ``missing`` change state:
    answers become success callbacks, missing and invalid items are retried.

    ``excerpt`` is the start of the model's answer as it came (its own words, for an error
    callback when the model cannot answer at all); ``salvaged`` says the JSON was cut short
    and only its complete items were read."""

    answers: dict[str, ItemAnswer] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    invalid: dict[str, str] = field(default_factory=dict)
    duplicates: set[str] = field(default_factory=set)
    unknown: list[str] = field(default_factory=list)
    salvaged: bool = False
    excerpt: str = ""

    def retry_ids(self) -> set[str]:
        return self.missing | set(self.invalid)


class MalformedOutput(ValueError):
    """The answer holds no usable JSON at all (a call-level failure). The message quotes the
    start of what the model said."""


EXCERPT_CHARS = 300
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?")


def excerpt(text: str) -> str:
    """The start of a model's answer, on one line, for messages and error callbacks."""
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


def _unfence(text: str) -> str:
    """The inside of the first Markdown code fence (to the closing fence, or to the end when
    the answer was cut inside it); the text itself when it has no fence."""
    opening = _FENCE.search(text)
    if opening is None:
        return text
    inside = text[opening.end() :]
    closing = inside.find("```")
    return inside if closing < 0 else inside[:closing]


def _salvage(text: str) -> list[Any]:
    """The complete entries of a truncated ``{"comparisons": [ {...}, {...}, {...`` answer:
    the longest prefix of the array that parses, one object at a time."""
    key = text.find('"comparisons"')
    start = text.find("[", key if key >= 0 else 0)
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


def _first_value(text: str) -> Any:
    """The JSON object or array that starts at the first ``{`` or ``[`` of ``text``, ignoring
    chatter before and after it. Raises ``ValueError`` when there is none or it is cut."""
    match = re.search(r"[\[{]", text)
    if match is None:
        raise ValueError("no JSON value")
    return json.JSONDecoder().raw_decode(text, match.start())[0]


def _entries(data: Any) -> list[Any] | None:
    """The list of entries in an answer of any of the shapes small models produce:
    ``{"comparisons": [...]}`` (the schema), a bare list, or one bare entry."""
    if isinstance(data, dict):
        inner = data.get("comparisons")
        if isinstance(inner, list):
            return inner
        if isinstance(inner, dict):
            return [inner]
        if "custom_id" in data:
            return [data]
        return None
    if isinstance(data, list):
        return data
    return None


def read_entries(text: str) -> tuple[list[Any], bool]:
    """The entries of an answer text: ``(entries, salvaged)``.

    Tolerant of the ways answers go wrong, never of their values: a Markdown code fence is
    stripped, chatter around the JSON is skipped, and a JSON cut short keeps the complete
    entries before the cut (``salvaged``). Raises :class:`MalformedOutput` when no entry
    can be read.
    """
    body = _unfence(text).strip()
    try:
        data: Any = json.loads(body)
    except json.JSONDecodeError:
        try:
            data = _first_value(body)
        except ValueError:
            data = None
    if data is not None:
        entries = _entries(data)
        if entries is not None:
            return entries, False
    salvaged = _salvage(body)
    if salvaged:
        return salvaged, True
    if data is not None:
        raise MalformedOutput(f'the answer has no "comparisons" list: {excerpt(text)!r}')
    raise MalformedOutput(
        f"the answer is not JSON and no item could be salvaged: {excerpt(text)!r}"
    )


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
    """Sort a bundle answer (text, or an already-parsed object) against the ids sent.

    The text is read by :func:`read_entries`. An id answered more than once is invalid
    (docs/decisions.md: we cannot tell which answer is meant, and one of them may be another
    item's answer under the wrong id). Raises :class:`MalformedOutput` when nothing usable
    can be read.
    """
    if isinstance(text, str):
        entries, salvaged = read_entries(text)
        said = excerpt(text)
    else:
        found = _entries(text)
        if found is None:
            raise MalformedOutput('the answer has no "comparisons" list')
        entries, salvaged, said = found, False, excerpt(json.dumps(text, default=str))
    sent = set(sent_ids)
    out = Reconciled(salvaged=salvaged, excerpt=said)
    seen: set[str] = set()
    for entry in entries:
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
        said = excerpt(answer) if isinstance(answer, str) else ""
        return Reconciled(invalid=dict.fromkeys(sent_ids, refused), excerpt=said)
    try:
        return reconcile(sent_ids, answer)
    except MalformedOutput:
        if not truncated:
            raise
        said = excerpt(answer) if isinstance(answer, str) else ""
        return Reconciled(missing=set(sent_ids), salvaged=True, excerpt=said)
