"""The CJ service's HTTP API: start an assessment, watch it, read the result."""

from __future__ import annotations

import uuid

import httpx

from cjllm.cj.api import create_app
from cjllm.cj.workflow import EssayInput
from tests.cj.conftest import MakeHarness, essays_with_quality, judging_stub
from tests.cj.stub_provider import StubProvider
from tests.http_checks import answer_to_a_stalled_body, unresolved_refs


async def test_start_watch_and_read_an_assessment(make_harness: MakeHarness) -> None:
    essays, qualities = essays_with_quality(6)
    h = await make_harness(stub=judging_stub(qualities), comparisons_per_essay=4)
    transport = httpx.ASGITransport(app=create_app(h.cj))
    async with httpx.AsyncClient(transport=transport, base_url="http://cj") as client:
        body = {
            "essays": [{"essay_id": e.essay_id, "text": e.text} for e in essays[:5]],
            "anchors": [{"essay_id": "a1", "text": essays[5].text, "grade": "3"}],
            "instructions": "Describe a journey.",
            "bos_batch_id": "bos-1",
        }
        started = await client.post("/api/v1/assessments", json=body)
        assert started.status_code == 202, started.text
        batch_id = started.json()["cj_batch_id"]
        await h.cj.wait_for_completion(batch_id, timeout=60)
        status = (await client.get(f"/api/v1/assessments/{batch_id}")).json()
        assert status["status"] == "completed"
        assert status["progress"]["succeeded"] == status["result"]["comparisons_succeeded"] == 12
        assert status["result"]["bos_batch_id"] == "bos-1"
        assert {r["essay_id"] for r in status["result"]["ranking"]} == {
            *(e.essay_id for e in essays[:5]),
            "a1",
        }
        assert (await client.get("/api/v1/assessments/nope")).status_code == 404
        # every comparison as evidence: who met whom, in which position, who won and why
        judged = (await client.get(f"/api/v1/assessments/{batch_id}/comparisons")).json()
        assert judged["cj_batch_id"] == batch_id and len(judged["comparisons"]) == 12
        first = judged["comparisons"][0]
        assert first["status"] == "succeeded" and first["winner"] in ("Essay A", "Essay B")
        assert first["essay_a_id"] != first["essay_b_id"] and first["bundle_id"]
        missing = await client.get("/api/v1/assessments/nope/comparisons")
        assert missing.status_code == 404
        bad = await client.post(
            "/api/v1/assessments", json={**body, "essays": body["essays"][:1], "anchors": []}
        )
        assert bad.status_code == 400 and "at least 2" in bad.json()["detail"]
        typo = await client.post("/api/v1/assessments", json={**body, "rubrik": "x"})
        assert typo.status_code == 422
        assert (await client.get("/healthz")).json() == {"status": "ok"}


CJ_TOKEN = "cj-s3cret"


def assessment(essays: list[EssayInput], **extra: object) -> dict[str, object]:
    return {
        "essays": [{"essay_id": e.essay_id, "text": e.text} for e in essays],
        "instructions": "Describe a journey.",
        **extra,
    }


async def test_the_cj_api_wants_its_token_and_refuses_what_it_cannot_serve(
    make_harness: MakeHarness,
) -> None:
    essays, qualities = essays_with_quality(4)
    h = await make_harness(
        stub=judging_stub(qualities),
        comparisons_per_essay=2,
        cj_api_token=CJ_TOKEN,
        cj_max_request_bytes=200_000,
    )
    transport = httpx.ASGITransport(app=create_app(h.cj))
    auth = {"Authorization": f"Bearer {CJ_TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://cj") as client:
        body = assessment(essays, cj_batch_id=str(uuid.uuid4()))
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            refused = await client.post("/api/v1/assessments", json=body, headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            status = await client.get(f"/api/v1/assessments/{body['cj_batch_id']}", headers=headers)
            assert status.status_code == 401
        assert (await client.get("/healthz")).status_code == 200  # probes need no token
        assert await h.cj.store.running_batch_ids() == []

        huge = assessment([*essays, EssayInput("big", "word " * 60_000)])
        too_big = await client.post("/api/v1/assessments", json=huge, headers=auth)
        assert too_big.status_code == 413
        assert "CJLLM_CJ_MAX_REQUEST_BYTES" in too_big.json()["detail"][0]["msg"]

        started = await client.post("/api/v1/assessments", json=body, headers=auth)
        assert started.status_code == 202, started.text
        again = await client.post("/api/v1/assessments", json=body, headers=auth)
        assert again.status_code == 409, again.text
        assert body["cj_batch_id"] in again.json()["detail"]
        await h.cj.wait_for_completion(str(body["cj_batch_id"]), timeout=60)


async def test_a_stalled_body_is_408_and_the_openapi_document_resolves(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(request_read_timeout_seconds=0.5)
    app = create_app(h.cj)
    assert unresolved_refs(app.openapi()) == []
    status_line = await answer_to_a_stalled_body(app, "/api/v1/assessments")
    assert status_line.startswith(b"HTTP/1.1 408"), status_line


async def test_cancel_an_assessment_over_http(make_harness: MakeHarness) -> None:
    essays, _ = essays_with_quality(6)
    h = await make_harness(stub=StubProvider(answer=None), llm_batching_strategy="async_batch")
    transport = httpx.ASGITransport(app=create_app(h.cj))
    async with httpx.AsyncClient(transport=transport, base_url="http://cj") as client:
        body = {"essays": [{"essay_id": e.essay_id, "text": e.text} for e in essays]}
        started = await client.post("/api/v1/assessments", json={**body, "instructions": "x"})
        batch_id = started.json()["cj_batch_id"]
        cancelled = await client.post(f"/api/v1/assessments/{batch_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        status = cancelled.json()
        assert status["status"] == "failed" and status["result"]["stop_reason"] == "cancelled"
        assert status["progress"]["pending"] == 0
        assert (await client.post(f"/api/v1/assessments/{batch_id}/cancel")).status_code == 409
        unknown = await client.post("/api/v1/assessments/nope/cancel")
        assert unknown.status_code == 404
    assert h.stub.cancelled == [batch_id]
