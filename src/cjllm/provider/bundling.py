"""Which comparisons may share a provider call, how many, and how the call is built.

The rules (docs/bundling.md has the reasoning):

- **Compatibility key**: provider, model, the overrides (temperature, max tokens), the
  system prompt, the sha256 of the cacheable shared blocks, ``metadata.bundle_group`` and
  the prompt layout (``items`` or ``pool``, resolved at enqueue). Only items with equal
  keys share a call.
- **Size hint** (each item's own cap): ``per_request`` → 1; otherwise the request's
  ``preferred_bundle_size`` (the round size, or the ``serial_override`` integer), or the
  provider maximum when absent; always capped by ``max_items_per_call``.
- **Bundle rule** (:func:`pick_bundle`): a bundle takes its key's oldest eligible item (the
  head) and that item's hint as its size, then the next-oldest items *whose own hint is at
  least that size*, while the estimated input tokens fit the budget. An item that asked
  for less is never put in a bigger bundle than it asked for; it heads its own bundle
  later. A bundle is *ready* when it is full (size reached, or the token budget stops it),
  its head has waited the linger, or it holds a retry that is due (an item back in the
  queue after a try: it goes now, taking along whatever else of its key is pending).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from cjllm.contracts import (
    BatchingStrategy,
    BundleHints,
    BundleLayout,
    ComparisonRequest,
    LLMConfigOverrides,
    PromptBlock,
    TokenUsage,
)
from cjllm.provider.calls import BundleCall, BundleItem, CallOutcome, SharedBlock
from cjllm.provider.prompts import INSTRUCTIONS_CHARS, NONCE_CHARS, render
from cjllm.provider.queue import Spent

CHARS_PER_TOKEN = 4
# the fences around one item (ITEM/END ITEM, two essay fences) with a 16-hex nonce
_ITEM_OVERHEAD_CHARS = 200


def estimate_tokens(chars: int) -> int:
    """A deliberately rough estimate (4 characters per token), used only for caps."""
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


class _Payload(BaseModel):
    """The layout of :meth:`PlannedComparison.to_json`."""

    provider: str
    model: str
    layout: BundleLayout = BundleLayout.ITEMS
    request: ComparisonRequest


@dataclass(frozen=True)
class PlannedComparison:
    """A validated request with the provider, model and prompt layout it will be sent with.

    This is what the queue stores (as JSON): ``request.metadata`` already holds the full
    spine, with ``prompt_sha256`` computed at enqueue.
    """

    request: ComparisonRequest
    provider: str
    model: str
    layout: BundleLayout = BundleLayout.ITEMS

    @property
    def correlation_id(self) -> str:
        return str(self.request.correlation_id)

    def to_json(self) -> str:
        # pydantic serialises the request itself (3x faster than a dict through json.dumps)
        head = _json_head(self.provider, self.model, self.layout)
        return f'{head}, "request": {self.request.model_dump_json()}}}'

    @classmethod
    def from_json(cls, raw: str) -> PlannedComparison:
        """The planned comparison back from :meth:`to_json`, parsed and validated in one pass
        by pydantic-core (~30 µs for a 6.5 kB payload; ``json.loads`` and ``model_construct``,
        which is pure Python, took ~65). A payload today's contract refuses (queued by another
        version of the service) is rebuilt from its fields without validation, as before."""
        try:
            payload = _Payload.model_validate_json(raw)
        except ValidationError:
            return cls._unvalidated(json.loads(raw))
        return cls(payload.request, payload.provider, payload.model, payload.layout)

    @classmethod
    def _unvalidated(cls, data: dict[str, Any]) -> PlannedComparison:
        request, blocks = data["request"], data["request"].get("prompt_blocks")
        correlation_id = request.get("correlation_id")
        return cls(
            request=ComparisonRequest.model_construct(
                user_prompt=request.get("user_prompt"),
                prompt_blocks=None
                if blocks is None
                else [PromptBlock.model_construct(**block) for block in blocks],
                callback_topic=request["callback_topic"],
                correlation_id=None if correlation_id is None else uuid.UUID(correlation_id),
                llm_config_overrides=LLMConfigOverrides.model_construct(
                    **request["llm_config_overrides"]
                ),
                metadata=request.get("metadata", {}),
            ),
            provider=data["provider"],
            model=data["model"],
            layout=BundleLayout(data.get("layout", BundleLayout.ITEMS)),
        )

    def system_blocks(self) -> tuple[SharedBlock, ...]:
        """The system prompt: the override first, then ``system`` blocks in order."""
        return self._prefix()[0]

    def shared_blocks(self) -> tuple[SharedBlock, ...]:
        """The cacheable ``user_content`` blocks: the shared prefix sent once per call."""
        return self._prefix()[1]

    def _prefix(self) -> tuple[tuple[SharedBlock, ...], tuple[SharedBlock, ...]]:
        """The system and shared blocks, built once for the comparisons that share them."""
        blocks = tuple(
            (b.target == "system", b.content, b.cacheable, b.ttl)
            for b in self.request.prompt_blocks or ()
            if b.target == "system" or (b.target == "user_content" and b.cacheable)
        )
        return _prefix_blocks(self.request.llm_config_overrides.system_prompt_override, blocks)

    def bundle_item(self) -> BundleItem:
        return BundleItem(self.correlation_id, tuple(self.request.per_comparison_parts()))

    def item_tokens(self) -> int:
        """Estimated input tokens this item adds to a call: its texts, id and fences.

        In the ``pool`` layout an item adds its texts only when no other item of the call
        holds them, so this is an upper bound there: a bundle's sum over-counts the shared
        texts, and a token budget fed by it stops a pooled bundle early, never late.
        """
        chars = sum(len(p) for p in self.request.per_comparison_parts())
        return estimate_tokens(chars + len(self.correlation_id) + _ITEM_OVERHEAD_CHARS)

    def prefix_tokens(self) -> int:
        chars = sum(len(b.content) for b in (*self.system_blocks(), *self.shared_blocks()))
        return estimate_tokens(chars + INSTRUCTIONS_CHARS)


@functools.lru_cache(maxsize=256)
def _json_head(provider: str, model: str, layout: BundleLayout) -> str:
    """The start of :meth:`PlannedComparison.to_json`, the same for a round's comparisons."""
    return json.dumps({"provider": provider, "model": model, "layout": layout.value})[:-1]


