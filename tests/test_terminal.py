"""The live display of `cjllm rank` at 80 columns: essentials on the first line, detail cut to
the width, reliability only once the batch reports it, no "0/1" before the first count."""

from __future__ import annotations

import io
import re

from rich.console import Console

from cjllm.cj.records import BatchProgress
from cjllm.cj.tables import BatchStatus
from cjllm.contracts import CJAssessmentCompletedV1, RankedEssay
from cjllm.terminal import TABLE_BOTTOM, TABLE_TOP, LiveProgress, ranking_table


def progress(**changes: object) -> BatchProgress:
    values: dict[str, object] = {
        "batch_id": "b",
        "status": BatchStatus.RUNNING,
        "rounds": 12,
        "requested": 1_450,
        "pending": 50,
        "succeeded": 1_390,
        "failed": 10,
        "ignored_callbacks": 0,
        "provider_calls": 58,
        "prompt_tokens": 2_000_000,
        "completion_tokens": 300_000,
        "total_tokens": 2_300_000,
        "cost_estimate": 12.3456,
        "reliability": None,
        "mean_se": None,
        "budget": 5_000,
    }
    values.update(changes)
    return BatchProgress(**values)  # type: ignore[arg-type]


def shown(*ticks: BatchProgress, width: int = 80) -> list[str]:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    live = LiveProgress(console)
    live.task = live.progress.add_task("Starting", total=None, count="")
    for tick in ticks:
        live.tick(tick)
    console.print(live.progress.get_renderable())  # what the live display draws
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def test_the_essentials_fit_in_80_columns() -> None:
    lines = shown(progress())
    assert all(len(line) <= 80 for line in lines), lines
    first = lines[0]
    # the bar counts judged comparisons (the budget's unit); the 10 failed show in the detail
    assert "Round 12" in first and "1,390/5,000 comparisons" in first and "0:00:0" in first
    assert "━" in first  # the bar
    assert lines[1].lstrip().startswith("provider calls 58 · cost $12.3456")


def test_detail_is_cut_to_the_width_not_wrapped() -> None:
    lines = shown(progress(reliability=0.87), width=60)
    assert len(lines) == 2 and all(len(line) <= 60 for line in lines), lines
    assert lines[1].endswith("…")


def test_reliability_appears_only_when_reported() -> None:
    assert "reliability" not in " ".join(shown(progress(reliability=None)))
    assert "reliability 0.87" in " ".join(shown(progress(reliability=0.87)))


def test_no_made_up_total_before_the_first_count() -> None:
    lines = shown()
    assert lines and "Starting" in lines[0] and "0/1" not in " ".join(lines)
    lines = shown(progress(rounds=0, requested=0, pending=0, succeeded=0, failed=0, budget=90))
    assert "0/90 comparisons" in lines[0]


def _table(n: int, shorten: bool) -> list[str]:
    ranking = [
        RankedEssay(essay_id=f"e{r:05d}", rank=r, score=-r / 10, se=0.5, comparisons=10, wins=5)
        for r in range(n, 0, -1)
    ]
    result = CJAssessmentCompletedV1(
        cj_batch_id="b", status="completed", stop_reason="budget", ranking=ranking,
        comparisons_requested=0, comparisons_succeeded=0, comparisons_failed=0, rounds=1,
        provider_calls=0, batching_strategy="serial_round", provider="mock", model="m",
    )  # fmt: skip
    console = Console(width=100, file=io.StringIO(), color_system=None)
    console.print(ranking_table(result, shorten=shorten))
    return console.file.getvalue().splitlines()  # type: ignore[attr-defined]


def test_a_long_ranking_shows_its_ends_when_the_files_hold_it_all() -> None:
    shown = re.findall(r"\be\d{5}\b", "\n".join(_table(10_000, shorten=True)))
    assert shown == [
        *(f"e{r:05d}" for r in range(1, TABLE_TOP + 1)),
        *(f"e{r:05d}" for r in range(10_001 - TABLE_BOTTOM, 10_001)),
    ]
    assert any(
        f"{10_000 - TABLE_TOP - TABLE_BOTTOM:,} more essays" in x for x in _table(10_000, True)
    )
    # a short ranking, or one printed with no files written, is shown whole
    assert sum(" e0" in x for x in _table(TABLE_TOP + TABLE_BOTTOM + 10, True)) == 50
    assert sum(" e0" in x for x in _table(200, shorten=False)) == 200
