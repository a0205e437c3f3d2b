"""The LLM adapters one provider service can call, built on first use.

``mock`` is always available; ``anthropic`` and ``openai`` are built through
:func:`cjllm.provider.adapters.make_adapter` when a request first names them, so a missing
SDK module or API key is reported as a 400 on that request rather than at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping

from cjllm.provider.adapters import PROVIDERS, make_adapter
from cjllm.provider.calls import LLMAdapter
from cjllm.provider.queue import Queue
from cjllm.settings import ProviderSettings


class ProviderUnavailable(Exception):
    """A request named a provider this service cannot call (unknown, or not configured)."""

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(f"provider {provider!r} is not available: {reason}")
        self.provider = provider
        self.reason = reason


class Providers:
    """Adapters by provider name. Pre-built ones (e.g. a tuned mock) may be passed in;
    ``store`` (the queue) is where adapters built here share what they learn."""

    def __init__(
        self,
        settings: ProviderSettings,
        adapters: Mapping[str, LLMAdapter] | None = None,
        store: Queue | None = None,
    ) -> None:
        self._settings = settings
        self._adapters: dict[str, LLMAdapter] = dict(adapters or {})
        self._store = store

    def get(self, provider: str) -> LLMAdapter:
        adapter = self._adapters.get(provider)
        if adapter is not None:
            return adapter
        if provider not in PROVIDERS:
            raise ProviderUnavailable(provider, f"unknown provider; known: {', '.join(PROVIDERS)}")
        try:
            adapter = make_adapter(provider, self._settings, self._store)
        except ImportError as exc:
            raise ProviderUnavailable(provider, f"its adapter is not installed ({exc})") from exc
        except Exception as exc:  # an SDK refusing its configuration (e.g. no API key)
            raise ProviderUnavailable(provider, f"{type(exc).__name__}: {exc}") from exc
        self._adapters[provider] = adapter
        return adapter

    async def aclose(self) -> None:
        for adapter in self._adapters.values():
            await adapter.aclose()
