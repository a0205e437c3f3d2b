"""ranking.csv, comparisons.csv, ranking.json and report.html from a completion event,
the run context and the evidence (essay texts and every judgement)."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cjllm.cj.evidence import Judgement
from cjllm.contracts import BatchingStrategy, CJAssessmentCompletedV1, RankedEssay, TokenUsage
from cjllm.report import Evidence, RunContext, interval, render_html, write_report
from cjllm.report.sheets import safe_cell
from cjllm.report.summary import HEURISTIC, LLM, MANIFEST, run_summary


def completed(n: int = 5, *, anchors: bool = False) -> CJAssessmentCompletedV1:
    ranking = [
        RankedEssay(
            essay_id=f"essay-{i}" if i != 2 else "<b>&odd id</b>",
            rank=i + 1,
            score=1.5 - 0.75 * i if n <= 10 else 3.0 - 6.0 * i / (n - 1),
            se=0.4 + 0.05 * i if n <= 10 else 0.5,
            comparisons=8,
            wins=max(0, 7 - i),
            is_anchor=anchors and i == 1,
            projected_grade=("A" if i < 2 else "B") if anchors else None,
            grade_probability=0.8 if anchors else None,
        )
        for i in range(n)
    ]
    return CJAssessmentCompletedV1(
        cj_batch_id="batch-1",
        status="completed",
        stop_reason="reliability_target_met",
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
        reliability=0.91,
        batching_strategy=BatchingStrategy.SERIAL_ROUND,
        provider="mock",
        model="mock-judge-1",
    )


CONTEXT = RunContext(
    judge="mock (simulated judge)",
    source="examples/essays",
    finished_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    judge_mode=MANIFEST,
    judge_note="The simulated judge knows the intended quality of 5 essays.",
    instructions="Argue for or against later school start times.",
    rubric="Ideas, organisation, language <em>control</em>.",
)
LLM_CONTEXT = RunContext(
    judge="anthropic / claude-sonnet-4-5",
    source="essays.csv",
    finished_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    judge_mode=LLM,
    instructions="Judge the argument.",
)


def evidence_for(result: CJAssessmentCompletedV1, partners: int | None = None) -> Evidence:
    """Texts for every essay and judgements of each essay against the next ``partners``
    below it (all of them by default): the better-ranked essay wins, shown first half the
    time; one comparison failed."""
    ids = [e.essay_id for e in sorted(result.ranking, key=lambda e: e.rank)]
    judgements = []
    for i, better in enumerate(ids):
        for worse in ids[i + 1 : None if partners is None else i + 1 + partners]:
            first, second = (better, worse) if len(judgements) % 2 else (worse, better)
            judgements.append(
                Judgement(
                    round_number=1 + len(judgements) // 4,
                    request_correlation_id=f"00000000-0000-0000-0000-{len(judgements):012d}",
                    essay_a_id=first,
                    essay_b_id=second,
                    status="succeeded",
                    winner="Essay A" if first == better else "Essay B",
                    confidence=4.0,
                    justification=f"{better} argues more clearly than {worse} <script>.",
                    bundle_id=f"bundle-{len(judgements) // 4}",
                    bundle_index=len(judgements) % 4,
                    bundle_size=4,
                    provider="mock",
                    model="mock-judge-1",
                    prompt_tokens=300,
                    completion_tokens=40,
                    total_tokens=340,
                )
            )
    judgements.append(
        Judgement(
            round_number=9,
            request_correlation_id="00000000-0000-0000-0000-999999999999",
            essay_a_id=ids[0],
            essay_b_id=ids[-1],
            status="failed",
            error_code="invalid_answer",
            error_message="the answer had no winner",
        )
    )
    texts = {essay_id: f"The essay {essay_id} <i>says</i> something.\n\nTwice." for essay_id in ids}
    return Evidence(texts=texts, judgements=judgements)


def test_csv_has_rank_id_score_se_and_interval(tmp_path: Path) -> None:
    files = write_report(tmp_path, completed(), CONTEXT)
    with files.csv.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:4] == ["rank", "essay_id", "score", "se"]
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2]["essay_id"] == "<b>&odd id</b>"
    assert float(rows[0]["lower95"]) == pytest.approx(1.5 - 1.96 * 0.4)
    assert "projected_grade" not in rows[0]


def test_published_intervals_are_the_events_own_not_score_plus_minus_se(tmp_path: Path) -> None:
    """The CJ service publishes the posterior's quantile interval, lopsided at the ends of the
    scale: the CSV, ranking.json, the page and the plot show it as given."""
    event = completed()
    top = event.ranking[0].model_copy(update={"lower95": 0.2, "upper95": 3.4})
    event = event.model_copy(update={"ranking": [top, *event.ranking[1:]]})
    files = write_report(tmp_path, event, CONTEXT)
    with files.csv.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert (float(rows[0]["lower95"]), float(rows[0]["upper95"])) == (0.2, 3.4)
    assert float(rows[1]["lower95"]) == pytest.approx(0.75 - 1.96 * 0.45)  # none given
    data = json.loads(files.json.read_text(encoding="utf-8"))
    assert (data["ranking"][0]["lower95"], data["ranking"][0]["upper95"]) == (0.2, 3.4)
    page = render_html(event, CONTEXT)
    assert "95% interval 0.20 to 3.40" in page


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


def test_the_summary_names_the_bundle_layout_when_the_run_bundled(tmp_path: Path) -> None:
    from cjllm.terminal import summary_lines

    pooled = replace(CONTEXT, bundle_layout="pool")
    files = write_report(tmp_path, completed(), pooled)
    summary = json.loads(files.json.read_text(encoding="utf-8"))["summary"]
    assert summary["bundle_layout"] == "pool"
    assert "Strategy: serial_round · pool layout · rounds" in "\n".join(summary_lines(summary))
    assert "<dt>Bundle layout</dt><dd>pool</dd>" in files.html.read_text(encoding="utf-8")
    unbundled = run_summary(completed(), CONTEXT)  # no layout known (per_request, submit)
    assert unbundled["bundle_layout"] is None
    assert "layout" not in "\n".join(summary_lines(unbundled))


def test_html_is_self_contained_and_escapes_everything_from_the_run() -> None:
    result = completed()
    page = render_html(result, CONTEXT, evidence_for(result))
    assert "<b>&odd" not in page and "<i>says" not in page and "<em>control" not in page
    assert "&lt;b&gt;&amp;odd id&lt;/b&gt;" in page
    # Nothing to fetch: no scripts, stylesheets, images or fonts; links only within the page.
    assert "<script" not in page
    assert not re.search(r"""src\s*=\s*["']""", page)
    assert not re.search(r"""href\s*=\s*["'][^#]""", page)
    assert "url(" not in page and "@import" not in page


