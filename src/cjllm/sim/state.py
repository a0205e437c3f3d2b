"""The simulated provider's configuration, counters and per-process state.

One :class:`SimState` lives on the ASGI app (``app.state.sim``); both vendor dialects read
it. :func:`gate` holds the checks every model call passes, in the order the real APIs apply
them: a forced status, the model name, the rate limits, then the injected call faults.
The rate-limit buckets (:mod:`cjllm.sim.limits`) are one set for the whole server.
"""

from __future__ import annotations

import json
import random
import secrets
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from cjllm.sim.faults import FaultRates, draw
from cjllm.sim.judge import Judge, load_manifest_qualities
from cjllm.sim.limits import LatencyModel, Level, Need, RateLimits, TokenBuckets
from cjllm.sim.tokens import PromptCache

CALL_LOG_SIZE = 200
OUT_OF_CREDIT = "You exceeded your current quota, please check your plan and billing details."

OpenAIServer = Literal[
    "openai",
    "vllm",
    "ollama",
    "llama_cpp",
    "llama_cpp_python",
    "lm_studio",
    "json_object_only",
    "text_only",
]
"""The OpenAI-compatible servers whose ``response_format`` dialect the sim imitates
(:mod:`cjllm.sim.servers`)."""


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    noise: float = Field(default=1.0, gt=0.0)
    position_bias: float = 0.0
    seed: int = 0
    unknown: Literal["coin", "heuristic"] = "coin"
    manifests: list[str] = Field(default_factory=list)


class SimConfig(BaseModel):
    """Everything ``cjllm sim`` options set; ``PATCH /sim/config`` changes it while running."""

    model_config = ConfigDict(extra="forbid")

    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    latency: LatencyModel = Field(default_factory=LatencyModel)
    limits: RateLimits = Field(default_factory=RateLimits)
    faults: FaultRates = Field(default_factory=FaultRates)
    fault_seed: int = 0
    fault_retry_after: float = Field(default=1.0, ge=0.0)
    fault_stall_seconds: float = Field(default=30.0, ge=0.0)
    forced_statuses: list[int] = Field(default_factory=list)
    out_of_credit: bool = False
    api_key: str | None = None
    known_models: list[str] | None = None
    max_request_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    cache_min_tokens: int = Field(default=1024, ge=0)
    # batch jobs (cjllm.sim.batch_lines): how long a job runs, how long a cancel takes, the
    # share of lines that expire instead of being answered, result order, the vendors' limits
    batch_seconds: float = Field(default=0.0, ge=0.0)
    batch_cancel_seconds: float = Field(default=0.0, ge=0.0)
    batch_expired_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    batch_shuffle: bool = True
    batch_max_requests: int | None = Field(default=None, gt=0)
    batch_max_bytes: int | None = Field(default=None, gt=0)
    openai_server: OpenAIServer = "openai"
    item_drop_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Each item of an answer is left out with this probability (a model losing track)."""


def merged(config: SimConfig, patch: dict[str, Any]) -> SimConfig:
    """``config`` with ``patch`` applied key by key (nested objects merge, lists replace)."""

    def merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in change.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    return SimConfig.model_validate(merge(config.model_dump(), patch))


class SimError(Exception):
    """An HTTP error answer; each dialect renders it in its vendor's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retry_after: float | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.param = param
        self.code = code


@dataclass
class Counters:
    requests: Counter[str] = field(default_factory=Counter)
    responses: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    items: int = 0
    items_per_call: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    batches: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "responses": dict(self.responses),
            "calls": self.calls,
            "items": self.items,
            "items_per_call": dict(self.items_per_call),
            "tokens": {
                k: self.tokens[k] for k in ("input", "output", "cache_creation", "cache_read")
            },
            "faults": dict(self.faults),
            "batches": {
                k: self.batches[k] for k in ("created", "requests", "items", "expired", "canceled")
            },
        }


@dataclass
class Usage:
    input: int
    output: int
    cache_creation: int = 0
    cache_read: int = 0
    cache_creation_1h: int = 0


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def build_judge(config: JudgeConfig, extra: dict[str, float] | None = None) -> Judge:
    qualities = load_manifest_qualities(Path(p) for p in config.manifests)
    qualities.update(extra or {})
    return Judge(
        qualities=qualities,
        noise=config.noise,
        position_bias=config.position_bias,
        seed=config.seed,
        unknown=config.unknown,
    )


