"""The HTTP API: refusals name the field and queue nothing; accepted requests are queued once."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from cjllm.api_guard import serve
from cjllm.bus import MemoryBus
from cjllm.contracts import SPINE_KEYS, ComparisonRequest
from cjllm.provider.intake import Intake, Refused
from tests import services
from tests.http_checks import answer_to_a_stalled_body, unresolved_refs
from tests.provider.support import (
    COMPARISON_PATH,
    Callbacks,
    body,
    eventually,
    fast_settings,
    metric,
    post_all,
    provider,
)
from tests.services import free_port

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

Mutation = Callable[[dict[str, Any]], None]


def drop(key: str) -> Mutation:
    return lambda b: b.pop(key)


def overrides(**kw: Any) -> Mutation:
    return lambda b: b["llm_config_overrides"].update(kw)


def metadata(**kw: Any) -> Mutation:
    return lambda b: b["metadata"].update(kw)


def essay_a(text: str) -> Mutation:
    return lambda b: b["prompt_blocks"][2].update(content=text)


def blocks(n: int, chars: int) -> Mutation:
    def mutate(b: dict[str, Any]) -> None:
        b["prompt_blocks"] = [
            {"target": "user_content", "content": "x" * chars, "cacheable": i < n - 2}
            for i in range(n)
        ]

    return mutate


def nested(levels: int) -> dict[str, Any]:
    inner: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        inner = {"x": inner}
    return inner


def only_shared_blocks(b: dict[str, Any]) -> None:
    b["prompt_blocks"] = [b["prompt_blocks"][1]]


BAD_INPUT: list[tuple[str, Mutation, int, list[Any]]] = [
    ("missing callback_topic", drop("callback_topic"), 422, ["body", "callback_topic"]),
    ("missing overrides", drop("llm_config_overrides"), 422, ["body", "llm_config_overrides"]),
    (
        "unknown provider",
        overrides(provider_override="gemini"),
        400,
        ["body", "llm_config_overrides", "provider_override"],
    ),
    (
        "confidence in overrides",
        overrides(confidence=4),
        422,
        ["body", "llm_config_overrides", "confidence"],
    ),
    (
        "temperature out of range",
        overrides(temperature_override=2.5),
        422,
        ["body", "llm_config_overrides", "temperature_override"],
    ),
    ("oversize essay", essay_a("word " * 2000), 413, ["body", "prompt_blocks", 2, "content"]),
    ("oversize prompt", blocks(6, 1500), 413, ["body", "prompt_blocks"]),
    ("too many blocks", blocks(9, 10), 413, ["body", "prompt_blocks"]),
    ("no per-comparison part", only_shared_blocks, 422, ["body"]),
    (
        "async_batch for a provider without a batch API (the mock)",
        metadata(batching_strategy="async_batch"),
        400,
        ["body", "metadata", "batching_strategy"],
    ),
    (
        "nightly_batch for a provider without a batch API (the mock)",
        metadata(batching_strategy="nightly_batch"),
        400,
        ["body", "metadata", "batching_strategy"],
    ),
    (
        "unknown strategy",
        metadata(batching_strategy="bundle_everything"),
        422,
        ["body", "metadata", "batching_strategy"],
    ),
    (
        "zero bundle size",
        metadata(preferred_bundle_size=0),
        422,
        ["body", "metadata", "preferred_bundle_size"],
    ),
    (
        "conflicting correlation ids",
        metadata(request_correlation_id=str(uuid.uuid4())),
        400,
        ["body", "metadata", "request_correlation_id"],
    ),
    ("metadata nested too deep", metadata(deep=nested(150)), 422, ["body", "metadata"]),
    (
        "too many metadata keys",
        metadata(**{f"k{i}": i for i in range(200)}),
        422,
        ["body", "metadata"],
    ),
    ("metadata too large", metadata(note="x" * 20_000), 422, ["body", "metadata"]),
    (
        "model name too long",
        overrides(model_override="m" * 300),
        422,
        ["body", "llm_config_overrides", "model_override"],
    ),
    (
        "callback topic no broker accepts",
        lambda b: b.update(callback_topic="results for/everyone"),
        422,
        ["body", "callback_topic"],
    ),
    (
        "spine field of the wrong type",
        metadata(essay_a_id=17),
        422,
        ["body", "metadata", "essay_a_id"],
    ),
]


@pytest.fixture
async def api(backend_url: str):  # type: ignore[no-untyped-def]
    settings = fast_settings(
        backend_url, api_token=TOKEN, max_prompt_chars=5000, max_blocks=8, max_request_bytes=40_000
    )
    async with provider(settings, work=False) as running:
        yield running


@pytest.mark.parametrize(
    ("case", "mutate", "status", "loc"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT]
)
async def test_bad_input_is_refused_naming_the_field_and_nothing_is_queued(
    api: Any, case: str, mutate: Mutation, status: int, loc: list[Any]
) -> None:
    svc, client, _ = api
    request_body = copy.deepcopy(body(1, topic="results"))
    mutate(request_body)
    response = await client.post(COMPARISON_PATH, json=request_body, headers=AUTH)
    assert response.status_code == status, response.text
    assert loc in [d["loc"] for d in response.json()["detail"]]
    assert (await svc.queue.depth(0)).queued == 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}],
    ids=["missing", "wrong", "not bearer"],
)
async def test_a_missing_or_wrong_token_is_401(api: Any, headers: dict[str, str]) -> None:
    svc, client, _ = api
    response = await client.post(COMPARISON_PATH, json=body(1, topic="r"), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    status = await client.get(f"{COMPARISON_PATH}/{uuid.uuid4()}", headers=headers)
    assert status.status_code == 401
    assert (await svc.queue.depth(0)).queued == 0


async def test_an_oversize_body_is_413_before_it_is_read(api: Any) -> None:
    svc, client, _ = api
    raw = b'{"user_prompt": "' + b"x" * 50_000 + b'"}'
    response = await client.post(
        COMPARISON_PATH, content=raw, headers={**AUTH, "content-type": "application/json"}
    )
    assert response.status_code == 413
    assert (await svc.queue.depth(0)).queued == 0


async def test_malformed_json_is_422(api: Any) -> None:
    svc, client, _ = api
    headers = {**AUTH, "content-type": "application/json"}
    response = await client.post(COMPARISON_PATH, content=b'{"callback_topic": ', headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert (await svc.queue.depth(0)).queued == 0


async def test_a_full_queue_is_503_with_retry_after_and_nothing_is_queued(backend_url: str) -> None:
    settings = fast_settings(backend_url, queue_max_items=2, queue_full_retry_after_seconds=7)
    async with provider(settings, work=False) as (svc, client, _):
        await post_all(client, [body(i, topic="r") for i in range(2)])
        response = await client.post(COMPARISON_PATH, json=body(3, topic="r"))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"
        assert response.json()["detail"][0]["type"] == "queue_full"
        assert (await svc.queue.depth(0)).queued == 2
        assert metric(svc, "cjllm_provider_requests_total", outcome="queue_full") == 1


async def test_concurrent_posts_share_queue_steps_and_each_gets_its_own_answer(
    backend_url: str,
) -> None:
    settings = fast_settings(backend_url, queue_max_items=40)
    async with provider(settings, work=False) as (svc, client, _):
        bodies = [body(i, topic="r") for i in range(41)]
        bodies.append(bodies[0])  # the same comparison posted twice at once
        responses = await asyncio.gather(*(client.post(COMPARISON_PATH, json=b) for b in bodies))
        codes = [r.status_code for r in responses]
        assert codes.count(202) == 41 and codes.count(503) == 1
        (full,) = [r for r in responses if r.status_code == 503]
        assert full.json()["detail"][0]["type"] == "queue_full"
        ids = [r.json()["queue_id"] for r in responses if r.status_code == 202]
        assert len(set(ids)) == 40  # the repeated comparison got its first queue id
        assert responses[0].json()["queue_id"] == responses[-1].json()["queue_id"]
        assert (await svc.queue.depth(0)).queued == 40
        assert svc.app.state.enqueuer.steps < len(bodies) / 4  # grouped, not one by one


async def test_accepted_request_is_202_and_its_status_can_be_read(api: Any) -> None:
    _, client, _ = api
    request_body = body(1, topic="r")
    response = await client.post(COMPARISON_PATH, json=request_body, headers=AUTH)
    assert response.status_code == 202
    answer = response.json()
    assert set(answer) == {"queue_id", "status", "message", "estimated_wait_minutes"}
    assert answer["status"] == "queued"
    status = await client.get(f"{COMPARISON_PATH}/{answer['queue_id']}", headers=AUTH)
    assert status.status_code == 200
    assert status.json()["status"] == "queued"
    assert status.json()["correlation_id"] == request_body["correlation_id"]
    missing = await client.get(f"{COMPARISON_PATH}/{uuid.uuid4()}", headers=AUTH)
    assert missing.status_code == 404


async def test_reposting_a_correlation_id_queues_it_once(api: Any) -> None:
    svc, client, _ = api
    request_body = body(1, topic="r")
    first = await client.post(COMPARISON_PATH, json=request_body, headers=AUTH)
    again = await client.post(COMPARISON_PATH, json=request_body, headers=AUTH)
    assert again.status_code == 202
    assert again.json()["queue_id"] == first.json()["queue_id"]
    assert (await svc.queue.depth(0)).queued == 1


async def test_a_correlation_id_is_made_when_absent_and_the_spine_is_completed(
    backend_url: str,
) -> None:
    callbacks = Callbacks()
    bus = MemoryBus()
    bus.subscribe("r", "cj", callbacks)
    await bus.start()
    request_body = body(1, topic="r", size=None, group=None)
    del request_body["correlation_id"]
    request_body["metadata"] = {}
    async with provider(fast_settings(backend_url, linger_seconds=0.0), bus=bus) as (_, client, _):
        await post_all(client, [request_body])
        await eventually(lambda: callbacks.count == 1)
    await bus.stop()
    ((cid, (result,)),) = callbacks.by_id.items()
    meta = result.request_metadata
    assert set(SPINE_KEYS) <= set(meta)
    assert meta["request_correlation_id"] == cid
    assert meta["batching_strategy"] == "serial_round"
    assert meta["essay_a_id"] is None


async def test_per_request_sends_every_comparison_alone(backend_url: str) -> None:
    callbacks = Callbacks()
    bus = MemoryBus()
    bus.subscribe("r", "cj", callbacks)
    await bus.start()
    bodies = [body(i, topic="r", size=10, strategy="per_request") for i in range(4)]
    async with provider(fast_settings(backend_url), bus=bus) as (_, client, mock):
        await post_all(client, bodies)
        await eventually(lambda: callbacks.count == 4)
    await bus.stop()
    assert [len(c.items) for c in mock.calls] == [1, 1, 1, 1]


async def test_health_and_metrics_need_no_token(api: Any) -> None:
    _, client, _ = api
    await client.post(COMPARISON_PATH, json=body(1, topic="r"), headers=AUTH)
    health = await client.get("/healthz")
    assert health.status_code == 200 and health.json()["queued"] == 1
    text = (await client.get("/metrics")).text
    assert 'cjllm_provider_queue_depth{state="queued"} 1.0' in text
    for name in (
        "cjllm_provider_calls_total",
        "cjllm_provider_items_per_call",
        "cjllm_provider_callbacks_total",
        "cjllm_provider_retries_total",
        "cjllm_provider_expiries_total",
        "cjllm_provider_lease_recoveries_total",
        "cjllm_provider_call_latency_seconds",
    ):
        assert f"# TYPE {name}" in text


async def test_a_round_posted_concurrently_over_http_goes_out_as_one_call(
    backend_url: str,
) -> None:
    callbacks = Callbacks()
    bus = MemoryBus()
    bus.subscribe("r", "cj", callbacks)
    await bus.start()
    settings = fast_settings(backend_url, api_token=TOKEN)
    port = free_port()
    async with provider(settings, bus=bus) as (svc, _, mock):
        config = uvicorn.Config(
            svc.app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        try:
            await eventually(lambda: server.started)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as http:
                round_ = [body(i, topic="r", size=10) for i in range(10)]
                responses = await asyncio.gather(
                    *(http.post(COMPARISON_PATH, json=b) for b in round_)
                )
            assert [r.status_code for r in responses] == [202] * 10
            await eventually(lambda: callbacks.count == 10)
        finally:
            server.should_exit = True
            await serving
    await bus.stop()
    assert [len(c.items) for c in mock.calls] == [10]


async def test_an_unreachable_queue_is_503_not_a_false_202() -> None:
    settings = fast_settings(f"redis://127.0.0.1:{free_port()}/0")
    async with provider(settings, work=False) as (_, client, _):
        response = await client.post(COMPARISON_PATH, json=body(1, topic="r"))
        assert response.status_code == 503
        assert response.json()["detail"][0]["type"] == "queue_unavailable"
        assert "retry-after" in response.headers
        assert (await client.get("/healthz")).status_code == 503


async def test_metrics_still_answer_while_the_queue_is_down() -> None:
    """A scrape while Redis is down gets the counters (the depth keeps its last reading);
    only the health check says the queue is unavailable."""
    with services.own_redis() as redis:
        async with provider(fast_settings(redis.url), work=False) as (_, client, _):
            await client.post(COMPARISON_PATH, json=body(1, topic="r"))
            assert (
                'cjllm_provider_queue_depth{state="queued"} 1.0'
                in (await client.get("/metrics")).text
            )
            redis.kill()
            health = await client.get("/healthz")
            assert health.status_code == 503
            scraped = await client.get("/metrics")
            assert scraped.status_code == 200, scraped.text
            assert 'cjllm_provider_queue_depth{state="queued"} 1.0' in scraped.text
            assert 'cjllm_provider_requests_total{outcome="queued"} 1.0' in scraped.text


async def test_model_names_from_requests_cannot_grow_the_metrics_without_bound(
    backend_url: str,
) -> None:
    callbacks = Callbacks()
    bus = MemoryBus()
    bus.subscribe("r", "cj", callbacks)
    await bus.start()
    bodies = [body(i, topic="r", size=1, model=f"made-up-model-{i}") for i in range(30)]
    bodies.append(body(30, topic="r", size=1, model="mock-judge-1"))
    # generous limits, so the rate limiter labels its series too
    limits = {"mock": {"rpm": 100_000, "tpm": 10**9}}
    settings = fast_settings(backend_url, linger_seconds=0.0, rate_limits=limits)
    async with provider(settings, bus=bus) as (svc, client, _):
        await post_all(client, bodies)
        await eventually(lambda: callbacks.count == 31)
        text = (await client.get("/metrics")).text
    await bus.stop()
    models = {
        sample.labels[label]
        for family in svc.metrics.registry.collect()
        for sample in family.samples
        for label in ("model", "model_class")
        if label in sample.labels
    }
    assert models <= {"mock-judge-1", "mock-judge", "other"} and "other" in models
    assert "made-up-model" not in text
    # the callbacks still name the model each comparison asked for
    assert callbacks.one(bodies[0]["correlation_id"]).model == "made-up-model-0"


async def test_a_queue_that_stops_answering_is_503_saying_the_comparison_may_be_queued() -> None:
    """Redis frozen (SIGSTOP) while a POST waits: the enqueue may still run when it thaws, so
    the refusal must say so and hand back the correlation id that makes a retry safe."""
    callbacks = Callbacks()
    bus = MemoryBus()
    bus.subscribe("r", "cj", callbacks)
    await bus.start()
    with services.own_redis() as redis:
        settings = fast_settings(f"{redis.url}?socket_timeout=1", linger_seconds=0.0)
        async with provider(settings, bus=bus) as (_, client, _):
            request_body = body(1, topic="r", size=1)
            del request_body["correlation_id"]  # the service picks one
            redis.pause()
            try:
                refused = await client.post(COMPARISON_PATH, json=request_body)
            finally:
                redis.resume()
            assert refused.status_code == 503
            (detail,) = refused.json()["detail"]
            assert detail["type"] == "queue_unavailable"
            assert "may have been queued" in detail["msg"]
            correlation_id = detail["ctx"]["correlation_id"]
            retried = await client.post(
                COMPARISON_PATH, json={**request_body, "correlation_id": correlation_id}
            )
            assert retried.status_code == 202
            await eventually(lambda: callbacks.count >= 1)
            await asyncio.sleep(0.5)  # room for a second callback, were there two comparisons
    await bus.stop()
    assert list(callbacks.by_id) == [correlation_id] and callbacks.count == 1


async def test_a_body_that_never_arrives_is_408_not_a_held_connection(backend_url: str) -> None:
    settings = fast_settings(backend_url, request_read_timeout_seconds=0.5)
    async with provider(settings, work=False) as (svc, _, _):
        status_line = await answer_to_a_stalled_body(svc.app, COMPARISON_PATH)
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        assert (await svc.queue.depth(0)).queued == 0


async def test_a_keep_alive_connection_idle_past_a_client_pools_expiry_is_still_served(
    tmp_path: Path,
) -> None:
    """Under 32-50 concurrent POSTs httpx clients saw ``ReadError``: uvicorn's default
    keep-alive (5 s) is httpx's pool expiry, so the server closed idle connections just as
    the client reused them. The server ``serve`` runs must hold an idle connection longer
    than a client's pool keeps one: a second POST on a connection left idle past httpx's
    expiry is answered."""
    idle = httpx.Limits().keepalive_expiry
    assert idle is not None
    settings = fast_settings(f"sqlite:///{tmp_path / 'queue.sqlite'}")  # any queue will do
    async with provider(settings, work=False) as (svc, _, _):
        port = free_port()
        server = serve(svc.app, "127.0.0.1", port)
        serving = asyncio.create_task(server.serve())
        try:
            await eventually(lambda: server.started)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            statuses = []
            for i in range(2):
                if i:
                    await asyncio.sleep(idle + 0.5)
                payload = json.dumps(body(i, topic="keep-alive", size=2)).encode()
                head = (
                    f"POST {COMPARISON_PATH} HTTP/1.1\r\nHost: x\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
                )
                writer.write(head.encode() + payload)
                await writer.drain()
                async with asyncio.timeout(20):
                    statuses.append((await reader.readline()).strip())
                    if not statuses[-1]:
                        break  # the server closed the connection without an answer
                    headers = await reader.readuntil(b"\r\n\r\n")
                    length = next(
                        int(line.split(b":")[1])
                        for line in headers.lower().split(b"\r\n")
                        if line.startswith(b"content-length:")
                    )
                    await reader.readexactly(length)
            writer.close()
        finally:
            server.should_exit = True
            await serving
        assert [s[:12] for s in statuses] == [b"HTTP/1.1 202"] * 2
        assert (await svc.queue.depth(0)).queued == 2


async def test_the_openapi_document_resolves(api: Any) -> None:
    _, client, _ = api
    document = (await client.get("/openapi.json")).json()
    assert unresolved_refs(document) == []
    request = document["paths"][COMPARISON_PATH]["post"]["requestBody"]
    assert request["content"]["application/json"]["schema"]["$ref"].endswith("ComparisonRequest")
    # the hot route checks its token itself and still declares the scheme
    assert document["paths"][COMPARISON_PATH]["post"]["security"] == [{"HTTPBearer": []}]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_an_in_process_caller_and_the_http_route_share_one_acceptance(api: Any) -> None:
    svc, client, _ = api
    intake: Intake = svc.app.state.intake
    request_body = body(1, topic="r")
    accepted = await intake.accept(ComparisonRequest.model_validate(request_body))
    assert accepted.created and accepted.correlation_id == request_body["correlation_id"]
    again = await client.post(COMPARISON_PATH, json=request_body, headers=AUTH)
    assert again.status_code == 202 and again.json()["queue_id"] == accepted.queue_id
    assert (await svc.queue.depth(0)).queued == 1
    with pytest.raises(Refused) as refused:  # the same checks, without HTTP
        await intake.accept(ComparisonRequest.model_validate(body(2, topic="r", provider="gemini")))
    assert refused.value.status_code == 400
    assert refused.value.detail[0]["loc"] == ["body", "llm_config_overrides", "provider_override"]
    assert (await svc.queue.depth(0)).queued == 1


async def test_the_comparison_route_also_answers_from_the_router(api: Any) -> None:
    """The hot route is answered ahead of FastAPI's routing; the router still holds it, so
    the app mounted under a prefix accepts too and other methods get a 405."""
    svc, client, _ = api
    outer = FastAPI()
    outer.mount("/provider", svc.app)
    transport = httpx.ASGITransport(app=outer)
    async with httpx.AsyncClient(transport=transport, base_url="http://outer") as mounted:
        response = await mounted.post(
            "/provider" + COMPARISON_PATH, json=body(1, topic="r"), headers=AUTH
        )
        assert response.status_code == 202, response.text
        unauthorised = await mounted.post("/provider" + COMPARISON_PATH, json=body(2, topic="r"))
        assert unauthorised.status_code == 401
    assert (await client.get(COMPARISON_PATH, headers=AUTH)).status_code == 405
    assert (await svc.queue.depth(0)).queued == 1