def test_html_plot_has_one_interval_per_essay_spanning_196_se() -> None:
    result = completed()
    page = render_html(result, CONTEXT)
    assert page.count('<span class="dot"') == 5
    bars = re.findall(r'<span class="ci" style="left:([\d.]+)%;width:([\d.]+)%"', page)
    assert len(bars) == 5
    widths = [float(w) for _, w in bars]
    lows_highs = [interval(e) for e in sorted(result.ranking, key=lambda e: e.rank)]
    ratio = widths[0] / (lows_highs[0][1] - lows_highs[0][0])
    for width, (lo, hi) in zip(widths, lows_highs, strict=True):
        assert width == pytest.approx(ratio * (hi - lo), rel=1e-3)
    dots = [float(x) for x in re.findall(r'<span class="dot" style="left:([\d.]+)%"', page)]
    assert dots == sorted(dots, reverse=True)  # best first
    assert all(0.0 < x < 100.0 for x in dots)


def test_html_summary_names_judge_calls_and_cost() -> None:
    page = render_html(completed(), CONTEXT)
    run = page[page.index('<section id="run">') :]
    assert "mock (simulated judge)" in run
    assert "<dt>Provider calls</dt><dd>4</dd>" in run
    assert "$0.0123" in run


def test_html_shows_each_essay_with_its_text_comparisons_and_record() -> None:
    result = completed(4)
    evidence = evidence_for(result)
    page = render_html(result, CONTEXT, evidence)
    section = page[page.index('<section id="evidence">') :]
    articles = section.split('<article class="essay"')[1:]
    assert len(articles) == 4
    best = articles[0]
    assert 'id="essay-1"' in best and "essay-0" in best
    assert "3 won · 0 lost · 1 without a decision" in best
    # the text, collapsed
    assert '<details class="essay-text"><summary>Essay text (6 words)</summary>' in best
    assert "&lt;i&gt;says&lt;/i&gt;" in best
    # one row per comparison it took part in: opponent (linked), position, result, reason
    rows = best.split("<tr>")[2:]
    assert len(rows) == 4
    assert 'href="#essay-2"' in rows[0] and "first (A)" in best and "second (B)" in best
    assert '<td class="text won" data-label="Result">won</td>' in best
    assert "failed (invalid_answer)" in best and "the answer had no winner" in best
    assert "argues more clearly than" in best and "&lt;script&gt;" in best
    worst = articles[-1]
    assert "0 won · 3 lost" in worst and '<td class="text lost"' in worst


