"""OpenAI Chat Completions (and OpenAI-compatible servers) through the official ``openai`` SDK.

One bundle is one ``chat.completions.create`` call: a system message holding the system
blocks, then one user message holding the shared blocks, the bundle instructions and the
fenced items, in that order, so the shared prefix is byte-identical across calls and
OpenAI's automatic prompt cache can serve it (``prompt_cache_key`` keeps such calls on one
cache). The answer is constrained by ``response_format`` ``json_schema`` with ``strict``;
OpenAI-compatible servers that refuse that dialect are met on the rung of
:mod:`cjllm.provider.output_modes` they accept (negotiated per base URL and model).

The items are laid out as the call says (:func:`cjllm.provider.prompts.render`; ``pool``
sends each distinct essay once).

Prompt-list mode (``CJLLM_OPENAI_COMPLETIONS_PROMPT_LIST=true``), for servers whose
``/v1/completions`` accepts a list of prompts (vLLM, for instance): one call carries N
independent single-item prompts and ``choices[i].index`` maps each answer back to item i.
Each prompt holds one comparison, so there is nothing to pool: the ``pool`` layout does not
apply there (every prompt is rendered in the ``items`` layout, and the outcome's
``details["ignored"]`` says ``bundle_layout``).

The SDK reads ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``; its own retries are off
(``max_retries=0``) because the queue owns retries and backoff.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import openai
from openai.types import Completion
from openai.types.chat import ChatCompletion

from cjllm.contracts import BundleLayout
from cjllm.provider.adapters.openai_answers import read_chat, read_completions, usage_of
from cjllm.provider.adapters.vendor_errors import (
    PLACEHOLDER_KEY,
    MissingCredentials,
    status_error,
    transport_error,
)
from cjllm.provider.answers import (
    OUTPUT_SCHEMA,
    answer_schema,
)
from cjllm.provider.calls import (
    ANSWER_OVERHEAD_TOKENS,
    BundleCall,
    BundleItem,
    CallOutcome,
    ProviderCallError,
)
from cjllm.provider.output_modes import (
    OutputMode,
    OutputModes,
    refuses_response_format,
    response_format,
    schema_in_prompt,
)
from cjllm.provider.pricing import PriceTable, load_price_table
from cjllm.provider.prompts import render, render_items
from cjllm.provider.queue import Queue
from cjllm.provider.rate_headers import rate_headers
from cjllm.provider.rate_limits import account_of
from cjllm.settings import ProviderSettings

PROVIDER = "openai"
OPENAI_HOST = "api.openai.com"


@contextlib.contextmanager
def sdk_errors() -> Iterator[None]:
    """Turn the SDK's exceptions into :class:`ProviderCallError` (shared with the Batch API)."""
    try:
        yield
    except openai.APIStatusError as exc:
        error = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else {}
        message = error.get("message") if isinstance(error, dict) else None
        failure = status_error(
            PROVIDER,
            exc.status_code,
            message=str(message or exc.message),
            headers=exc.response.headers,
            error_type=exc.type,
            error_code=exc.code,
            request_id=exc.request_id,
        )
        failure.details["param"] = exc.param
        raise failure from exc
    except openai.APITimeoutError as exc:
        raise transport_error(PROVIDER, exc, timed_out=True) from exc
    except openai.APIConnectionError as exc:
        raise transport_error(PROVIDER, exc, timed_out=False) from exc
    except openai.APIResponseValidationError as exc:
        raise ProviderCallError(
            "malformed_response",
            f"openai returned a body the SDK could not read: {exc.message}",
            retryable=True,
            status=exc.status_code,
            details={"provider": PROVIDER},
        ) from exc


