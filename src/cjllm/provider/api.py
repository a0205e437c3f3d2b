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
with the CJ service's API.

Error bodies always have FastAPI's shape: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``.
``GET /api/v1/comparison/{queue_id}`` reports a comparison's state; the batch-job endpoints
(list jobs, cancel a CJ batch) are :mod:`cjllm.provider.jobs_api`; ``/healthz`` and
``/metrics`` (Prometheus) need no token.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError

from cjllm import __version__
from cjllm.api_guard import BEARER_SECURITY, BodyLimit, bearer_check, bearer_token
from cjllm.contracts import (
    SPINE_KEYS,
    BundleHints,
    BundleLayout,
    ComparisonQueuedResponse,
    ComparisonRequest,
    ComparisonStatusResponse,
    MetadataSpine,
    QueueItemState,
)
from cjllm.provider.adapters import batch_api_for
from cjllm.provider.batch_calls import NoBatchAPI
from cjllm.provider.batch_jobs import BatchJobs
from cjllm.provider.bundling import (
    PlannedComparison,
    compatibility_key,
    size_hint,
    token_budget,
)
from cjllm.provider.group_commit import GroupCommit
from cjllm.provider.job_plan import BATCH_STRATEGIES, lane_key
from cjllm.provider.jobs_api import jobs_router
from cjllm.provider.limiter import Limiter
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.providers import Providers, ProviderUnavailable
from cjllm.provider.queue import NewItem, Queue, QueueFull, QueueUnavailable
from cjllm.settings import ProviderSettings

COMPARISON_PATH = "/api/v1/comparison"


def _refuse(status: int, loc: Sequence[str | int], msg: str, kind: str) -> NoReturn:
    raise HTTPException(status, detail=[{"loc": ["body", *loc], "msg": msg, "type": kind}])


