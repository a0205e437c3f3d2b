"""Fault injection for the simulated provider: which faults, at what rates, and their effect.

Call-level faults answer the whole call with an HTTP error in the vendor's shape:
``rate_limited`` (429 + ``retry-after``), ``overloaded`` (Anthropic 529, OpenAI 503),
``server_error`` (500). At most one applies, drawn in that order.

Answer faults change the model's answer: ``malformed_json`` (no usable JSON at all),
``refusal`` (Anthropic ``stop_reason: refusal``, OpenAI ``message.refusal``),
``max_tokens`` (the answer is cut inside an item: ``stop_reason: max_tokens`` /
``finish_reason: length``), ``missing_item``, ``duplicate_id``, ``unknown_id``,
``invalid_item`` (one entry with a winner outside the schema), ``fenced_json`` (the JSON
inside a Markdown code fence, as small models write it) and ``stall`` (a good answer sent
``fault_stall_seconds`` late, past a client's timeout). The last seven may combine.

Each fault fires with its own rate, drawn from a generator seeded with ``fault_seed``, so a
run is reproducible. ``forced_statuses`` (a queue of HTTP statuses answered before
anything else) makes one-off errors exact for tests.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

CALL_FAULTS = ("rate_limited", "overloaded", "server_error")
ANSWER_FAULTS = (
    "malformed_json",
    "refusal",
    "max_tokens",
    "missing_item",
    "duplicate_id",
    "unknown_id",
    "invalid_item",
    "stall",
    "fenced_json",
)
FAULTS = CALL_FAULTS + ANSWER_FAULTS
MALFORMED_TEXT = "Happy to help! Overall the first essays read better than the second ones."
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


class FaultRates(BaseModel):
    """Probability (0..1) that each fault hits a call."""

    model_config = ConfigDict(extra="forbid")

    rate_limited: float = Field(default=0.0, ge=0.0, le=1.0)
    overloaded: float = Field(default=0.0, ge=0.0, le=1.0)
    server_error: float = Field(default=0.0, ge=0.0, le=1.0)
    malformed_json: float = Field(default=0.0, ge=0.0, le=1.0)
    refusal: float = Field(default=0.0, ge=0.0, le=1.0)
    max_tokens: float = Field(default=0.0, ge=0.0, le=1.0)
    missing_item: float = Field(default=0.0, ge=0.0, le=1.0)
    duplicate_id: float = Field(default=0.0, ge=0.0, le=1.0)
    unknown_id: float = Field(default=0.0, ge=0.0, le=1.0)
    invalid_item: float = Field(default=0.0, ge=0.0, le=1.0)
    stall: float = Field(default=0.0, ge=0.0, le=1.0)
    fenced_json: float = Field(default=0.0, ge=0.0, le=1.0)


def parse_fault(option: str) -> tuple[str, float]:
    """``NAME=RATE`` from the command line, e.g. ``overloaded=0.05``."""
    name, sep, rate = option.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in FAULTS:
        raise ValueError(f"fault must be NAME=RATE with NAME one of {', '.join(FAULTS)}")
    try:
        value = float(rate)
    except ValueError:
        raise ValueError(f"fault rate for {name} must be a number, got {rate!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"fault rate for {name} must be between 0 and 1, got {value}")
    return name, value


def draw(rates: FaultRates, rng: random.Random) -> set[str]:
    """The faults hitting one call: at most one call-level fault, else any answer faults."""
    for name in CALL_FAULTS:
        if rng.random() < getattr(rates, name):
            return {name}
    hits = {name for name in ANSWER_FAULTS if rng.random() < getattr(rates, name)}
    if "malformed_json" in hits:
        return {"malformed_json"}
    if "refusal" in hits:
        return {"refusal"}
    return hits


def spoil_entries(entries: list[dict[str, Any]], faults: set[str]) -> list[dict[str, Any]]:
    """Apply the per-item answer faults to a list of ``comparisons`` entries."""
    out = [dict(e) for e in entries]
    if not out:
        return out
    if "missing_item" in faults:
        out.pop(len(out) // 2)
    if "invalid_item" in faults and out:
        out[0]["winner"] = "Essay C"
    if "duplicate_id" in faults and out:
        twin = dict(out[-1])
        twin["winner"] = "Essay B" if twin["winner"] == "Essay A" else "Essay A"
        out.append(twin)
    if "unknown_id" in faults:
        out.append({**entries[0], "custom_id": UNKNOWN_ID})
    return out
