"""What one provider call is made of, and what it gives back.

A :class:`BundleCall` (shared prefix once, then N items) goes to an :class:`LLMAdapter`,
which answers with a :class:`CallOutcome` already reconciled against the ids sent, or raises
:class:`ProviderCallError`. A bundle of one is how a single comparison is sent
(``per_request``); adapters need no second code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from cjllm.contracts import BundleLayout
from cjllm.provider.answers import Reconciled

ANSWER_OVERHEAD_TOKENS = 64
"""Output tokens a bundle's answer needs beyond its items (the JSON around them)."""


@dataclass(frozen=True)
class SharedBlock:
    """A block of the shared prefix. ``cacheable`` blocks get a prompt-cache breakpoint."""

    content: str
    cacheable: bool = False
    ttl: str = "5m"


@dataclass(frozen=True)
class BundleItem:
    """One comparison inside a bundle: its ``custom_id`` and per-comparison parts.

    ``parts`` is (Essay A, Essay B) when the request came as prompt blocks, or the single
    whole ``user_prompt`` otherwise.
    """

    custom_id: str
    parts: tuple[str, ...]


@dataclass(frozen=True)
class BundleCall:
    """Everything one provider call needs. All items share the compatibility key."""

    bundle_id: str
    provider: str
    model: str
    system: tuple[SharedBlock, ...]
    shared: tuple[SharedBlock, ...]
    items: tuple[BundleItem, ...]
    temperature: float | None = None
    max_tokens: int | None = None
    layout: BundleLayout = BundleLayout.ITEMS
    """How the items are laid out in the prompt (:func:`cjllm.provider.prompts.render`)."""

    def max_output_tokens(self, per_item_default: int) -> int:
        """The call's ``max_tokens``: each item's (the override, else the default) plus the
        answer's overhead. The rate limiter reserves this much of the output budget."""
        per_item = self.max_tokens or per_item_default
        return per_item * len(self.items) + ANSWER_OVERHEAD_TOKENS


@dataclass(frozen=True)
class CallUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


@dataclass
class CallOutcome:
    """What one provider call produced, already reconciled against the ids sent."""

    reconciled: Reconciled
    usage: CallUsage
    cost: float
    model: str
    latency_ms: int
    stop_reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    rate_headers: dict[str, str] = field(default_factory=dict)
    """The answer's rate-limit headers (:func:`cjllm.provider.rate_headers.rate_headers`)."""


class ProviderCallError(Exception):
    """A call-level failure. ``retryable`` decides between backoff and an error callback;
    ``rate_headers`` are the error answer's rate-limit headers, if it had any."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
        rate_headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.details = details or {}
        self.rate_headers = rate_headers or {}


class LLMAdapter(Protocol):
    """One vendor. ``call_bundle`` raises :class:`ProviderCallError` for call-level failures.

    ``account`` says where calls go and whose key (base URL + key fingerprint, never the
    key: :func:`cjllm.provider.rate_limits.account_of`); the rate limiter keys on it."""

    name: str
    default_model: str
    account: str

    async def call_bundle(self, call: BundleCall) -> CallOutcome: ...

    def output_mode(self, model: str) -> str | None:
        """How ``model``'s answers are constrained (e.g. ``json_schema``, ``tool_use``), as
        last used; ``None`` when not known yet."""
        ...

    async def aclose(self) -> None: ...
