"""The LLM adapters, one per vendor, chosen by provider name.

Adapters render the call with :mod:`cjllm.provider.prompts`, send it with their vendor's
SDK, and reconcile the answer with :func:`cjllm.provider.answers.reconcile`. The types they
share are in :mod:`cjllm.provider.calls`; their batch-job endpoints (:func:`batch_api_for`)
are described in :mod:`cjllm.provider.batch_calls`.
"""

from __future__ import annotations

from cjllm.provider.batch_calls import BatchAPI, NoBatchAPI
from cjllm.provider.calls import LLMAdapter
from cjllm.provider.queue import Queue
from cjllm.settings import ProviderSettings

PROVIDERS = ("mock", "anthropic", "openai")


def make_adapter(
    provider: str, settings: ProviderSettings, store: Queue | None = None
) -> LLMAdapter:
    """The adapter for a provider name. Real SDK adapters read their SDK's environment
    (``ANTHROPIC_API_KEY``/``ANTHROPIC_BASE_URL``, ``OPENAI_API_KEY``/``OPENAI_BASE_URL``).
    ``store`` (the queue) shares what the openai adapter learns about a server's output
    modes with every worker on the queue."""
    if provider == "mock":
        from cjllm.provider.adapters.mock import MockAdapter

        return MockAdapter.from_settings(settings)
    if provider == "anthropic":
        from cjllm.provider.adapters.anthropic import AnthropicAdapter

        return AnthropicAdapter.from_settings(settings)
    if provider == "openai":
        from cjllm.provider.adapters.openai import OpenAIAdapter

        return OpenAIAdapter.from_settings(settings, store)
    raise ValueError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")


def batch_api_for(adapter: LLMAdapter) -> BatchAPI:
    """The vendor batch API over ``adapter``'s SDK client, or :class:`NoBatchAPI`."""
    from cjllm.provider.adapters.anthropic import AnthropicAdapter
    from cjllm.provider.adapters.openai import OpenAIAdapter

    if isinstance(adapter, AnthropicAdapter):
        from cjllm.provider.adapters.anthropic_batches import AnthropicBatches

        return AnthropicBatches(adapter)
    if isinstance(adapter, OpenAIAdapter):
        from cjllm.provider.adapters.openai_batches import OpenAIBatches

        return OpenAIBatches(adapter)
    raise NoBatchAPI(adapter.name)
