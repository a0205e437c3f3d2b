"""The wire contracts of docs/architecture.md: what is accepted, what is refused, and why."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from cjllm.contracts import (
    JUSTIFICATION_MAX_CHARS,
    ComparisonQueuedResponse,
    ComparisonRequest,
    ErrorDetail,
    EventEnvelope,
    LLMComparisonResultV1,
    MetadataSpine,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def request_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_blocks": [
            {"target": "system", "content": "You are a judge.", "cacheable": True},
            {"target": "user_content", "content": "Rubric", "cacheable": True, "ttl": "1h"},
            {"target": "user_content", "content": "Essay A text"},
            {"target": "user_content", "content": "Essay B text"},
        ],
        "callback_topic": "cj.results",
        "llm_config_overrides": {"provider_override": "mock"},
        "metadata": {"essay_a_id": "e1", "essay_b_id": "e2"},
    }
    body.update(changes)
    return body


def result_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": "q1",
        "correlation_id": str(uuid.uuid4()),
        "winner": "Essay A",
        "justification": "A argues better.",
        "confidence": 4,
        "provider": "mock",
        "model": "mock-judge",
        "response_time_ms": 12,
        "requested_at": NOW.isoformat(),
        "completed_at": NOW.isoformat(),
    }
    body.update(changes)
    return body


def error_detail(cid: str) -> dict[str, Any]:
    return {
        "error_code": "TTL_EXPIRED",
        "message": "expired",
        "correlation_id": cid,
        "service": "llm_provider_service",
        "operation": "queue",
    }


def bad_fields(exc: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.value.errors()}


# --------------------------------------------------------------------------- request


def test_request_with_blocks_is_accepted_and_keeps_their_order() -> None:
    req = ComparisonRequest.model_validate(request_body())
    assert [b.content for b in req.prompt_blocks or []][2:] == ["Essay A text", "Essay B text"]
    assert req.per_comparison_parts() == ["Essay A text", "Essay B text"]
    assert req.prompt_blocks is not None and req.prompt_blocks[1].ttl == "1h"


def test_user_prompt_alone_is_enough() -> None:
    req = ComparisonRequest.model_validate(request_body(prompt_blocks=None, user_prompt="Compare"))
    assert req.per_comparison_parts() == ["Compare"]


def test_request_without_any_prompt_is_refused() -> None:
    with pytest.raises(ValidationError, match="user_prompt is required"):
        ComparisonRequest.model_validate(request_body(prompt_blocks=None))


def test_missing_callback_topic_is_refused_by_name() -> None:
    body = request_body()
    del body["callback_topic"]
    with pytest.raises(ValidationError) as exc:
        ComparisonRequest.model_validate(body)
    assert "callback_topic" in bad_fields(exc)


def test_overrides_need_a_provider() -> None:
    with pytest.raises(ValidationError) as exc:
        ComparisonRequest.model_validate(request_body(llm_config_overrides={}))
    assert "llm_config_overrides.provider_override" in bad_fields(exc)


def test_temperature_zero_is_kept_as_zero() -> None:
    overrides = {"provider_override": "mock", "temperature_override": 0}
    req = ComparisonRequest.model_validate(request_body(llm_config_overrides=overrides))
    assert req.llm_config_overrides.temperature_override == 0.0
    assert req.model_dump()["llm_config_overrides"]["temperature_override"] == 0.0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"provider_override": "mock", "temperature_override": 2.5}, "temperature_override"),
        ({"provider_override": "mock", "max_tokens_override": 0}, "max_tokens_override"),
        ({"provider_override": "mock", "confidence": 5}, "confidence"),
    ],
)
def test_bad_overrides_are_refused_naming_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ComparisonRequest.model_validate(request_body(llm_config_overrides=overrides))
    assert f"llm_config_overrides.{field}" in bad_fields(exc)


def test_bad_block_target_and_ttl_are_refused_naming_the_field() -> None:
    blocks = [{"target": "assistant", "content": "x"}, {"target": "user_content", "content": "y"}]
    with pytest.raises(ValidationError) as exc:
        ComparisonRequest.model_validate(request_body(prompt_blocks=blocks))
    assert "prompt_blocks.0.target" in bad_fields(exc)
    blocks = [{"target": "user_content", "content": "y", "ttl": "2h"}]
    with pytest.raises(ValidationError) as exc:
        ComparisonRequest.model_validate(request_body(prompt_blocks=blocks))
    assert "prompt_blocks.0.ttl" in bad_fields(exc)


def test_blocks_without_a_per_comparison_part_are_refused() -> None:
    blocks = [{"target": "user_content", "content": "rubric", "cacheable": True}]
    with pytest.raises(ValidationError, match="non-cacheable user_content"):
        ComparisonRequest.model_validate(request_body(prompt_blocks=blocks))


def test_prompt_sha256_has_one_recipe_over_the_per_comparison_parts() -> None:
    a = ComparisonRequest.model_validate(request_body())
    other_prefix = request_body()
    other_prefix["prompt_blocks"][1]["content"] = "Another rubric"
    b = ComparisonRequest.model_validate(other_prefix)
    assert a.prompt_sha256() == b.prompt_sha256()  # the shared prefix is not part of it
    swapped = request_body()
    blocks = swapped["prompt_blocks"]
    blocks[2], blocks[3] = blocks[3], blocks[2]
    assert ComparisonRequest.model_validate(swapped).prompt_sha256() != a.prompt_sha256()
    assert len(a.prompt_sha256()) == 64


def test_queued_response_shape() -> None:
    qid = uuid.uuid4()
    body = ComparisonQueuedResponse(queue_id=qid, message="queued").model_dump(mode="json")
    assert body == {
        "queue_id": str(qid),
        "status": "queued",
        "message": "queued",
        "estimated_wait_minutes": None,
    }


# --------------------------------------------------------------------------- result


def test_success_result_is_accepted() -> None:
    result = LLMComparisonResultV1.model_validate(result_body())
    assert result.is_success and result.confidence == 4.0


@pytest.mark.parametrize("winner", ["essay a", "A", "Essay C", "", None])
def test_winner_must_be_exactly_essay_a_or_b(winner: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        LLMComparisonResultV1.model_validate(result_body(winner=winner))
    if winner is not None:
        assert "winner" in bad_fields(exc)
    else:
        assert "winner" in str(exc.value)


@pytest.mark.parametrize("confidence", [0, 0.99, 5.01, 10, 100])
def test_confidence_outside_1_to_5_is_refused_never_rescaled(confidence: float) -> None:
    with pytest.raises(ValidationError) as exc:
        LLMComparisonResultV1.model_validate(result_body(confidence=confidence))
    assert "confidence" in bad_fields(exc)


def test_long_justification_is_truncated_not_rejected() -> None:
    text = "x" * 2000
    result = LLMComparisonResultV1.model_validate(result_body(justification=text))
    assert result.justification is not None
    assert len(result.justification) == JUSTIFICATION_MAX_CHARS
    assert result.justification.startswith("x" * 400)


def test_error_result_is_accepted_without_success_fields() -> None:
    cid = str(uuid.uuid4())
    body = result_body(
        correlation_id=cid,
        winner=None,
        justification=None,
        confidence=None,
        error_detail=error_detail(cid),
    )
    result = LLMComparisonResultV1.model_validate(body)
    assert not result.is_success and result.error_detail is not None


def test_error_and_success_fields_are_exclusive() -> None:
    cid = str(uuid.uuid4())
    with pytest.raises(ValidationError, match="exclusive"):
        LLMComparisonResultV1.model_validate(
            result_body(correlation_id=cid, error_detail=error_detail(cid))
        )


def test_incomplete_success_is_refused_naming_what_is_missing() -> None:
    with pytest.raises(ValidationError, match="missing: justification, confidence"):
        LLMComparisonResultV1.model_validate(result_body(justification=None, confidence=None))


def test_negative_time_and_cost_are_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        LLMComparisonResultV1.model_validate(result_body(response_time_ms=-1, cost_estimate=-0.1))
    assert {"response_time_ms", "cost_estimate"} <= bad_fields(exc)


# --------------------------------------------------------------------------- envelope


def test_envelope_round_trips_through_json_bytes_losslessly() -> None:
    cid = uuid.uuid4()
    spine = MetadataSpine(
        request_correlation_id=cid,
        essay_a_id="e1",
        essay_b_id="e2",
        cj_batch_id="b1",
        prompt_sha256="0" * 64,
        bundle_id="bundle-1",
        bundle_index=3,
        bundle_size=10,
        batching_strategy="serial_round",
        resolved_provider="mock",
        resolved_model="mock-judge",
    )
    result = LLMComparisonResultV1.model_validate(
        result_body(
            correlation_id=str(cid),
            confidence=3.5,
            token_usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            cost_estimate=0.00123,
            trace_id="t",
            request_metadata=spine.model_dump(mode="json"),
        )
    )
    env = EventEnvelope.for_result(result, "llm_provider_service")
    raw = json.dumps(env.model_dump(mode="json")).encode()
    back = EventEnvelope.model_validate_json(raw)
    assert back == env
    assert EventEnvelope.from_bytes(env.to_bytes()) == env
    assert back.result() == result
    assert back.correlation_id == cid and back.schema_version == 1
    assert back.event_type == "LLMComparisonResultV1"


def test_error_detail_round_trips() -> None:
    cid = uuid.uuid4()
    detail = ErrorDetail.model_validate(error_detail(str(cid)) | {"details": {"status": 429}})
    assert ErrorDetail.model_validate_json(detail.model_dump_json()) == detail


def test_spine_keys_are_the_design_list() -> None:
    from cjllm.contracts import SPINE_KEYS

    assert set(SPINE_KEYS) == {
        "request_correlation_id",
        "essay_a_id",
        "essay_b_id",
        "cj_batch_id",
        "bos_batch_id",
        "prompt_sha256",
        "bundle_id",
        "bundle_index",
        "bundle_size",
        "batching_strategy",
        "resolved_provider",
        "resolved_model",
    }


def test_metadata_limits_hold_for_flat_metadata_too() -> None:
    """The cheap path for flat metadata refuses what the exact checks refuse."""
    base = {
        "callback_topic": "t",
        "llm_config_overrides": {"provider_override": "mock"},
        "user_prompt": "compare",
    }
    ComparisonRequest.model_validate({**base, "metadata": {"k": "x" * 2_000, "n": 10**30}})
    with pytest.raises(ValidationError, match="bytes as JSON"):
        ComparisonRequest.model_validate({**base, "metadata": {"k": "x" * 17_000}})
    with pytest.raises(ValidationError, match="bytes as JSON"):
        ComparisonRequest.model_validate({**base, "metadata": {"k": "\u0001" * 3_000}})
    with pytest.raises(ValidationError, match="keys in all"):
        ComparisonRequest.model_validate({**base, "metadata": {f"k{i}": i for i in range(65)}})


def test_an_envelope_given_other_data_reads_its_own_not_the_result_it_was_built_from() -> None:
    result = LLMComparisonResultV1.model_validate(result_body())
    env = EventEnvelope.for_result(result, "llm_provider_service")
    assert env.result() == result
    bad = env.model_copy(update={"data": {**env.data, "winner": "Essay C"}})
    with pytest.raises(ValidationError):
        bad.result()
    other = env.model_copy(update={"data": {**env.data, "winner": "Essay B"}})
    assert other.result().winner == "Essay B" != result.winner
    assert env.model_copy(deep=True).result() == result
