"""The CJ service's HTTP API: start an assessment, watch it, read the result."""

from __future__ import annotations

import httpx

from cjllm.cj.api import create_app
from tests.cj.conftest import MakeHarness, essays_with_quality, judging_stub


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
