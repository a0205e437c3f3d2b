"""Tolerant parsing that never trusts: every way a small model breaks a bundle's answer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cjllm.provider.answers import (
    MalformedOutput,
    answer_schema,
    reconcile,
    reconcile_answer,
)

IDS = ["id-1", "id-2", "id-3"]


def entry(cid: str, winner: str = "Essay A", confidence: Any = 4) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "winner": winner,
        "justification": "clearer",
        "confidence": confidence,
    }


def answer(*entries: dict[str, Any]) -> str:
    return json.dumps({"comparisons": list(entries)})


def test_a_fenced_answer_is_read_inside_its_fence() -> None:
    text = "```json\n" + answer(*(entry(c) for c in IDS)) + "\n```\nHope this helps!"
    found = reconcile(IDS, text)
    assert set(found.answers) == set(IDS)
    assert not found.salvaged


def test_chatter_around_the_json_is_skipped() -> None:
    text = "Sure! Here is my judgement: " + answer(*(entry(c) for c in IDS)) + " Thanks."
    assert set(reconcile(IDS, text).answers) == set(IDS)


def test_a_truncated_array_keeps_its_longest_valid_prefix_item_by_item() -> None:
    whole = answer(*(entry(c) for c in IDS))
    cut = whole[: whole.index('"id-3"') + 3]  # inside the third entry
    found = reconcile_answer(IDS, cut, truncated=True)
    assert set(found.answers) == {"id-1", "id-2"}
    assert found.missing == {"id-3"}
    assert found.salvaged


def test_a_fenced_answer_cut_inside_its_fence_is_salvaged() -> None:
    whole = answer(*(entry(c) for c in IDS))
    cut = "```json\n" + whole[: whole.index('"id-2"') + 6]
    found = reconcile_answer(IDS, cut, truncated=True)
    assert set(found.answers) == {"id-1"}
    assert found.missing == {"id-2", "id-3"}


def test_a_value_out_of_range_invalidates_only_its_item() -> None:
    text = answer(entry("id-1", confidence=2354976481450096), entry("id-2"), entry("id-3"))
    found = reconcile(IDS, text)
    assert set(found.answers) == {"id-2", "id-3"}
    assert "2354976481450096" in found.invalid["id-1"]
    assert found.retry_ids() == {"id-1"}


@pytest.mark.parametrize(
    "bad",
    [
        {"winner": "Essay C"},
        {"winner": "A"},
        {"confidence": 0},
        {"confidence": "4"},
        {"confidence": True},
        {"confidence": float("nan")},
        {"justification": "  "},
    ],
)
def test_every_invalid_value_is_refused_not_repaired(bad: dict[str, Any]) -> None:
    text = json.dumps({"comparisons": [{**entry("id-1"), **bad}]}, allow_nan=True)
    found = reconcile(["id-1"], text)
    assert not found.answers
    assert set(found.invalid) == {"id-1"}


def test_an_id_answered_twice_is_invalid_even_when_another_is_missing() -> None:
    text = answer(entry("id-1"), entry("id-2", "Essay A"), entry("id-2", "Essay B"))
    found = reconcile(IDS, text)
    assert set(found.answers) == {"id-1"}
    assert found.duplicates == {"id-2"}
    assert found.invalid == {"id-2": "answered more than once"}
    assert found.missing == {"id-3"}
    assert found.retry_ids() == {"id-2", "id-3"}


def test_unknown_ids_are_counted_and_change_nothing() -> None:
    text = answer(*(entry(c) for c in IDS), entry("made-up"), entry("made-up"))
    found = reconcile(IDS, text)
    assert found.unknown == ["made-up", "made-up"]
    assert set(found.answers) == set(IDS)
    assert not found.retry_ids()


def test_a_bare_list_or_a_bare_entry_is_read_as_the_comparisons() -> None:
    assert set(reconcile(IDS, json.dumps([entry(c) for c in IDS])).answers) == set(IDS)
    assert set(reconcile(["id-1"], json.dumps(entry("id-1"))).answers) == {"id-1"}


def test_an_answer_without_json_is_malformed_and_quotes_the_model() -> None:
    with pytest.raises(MalformedOutput) as caught:
        reconcile(IDS, "I think the first essay is better because it is longer.")
    assert "the first essay is better" in str(caught.value)


def test_json_of_the_wrong_shape_is_malformed() -> None:
    with pytest.raises(MalformedOutput):
        reconcile(IDS, json.dumps({"verdict": "Essay A"}))


def test_a_truncated_answer_with_nothing_complete_leaves_every_item_missing() -> None:
    found = reconcile_answer(IDS, '{"comparisons": [{"custom_id": "id-', truncated=True)
    assert found.missing == set(IDS)
    assert not found.answers


def test_the_excerpt_keeps_the_models_own_words() -> None:
    found = reconcile_answer(IDS, "I refuse.", refused="refusal")
    assert found.excerpt == "I refuse."
    assert set(found.invalid) == set(IDS)


def test_the_call_schema_allows_only_the_ids_sent_once_each() -> None:
    schema = answer_schema(IDS)
    array = schema["properties"]["comparisons"]
    assert array["minItems"] == array["maxItems"] == 3
    assert array["items"]["properties"]["custom_id"]["enum"] == IDS
    assert array["items"]["properties"]["confidence"]["enum"] == [1, 2, 3, 4, 5]
