"""Anthropic Messages API through the official ``anthropic`` SDK (async client).

One bundle is one ``messages.create`` call:

- ``system``: the system blocks; the user turn: the cacheable shared blocks, then the bundle
  instructions, then the fenced items in the call's layout
  (:func:`cjllm.provider.prompts.render`; ``pool`` sends each distinct essay once).
- Prompt caching: ``cache_control`` breakpoints on the shared prefix (see
  :func:`cache_breakpoints`); usage reports cache writes and reads.
- Structured output: ``output_config.format`` with the bundle JSON schema, or, for models
  listed in ``CJLLM_ANTHROPIC_TOOL_USE_MODELS`` (older ones without structured output),
  one forced tool whose input schema is the bundle schema.
- No sampling parameters: the current Messages API takes none, so a temperature override
  is not sent (it is reported in ``CallOutcome.details["ignored"]``).

The SDK reads ``ANTHROPIC_API_KEY`` and ``ANTHROPIC_BASE_URL``; its own retries are off
(``max_retries=0``) because the queue owns retries and backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import anthropic

from cjllm.provider.adapters.vendor_errors import (
    PLACEHOLDER_KEY,
    MissingCredentials,
    status_error,
    transport_error,
)
from cjllm.provider.answers import (
    OUTPUT_SCHEMA,
    OUTPUT_SCHEMA_NAME,
    MalformedOutput,
    reconcile_answer,
)
from cjllm.provider.calls import BundleCall, CallOutcome, CallUsage, ProviderCallError, SharedBlock
from cjllm.provider.pricing import PriceTable, load_price_table
from cjllm.provider.prompts import render
from cjllm.provider.rate_headers import rate_headers
from cjllm.provider.rate_limits import account_of
from cjllm.settings import ProviderSettings

log = logging.getLogger(__name__)

PROVIDER = "anthropic"
MAX_BREAKPOINTS = 4
TRUNCATED_STOPS = ("max_tokens", "model_context_window_exceeded")


def cache_breakpoints(blocks: Sequence[SharedBlock], n_system: int) -> dict[int, str]:
    """Which prefix blocks carry ``cache_control``, and with which TTL.

    ``blocks`` is the prefix in request order (system blocks first, ``n_system`` of them).
    A one-hour entry may not follow a five-minute one, so a ``1h`` block after a ``5m``
    cacheable block is cached for five minutes. Breakpoints go on the last one-hour block,
    the last cacheable system block and the last cacheable block — at most three, within
    the API's limit of four — so a change in the shared user blocks still reuses the cached
    system prompt.
    """
    effective: list[str | None] = []
    seen_short = False
    for block in blocks:
        if not block.cacheable:
            effective.append(None)
            continue
        ttl = "1h" if block.ttl == "1h" and not seen_short else "5m"
        seen_short = seen_short or ttl == "5m"
        effective.append(ttl)
    cacheable = [i for i, ttl in enumerate(effective) if ttl is not None]
    picks = [
        max((i for i in cacheable if effective[i] == "1h"), default=None),
        max((i for i in cacheable if i < n_system), default=None),
        max(cacheable, default=None),
    ]
    marks: dict[int, str] = {}
    for pick in picks:
        mark = effective[pick] if pick is not None else None
        if pick is not None and mark is not None:
            marks[pick] = mark
    assert len(marks) <= MAX_BREAKPOINTS
    return marks


def _text_block(text: str, ttl: str | None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if ttl is not None:
        block["cache_control"] = {"type": "ephemeral", "ttl": ttl}
    return block


@contextlib.contextmanager
def sdk_errors() -> Iterator[None]:
    """Turn the SDK's exceptions into :class:`ProviderCallError` (shared with Message Batches)."""
    try:
        yield
    except anthropic.APIStatusError as exc:
        raise status_error(
            PROVIDER,
            exc.status_code,
            message=exc.api_message or exc.message,
            headers=exc.response.headers,
            error_type=exc.type,
            error_code=exc.error_code,
            request_id=exc.request_id,
        ) from exc
    except anthropic.APITimeoutError as exc:
        raise transport_error(PROVIDER, exc, timed_out=True) from exc
    except anthropic.APIConnectionError as exc:
        raise transport_error(PROVIDER, exc, timed_out=False) from exc
    except anthropic.APIResponseValidationError as exc:
        raise ProviderCallError(
            "malformed_response",
            f"anthropic returned a body the SDK could not read: {exc.message}",
            retryable=True,
            status=exc.status_code,
            details={"provider": PROVIDER},
        ) from exc
    except anthropic.AnthropicError as exc:
        # raised before any request is sent: missing or unusable credentials
        raise ProviderCallError(
            "client_configuration",
            f"anthropic client cannot send the request: {exc}",
            retryable=False,
            details={"provider": PROVIDER, "exception": type(exc).__name__},
        ) from exc