def call_input_tokens(call: BundleCall, *, cached: bool = False) -> int:
    """Estimated input tokens of a whole call: the bundle instructions and items as
    :func:`~cjllm.provider.prompts.render` lays them out (in the ``pool`` layout each
    distinct essay once), plus its cacheable prefix unless ``cached`` (read from the prompt
    cache), plus the rest of it."""
    instructions, items = render(call.items, call.layout, nonce="0" * NONCE_CHARS)
    chars = len(instructions) + len(items)
    for block in (*call.system, *call.shared):
        chars += 0 if cached and block.cacheable else len(block.content)
    return estimate_tokens(chars)


@functools.lru_cache(maxsize=256)
def _prefix_blocks(
    override: str | None, blocks: tuple[tuple[bool, str, bool, str], ...]
) -> tuple[tuple[SharedBlock, ...], tuple[SharedBlock, ...]]:
    system = [SharedBlock(override, cacheable=True)] if override else []
    system += [
        SharedBlock(text, cacheable, ttl) for is_system, text, cacheable, ttl in blocks if is_system
    ]
    shared = tuple(
        SharedBlock(text, True, ttl) for is_system, text, _, ttl in blocks if not is_system
    )
    return tuple(system), shared


def compatibility_key(planned: PlannedComparison, hints: BundleHints | None = None) -> str:
    """sha256 over everything that must be equal for two comparisons to share a call
    (``hints``: the request's metadata hints, when the caller has them already)."""
    if hints is None:
        hints = BundleHints.model_validate(planned.request.metadata)
    overrides = planned.request.llm_config_overrides
    return _key(
        planned.provider,
        planned.model,
        overrides.temperature_override,
        overrides.max_tokens_override,
        planned.system_blocks(),
        planned.shared_blocks(),
        hints.bundle_group,
        planned.layout,
    )


@functools.lru_cache(maxsize=1024, typed=True)
def _key(
    provider: str,
    model: str,
    temperature: float | None,
    max_tokens: int | None,
    system: tuple[SharedBlock, ...],
    shared: tuple[SharedBlock, ...],
    bundle_group: str | None,
    layout: BundleLayout,
) -> str:
    """The key's digest, remembered: the comparisons of a round share one prefix, which
    is hashed once instead of once per comparison (a lookup hashes the prefix's strings
    once per string object and compares equal objects by identity)."""
    digest = hashlib.sha256()
    for block in shared:
        digest.update(f"{block.ttl}\x00{block.content}\x00".encode())
    parts: list[Any] = [
        provider,
        model,
        temperature,
        max_tokens,
        [(b.content, b.cacheable, b.ttl) for b in system],
        digest.hexdigest(),
        bundle_group,
        *([layout.value] if layout is not BundleLayout.ITEMS else []),
    ]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


