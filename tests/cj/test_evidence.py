"""The report's evidence read round by round (:class:`SettledEvidence`) is the whole read."""

from __future__ import annotations

import uuid
from pathlib import Path

from cjllm.cj.evidence import SettledEvidence, judgements
from cjllm.cj.progress import ProgressEvent
from cjllm.cj.store import Store
from tests.cj.conftest import MakeHarness, essays_with_quality, judging_stub


async def test_rounds_read_as_they_close_make_the_same_evidence_as_one_read_at_the_end(
    make_harness: MakeHarness,
) -> None:
    essays, qualities = essays_with_quality(8)
    h = await make_harness(
        stub=judging_stub(qualities), max_concurrent_comparisons=4, comparisons_per_essay=4.0
    )
    batch_id = str(uuid.uuid4())
    settled = SettledEvidence(batch_id)
    settled.attach(h.cj.store)
    shown = h.cj.on_progress
    assert shown is not None

    def on_progress(event: ProgressEvent) -> None:
        if event.kind == "round_closed" and event.round_number is not None:
            settled.round_closed(event.batch_id, event.round_number)
            settled.round_closed(event.batch_id, event.round_number)  # a second close: ignored
        settled.round_closed(str(uuid.uuid4()), 1)  # another batch's round: ignored
        shown(event)

    h.cj.on_progress = on_progress
    await h.cj.start_batch(essays, instructions="Argue for or against homework.", batch_id=batch_id)
    result = await h.cj.wait_for_completion(batch_id, timeout=60)
    closed = [e.round_number for e in h.progress if e.kind == "round_closed"]
    assert result.rounds >= 3 and closed == list(range(1, result.rounds + 1))
    assert settled.rounds_read == closed
    evidence = await settled.judgements()
    assert evidence == await judgements(h.cj.store, batch_id)
    assert len(evidence) == result.comparisons_requested


async def test_rounds_closed_before_it_was_attached_are_read_at_the_end(
    make_harness: MakeHarness, tmp_path: Path
) -> None:
    """A resumed run sees only the rounds that close after it started (and a read that
    failed is read again): whatever was not read comes from one read of the rest."""
    essays, qualities = essays_with_quality(8)
    h = await make_harness(
        stub=judging_stub(qualities), max_concurrent_comparisons=4, comparisons_per_essay=4.0
    )
    batch_id = await h.cj.start_batch(essays, instructions="Argue for or against homework.")
    result = await h.cj.wait_for_completion(batch_id, timeout=60)
    whole = await judgements(h.cj.store, batch_id)
    assert result.rounds >= 3
    nothing_read = SettledEvidence(batch_id)
    nothing_read.attach(h.cj.store)
    assert await nothing_read.judgements() == whole
    some_read = SettledEvidence(batch_id)
    some_read.attach(h.cj.store)
    some_read.round_closed(batch_id, 2)
    some_read.round_closed(batch_id, result.rounds + 5)  # no such round: no rows
    assert await some_read.judgements() == whole
    broken = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/empty.sqlite", run_migrations=False)
    failing = SettledEvidence(batch_id)
    failing.attach(broken)
    failing.round_closed(batch_id, 1)  # no tables there: this read fails
    failing.attach(h.cj.store)
    failing.round_closed(batch_id, 2)
    assert failing.rounds_read == [1, 2]
    assert await failing.judgements() == whole
    await broken.close()