@dataclass
class SimState:
    config: SimConfig
    judge: Judge
    counters: Counters = field(default_factory=Counters)
    cache: PromptCache = field(default_factory=PromptCache)
    limiter: TokenBuckets = field(default_factory=TokenBuckets)
    rng: random.Random = field(default_factory=random.Random)
    calls: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=CALL_LOG_SIZE))
    stores: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"message_batches": {}, "files": {}, "batches": {}}
    )
    extra_qualities: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls, config: SimConfig, qualities: dict[str, float] | None = None) -> SimState:
        extra = dict(qualities or {})
        state = cls(config=config, judge=build_judge(config.judge, extra), extra_qualities=extra)
        state.apply(config)
        return state

    def apply(self, config: SimConfig) -> None:
        """Take a new configuration (rebuilding the judge if its settings changed)."""
        if config.judge != self.config.judge:
            self.judge = build_judge(config.judge, self.extra_qualities)
        if config.fault_seed != self.config.fault_seed or not self.counters.requests:
            self.rng.seed(config.fault_seed)
        self.cache.min_tokens = config.cache_min_tokens
        self.config = config

    def reset(self) -> None:
        self.counters = Counters()
        self.calls.clear()
        self.cache.clear()
        self.limiter.clear()
        self.rng.seed(self.config.fault_seed)
        for store in self.stores.values():
            store.clear()

    def authorized(self, headers: Any) -> bool:
        """``x-api-key`` or ``Authorization: Bearer``; any non-empty key unless one is set."""
        key = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if not key:
            return False
        return self.config.api_key is None or key == self.config.api_key

    def answer_delay(self, items: int, output_tokens: int, faults: set[str]) -> float:
        """Seconds before an answer goes out: the latency model, plus a stall if drawn."""
        stall = self.config.fault_stall_seconds if "stall" in faults else 0.0
        return self.config.latency.seconds(items, output_tokens) + stall

    def drop_item(self) -> bool:
        """Whether the next item of an answer is left out (``item_drop_rate``)."""
        rate = self.config.item_drop_rate
        dropped = rate > 0 and self.rng.random() < rate
        if dropped:
            self.counters.faults["dropped_item"] += 1
        return dropped

    def gate(self, model: str, need: Need) -> set[str]:
        """Checks before a model call; raises :class:`SimError`, else returns answer faults.
        ``need``: the call's uncached input tokens and its ``max_tokens``, which the rate
        limits take before the call (see :mod:`cjllm.sim.limits`)."""
        config = self.config
        if config.forced_statuses:
            status = config.forced_statuses.pop(0)
            self.counters.faults[f"forced_{status}"] += 1
            retry = config.fault_retry_after if status in (429, 503, 529) else None
            raise SimError(status, f"simulated HTTP {status}", retry_after=retry)
        if config.known_models is not None and model not in config.known_models:
            raise SimError(404, f"model: {model}", param="model", code="model_not_found")
        if config.out_of_credit:  # each dialect words it as its vendor does
            raise SimError(429, OUT_OF_CREDIT, code="insufficient_quota")
        retry_after = self.limiter.admit(config.limits, need)
        if retry_after is not None:
            self.counters.faults["rate_limit_exceeded"] += 1
            raise SimError(
                429,
                "This request would exceed the rate limit for your organization "
                "(requests, input or output tokens per minute). Please try again later.",
                retry_after=retry_after,
                code="rate_limit_exceeded",
            )
        faults = draw(config.faults, self.rng)
        for name in faults:
            self.counters.faults[name] += 1
        if "rate_limited" in faults:
            raise SimError(
                429,
                "Rate limited (simulated).",
                retry_after=config.fault_retry_after,
                code="rate_limit_exceeded",
            )
        if "overloaded" in faults:
            raise SimError(529, "Overloaded (simulated).")
        if "server_error" in faults:
            raise SimError(500, "Internal server error (simulated).")
        return faults

    def rate_levels(self) -> dict[str, Level]:
        """The buckets as the rate-limit headers report them."""
        return self.limiter.report(self.config.limits)

    def record(
        self,
        endpoint: str,
        *,
        model: str,
        items: list[tuple[str, list[str]]],
        usage: Usage,
        faults: set[str],
        stop: str,
        body: Any,
        batch: bool = False,
    ) -> None:
        """Count one answered model call (or one batch request) and log it. ``items``:
        (custom_id, sha256 of each essay) as the judge read them."""
        custom_ids = [cid for cid, _ in items]
        if batch:
            self.counters.batches["requests"] += 1
            self.counters.batches["items"] += len(custom_ids)
        else:
            self.counters.calls += 1
            self.counters.items += len(custom_ids)
            self.counters.items_per_call[str(len(custom_ids))] += 1
        self.counters.tokens["input"] += usage.input
        self.counters.tokens["output"] += usage.output
        self.counters.tokens["cache_creation"] += usage.cache_creation
        self.counters.tokens["cache_read"] += usage.cache_read
        self.calls.append(
            {
                "endpoint": endpoint,
                "model": model,
                "batch": batch,
                "custom_ids": custom_ids,
                "items": [{"custom_id": c, "parts_sha256": d} for c, d in items],
                "faults": sorted(faults),
                "stop": stop,
                "usage": vars(usage).copy(),
                "body": body,
            }
        )


def sim_of(request: Request) -> SimState:
    """The state of the app serving ``request``."""
    state: SimState = request.app.state.sim
    return state


async def read_json(request: Request, state: SimState) -> Any:
    """The request's JSON body: 413 over ``max_request_bytes``, 400 when it does not parse."""
    raw = await request.body()
    if len(raw) > state.config.max_request_bytes:
        raise SimError(413, "Request exceeds the maximum allowed number of bytes.")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SimError(400, "There was an error parsing the body of your request.") from None
