"""Settings, one model per service, read from the environment (pydantic-settings).

Backends are chosen by URL: ``CJLLM_QUEUE_URL``, ``CJLLM_DATABASE_URL``, ``CJLLM_BUS_URL``.
Every setting is prefixed ``CJLLM_`` except the two CJ names fixed by the design,
``LLM_BATCHING_STRATEGY`` and ``MAX_CONCURRENT_COMPARISONS`` (accepted bare or prefixed).
The README lists them all.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cjllm.contracts import BatchingStrategy, BundleLayout
from cjllm.provider.rate_limits import RateLimitSetting


class BackendSettings(BaseSettings):
    """Where the queue, the CJ database and the event bus live."""

    model_config = SettingsConfigDict(env_prefix="CJLLM_", extra="ignore")

    queue_url: str = "sqlite:///cjllm-queue.sqlite"
    database_url: str = "sqlite+aiosqlite:///cjllm.sqlite"
    bus_url: str = "memory://"
    kafka_idempotent_producer: bool = False


class ProviderSettings(BackendSettings):
    """LLM Provider Service: API, queue semantics, bundling caps, worker."""

    api_token: str | None = None
    callback_source: str = "llm_provider_service"
    # request limits (HTTP 413; a body not in within the read timeout is 408)
    max_prompt_chars: int = 200_000
    max_blocks: int = 32
    max_request_bytes: int = 2 * 1024 * 1024
    request_read_timeout_seconds: float = Field(default=30.0, gt=0.0)
    # queue capacity (HTTP 503 + Retry-After)
    queue_max_items: int = 50_000
    queue_max_bytes: int = 512 * 1024 * 1024
    queue_full_retry_after_seconds: int = 5
    # queue semantics
    item_ttl_seconds: float = 6 * 3600
    lease_seconds: float = 120.0
    max_attempts: int = 5
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    record_retention_seconds: float = 24 * 3600
    # bundling
    linger_seconds: float = 0.25
    max_items_per_call: int = 25
    max_input_tokens_per_call: int = 150_000
    # how a call lays out its essays, for requests that do not ask (metadata.bundle_layout)
    bundle_layout: BundleLayout = BundleLayout.ITEMS
    # worker
    # bundles in flight per worker process; unset: as many as the rate limiter admits (at
    # least 4; more only while it holds no call back), at most 1,000
    worker_concurrency: int | None = Field(default=None, gt=0)
    poll_interval_seconds: float = 0.05
    # where `cjllm rank` runs the provider's worker (claim, call, settle): in its own event
    # loop, or in a child process over the same SQLite queue (cjllm.provider.worker_process);
    # auto: the child from cjllm.rank.CHILD_WORKER_FROM_ESSAYS essays on
    embedded_worker: Literal["auto", "in_process", "child_process"] = "auto"
    sweep_interval_seconds: float = 1.0
    outbox_lease_seconds: float = 30.0
    publish_batch_size: int = 100
    metrics_port: int | None = None
    # rate limits per provider key (provider + base URL + API key + model class): per-minute
    # budgets by "provider", "provider/model-class" or "provider/model" (JSON), tightened by
    # what the provider's headers say; see docs/rate_limits.md
    rate_limits: dict[str, RateLimitSetting] = Field(default_factory=dict)
    rate_limit_period_seconds: float = Field(default=60.0, gt=0.0)
    rate_limit_max_wait_seconds: float = Field(default=5.0, ge=0.0)
    # provider calls
    call_timeout_seconds: float = 300.0
    max_output_tokens_per_item: int = 400
    price_table_path: str | None = None
    # provider batch jobs (async_batch, nightly_batch): docs/batch-jobs.md
    batch_items_per_line: int = Field(default=10, gt=0)
    batch_max_lines: int | None = Field(default=None, gt=0)
    batch_max_bytes: int | None = Field(default=None, gt=0)
    batch_linger_seconds: float = Field(default=5.0, ge=0.0)
    batch_max_wait_seconds: float = Field(default=60.0, ge=0.0)
    batch_poll_min_seconds: float = Field(default=10.0, gt=0.0)
    batch_poll_max_seconds: float = Field(default=300.0, gt=0.0)
    batch_item_ttl_seconds: float = Field(default=4 * 24 * 3600, gt=0.0)
    batch_hold_seconds: float = Field(default=7 * 24 * 3600, gt=0.0)
    nightly_max_items: int = Field(default=20_000, gt=0)
    nightly_max_age_seconds: float = Field(default=24 * 3600, gt=0.0)
    nightly_submit_at: str | None = Field(default="01:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    # vendor adapters (keys and base URLs come from the SDKs' own environment:
    # ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL, OPENAI_API_KEY / OPENAI_BASE_URL)
    anthropic_model: str = "claude-sonnet-4-6"
    # models without structured outputs (output_config.format) answer through a forced tool
    anthropic_tool_use_models: list[str] = Field(
        default_factory=lambda: [
            "claude-3",
            "claude-opus-4-0",
            "claude-opus-4-2025",
            "claude-sonnet-4-0",
            "claude-sonnet-4-2025",
        ]
    )
    openai_model: str = "gpt-4.1-mini"
    openai_max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = (
        "max_completion_tokens"
    )
    openai_no_temperature_models: list[str] = Field(
        default_factory=lambda: ["o1", "o3", "o4", "gpt-5"]
    )
    openai_completions_prompt_list: bool = False
    # structured output on OpenAI-compatible servers: negotiated (auto) or forced
    openai_output_mode: Literal[
        "auto", "json_schema", "json_object_schema", "json_object", "text"
    ] = "auto"
    # the deterministic mock adapter (cjllm.provider.adapters.mock)
    mock_model: str = "mock-judge-1"
    mock_seed: int = 0
    mock_noise: float = 1.0
    mock_position_bias: float = 0.0
    mock_latency_seconds: float = 0.0

    @field_validator("nightly_submit_at", mode="before")
    @classmethod
    def _no_schedule(cls, value: object) -> object:
        """An empty ``CJLLM_NIGHTLY_SUBMIT_AT`` turns the daily schedule off."""
        return None if value == "" else value


class CJSettings(BackendSettings):
    """CJ Assessment Service: strategy, budgets, stopping targets.

    Fields with an environment alias can also be set by field name in code
    (``CJSettings(max_concurrent_comparisons=5)``).
    """

    model_config = SettingsConfigDict(env_prefix="CJLLM_", extra="ignore", validate_by_name=True)

    llm_batching_strategy: BatchingStrategy = Field(
        default=BatchingStrategy.SERIAL_ROUND,
        validation_alias=AliasChoices("LLM_BATCHING_STRATEGY", "CJLLM_LLM_BATCHING_STRATEGY"),
    )
    # a cap on a round's size (comparisons in flight at once); unset: as large as the pairing
    # design allows (every essay once) and the budget left
    max_concurrent_comparisons: int | None = Field(
        default=None,
        gt=0,
        validation_alias=AliasChoices(
            "MAX_CONCURRENT_COMPARISONS", "CJLLM_MAX_CONCURRENT_COMPARISONS"
        ),
    )
    serial_override_bundle_size: int | None = Field(default=None, gt=0)
    # this service's own API (`cjllm serve cj`): bearer token, body limit and read timeout
    cj_api_token: str | None = None
    cj_max_request_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    request_read_timeout_seconds: float = Field(default=30.0, gt=0.0)
    provider_url: str = "http://provider"
    provider_api_token: str | None = None
    callback_topic: str = "cj.llm.comparison.results"
    completion_topic: str = "cj.assessment.completed"
    llm_provider: str = "mock"
    llm_model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    comparisons_per_essay: float | None = None  # None: 10, unless only a total is set
    max_comparisons_total: int | None = None
    max_comparisons_per_essay: int | None = None
    target_reliability: float = 0.9
    target_mean_se: float | None = None
    min_success_fraction: float = 0.5
    max_pair_retries: int = 2
    bt_prior: float = 0.1
    submit_retries: int = 3
    submit_concurrency: int = Field(default=100, gt=0)  # POSTs in flight at once
    # stopping: reliability/SE targets count only once this many successful comparisons per
    # essay (on average) exist; a run of rounds in which every comparison failed stops a batch
    min_comparisons_per_essay_before_stop: float = Field(default=4.0, ge=0.0)
    max_failed_rounds: int = Field(default=3, gt=0)
    split_half_splits: int = Field(default=10, gt=0)
    # adaptive: partners chosen for information (with a random share); random: the classical
    # balanced random design (the same structural rules, every partner drawn at random)
    pairing: Literal["adaptive", "random"] = "adaptive"
    # the share of each adaptive round's pairs drawn at random; a round with 5 lapse probes or
    # more (about 92 essays and up) counts them in it, so with the defaults draws none
    # (docs/judgement.md, "Probes instead of random partners")
    pairing_random_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    # adaptive rounds after the first: a share of lapse probes (top quarter against bottom
    # quarter by score), which identify a judge's lapse rate at a small cost in ranking (0: off;
    # 0.1 by default: docs/judgement.md, "Which model")
    pairing_probe_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    # a fraction of each round's judged pairs judged again with the positions swapped, in the
    # next round, to report position consistency (0: off)
    both_orders_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    # the pool bundle layout: each provider call sends every distinct essay once, and rounds
    # are planned as groups of essays near each other, one bundle per group (cj/groups.py)
    bundle_layout: BundleLayout = BundleLayout.ITEMS
    pool_group_size: int = Field(default=10, ge=2)
    pool_pairs_per_essay: int = Field(default=4, ge=1)
    # submissions to the provider API (retried on 5xx/429/connection errors)
    submit_backoff_seconds: float = Field(default=0.5, ge=0.0)
    submit_max_backoff_seconds: float = Field(default=30.0, ge=0.0)
    submit_timeout_seconds: float = Field(default=30.0, gt=0.0)
    consumer_group: str = "cj_assessment_service"
    source_service: str = "cj_assessment_service"
