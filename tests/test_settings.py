"""Settings come from the environment; backends are chosen by URL."""

from __future__ import annotations

import pytest

from cjllm.contracts import BatchingStrategy
from cjllm.settings import CJSettings, ProviderSettings


def test_defaults_are_the_embedded_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CJLLM_QUEUE_URL", "CJLLM_DATABASE_URL", "CJLLM_BUS_URL"):
        monkeypatch.delenv(name, raising=False)
    s = ProviderSettings()
    assert s.queue_url.startswith("sqlite:///")
    assert s.database_url.startswith("sqlite+aiosqlite:///")
    assert s.bus_url == "memory://"


def test_backend_urls_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CJLLM_QUEUE_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("CJLLM_DATABASE_URL", "postgresql+asyncpg://u@h/db")
    monkeypatch.setenv("CJLLM_BUS_URL", "kafka://h1:9092,h2:9092")
    s = CJSettings()
    assert (s.queue_url, s.database_url, s.bus_url) == (
        "redis://127.0.0.1:6379/0",
        "postgresql+asyncpg://u@h/db",
        "kafka://h1:9092,h2:9092",
    )


@pytest.mark.parametrize("prefix", ["", "CJLLM_"])
def test_cj_strategy_names_are_read_bare_or_prefixed(
    monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    monkeypatch.setenv(f"{prefix}LLM_BATCHING_STRATEGY", "per_request")
    monkeypatch.setenv(f"{prefix}MAX_CONCURRENT_COMPARISONS", "17")
    s = CJSettings()
    assert s.llm_batching_strategy is BatchingStrategy.PER_REQUEST
    assert s.max_concurrent_comparisons == 17


def test_unknown_strategy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_BATCHING_STRATEGY", "bundle_everything")
    with pytest.raises(ValueError, match="LLM_BATCHING_STRATEGY"):
        CJSettings()
