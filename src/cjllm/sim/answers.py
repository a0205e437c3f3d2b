"""What the simulated model answers to a bundle prompt.

The prompt is read back, in either bundle layout, with
:func:`cjllm.provider.prompts.read_items`, every item is decided by the
:class:`~cjllm.sim.judge.Judge` under its own ``custom_id``, and the answer faults drawn for
the call are applied. An answer longer than the request's output-token cap is cut there,
as a real model's would be.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cjllm.provider.prompts import read_items
from cjllm.sim.faults import MALFORMED_TEXT, spoil_entries
from cjllm.sim.judge import Judge
from cjllm.sim.tokens import CHARS_PER_TOKEN, count_tokens

REFUSAL_TEXT = "I can't help with comparing these texts."


Parsed = list[tuple[str, list[str]]]
"""Items as the judge read them: (custom_id, sha256 of each part), in prompt order."""


@dataclass(frozen=True)
class Answer:
    items: Parsed
    entries: list[dict[str, Any]]
    """The entries the model produced (after faults), complete ones only when cut."""
    text: str
    """The answer as generated text (JSON, a cut JSON, a refusal or malformed text)."""
    stop: str
    """``end``, ``max_tokens`` or ``refusal``."""
    output_tokens: int

    @property
    def custom_ids(self) -> list[str]:
        return [cid for cid, _ in self.items]


def decide_items(judge: Judge, prompt: str) -> tuple[Parsed, list[dict[str, Any]]]:
    """The items found in ``prompt`` and the judge's entry for each."""
    items = read_items(prompt)
    parsed = [
        (item.custom_id, [hashlib.sha256(p.encode()).hexdigest() for p in item.parts])
        for item in items
    ]
    entries = []
    for item in items:
        decision = judge.decide(item.custom_id, item.parts)
        entries.append(
            {
                "custom_id": item.custom_id,
                "winner": decision.winner,
                "justification": decision.justification,
                "confidence": decision.confidence,
            }
        )
    return parsed, entries


def _cut_inside_an_item(entries: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Text cut halfway through the entry after the first half: complete entries survive."""
    keep = len(entries) // 2
    done = [json.dumps(e) for e in entries[:keep]]
    partial = json.dumps(entries[keep]) if keep < len(entries) else ""
    head = '{"comparisons": [' + ", ".join(done) + (", " if done and partial else "")
    return head + partial[: max(1, len(partial) // 2)], entries[:keep]


def compose(
    judge: Judge,
    prompt: str,
    *,
    max_tokens: int,
    faults: set[str],
    drop: Callable[[], bool] | None = None,
) -> Answer:
    """The answer to ``prompt``. ``drop()`` is asked once per item: true leaves it out."""
    parsed, entries = decide_items(judge, prompt)
    if drop is not None:
        entries = [e for e in entries if not drop()]
    if "refusal" in faults:
        return Answer(parsed, [], REFUSAL_TEXT, "refusal", count_tokens(REFUSAL_TEXT))
    if "malformed_json" in faults:
        return Answer(parsed, [], MALFORMED_TEXT, "end", count_tokens(MALFORMED_TEXT))
    spoiled = spoil_entries(entries, faults)
    text, stop = json.dumps({"comparisons": spoiled}), "end"
    if "max_tokens" in faults:
        text, spoiled = _cut_inside_an_item(spoiled)
        stop = "max_tokens"
    elif count_tokens(text) > max_tokens:
        text = text[: max_tokens * CHARS_PER_TOKEN]
        spoiled = [e for e in spoiled if json.dumps(e) in text]
        stop = "max_tokens"
    if "fenced_json" in faults:
        text = "```json\n" + text + ("\n```" if stop == "end" else "")
    return Answer(parsed, spoiled, text, stop, count_tokens(text))