def size_hint(hints: BundleHints, max_items_per_call: int) -> int:
    """An item's own bundle-size cap (see the module docstring)."""
    if hints.batching_strategy is BatchingStrategy.PER_REQUEST:
        return 1
    wanted = hints.preferred_bundle_size or max_items_per_call
    return max(1, min(wanted, max_items_per_call))


def token_budget(planned: PlannedComparison, max_input_tokens_per_call: int) -> int:
    """Input tokens left for items once the shared prefix is in the call."""
    return max(0, max_input_tokens_per_call - planned.prefix_tokens())


# --------------------------------------------------------------------------- the bundle rule


@dataclass(frozen=True)
class Candidate:
    """What :func:`pick_bundle` needs to know of a queued, eligible item."""

    queue_id: str
    hint: int
    tokens: int
    budget: int
    enqueued_at: float
    available_at: float

    @property
    def requeued(self) -> bool:
        """Back in the queue after a try (retried, split or handed back)."""
        return self.available_at > self.enqueued_at


def pick_bundle(candidates: Iterable[Candidate], now: float, linger: float) -> list[str]:
    """The bundle the oldest candidate heads, or ``[]`` when it is not ready yet.

    ``candidates`` are one key's eligible items (queued, available, not expired), oldest
    first; they are read only as far as the bundle needs (a lazy cursor is fine). The head
    always goes, even alone over budget (the provider then says whether it fits). Mirrored
    in Lua by :mod:`cjllm.provider.redis_queue`.
    """
    rest = iter(candidates)
    head = next(rest, None)
    if head is None:
        return []
    size, used = head.hint, head.tokens
    picked = [head.queue_id]
    full, due = len(picked) >= size, head.requeued
    for cand in rest:
        if full:
            break
        if cand.hint < size:
            continue
        if used + cand.tokens > head.budget:
            full = True
            break
        picked.append(cand.queue_id)
        used += cand.tokens
        full, due = len(picked) >= size, due or cand.requeued
    if full or due or now - head.enqueued_at >= linger:
        return picked
    return []


# --------------------------------------------------------------------------- calls and usage


def build_call(bundle_id: str, planned: Sequence[PlannedComparison]) -> BundleCall:
    """One provider call for a claimed bundle (all items share the compatibility key)."""
    first = planned[0]
    overrides = first.request.llm_config_overrides
    return BundleCall(
        bundle_id=bundle_id,
        provider=first.provider,
        model=first.model,
        system=first.system_blocks(),
        shared=first.shared_blocks(),
        items=tuple(p.bundle_item() for p in planned),
        temperature=overrides.temperature_override,
        max_tokens=overrides.max_tokens_override,
        layout=first.layout,
    )


def _split(total: int, weights: Sequence[float]) -> list[int]:
    """Split an integer by weights (largest remainder), so the shares add up to ``total``."""
    weight_sum = sum(weights)
    if weight_sum <= 0:
        weights, weight_sum = [1.0] * len(weights), float(len(weights))
    raw = [total * w / weight_sum for w in weights]
    shares = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - shares[i], reverse=True)
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def apportion(call: BundleCall, outcome: CallOutcome) -> dict[str, Spent]:
    """Charge a call's usage and cost to its items.

    Prompt tokens (shared prefix included) go by each item's share of the per-item text —
    in the ``pool`` layout a text named by several items is shared evenly among them;
    completion tokens are split evenly (every answer has the same shape); cost goes by each
    item's share of the tokens charged to it. Shares add up exactly to the call's totals.
    """
    ids = [item.custom_id for item in call.items]
    uses: Counter[str] = Counter()
    if call.layout is BundleLayout.POOL:
        uses.update(p for item in call.items for p in set(item.parts))
    weights = [
        sum(len(p) / max(1, uses[p]) for p in item.parts) + len(item.custom_id)
        for item in call.items
    ]
    prompt = _split(outcome.usage.prompt_tokens, weights)
    completion = _split(outcome.usage.output_tokens, [1.0] * len(ids))
    tokens = [p + c for p, c in zip(prompt, completion, strict=True)]
    total_tokens = sum(tokens)
    out: dict[str, Spent] = {}
    for i, cid in enumerate(ids):
        share = tokens[i] / total_tokens if total_tokens else 1.0 / len(ids)
        out[cid] = Spent(prompt[i], completion[i], outcome.cost * share)
    return out


def token_usage(spent: Spent) -> TokenUsage:
    return TokenUsage(
        prompt_tokens=spent.prompt_tokens,
        completion_tokens=spent.completion_tokens,
        total_tokens=spent.prompt_tokens + spent.completion_tokens,
    )
