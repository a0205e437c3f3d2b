"""The simulated server speaks the vendors' HTTP: shapes, errors, headers, auth, control."""

from __future__ import annotations

from typing import Any

import anthropic.types
import openai.types
import openai.types.chat
import pytest
from fastapi.testclient import TestClient

from cjllm.provider.calls import BundleItem
from cjllm.provider.prompts import render_items
from cjllm.sim.server import create_app
from cjllm.sim.state import SimConfig
from tests.sim.running import SimControl

ANTHROPIC_HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
OPENAI_HEADERS = {"authorization": "Bearer k"}


def items_prompt(n: int = 2) -> tuple[str, str]:
    return render_items([BundleItem(f"c{i}", (f"essay {i}a", f"essay {i}b")) for i in range(n)])


def message_body(**extra: Any) -> dict[str, Any]:
    instructions, items = items_prompt()
    content = [{"type": "text", "text": instructions}, {"type": "text", "text": items}]
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": 500,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def chat_body(**extra: Any) -> dict[str, Any]:
    instructions, items = items_prompt()
    messages = [{"role": "user", "content": instructions + "\n\n" + items}]
    return {"model": "gpt-4.1-mini", "messages": messages, **extra}


def test_messages_answer_in_anthropics_message_shape(sim: SimControl) -> None:
    response = sim.http.post("/v1/messages", json=message_body(), headers=ANTHROPIC_HEADERS)
    assert response.status_code == 200
    assert response.headers["request-id"].startswith("req_")
    message = anthropic.types.Message.model_validate(response.json())
    assert (message.type, message.role, message.stop_reason) == ("message", "assistant", "end_turn")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.usage.cache_read_input_tokens == 0
    assert message.content[0].type == "text"


def test_chat_completions_answer_in_openais_shape(sim: SimControl) -> None:
    response = sim.http.post("/v1/chat/completions", json=chat_body(), headers=OPENAI_HEADERS)
    assert response.status_code == 200
    assert response.headers["x-request-id"]
    completion = openai.types.chat.ChatCompletion.model_validate(response.json())
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 0


def test_completions_answer_one_choice_per_prompt(sim: SimControl) -> None:
    prompts = ["\n\n".join(items_prompt(1)) for _ in range(3)]
    body = {"model": "local", "prompt": prompts, "max_tokens": 200}
    response = sim.http.post("/v1/completions", json=body, headers=OPENAI_HEADERS)
    completion = openai.types.Completion.model_validate(response.json())
    assert [c.index for c in completion.choices] == [0, 1, 2]


@pytest.mark.parametrize(
    ("fault", "status", "kind"),
    [
        ("rate_limited", 429, "rate_limit_error"),
        ("overloaded", 529, "overloaded_error"),
        ("server_error", 500, "api_error"),
    ],
)
def test_anthropic_errors_have_anthropics_body_and_headers(
    sim: SimControl, fault: str, status: int, kind: str
) -> None:
    sim.configure(faults={fault: 1.0}, fault_retry_after=3)
    response = sim.http.post("/v1/messages", json=message_body(), headers=ANTHROPIC_HEADERS)
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert body["request_id"] == response.headers["request-id"]
    assert (response.headers.get("retry-after") == "3") is (status == 429)


@pytest.mark.parametrize(
    ("fault", "status", "kind"),
    [
        ("rate_limited", 429, "requests"),
        ("overloaded", 503, "server_error"),
        ("server_error", 500, "server_error"),
    ],
)
def test_openai_errors_have_openais_body_and_headers(
    sim: SimControl, fault: str, status: int, kind: str
) -> None:
    sim.configure(faults={fault: 1.0}, fault_retry_after=2.5)
    response = sim.http.post("/v1/chat/completions", json=chat_body(), headers=OPENAI_HEADERS)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == kind
    assert response.headers["x-request-id"]
    if status == 429:
        assert response.headers["retry-after"] == "3"
        assert response.headers["retry-after-ms"] == "2500"


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/v1/messages", message_body(), {"authorization": "Bearer k", "anthropic-version": "x"}),
        ("/v1/chat/completions", chat_body(), {"x-api-key": "k"}),
    ],
)
def test_either_kind_of_key_header_is_accepted(
    sim: SimControl, path: str, body: dict[str, Any], headers: dict[str, str]
) -> None:
    assert sim.http.post(path, json=body, headers=headers).status_code == 200


