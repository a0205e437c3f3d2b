"""A test double for the provider API: records every request and answers ``202``.

It can also play the provider's other half: publish one ``LLMComparisonResultV1`` per
request on the bus (judged by the shared simulated judge), either after the ``202``
(``answer="after"``) or before it (``answer="before"``, the out-of-order case), or leave
callbacks to the test (``answer=None``). ``fail_first`` makes the first N posts answer
``status`` (e.g. 503 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cjllm.bus import EventBus
from cjllm.contracts import (
    ComparisonRequest,
    ErrorDetail,
    EventEnvelope,
    LLMComparisonResultV1,
    TokenUsage,
    utcnow,
)
from cjllm.sim.judge import Judge, text_key


@dataclass
class Received:
    request: ComparisonRequest
    queue_id: uuid.UUID


@dataclass
class StubProvider:
    bus: EventBus | None = None
    answer: Literal["after", "before"] | None = "after"
    judge: Judge = field(default_factory=lambda: Judge(noise=0.5))
    fail_first: int = 0
    status: int = 503
    retry_after: str | None = "0"
    error_for: Callable[[ComparisonRequest], bool] | None = None
    received: list[Received] = field(default_factory=list)
    posts: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    gate: asyncio.Event | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    cancelled: list[str] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/api/v1/comparison")
        async def comparison(raw: Request) -> JSONResponse:
            self.posts += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.gate is not None:
                    await self.gate.wait()
                if self.posts <= self.fail_first:
                    headers = {"Retry-After": self.retry_after} if self.retry_after else {}
                    return JSONResponse({"detail": "busy"}, self.status, headers=headers)
                body = ComparisonRequest.model_validate(await raw.json())
                item = Received(body, uuid.uuid4())
                self.received.append(item)
                if self.answer == "before":
                    await self.publish(item)
                elif self.answer == "after":
                    task = asyncio.get_running_loop().create_task(self.publish(item))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                return JSONResponse(
                    {"queue_id": str(item.queue_id), "status": "queued", "message": "ok"}, 202
                )
            finally:
                self.in_flight -= 1

        @app.post("/api/v1/comparison/cancel")
        async def cancel(raw: Request) -> JSONResponse:
            body = await raw.json()
            self.cancelled.append(body["cj_batch_id"])
            answer = {"comparisons_cancelled": 0, "jobs_cancelled": [], "jobs_kept": []}
            return JSONResponse({"cj_batch_id": body["cj_batch_id"], **answer})

        return app

    def result_for(self, item: Received, *, error: str | None = None) -> LLMComparisonResultV1:
        req = item.request
        md: dict[str, Any] = dict(req.metadata)
        group = md.get("bundle_group") or str(item.queue_id)
        md.update(
            prompt_sha256=req.prompt_sha256(),
            bundle_id=f"bundle-{group}",
            bundle_index=0,
            bundle_size=md.get("preferred_bundle_size"),
            resolved_provider="stub",
            resolved_model="stub-judge-1",
        )
        common: dict[str, Any] = {
            "request_id": str(item.queue_id),
            "correlation_id": req.correlation_id,
            "provider": "stub",
            "model": "stub-judge-1",
            "response_time_ms": 5,
            "token_usage": TokenUsage(prompt_tokens=100, completion_tokens=20, total_tokens=120),
            "cost_estimate": 0.001,
            "requested_at": utcnow(),
            "completed_at": utcnow(),
            "request_metadata": md,
        }
        if error is not None or (self.error_for is not None and self.error_for(req)):
            detail = ErrorDetail(
                error_code=error or "provider_error",
                message="the stub failed this comparison",
                correlation_id=req.correlation_id or uuid.uuid4(),
                service="stub",
                operation="compare",
            )
            return LLMComparisonResultV1(error_detail=detail, **common)
        parts = tuple(req.per_comparison_parts())
        decision = self.judge.decide(str(req.correlation_id), parts)
        return LLMComparisonResultV1(
            winner=decision.winner,  # type: ignore[arg-type]
            justification=decision.justification,
            confidence=decision.confidence,
            **common,
        )

    async def publish(
        self, item: Received, *, error: str | None = None, topic: str | None = None
    ) -> None:
        assert self.bus is not None
        result = self.result_for(item, error=error)
        envelope = EventEnvelope.for_result(result, "stub")
        await self.bus.publish(
            topic or item.request.callback_topic, str(result.correlation_id), envelope
        )


def judge_for(qualities: dict[str, float], noise: float = 0.5) -> Judge:
    """A simulated judge that knows each essay text's hidden quality."""
    return Judge(qualities={text_key(t): q for t, q in qualities.items()}, noise=noise)
