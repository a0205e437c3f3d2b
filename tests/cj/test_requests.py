"""What goes over the wire: one request per comparison, its prompt blocks, spine and hints."""

from __future__ import annotations

from collections import defaultdict

import pytest

from cjllm.cj.options import BatchOptions
from cjllm.cj.prompts import JUDGE_INSTRUCTIONS
from cjllm.cj.workflow import EssayInput
from cjllm.contracts import BatchingStrategy
from tests.cj.conftest import MakeHarness, essays_with_quality, judging_stub


async def _run(make_harness: MakeHarness, n: int = 10, **overrides: object):  # type: ignore[no-untyped-def]
    essays, qualities = essays_with_quality(n)
    values = {"max_concurrent_comparisons": 4, "comparisons_per_essay": 3.0, **overrides}
    h = await make_harness(stub=judging_stub(qualities), **values)
    batch_id = await h.cj.start_batch(essays, instructions="Why read?", bos_batch_id="bos-7")
    result = await h.cj.wait_for_completion(batch_id, timeout=60)
    by_round: dict[str, list[dict[str, object]]] = defaultdict(list)
    for r in h.stub.received:
        by_round[str(r.request.metadata["bundle_group"])].append(r.request.metadata)
    return h, batch_id, result, by_round


async def test_serial_round_shares_one_bundle_group_sized_to_the_round(
    make_harness: MakeHarness,
) -> None:
    _, batch_id, result, by_round = await _run(make_harness)
    assert list(by_round) == [f"{batch_id}:{i}" for i in range(1, 5)]
    sizes = [len(group) for group in by_round.values()]
    assert sizes == [4, 4, 4, 3]  # budget 15, rounds capped at MAX_CONCURRENT_COMPARISONS=4
    for group in by_round.values():
        assert {m["preferred_bundle_size"] for m in group} == {len(group)}
        assert {m["batching_strategy"] for m in group} == {"serial_round"}
    assert result.batching_strategy is BatchingStrategy.SERIAL_ROUND
    assert result.provider_calls == 4


async def test_serial_override_integer_wins(make_harness: MakeHarness) -> None:
    *_, by_round = await _run(
        make_harness,
        llm_batching_strategy=BatchingStrategy.SERIAL_OVERRIDE,
        serial_override_bundle_size=7,
    )
    metadata = [m for group in by_round.values() for m in group]
    assert {m["preferred_bundle_size"] for m in metadata} == {7}
    assert {m["batching_strategy"] for m in metadata} == {"serial_override"}


async def test_per_request_asks_for_bundles_of_one(make_harness: MakeHarness) -> None:
    *_, by_round = await _run(make_harness, llm_batching_strategy="per_request")
    metadata = [m for group in by_round.values() for m in group]
    assert {m["preferred_bundle_size"] for m in metadata} == {1}
    assert {m["batching_strategy"] for m in metadata} == {"per_request"}


async def test_each_request_carries_the_metadata_spine(make_harness: MakeHarness) -> None:
    h, batch_id, _, _ = await _run(make_harness)
    rows = {r.request_correlation_id: r for r in await h.cj.store.comparisons(batch_id)}
    assert len(h.stub.received) == len(rows) == 15  # one request per comparison
    for item in h.stub.received:
        req = item.request
        md = req.metadata
        row = rows[req.correlation_id]  # type: ignore[index]
        assert md["request_correlation_id"] == str(req.correlation_id)
        assert (md["essay_a_id"], md["essay_b_id"]) == (row.essay_a_id, row.essay_b_id)
        assert (md["cj_batch_id"], md["bos_batch_id"]) == (batch_id, "bos-7")
        assert req.callback_topic == h.settings.callback_topic
        assert req.llm_config_overrides.provider_override == h.settings.llm_provider
        # what the provider echoed back is on the row
        assert row.prompt_sha256 == req.prompt_sha256()
        assert row.bundle_id == f"bundle-{md['bundle_group']}"
        assert row.queue_id == str(item.queue_id)


async def test_prompt_blocks_put_the_shared_prefix_first_and_hide_identities(
    make_harness: MakeHarness,
) -> None:
    essays, qualities = essays_with_quality(4)
    anchor = EssayInput("anchor-top-secret", "A short essay about reading.", grade="5")
    qualities[anchor.text] = 3.0
    h = await make_harness(stub=judging_stub(qualities), comparisons_per_essay=3)
    batch_id = await h.cj.start_batch(
        essays, anchors=[anchor], instructions="Why read?", rubric="Clarity; evidence."
    )
    await h.cj.wait_for_completion(batch_id, timeout=60)
    texts = {e.essay_id: e.text for e in [*essays, anchor]}
    prefixes = set()
    for item in h.stub.received:
        blocks = item.request.prompt_blocks or []
        shared, per = blocks[:-2], blocks[-2:]
        assert [b.target for b in shared] == ["system", "user_content", "user_content"]
        assert all(b.cacheable for b in shared) and shared[0].content == JUDGE_INSTRUCTIONS
        assert "Why read?" in shared[1].content and "Clarity; evidence." in shared[2].content
        prefixes.add(tuple(b.content for b in shared))
        assert [(b.target, b.cacheable) for b in per] == [("user_content", False)] * 2
        md = item.request.metadata
        assert [b.content for b in per] == [texts[md["essay_a_id"]], texts[md["essay_b_id"]]]
        everything = " ".join(b.content for b in blocks)
        for secret in [*texts, batch_id, "anchor", "grade 5"]:
            assert secret not in everything
    assert len(prefixes) == 1  # identical across the batch: one cache entry, bundleable


@pytest.mark.parametrize(
    ("strategy", "override", "round_size", "expected"),
    [
        (BatchingStrategy.SERIAL_ROUND, None, 30, 30),
        (BatchingStrategy.SERIAL_ROUND, None, 80, 50),  # capped by MAX_CONCURRENT_COMPARISONS
        (BatchingStrategy.SERIAL_OVERRIDE, 9, 30, 9),
        (BatchingStrategy.PER_REQUEST, None, 30, 1),
    ],
)
def test_preferred_bundle_size_rule(
    strategy: BatchingStrategy, override: int | None, round_size: int, expected: int
) -> None:
    options = BatchOptions(
        batching_strategy=strategy,
        serial_override_bundle_size=override,
        max_concurrent_comparisons=50,
    )
    assert options.preferred_bundle_size(round_size) == expected