def test_a_missing_key_is_401_in_each_vendors_shape(sim: SimControl) -> None:
    response = sim.http.post(
        "/v1/messages", json=message_body(), headers={"anthropic-version": "x"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    response = sim.http.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (message_body(temperature=0.2), ANTHROPIC_HEADERS, "temperature: Extra inputs"),
        (message_body(), {"x-api-key": "k"}, "anthropic-version"),
        (message_body(max_tokens=0), ANTHROPIC_HEADERS, "max_tokens"),
        (
            message_body(
                system=[
                    {"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": t}}
                    for t in ("5m", "1h")
                ]
            ),
            ANTHROPIC_HEADERS,
            "ttl='1h'",
        ),
        (
            message_body(
                system=[
                    {"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}
                    for _ in range(5)
                ]
            ),
            ANTHROPIC_HEADERS,
            "maximum of 4 blocks",
        ),
    ],
)
def test_anthropic_rejects_what_the_real_api_rejects(
    sim: SimControl, body: dict[str, Any], headers: dict[str, str], message: str
) -> None:
    response = sim.http.post("/v1/messages", json=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert message in response.json()["error"]["message"]


def test_openai_rejects_unrecognized_arguments(sim: SimControl) -> None:
    response = sim.http.post(
        "/v1/chat/completions", json=chat_body(max_complesion_tokens=5), headers=OPENAI_HEADERS
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_complesion_tokens"


def test_success_headers_report_the_rate_limit_budget(sim: SimControl) -> None:
    sim.configure(limits={"requests_per_minute": 10, "tokens_per_minute": 100_000})
    response = sim.http.post("/v1/messages", json=message_body(), headers=ANTHROPIC_HEADERS)
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "9"
    assert int(response.headers["anthropic-ratelimit-tokens-remaining"]) < 100_000
    response = sim.http.post("/v1/chat/completions", json=chat_body(), headers=OPENAI_HEADERS)
    assert response.headers["x-ratelimit-remaining-requests"] == "8"


def test_a_429_is_honest_about_when_to_come_back_and_carries_the_headers(
    sim: SimControl,
) -> None:
    sim.configure(limits={"requests_per_minute": 1, "period_seconds": 6.0})
    assert sim.http.post("/v1/messages", json=message_body(), headers=ANTHROPIC_HEADERS).is_success
    refused = sim.http.post("/v1/chat/completions", json=chat_body(), headers=OPENAI_HEADERS)
    assert refused.status_code == 429
    assert 5_000 < int(refused.headers["retry-after-ms"]) <= 6_000
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    refused = sim.http.post("/v1/messages", json=message_body(), headers=ANTHROPIC_HEADERS)
    assert refused.headers["retry-after"] == "6"  # whole seconds, rounded up
    assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_counters_report_calls_items_tokens_and_faults(sim: SimControl) -> None:
    sim.http.post("/v1/messages", json=message_body(), headers=ANTHROPIC_HEADERS)
    sim.configure(faults={"overloaded": 1.0})
    sim.http.post("/v1/chat/completions", json=chat_body(), headers=OPENAI_HEADERS)
    counters = sim.counters()
    assert set(counters) == {
        "requests",
        "responses",
        "calls",
        "items",
        "items_per_call",
        "tokens",
        "faults",
        "batches",
    }
    assert counters["requests"] == {"POST /v1/messages": 1, "POST /v1/chat/completions": 1}
    assert counters["responses"] == {"200": 1, "503": 1}
    assert (counters["calls"], counters["items"], counters["items_per_call"]) == (1, 2, {"2": 1})
    assert set(counters["tokens"]) == {"input", "output", "cache_creation", "cache_read"}
    assert counters["faults"] == {"overloaded": 1}
    assert counters["batches"] == {
        "created": 0,
        "requests": 0,
        "items": 0,
        "expired": 0,
        "canceled": 0,
    }
    calls = sim.calls()
    assert len(calls) == 1 and calls[0]["custom_ids"] == ["c0", "c1"]


def test_reset_zeroes_the_counters(sim: SimControl) -> None:
    sim.http.post("/v1/messages", json=message_body(), headers=ANTHROPIC_HEADERS)
    sim.http.post("/sim/reset").raise_for_status()
    assert sim.counters()["calls"] == 0 and sim.calls() == []


@pytest.mark.parametrize(
    "patch",
    [
        {"faults": {"overloaded": 2}},
        {"faults": {"nonsense": 0.1}},
        {"latency": {"per_call": -1}},
        {"judge": {"noise": 0}},
        {"no_such_setting": 1},
    ],
)
def test_a_bad_configuration_change_is_refused(sim: SimControl, patch: dict[str, Any]) -> None:
    before = sim.http.get("/sim/config").json()
    assert sim.http.patch("/sim/config", json=patch).status_code == 422
    assert sim.http.get("/sim/config").json() == before


def test_a_configuration_change_merges_into_the_current_one(sim: SimControl) -> None:
    sim.configure(latency={"per_item": 0.001}, faults={"refusal": 0.1})
    config = sim.configure(latency={"per_call": 0.002})
    assert config["latency"] == {"per_call": 0.002, "per_item": 0.001, "per_output_token": 0.0}
    assert config["faults"]["refusal"] == 0.1


def test_the_sim_never_serves_its_api_key() -> None:
    app = create_app(SimConfig(api_key="sk-sim-secret"))
    with TestClient(app) as client:
        shown = client.get("/sim/config").json()
        patched = client.patch("/sim/config", json={"fault_seed": 3}).json()
        still = client.post(
            "/v1/messages",
            json=message_body(),
            headers={**ANTHROPIC_HEADERS, "x-api-key": "sk-sim-secret"},
        )
    assert "sk-sim-secret" not in str(shown) and "sk-sim-secret" not in str(patched)
    assert shown["api_key"] == patched["api_key"] == "***"
    assert still.status_code == 200  # the key is kept, only never shown
