"""ranking.csv, ranking.json and report.html from a completion event."""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cjllm.contracts import BatchingStrategy, CJAssessmentCompletedV1, RankedEssay, TokenUsage
from cjllm.report import RunContext, interval, render_html, write_report


def completed(n: int = 5, *, anchors: bool = False) -> CJAssessmentCompletedV1:
    ranking = [
        RankedEssay(
            essay_id=f"essay-{i}" if i != 2 else "<b>&odd id</b>",
            rank=i + 1,
            score=1.5 - 0.75 * i,
            se=0.4 + 0.05 * i,
            comparisons=8,
            wins=7 - i,
            is_anchor=anchors and i == 1,
            projected_grade=("A" if i < 2 else "B") if anchors else None,
            grade_probability=0.8 if anchors else None,
        )
        for i in range(n)
    ]
    return CJAssessmentCompletedV1(
        cj_batch_id="batch-1",
        status="completed",
        stop_reason="reliability target reached",
        ranking=ranking,
        comparisons_requested=20,
        comparisons_succeeded=19,
        comparisons_failed=1,
        rounds=3,
        provider_calls=4,
        token_usage=TokenUsage(prompt_tokens=1000, completion_tokens=200, total_tokens=1200),
        cost_estimate=0.0123,
        scale_separation_reliability=0.91,
        split_half_reliability=None,
        batching_strategy=BatchingStrategy.SERIAL_ROUND,
        provider="mock",
        model="mock-judge-1",
    )


CONTEXT = RunContext(
    judge="mock (simulated judge)",
    source="examples/essays",
    finished_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
)


def test_csv_has_rank_id_score_se_and_interval(tmp_path: Path) -> None:
    files = write_report(tmp_path, completed(), CONTEXT)
    with files.csv.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:4] == ["rank", "essay_id", "score", "se"]
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2]["essay_id"] == "<b>&odd id</b>"
    assert float(rows[0]["lower95"]) == pytest.approx(1.5 - 1.96 * 0.4)
    assert "projected_grade" not in rows[0]


def test_csv_gains_grade_columns_with_anchors(tmp_path: Path) -> None:
    files = write_report(tmp_path, completed(anchors=True), CONTEXT)
    header = files.csv.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert {"is_anchor", "projected_grade", "grade_probability"} <= set(header)


def test_json_holds_ranking_and_run_summary(tmp_path: Path) -> None:
    files = write_report(tmp_path, completed(), CONTEXT)
    data = json.loads(files.json.read_text(encoding="utf-8"))
    assert [r["essay_id"] for r in data["ranking"]][:2] == ["essay-0", "essay-1"]
    summary = data["summary"]
    assert summary["comparisons_made"] == 20
    assert summary["provider_calls"] == 4
    assert summary["comparisons_per_provider_call"] == 5.0
    assert summary["tokens"]["total_tokens"] == 1200
    assert summary["cost_estimate"] == pytest.approx(0.0123)
    assert summary["scale_separation_reliability"] == 0.91
    assert summary["batching_strategy"] == "serial_round"
    assert summary["model"] == "mock-judge-1"
    assert summary["judge"] == "mock (simulated judge)"


def test_html_is_self_contained_and_escapes_ids() -> None:
    page = render_html(completed(), CONTEXT)
    assert "<b>&odd" not in page
    assert "&lt;b&gt;&amp;odd id&lt;/b&gt;" in page
    # Nothing to fetch: no scripts, stylesheets, images or fonts from anywhere.
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']""", page)
    assert "url(" not in page and "@import" not in page


def test_html_plot_has_one_interval_per_essay_spanning_196_se() -> None:
    result = completed()
    page = render_html(result, CONTEXT)
    assert page.count('<circle class="score"') == 5
    lines = re.findall(r'<line class="ci" x1="([\d.]+)" y1="[\d.]+" x2="([\d.]+)"', page)
    assert len(lines) == 5
    widths = [float(b) - float(a) for a, b in lines]
    lows_highs = [interval(e) for e in result.ranking]
    ratio = widths[0] / (lows_highs[0][1] - lows_highs[0][0])
    for width, (lo, hi) in zip(widths, lows_highs, strict=True):
        assert width == pytest.approx(ratio * (hi - lo), rel=1e-3)


def test_html_summary_names_judge_calls_and_cost() -> None:
    page = render_html(completed(), CONTEXT)
    summary = page[page.index('<dl id="summary">') :]
    assert "mock (simulated judge)" in summary
    assert "<dt>Provider calls</dt><dd>4</dd>" in summary
    assert "$0.0123" in summary


def test_rewriting_replaces_files_without_leftovers(tmp_path: Path) -> None:
    write_report(tmp_path, completed(5), CONTEXT)
    write_report(tmp_path, completed(3), CONTEXT)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ranking.csv",
        "ranking.json",
        "report.html",
    ]
    assert len(json.loads((tmp_path / "ranking.json").read_text("utf-8"))["ranking"]) == 3