def _invalid(exc: ValidationError, prefix: Sequence[str | int] = ()) -> NoReturn:
    """A 422 naming every bad field, in FastAPI's error shape."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    detail = [{**e, "loc": ["body", *prefix, *e["loc"]]} for e in errors]
    raise HTTPException(422, detail=detail)


def create_app(
    queue: Queue,
    providers: Providers,
    settings: ProviderSettings,
    metrics: ProviderMetrics,
    *,
    jobs: BatchJobs | None = None,
    on_enqueue: Callable[[], None] | None = None,
    limiter: Limiter | None = None,
) -> FastAPI:
    """The API over ``queue``. ``jobs`` serves the batch-job endpoints (absent without it);
    ``on_enqueue`` wakes an in-process worker (optional); ``limiter`` gives
    ``estimated_wait_minutes`` from the key's rate limits (else null; always null for a
    batch-mode comparison: a job's turnaround is the vendor's to decide)."""
    app = FastAPI(title="cjllm LLM Provider Service", version=__version__)
    enqueuer = GroupCommit(queue)  # concurrent requests share one queue step
    app.state.enqueuer = enqueuer

    ahead_seen = [0.0, 0.0]  # comparisons queued or in flight, and when that was read

    async def wait_minutes(plan: PlannedComparison, tokens: int, hint: int) -> int | None:
        """Minutes the queue ahead takes at the key's rate limits (null when unknown)."""
        if limiter is None or plan.request.metadata.get("batching_strategy") in BATCH_STRATEGIES:
            return None
        try:
            adapter = providers.get(plan.provider)
        except ProviderUnavailable:
            return None
        if not limiter.limits(limiter.key(adapter, plan.model), plan.model).known():
            return None
        now = time.time()
        if now - ahead_seen[1] > 1.0:  # the queue's depth, read at most once a second
            try:
                depth = await queue.depth(now)
            except QueueUnavailable:
                return None
            ahead_seen[:] = [depth.queued + depth.processing, now]
        return limiter.wait_minutes(adapter, plan.model, int(ahead_seen[0]), tokens, hint)

    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_request_bytes,
        read_timeout=settings.request_read_timeout_seconds,
        setting="CJLLM_MAX_REQUEST_BYTES",
    )
    token = [Depends(bearer_token(settings.api_token, "CJLLM_API_TOKEN"))]
    authorize = bearer_check(settings.api_token, "CJLLM_API_TOKEN")  # in the hot route itself
    request_schema = _document_request_body(app, ComparisonRequest)

    @app.post(
        COMPARISON_PATH,
        status_code=202,
        response_model=ComparisonQueuedResponse,
        openapi_extra={
            **BEARER_SECURITY,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_schema}},
            },
        },
    )
    async def post_comparison(request: Request) -> JSONResponse:
        authorize(request.headers.get("authorization"))
        try:
            body = await request.body()  # read in full, within its limits, by BodyLimit
            try:
                comparison = ComparisonRequest.model_validate_json(body)
            except ValidationError as exc:
                _invalid(exc)
            _check_sizes(comparison, settings)
            plan, hints = _plan(comparison, providers, settings.bundle_layout)
        except HTTPException:
            metrics.requests.labels("rejected").inc()
            raise
        now = time.time()
        key, cap = compatibility_key(plan), settings.max_items_per_call
        ttl = settings.item_ttl_seconds
        if hints.batching_strategy in BATCH_STRATEGIES:  # to a provider batch job
            key = lane_key(plan, hints.batching_strategy, key)
            cap, ttl = settings.batch_items_per_line, settings.batch_item_ttl_seconds
        item = NewItem(
            queue_id=str(uuid.uuid4()),
            correlation_id=plan.correlation_id,
            key=key,
            hint=size_hint(hints, cap),
            tokens=plan.item_tokens(),
            budget=token_budget(plan, settings.max_input_tokens_per_call),
            payload=plan.to_json(),
            enqueued_at=now,
            expires_at=now + ttl,
        )
        try:
            queue_id, created = await enqueuer.enqueue(item)
        except (QueueFull, QueueUnavailable) as exc:
            kind = "queue_full" if isinstance(exc, QueueFull) else "queue_unavailable"
            metrics.requests.labels(kind).inc()
            return JSONResponse(
                {"detail": [_refusal(exc, kind, item.correlation_id)]},
                status_code=503,
                headers={"Retry-After": str(settings.queue_full_retry_after_seconds)},
            )
        metrics.requests.labels("queued" if created else "duplicate").inc()
        if on_enqueue is not None:
            on_enqueue()
        message = (
            "queued; the result will be published to the callback topic"
            if created
            else "this correlation_id is already queued; no second comparison was made"
        )
        answer = ComparisonQueuedResponse(
            queue_id=uuid.UUID(queue_id),
            message=message,
            estimated_wait_minutes=await wait_minutes(plan, item.tokens, item.hint),
        )
        return JSONResponse(answer.model_dump(mode="json"), status_code=202)

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
            wait = await wait_minutes(plan, item.tokens, item.hint)
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
        metrics.observe_depth(await queue.depth(time.time()))
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    if jobs is not None:
        app.include_router(jobs_router(jobs, token))
    return app


def _refusal(exc: QueueFull | QueueUnavailable, kind: str, correlation_id: str) -> dict[str, Any]:
    """The 503's error: whether the comparison may be queued, and the id to retry with."""
    if isinstance(exc, QueueUnavailable) and exc.may_have_applied:
        msg = (
            f"{exc}. The comparison may have been queued: retry with correlation_id "
            f"{correlation_id} (a retry with it is queued at most once)"
        )
    else:
        msg = f"{exc}. Nothing was queued; retry later"
    ctx = {"correlation_id": correlation_id, "may_have_been_queued": kind != "queue_full"}
    if isinstance(exc, QueueUnavailable):
        ctx["may_have_been_queued"] = exc.may_have_applied
    return {"loc": [], "msg": msg, "type": kind, "ctx": ctx}