def test_html_explains_the_figures_and_shows_prompts_and_strategy() -> None:
    page = render_html(completed(), CONTEXT)
    assert "73% of the time" in page  # the scale
    assert "roughly the score plus or minus 1.96 standard errors" in page
    assert "Reliability (0 to 1)" in page and "Split-half" in page
    assert "Classical scale separation reliability is the figure other" in page
    assert "0.91 (high: supports fine distinctions)" in page
    stop = page[page.index('id="stop-reason"') :]
    assert "the reliability reached the run" in stop.split("</p>")[0]
    assert "Argue for or against later school start times." in page
    assert "language &lt;em&gt;control&lt;/em&gt;" in page
    assert "serial_round" in page and "bundled into as few provider calls" in page


@pytest.mark.parametrize(
    ("mode", "words"),
    [(MANIFEST, "intended quality"), (HEURISTIC, "text heuristic")],
)
def test_simulated_judge_gets_a_banner_saying_how_it_decided(mode: str, words: str) -> None:
    context = RunContext(
        judge="mock (simulated judge)",
        source="x",
        finished_at=CONTEXT.finished_at,
        judge_mode=mode,
    )
    page = render_html(completed(), context)
    banner = page[page.index('<aside id="simulated-banner"') : page.index("</aside>")]
    assert "Simulated judge: no LLM read these essays." in banner and words in banner
    # before the scores: the first thing after the title
    assert page.index('id="simulated-banner"') < page.index('id="score-plot"')


def test_a_real_judge_gets_no_simulation_banner() -> None:
    page = render_html(completed(), LLM_CONTEXT)
    assert "simulated-banner" not in page and "anthropic / claude-sonnet-4-5" in page


def test_comparisons_csv_holds_every_judgement(tmp_path: Path) -> None:
    result = completed(4)
    evidence = evidence_for(result)
    files = write_report(tmp_path, result, CONTEXT, evidence)
    assert files.comparisons is not None
    with files.comparisons.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(evidence.judgements) == 7
    assert list(rows[0])[:9] == [
        "round",
        "request_correlation_id",
        "essay_a_id",
        "essay_b_id",
        "status",
        "winner",
        "winner_position",
        "confidence",
        "justification",
    ]
    first = rows[0]
    assert first["winner"] == "essay-0" and first["winner_position"] == "B"
    assert first["essay_b_id"] == "essay-0" and first["confidence"] == "4.0"
    assert first["bundle_id"] == "bundle-0" and first["total_tokens"] == "340"
    failed = rows[-1]
    assert failed["status"] == "failed" and failed["winner"] == ""
    assert failed["error_code"] == "invalid_answer"