class OpenAIAdapter:
    """Bundles through ``AsyncOpenAI.chat.completions.create`` (or ``completions.create``)."""

    name = PROVIDER

    def __init__(
        self,
        *,
        model: str,
        prices: PriceTable,
        max_output_tokens_per_item: int = 400,
        timeout: float = 300.0,
        max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens",
        no_temperature_models: Sequence[str] = (),
        prompt_list: bool = False,
        output_mode: OutputMode | None = None,
        store: Queue | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        self.default_model = model
        self.prices = prices
        self.max_output_tokens_per_item = max_output_tokens_per_item
        self.timeout = timeout
        self.max_tokens_field = max_tokens_field
        self.no_temperature_models = tuple(no_temperature_models)
        self.prompt_list = prompt_list
        if client is None:
            api_key = api_key or os.environ.get("OPENAI_API_KEY")
            if not api_key:
                if not (base_url or os.environ.get("OPENAI_BASE_URL")):
                    raise MissingCredentials(
                        "the openai provider needs OPENAI_API_KEY (or OPENAI_BASE_URL naming "
                        "an OpenAI-compatible server that takes no key)"
                    )
                api_key = PLACEHOLDER_KEY
            client = openai.AsyncOpenAI(
                api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout
            )
        self.client = client
        self.account = account_of(str(client.base_url), client.api_key)
        self.modes = OutputModes(str(client.base_url), forced=output_mode, store=store)
        # an OpenAI-compatible server (not OpenAI's API): it enforces the schema by
        # constrained decoding, so the schema is narrowed to each call, and it may read only
        # one of the two max-token fields (llama-cpp-python reads max_tokens), so both go
        self.compatible_server = client.base_url.host != OPENAI_HOST

    @classmethod
    def from_settings(cls, settings: ProviderSettings, store: Queue | None = None) -> OpenAIAdapter:
        return cls(
            model=settings.openai_model,
            prices=load_price_table(settings.price_table_path),
            max_output_tokens_per_item=settings.max_output_tokens_per_item,
            timeout=settings.call_timeout_seconds,
            max_tokens_field=settings.openai_max_tokens_field,
            no_temperature_models=settings.openai_no_temperature_models,
            prompt_list=settings.openai_completions_prompt_list,
            output_mode=(
                None
                if settings.openai_output_mode == "auto"
                else OutputMode(settings.openai_output_mode)
            ),
            store=store,
        )

    def output_mode(self, model: str) -> str | None:
        """The structured-output rung ``model`` is on (``None`` before its first call)."""
        if self.prompt_list:
            return "prompt_list"
        mode = self.modes.known(model or self.default_model)
        return None if mode is None else mode.value

    def takes_temperature(self, model: str) -> bool:
        """False for models that reject sampling parameters (reasoning models)."""
        return not any(model.startswith(prefix) for prefix in self.no_temperature_models)

    def _sampling(self, call: BundleCall, model: str) -> dict[str, Any]:
        if call.temperature is not None and self.takes_temperature(model):
            return {"temperature": call.temperature}
        return {}

    def chat_body(
        self, call: BundleCall, mode: OutputMode = OutputMode.JSON_SCHEMA
    ) -> dict[str, Any]:
        """The ``chat.completions.create`` body for a bundle on an output-mode rung (the
        default, strict ``json_schema``, is also a Batch API line body)."""
        model = call.model or self.default_model
        instructions, items_text = render(call.items, call.layout)
        schema = (
            answer_schema([item.custom_id for item in call.items])
            if self.compatible_server
            else OUTPUT_SCHEMA
        )
        told = schema_in_prompt(mode, schema)
        messages: list[dict[str, Any]] = []
        if call.system:
            messages.append(
                {"role": "system", "content": "\n\n".join(b.content for b in call.system)}
            )
        user = [b.content for b in call.shared]
        tail = [instructions, *([told] if told else []), items_text]
        messages.append({"role": "user", "content": "\n\n".join([*user, *tail])})
        prefix = "\x00".join(b.content for b in (*call.system, *call.shared))
        limit = call.max_output_tokens(self.max_output_tokens_per_item)
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            **(
                {"max_tokens": limit, "max_completion_tokens": limit}
                if self.compatible_server
                else {self.max_tokens_field: limit}
            ),
            "prompt_cache_key": "cjllm-" + hashlib.sha256(prefix.encode()).hexdigest()[:32],
            **self._sampling(call, model),
        }
        form = response_format(mode, schema)
        if form is not None:
            body["response_format"] = form
        return body

    def completion_prompt(self, call: BundleCall, item: BundleItem) -> str:
        """One item as a whole plain-text prompt (prompt-list mode)."""
        instructions, items_text = render_items([item])
        blocks = [b.content for b in (*call.system, *call.shared)]
        return "\n\n".join([*blocks, instructions, items_text]) + "\n\nJSON answer:\n"

    def completions_body(self, call: BundleCall) -> dict[str, Any]:
        """The ``completions.create`` body: one independent prompt per item."""
        model = call.model or self.default_model
        per_item = call.max_tokens or self.max_output_tokens_per_item
        return {
            "model": model,
            "prompt": [self.completion_prompt(call, item) for item in call.items],
            "max_tokens": per_item + ANSWER_OVERHEAD_TOKENS,
            **self._sampling(call, model),
        }

    async def _send(
        self, body: dict[str, Any], chat: bool
    ) -> tuple[ChatCompletion | Completion, dict[str, str]]:
        """The response and its rate-limit headers."""
        with sdk_errors():
            response: ChatCompletion | Completion
            if chat:
                raw = await self.client.chat.completions.with_raw_response.create(
                    **body, timeout=self.timeout
                )
                response = raw.parse()
            else:
                plain = await self.client.completions.with_raw_response.create(
                    **body, timeout=self.timeout
                )
                response, raw = plain.parse(), plain
            return response, rate_headers(raw.headers)

    async def call_bundle(self, call: BundleCall) -> CallOutcome:
        chat = not self.prompt_list
        model = call.model or self.default_model
        mode = await self.modes.current(model) if chat else None
        body = self.chat_body(call, mode) if mode is not None else self.completions_body(call)
        started = time.monotonic()
        while True:
            try:
                response, headers = await self._send(body, chat)
                break
            except ProviderCallError as exc:
                if mode is None or not refuses_response_format(exc):
                    raise
                mode = await self.modes.refused(model, mode, exc.message)
                if mode is None:
                    raise
                body = self.chat_body(call, mode)  # the next rung, at once: no attempt spent
        outcome = self.outcome(call, response, int((time.monotonic() - started) * 1000), mode)
        outcome.rate_headers = headers
        return outcome

    def outcome(
        self,
        call: BundleCall,
        response: ChatCompletion | Completion,
        latency_ms: int,
        mode: OutputMode | None = None,
        *,
        batch: bool = False,
    ) -> CallOutcome:
        """Read one answered bundle: reconcile it against the ids sent, count and price it.
        ``mode``: the output-mode rung it was asked on (a chat answer); ``batch``: the
        response is a Batch API result line (priced at the batch rate)."""
        asked = call.model or self.default_model
        if mode is None and isinstance(response, ChatCompletion):
            mode = self.modes.known(asked) or OutputMode.JSON_SCHEMA
        details: dict[str, Any] = {
            "provider": PROVIDER,
            "response_id": response.id,
            "output_mode": mode.value if mode is not None else "prompt_list",
        }
        ignored = []
        if call.temperature is not None and not self.takes_temperature(asked):
            ignored.append("temperature")
        if not isinstance(response, ChatCompletion) and call.layout is not BundleLayout.ITEMS:
            ignored.append("bundle_layout")
        if ignored:
            details["ignored"] = ignored
        if isinstance(response, ChatCompletion):
            reconciled, stop = read_chat(call, response, details)
        else:
            reconciled, stop = read_completions(call, response)
        usage = usage_of(response.usage)
        model = response.model or asked
        cost = self.prices.cost(model, usage, batch=batch)
        details["priced"] = cost.priced
        details["price_table_as_of"] = self.prices.as_of
        if batch:
            details["batch_price"] = True
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
