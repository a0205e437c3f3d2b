"""A deterministic mock LLM: the simulated judge behind the real bundle wire format.

It renders each call in its layout with :func:`cjllm.provider.prompts.render`, reads the
items back as a provider would (:func:`cjllm.provider.prompts.read_items`), answers every
item with :class:`cjllm.sim.judge.Judge` (seeded by the item's ``custom_id``, so retries get
the same answer), writes the answer as JSON text and runs it through
:func:`cjllm.provider.answers.reconcile` — so injected faults exercise the same validation a
real answer goes through.

Fault injection for tests and demos:

- per item (:meth:`MockAdapter.fail_item`: the next ``times`` answers for that
  ``custom_id`` are faulty): ``"malformed"`` (an invalid winner), ``"bad_confidence"``
  (confidence 9), ``"missing"`` (no entry), ``"duplicate"`` (two conflicting entries);
- :attr:`MockAdapter.extra_ids`: unknown ids added to the next answer;
- per call (:attr:`MockAdapter.call_faults`, used in order, one per call):
  a :class:`ProviderCallError` to raise (see :func:`rate_limited`, :func:`overloaded`,
  :func:`server_error`), or ``"garbage"`` for an answer with no usable JSON.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from cjllm.provider.answers import reconcile
from cjllm.provider.bundling import estimate_tokens
from cjllm.provider.calls import BundleCall, CallOutcome, CallUsage, ProviderCallError
from cjllm.provider.prompts import read_items, render
from cjllm.settings import ProviderSettings
from cjllm.sim.judge import Judge

ItemFault = Literal["malformed", "bad_confidence", "missing", "duplicate"]


def rate_limited(retry_after: float) -> ProviderCallError:
    """An HTTP 429 with a ``retry-after`` (seconds)."""
    return ProviderCallError(
        "rate_limited", "429 Too Many Requests", retryable=True, status=429, retry_after=retry_after
    )


def overloaded() -> ProviderCallError:
    """An HTTP 529 (the provider is overloaded)."""
    return ProviderCallError("overloaded", "529 Overloaded", retryable=True, status=529)


def server_error() -> ProviderCallError:
    return ProviderCallError(
        "server_error", "500 Internal Server Error", retryable=True, status=500
    )


T = TypeVar("T")
KEEP_CALLS = 100
"""Calls the mock keeps for inspection (see :class:`MockAdapter`)."""


def _keep(record: list[T], entry: T) -> None:
    record.append(entry)
    if len(record) > 2 * KEEP_CALLS:
        del record[: len(record) - KEEP_CALLS]


@dataclass
class MockAdapter:
    """The ``mock`` provider. ``calls`` records the calls made, in order, ``call_times``
    when each started (UNIX seconds) and ``outcomes`` what each answered: the last
    :data:`KEEP_CALLS` at least, twice that at most (a long run, e.g. 50,000 comparisons in
    a child worker, held every prompt it was sent: ~350 MB)."""

    judge: Judge = field(default_factory=Judge)
    default_model: str = "mock-judge-1"
    latency_seconds: float = 0.0
    usd_per_million_input: float = 0.0
    usd_per_million_output: float = 0.0
    name: str = "mock"
    account: str = "mock"
    item_faults: dict[str, list[ItemFault]] = field(default_factory=dict)
    extra_ids: list[str] = field(default_factory=list)
    call_faults: deque[ProviderCallError | Literal["garbage"]] = field(default_factory=deque)
    calls: list[BundleCall] = field(default_factory=list)
    call_times: list[float] = field(default_factory=list)
    outcomes: list[CallOutcome] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> MockAdapter:
        return cls(
            judge=Judge(
                noise=settings.mock_noise,
                position_bias=settings.mock_position_bias,
                seed=settings.mock_seed,
            ),
            default_model=settings.mock_model,
            latency_seconds=settings.mock_latency_seconds,
        )

    def fail_item(self, custom_id: str, fault: ItemFault, times: int = 1) -> None:
        """Make the next ``times`` answers for ``custom_id`` carry ``fault``."""
        self.item_faults.setdefault(custom_id, []).extend([fault] * times)

    def output_mode(self, model: str) -> str | None:
        return "mock"

    async def call_bundle(self, call: BundleCall) -> CallOutcome:
        started = time.monotonic()
        _keep(self.calls, call)
        _keep(self.call_times, time.time())
        if self.latency_seconds:
            await asyncio.sleep(self.latency_seconds)
        fault = self.call_faults.popleft() if self.call_faults else None
        if isinstance(fault, ProviderCallError):
            raise fault
        instructions, items_text = render(call.items, call.layout)
        prompt = f"{instructions}\n\n{items_text}"
        text = "Sorry, I cannot do that." if fault == "garbage" else self._answer(prompt)
        reconciled = reconcile([item.custom_id for item in call.items], text)
        prompt_chars = len(instructions) + len(items_text)
        prompt_chars += sum(len(b.content) for b in (*call.system, *call.shared))
        usage = CallUsage(input_tokens=estimate_tokens(prompt_chars), output_tokens=len(text) // 4)
        cost = (
            usage.input_tokens * self.usd_per_million_input
            + usage.output_tokens * self.usd_per_million_output
        ) / 1e6
        outcome = CallOutcome(
            reconciled=reconciled,
            usage=usage,
            cost=cost,
            model=call.model,
            latency_ms=int((time.monotonic() - started) * 1000),
            stop_reason="end_turn",
        )
        _keep(self.outcomes, outcome)
        return outcome

    def _answer(self, prompt: str) -> str:
        entries: list[dict[str, Any]] = []
        for item in read_items(prompt):
            decision = self.judge.decide(item.custom_id, item.parts)
            entry: dict[str, Any] = {
                "custom_id": item.custom_id,
                "winner": decision.winner,
                "justification": decision.justification,
                "confidence": decision.confidence,
            }
            pending = self.item_faults.get(item.custom_id)
            fault = pending.pop(0) if pending else None
            if fault == "missing":
                continue
            if fault == "malformed":
                entry["winner"] = "Essay C"
            elif fault == "bad_confidence":
                entry["confidence"] = 9
            entries.append(entry)
            if fault == "duplicate":
                other = "Essay B" if decision.winner == "Essay A" else "Essay A"
                entries.append({**entry, "winner": other})
        for unknown in self.extra_ids:
            entries.append(
                {
                    "custom_id": unknown,
                    "winner": "Essay A",
                    "justification": "An answer to an item nobody asked about.",
                    "confidence": 3,
                }
            )
        self.extra_ids = []
        return json.dumps({"comparisons": entries})

    async def aclose(self) -> None:
        return None