class AnthropicAdapter:
    """Bundles through ``AsyncAnthropic.messages.create``."""

    name = PROVIDER

    def __init__(
        self,
        *,
        model: str,
        prices: PriceTable,
        tool_use_models: Sequence[str] = (),
        max_output_tokens_per_item: int = 400,
        timeout: float = 300.0,
        api_key: str | None = None,
        base_url: str | None = None,
        client: anthropic.AsyncAnthropic | None = None,
    ) -> None:
        self.default_model = model
        self.prices = prices
        self.tool_use_models = tuple(tool_use_models)
        self.max_output_tokens_per_item = max_output_tokens_per_item
        self.timeout = timeout
        if client is None:
            client = self._client(api_key, base_url, timeout)
        self.client = client
        self.account = account_of(str(client.base_url), client.api_key or client.auth_token)

    @staticmethod
    def _client(
        api_key: str | None, base_url: str | None, timeout: float
    ) -> anthropic.AsyncAnthropic:
        """The SDK client (credentials from its environment), or :class:`MissingCredentials`."""
        try:
            client = anthropic.AsyncAnthropic(
                api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout
            )
        except anthropic.AnthropicError as exc:  # e.g. a credentials profile that is missing
            raise MissingCredentials(
                f"the anthropic provider has no usable credentials: {exc}"
            ) from exc
        if client.api_key is None and client.auth_token is None and client.credentials is None:
            if not (base_url or os.environ.get("ANTHROPIC_BASE_URL")):
                raise MissingCredentials(
                    "the anthropic provider needs ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL "
                    "naming an Anthropic-compatible server that takes no key)"
                )
            client = anthropic.AsyncAnthropic(
                api_key=PLACEHOLDER_KEY, base_url=base_url, max_retries=0, timeout=timeout
            )
        return client

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> AnthropicAdapter:
        return cls(
            model=settings.anthropic_model,
            prices=load_price_table(settings.price_table_path),
            tool_use_models=settings.anthropic_tool_use_models,
            max_output_tokens_per_item=settings.max_output_tokens_per_item,
            timeout=settings.call_timeout_seconds,
        )

    def output_mode(self, model: str) -> str | None:
        return "tool_use" if self.uses_tool(model or self.default_model) else "json_schema"

    def uses_tool(self, model: str) -> bool:
        """True for models configured to answer through a forced tool instead of a schema."""
        return any(model == p or model.startswith(p) for p in self.tool_use_models)

    def request_params(self, call: BundleCall) -> dict[str, Any]:
        """The ``messages.create`` body for a bundle (also a Message Batches ``params``)."""
        model = call.model or self.default_model
        prefix = (*call.system, *call.shared)
        marks = cache_breakpoints(prefix, len(call.system))
        instructions, items_text = render(call.items, call.layout)
        system = [_text_block(b.content, marks.get(i)) for i, b in enumerate(call.system)]
        shared = [
            _text_block(b.content, marks.get(len(call.system) + i))
            for i, b in enumerate(call.shared)
        ]
        params: dict[str, Any] = {
            "model": model,
            "max_tokens": call.max_output_tokens(self.max_output_tokens_per_item),
            "messages": [
                {
                    "role": "user",
                    "content": [
                        *shared,
                        _text_block(instructions, None),
                        _text_block(items_text, None),
                    ],
                }
            ],
        }
        if system:
            params["system"] = system
        if self.uses_tool(model):
            params["tools"] = [
                {
                    "name": OUTPUT_SCHEMA_NAME,
                    "description": "Record the judgement of every comparison item.",
                    "input_schema": OUTPUT_SCHEMA,
                }
            ]
            params["tool_choice"] = {"type": "tool", "name": OUTPUT_SCHEMA_NAME}
        else:
            params["output_config"] = {"format": {"type": "json_schema", "schema": OUTPUT_SCHEMA}}
        return params

    async def _send(self, params: dict[str, Any]) -> tuple[anthropic.types.Message, dict[str, str]]:
        """The message and the answer's rate-limit headers."""
        with sdk_errors():
            raw = await self.client.messages.with_raw_response.create(
                **params, timeout=self.timeout
            )
            message: anthropic.types.Message = await raw.parse()
            return message, rate_headers(raw.headers)

    async def call_bundle(self, call: BundleCall) -> CallOutcome:
        params = self.request_params(call)
        started = time.monotonic()
        message, headers = await self._send(params)
        outcome = self.outcome(call, message, int((time.monotonic() - started) * 1000))
        outcome.rate_headers = headers
        return outcome

    def outcome(
        self,
        call: BundleCall,
        message: anthropic.types.Message,
        latency_ms: int,
        *,
        batch: bool = False,
    ) -> CallOutcome:
        """Read one answered bundle: reconcile it against the ids sent, count and price it.
        ``batch``: the message is a Message Batches result (priced at the batch rate)."""
        sent_ids = [item.custom_id for item in call.items]
        answer: Any = "".join(b.text for b in message.content if b.type == "text")
        for block in message.content:
            if block.type == "tool_use" and block.name == OUTPUT_SCHEMA_NAME:
                answer = block.input
        stop = message.stop_reason
        asked = call.model or self.default_model
        details: dict[str, Any] = {
            "provider": PROVIDER,
            "message_id": message.id,
            "output_mode": "tool_use" if self.uses_tool(asked) else "json_schema",
        }
        if call.temperature is not None:
            details["ignored"] = ["temperature"]
            log.warning(
                "anthropic: temperature %s not sent (no sampling parameters)", call.temperature
            )
        if stop == "refusal" and message.stop_details is not None:
            details["refusal"] = message.stop_details.model_dump(exclude_none=True)
        try:
            reconciled = reconcile_answer(
                sent_ids,
                answer,
                truncated=stop in TRUNCATED_STOPS,
                refused="refusal" if stop == "refusal" else None,
            )
        except MalformedOutput as exc:
            raise ProviderCallError(
                "malformed_output",
                f"anthropic answer unusable: {exc}",
                retryable=True,
                details={**details, "stop_reason": stop, "excerpt": str(answer)[:300]},
            ) from exc
        usage = CallUsage(
            input_tokens=message.usage.input_tokens,
            output_tokens=message.usage.output_tokens,
            cache_creation_input_tokens=message.usage.cache_creation_input_tokens or 0,
            cache_read_input_tokens=message.usage.cache_read_input_tokens or 0,
        )
        model = message.model or asked
        breakdown = message.usage.cache_creation
        long_writes = breakdown.ephemeral_1h_input_tokens if breakdown is not None else 0
        cost = self.prices.cost(model, usage, cache_write_1h_tokens=long_writes, batch=batch)
        details["priced"] = cost.priced
        details["price_table_as_of"] = self.prices.as_of
        if batch:
            details["batch_price"] = True
        if breakdown is not None:
            details["cache_creation"] = breakdown.model_dump()
        return CallOutcome(
            reconciled=reconciled,
            usage=usage,
            cost=cost.total,
            model=model,
            latency_ms=latency_ms,
            stop_reason=stop,
            details=details,
        )

    async def aclose(self) -> None:
        await self.client.close()