def test_no_csv_cell_starts_a_formula(tmp_path: Path) -> None:
    hostile = ['=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(A1)", "\tx"]
    ranking = [
        RankedEssay(essay_id=essay_id, rank=i + 1, score=-0.5 * i, se=0.3, comparisons=2, wins=1)
        for i, essay_id in enumerate(hostile)
    ]
    result = completed().model_copy(update={"ranking": ranking})
    judgement = Judgement(
        round_number=1,
        request_correlation_id="c",
        essay_a_id=hostile[0],
        essay_b_id=hostile[1],
        status="succeeded",
        winner="Essay A",
        confidence=3.0,
        justification="=1+1 is what it says",
    )
    files = write_report(tmp_path, result, CONTEXT, Evidence({}, [judgement]))
    assert files.comparisons is not None
    for path in (files.csv, files.comparisons):
        with path.open(encoding="utf-8", newline="") as handle:
            cells = [c for row in csv.reader(handle) for c in row]
        assert not [c for c in cells if c[:1] in ("=", "+", "@", "\t")]
        assert not set(hostile) & set(cells)  # "-2+3" among them
    with files.csv.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["essay_id"] for r in rows] == ["'" + h for h in hostile]
    assert rows[1]["score"] == "-0.5"  # numbers stay numbers
    assert safe_cell("plain") == "plain" and safe_cell(-1.5) == -1.5


def test_rewriting_replaces_files_without_leftovers(tmp_path: Path) -> None:
    result = completed(5)
    write_report(tmp_path, result, CONTEXT, evidence_for(result))
    write_report(tmp_path, completed(3), CONTEXT)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "comparisons.csv",
        "ranking.csv",
        "ranking.json",
        "report.html",
    ]
    assert len(json.loads((tmp_path / "ranking.json").read_text("utf-8"))["ranking"]) == 3


def test_the_judge_and_the_reliability_are_reported_everywhere(tmp_path: Path) -> None:
    from cjllm.contracts import JudgeModel, OrderEffect, PositionConsistency
    from cjllm.terminal import summary_lines

    result = completed().model_copy(
        update={
            "reliability": 0.78,
            "judge": JudgeModel(
                order_effect=OrderEffect(
                    logit=0.95, se=0.12, essay_a_wins=126, decisive=200, significant=True
                ),
                lapse_rate=0.05,
                lapse_rate_low=0.0,
                lapse_rate_high=0.2,
                population_sd=1.4,
                position_consistency=PositionConsistency(pairs=20, consistent=15),
            ),
        }
    )
    files = write_report(tmp_path, result, CONTEXT)
    summary = json.loads(files.json.read_text(encoding="utf-8"))["summary"]
    assert summary["reliability"] == 0.78
    judge = summary["judge_model"]
    assert judge["order_effect"]["logit"] == 0.95 and judge["order_effect"]["essay_a_share"] == 0.63
    assert judge["lapse_rate_high"] == 0.2 and judge["population_sd"] == 1.4
    assert judge["position_consistency"] == {"pairs": 20, "consistent": 15}
    page = files.html.read_text(encoding="utf-8")
    assert '<ul id="judgement">' in page and "Essay A won 63% of 200 decisive comparisons" in page
    lines = summary_lines(summary)
    assert any(line.startswith("Reliability: 0.78 — fair") for line in lines)
    assert any("Order effect: +0.95 logits (SE 0.12, significant: the judge favours Essay A)"
               in line for line in lines)  # fmt: skip
    assert any(line.startswith("Warning: the judge is swayed by the order") for line in lines)
    assert any("Lapse rate: 5% of decisions at random (95% 0% to 20%)" in line for line in lines)
    assert any("Position consistency: 75% of 20 pairs" in line for line in lines)
    quiet = summary | {"judge_model": None, "reliability": None}
    assert not any("Order effect" in line for line in summary_lines(quiet))
