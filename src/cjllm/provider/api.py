"""The provider service's HTTP API (FastAPI): queue-first, one comparison per request.

``POST /api/v1/comparison`` validates, plans and queues one comparison and answers
``202 {queue_id, status, message, estimated_wait_minutes}``; the result comes later as an
``LLMComparisonResultV1`` event on the request's ``callback_topic``. Refusals queue nothing:

- 401 — ``CJLLM_API_TOKEN`` is set and ``Authorization: Bearer <token>`` is missing or wrong;
- 408 — the body did not arrive within ``CJLLM_REQUEST_READ_TIMEOUT_SECONDS``;
- 413 — the body, one prompt field, the whole prompt or the block count is over its limit;
- 422 — the body does not match the contract (the error's ``loc`` names the field; metadata
  is bounded in depth, keys and size);
- 400 — a well-formed request the service cannot serve: an unknown or unconfigured
  provider, a batch strategy (``async_batch``, ``nightly_batch``) for a provider without a
  batch API, conflicting correlation ids;
- 503 + ``Retry-After`` — the queue is over its item or byte capacity (nothing was queued),
  or did not answer (``queue_unavailable``: the comparison may still have been queued, so
  the error's ``ctx.correlation_id`` is the one to retry with — a retry with it is queued
  at most once).

The body limit, its read timeout and the token check are :mod:`cjllm.api_guard`, shared
with the CJ service's API; what is accepted and how is :mod:`cjllm.provider.intake`, shared
with in-process callers. The POST route is a plain ASGI endpoint (FastAPI's request
machinery cost more than the rest of the request together); its OpenAPI entry is written
here, from the same contract models, so the document still shows the real request schema.

Error bodies always have FastAPI's shape: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``.
``GET /api/v1/comparison/{queue_id}`` reports a comparison's state; the batch-job endpoints
(list jobs, cancel a CJ batch) are :mod:`cjllm.provider.jobs_api`; ``/healthz`` and
``/metrics`` (Prometheus) need no token.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cjllm import __version__
from cjllm.api_guard import BEARER_SECURITY, BodyLimit, bearer_check, bearer_token
from cjllm.contracts import (
    ComparisonQueuedResponse,
    ComparisonRequest,
    ComparisonStatusResponse,
    QueueItemState,
)
from cjllm.provider.batch_jobs import BatchJobs
from cjllm.provider.bundling import PlannedComparison
from cjllm.provider.intake import Intake
from cjllm.provider.jobs_api import jobs_router
from cjllm.provider.limiter import Limiter
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.providers import Providers
from cjllm.provider.queue import Queue, QueueUnavailable
from cjllm.settings import ProviderSettings

COMPARISON_PATH = "/api/v1/comparison"

log = logging.getLogger(__name__)


def create_app(
    queue: Queue,
    providers: Providers,
    settings: ProviderSettings,
    metrics: ProviderMetrics,
    *,
    jobs: BatchJobs | None = None,
    on_enqueue: Callable[[str, PlannedComparison], None] | None = None,
    limiter: Limiter | None = None,
) -> FastAPI:
    """The API over ``queue``. ``jobs`` serves the batch-job endpoints (absent without it);
    ``on_enqueue`` hands an in-process worker what was queued and ``limiter`` gives
    ``estimated_wait_minutes`` (both optional, see :class:`Intake`)."""
    intake = Intake(queue, providers, settings, metrics, on_enqueue=on_enqueue, limiter=limiter)
    max_bytes, read_timeout = settings.max_request_bytes, settings.request_read_timeout_seconds
    setting = "CJLLM_MAX_REQUEST_BYTES"
    authorize = bearer_check(settings.api_token, "CJLLM_API_TOKEN")
    post = PostComparison(intake, authorize)
    app = ProviderAPI(
        BodyLimit(post, max_bytes=max_bytes, read_timeout=read_timeout, setting=setting),
        title="cjllm LLM Provider Service",
        version=__version__,
    )
    app.state.intake = intake
    app.state.enqueuer = intake.enqueuer
    app.add_middleware(BodyLimit, max_bytes=max_bytes, read_timeout=read_timeout, setting=setting)
    token = [Depends(bearer_token(settings.api_token, "CJLLM_API_TOKEN"))]
    app.router.routes.append(Route(COMPARISON_PATH, post, methods=["POST"]))
    _document_post_comparison(app)

    @app.get(
        COMPARISON_PATH + "/{queue_id}", response_model=ComparisonStatusResponse, dependencies=token
    )
    async def comparison_status(queue_id: uuid.UUID) -> ComparisonStatusResponse:
        item = await queue.get(str(queue_id))
        if item is None:
            raise HTTPException(
                404,
                detail=[
                    {
                        "loc": ["path", "queue_id"],
                        "msg": f"no comparison with queue_id {queue_id} (unknown, or its record "
                        "outlived CJLLM_RECORD_RETENTION_SECONDS)",
                        "type": "not_found",
                    }
                ],
            )
        wait = None
        if item.state in (QueueItemState.QUEUED, QueueItemState.PROCESSING):
            plan = PlannedComparison.from_json(item.payload)
            wait = await intake.wait_minutes(plan, item.tokens, item.hint)
        return ComparisonStatusResponse(
            queue_id=queue_id,
            correlation_id=uuid.UUID(item.correlation_id),
            status=item.state,
            attempts=item.attempts,
            queued_at=datetime.fromtimestamp(item.enqueued_at, UTC),
            updated_at=datetime.fromtimestamp(item.updated_at, UTC),
            estimated_wait_minutes=wait,
        )

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            depth = await queue.depth(time.time())
        except QueueUnavailable as exc:
            return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
        return JSONResponse(
            {"status": "ok", "queued": depth.queued, "processing": depth.processing}
        )

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        """The counters always (a scrape that fails while the queue is down loses them when
        they matter most); the depth gauges keep their last reading then."""
        try:
            metrics.observe_depth(await queue.depth(time.time()))
        except QueueUnavailable as exc:
            log.warning("metrics without a fresh queue depth: %s", exc)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    if jobs is not None:
        app.include_router(jobs_router(jobs, token))
    return app


class ProviderAPI(FastAPI):
    """The FastAPI app, with ``POST /api/v1/comparison`` (the one hot route) answered before
    FastAPI's middleware and routing, which cost a fifth of the request's CPU: ``post`` is
    the same endpoint the router holds (there it serves a mounted app and the 405s), behind
    the same body limit."""

    def __init__(self, post: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.post_comparison = post

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == COMPARISON_PATH
        ):
            await self.post_comparison(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


class PostComparison:
    """``POST /api/v1/comparison`` as a plain ASGI endpoint: the token, the body (already
    read within its limits by :class:`~cjllm.api_guard.BodyLimit`), then
    :meth:`Intake.accept_json`; the answer is 202 and the queue id, or the refusal in
    FastAPI's error shape."""

    def __init__(self, intake: Intake, authorize: Callable[[str | None], None]) -> None:
        self.intake = intake
        self.authorize = authorize

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self.authorize(_header(scope, b"authorization"))
            accepted = await self.intake.accept_json(await _body(receive))
        except HTTPException as exc:  # a Refused, or the token check's 401
            await _answer(send, exc.status_code, {"detail": exc.detail}, exc.headers)
            return
        await _answer(send, 202, accepted.answer())  # four flat fields: json.dumps is enough


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _body(receive: Receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    while message.get("more_body", False):
        message = await receive()
        body += message.get("body", b"")
    return bytes(body)


async def _answer(
    send: Send, status: int, content: Any, headers: Mapping[str, str] | None = None
) -> None:
    payload = json.dumps(content).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def _document_post_comparison(app: FastAPI) -> None:
    """Add ``POST /api/v1/comparison`` to the OpenAPI document (a plain ASGI route, so
    FastAPI does not list it): the request body, the 202 answer and the bearer scheme, from
    the contract models."""
    ref = "#/components/schemas/{model}"
    request = ComparisonRequest.model_json_schema(ref_template=ref)
    answer = ComparisonQueuedResponse.model_json_schema(ref_template=ref, mode="serialization")
    definitions = {
        ComparisonRequest.__name__: request,
        ComparisonQueuedResponse.__name__: answer,
        **request.pop("$defs", {}),
        **answer.pop("$defs", {}),
    }

    def json_schema(model: type[Any]) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": ref.format(model=model.__name__)}}}

    operation = {
        "summary": "Queue one comparison",
        "operationId": "post_comparison_api_v1_comparison_post",
        "requestBody": {"content": json_schema(ComparisonRequest), "required": True},
        "responses": {
            "202": {
                "description": "Queued: the result comes later on the callback topic",
                "content": json_schema(ComparisonQueuedResponse),
            }
        },
        **BEARER_SECURITY,
    }
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            document.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
            path = {"post": operation, **document["paths"].get(COMPARISON_PATH, {})}
            document["paths"] = {COMPARISON_PATH: path, **document["paths"]}
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
