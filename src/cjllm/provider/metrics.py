"""Prometheus metrics of the provider service (docs/metrics.md lists them with their meaning).

One :class:`ProviderMetrics` per service instance, each with its own registry, so several
services in one process (tests, the embedded shape) do not collide. Queue depth counts
comparisons, never bundles, and is read from the queue at scrape time. Label values come
from bounded sets only: a model name from a request is a label only if the service knows
it (:meth:`ProviderMetrics.model_label`).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cjllm.provider.queue import Depth

ITEMS_PER_CALL_BUCKETS = (1, 2, 3, 5, 8, 10, 15, 20, 25, 35, 50, 75, 100)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
ITEMS_PER_JOB_BUCKETS = (1, 10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000)
TURNAROUND_BUCKETS = (1, 10, 60, 300, 900, 1_800, 3_600, 7_200, 14_400, 43_200, 86_400, 172_800)


class ProviderMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, known_models: Iterable[str] = ()
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.known_models = frozenset(known_models)
        r = self.registry
        self.queue_depth = Gauge(
            "cjllm_provider_queue_depth",
            "Comparisons in the queue by state (queued includes delayed).",
            ["state"],
            registry=r,
        )
        self.queue_bytes = Gauge(
            "cjllm_provider_queue_bytes", "Bytes held by active comparisons.", registry=r
        )
        self.outbox_depth = Gauge(
            "cjllm_provider_outbox_depth", "Callbacks recorded but not yet published.", registry=r
        )
        self.requests = Counter(
            "cjllm_provider_requests_total",
            "Comparison requests by outcome: queued, duplicate, rejected, queue_full, "
            "queue_unavailable.",
            ["outcome"],
            registry=r,
        )
        self.provider_calls = Counter(
            "cjllm_provider_calls_total",
            "Provider calls (one per bundle) by provider, model and outcome.",
            ["provider", "model", "outcome"],
            registry=r,
        )
        self.items_per_call = Histogram(
            "cjllm_provider_items_per_call",
            "Comparisons sent in one provider call.",
            ["provider"],
            buckets=ITEMS_PER_CALL_BUCKETS,
            registry=r,
        )
        self.bundle_size_limit = Gauge(
            "cjllm_provider_bundle_size_limit",
            "Comparisons one call to a model may carry now (adaptive; see bundle_sizes.py).",
            ["provider", "model"],
            registry=r,
        )
        self.call_latency = Histogram(
            "cjllm_provider_call_latency_seconds",
            "Wall time of one provider call.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.item_outcomes = Counter(
            "cjllm_provider_item_outcomes_total",
            "Per-item validation results (answered, missing, invalid, duplicate, unknown).",
            ["outcome"],
            registry=r,
        )
        self.callbacks = Counter(
            "cjllm_provider_callbacks_total",
            "Callbacks recorded in the outbox, by result (success, or the error code).",
            ["result"],
            registry=r,
        )
        self.callbacks_published = Counter(
            "cjllm_provider_callbacks_published_total",
            "Callbacks the bus acknowledged.",
            registry=r,
        )
        self.publish_failures = Counter(
            "cjllm_provider_publish_failures_total",
            "Outbox publish attempts the bus refused (retried later).",
            registry=r,
        )
        self.dead_letters = Counter(
            "cjllm_provider_callbacks_dead_lettered_total",
            "Outbox entries set aside because they can never be published (see the log).",
            registry=r,
        )
        self.dead_letter_depth = Gauge(
            "cjllm_provider_outbox_dead_letters",
            "Outbox entries set aside and kept for an operator.",
            registry=r,
        )
        self.retries = Counter(
            "cjllm_provider_retries_total",
            "Comparisons returned to the queue, by reason.",
            ["reason"],
            registry=r,
        )
        self.expiries = Counter(
            "cjllm_provider_expiries_total",
            "Comparisons that outlived their TTL (each got an error callback).",
            registry=r,
        )
        self.lease_recoveries = Counter(
            "cjllm_provider_lease_recoveries_total",
            "Comparisons whose lease expired (worker lost) and were requeued.",
            registry=r,
        )

        self.rate_limit_wait = Histogram(
            "cjllm_provider_rate_limit_wait_seconds",
            "Seconds a bundle was held back by its key's rate limit before its call "
            "(waited in place, or sent back to the queue until its turn).",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            "cjllm_provider_rate_limited_total",
            "Calls the provider refused for a limit, by kind: the budget a 429 exhausted "
            "(requests, input_tokens, output_tokens, tokens, unknown), too_large (a call "
            "bigger than a minute of the limits, split and sent again), overloaded, or "
            "insufficient_quota.",
            ["provider", "kind"],
            registry=r,
        )
        self.rate_limit = Gauge(
            "cjllm_provider_rate_limit",
            "Per-minute limit in force for a key's budget (configured, or learned from headers).",
            ["provider", "model_class", "budget"],
            registry=r,
        )
        self.rate_limit_used = Counter(
            "cjllm_provider_rate_limit_used_total",
            "Requests and tokens charged to a key's budgets, as the provider reported them "
            "(compare rate()[1m] with cjllm_provider_rate_limit).",
            ["provider", "model_class", "budget"],
            registry=r,
        )
        self.batch_jobs = Gauge(
            "cjllm_provider_batch_jobs",
            "Provider batch jobs by state (recorded, submitted, settled until purged).",
            ["state"],
            registry=r,
        )
        self.batch_job_events = Counter(
            "cjllm_provider_batch_job_events_total",
            "What happened to batch jobs, by provider: recorded, submitted, adopted, "
            "submit_retry, refused, cancel_sent, foreign, ended_<vendor status>.",
            ["provider", "event"],
            registry=r,
        )
        self.batch_items_per_job = Histogram(
            "cjllm_provider_batch_items_per_job",
            "Comparisons in one provider batch job.",
            ["provider"],
            buckets=ITEMS_PER_JOB_BUCKETS,
            registry=r,
        )
        self.batch_turnaround = Histogram(
            "cjllm_provider_batch_turnaround_seconds",
            "Time from submitting a batch job to settling its results.",
            ["provider"],
            buckets=TURNAROUND_BUCKETS,
            registry=r,
        )

    def model_label(self, model: str) -> str:
        """``model`` as a label value: a known model (a configured default, a price-table
        entry, or a dated variant of one), else ``other`` — names chosen in requests must not
        grow the number of series without bound."""
        if model in self.known_models:
            return model
        extended = [m for m in self.known_models if model.startswith(m + "-")]
        return max(extended, key=len) if extended else "other"

    def observe_depth(self, depth: Depth) -> None:
        self.queue_depth.labels("queued").set(depth.queued)
        self.queue_depth.labels("delayed").set(depth.delayed)
        self.queue_depth.labels("processing").set(depth.processing)
        self.queue_bytes.set(depth.active_bytes)
        self.outbox_depth.set(depth.outbox)
        self.dead_letter_depth.set(depth.dead_letters)

    def render(self) -> bytes:
        return generate_latest(self.registry)