def _document_request_body(app: FastAPI, model: type[BaseModel]) -> dict[str, Any]:
    """The request body's schema as a ``$ref``, its definitions added to the document's
    components (the handler reads the body itself, so FastAPI does not list the model)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = {model.__name__: schema, **schema.pop("$defs", {})}
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            document.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _check_sizes(comparison: ComparisonRequest, settings: ProviderSettings) -> None:
    limit = settings.max_prompt_chars
    blocks = comparison.prompt_blocks or []
    if len(blocks) > settings.max_blocks:
        _refuse(
            413,
            ["prompt_blocks"],
            f"{len(blocks)} blocks; the limit is {settings.max_blocks} (CJLLM_MAX_BLOCKS)",
            "too_many_blocks",
        )
    fields: list[tuple[list[str | int], int]] = [
        (["prompt_blocks", i, "content"], len(b.content)) for i, b in enumerate(blocks)
    ]
    if comparison.user_prompt is not None:
        fields.append((["user_prompt"], len(comparison.user_prompt)))
    for loc, chars in fields:
        if chars > limit:
            _refuse(
                413,
                loc,
                f"{chars} characters; the limit is {limit} (CJLLM_MAX_PROMPT_CHARS)",
                "prompt_too_large",
            )
    total = sum(chars for _, chars in fields)
    if total > limit:
        _refuse(
            413,
            ["prompt_blocks" if blocks else "user_prompt"],
            f"the prompt is {total} characters in all; the limit is {limit} "
            "(CJLLM_MAX_PROMPT_CHARS)",
            "prompt_too_large",
        )


def _plan(
    comparison: ComparisonRequest, providers: Providers, default_layout: BundleLayout
) -> tuple[PlannedComparison, BundleHints]:
    """Resolve provider, model and prompt layout, fix the correlation id, and complete the
    metadata spine."""
    try:
        hints = BundleHints.model_validate(comparison.metadata)
    except ValidationError as exc:
        _invalid(exc, ["metadata"])
    provider = comparison.llm_config_overrides.provider_override
    try:
        adapter = providers.get(provider)
    except ProviderUnavailable as exc:
        _refuse(400, ["llm_config_overrides", "provider_override"], str(exc), "unknown_provider")
    if hints.batching_strategy in BATCH_STRATEGIES:
        try:
            batch_api_for(adapter)
        except NoBatchAPI as exc:
            _refuse(400, ["metadata", "batching_strategy"], str(exc), "no_batch_api")
    correlation_id = _correlation_id(comparison)
    metadata = dict(comparison.metadata)
    for key in SPINE_KEYS:
        metadata.setdefault(key, None)
    metadata.update(
        request_correlation_id=str(correlation_id),
        prompt_sha256=comparison.prompt_sha256(),
        batching_strategy=hints.batching_strategy.value,
        bundle_id=None,
        bundle_index=None,
        bundle_size=None,
        resolved_provider=None,
        resolved_model=None,
    )
    try:
        MetadataSpine.model_validate(metadata)
    except ValidationError as exc:
        _invalid(exc, ["metadata"])
    request = comparison.model_copy(update={"correlation_id": correlation_id, "metadata": metadata})
    model = comparison.llm_config_overrides.model_override or adapter.default_model
    layout = hints.bundle_layout or default_layout
    return PlannedComparison(request, provider, model, layout), hints


def _correlation_id(comparison: ComparisonRequest) -> uuid.UUID:
    """``correlation_id``, else ``metadata.request_correlation_id``, else a new one."""
    given = comparison.metadata.get("request_correlation_id")
    from_metadata: uuid.UUID | None = None
    if given is not None:
        try:
            from_metadata = uuid.UUID(str(given))
        except ValueError:
            _refuse(
                422,
                ["metadata", "request_correlation_id"],
                f"not a UUID: {given!r}",
                "uuid_parsing",
            )
    if comparison.correlation_id is None:
        return from_metadata or uuid.uuid4()
    if from_metadata is not None and from_metadata != comparison.correlation_id:
        _refuse(
            400,
            ["metadata", "request_correlation_id"],
            "differs from correlation_id; they name the same comparison and must agree",
            "correlation_mismatch",
        )
    return comparison.correlation_id
