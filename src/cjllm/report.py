"""The files a ranking run leaves behind: ``ranking.csv``, ``ranking.json`` and ``report.html``.

All three are written from the CJ service's completion event (:class:`CJAssessmentCompletedV1`)
plus a little run context (which judge, which input). ``report.html`` is one self-contained
page (inline CSS and SVG, no scripts, no external assets) so it opens offline: a plot of
scores with 95% intervals (score ± 1.96·SE), the ranking table and the run summary.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cjllm import __version__
from cjllm.contracts import CJAssessmentCompletedV1, RankedEssay

Z95 = 1.96
CSV_NAME = "ranking.csv"
JSON_NAME = "ranking.json"
HTML_NAME = "report.html"


@dataclass(frozen=True)
class RunContext:
    """What the completion event does not know: the judge as shown to users and the input."""

    judge: str
    source: str
    finished_at: datetime
    title: str = "Essay ranking"
    provider_usage: Mapping[str, Any] | None = None
    """Requests sent to the provider by outcome and seconds its rate limit held work back
    (``run.json``'s ``provider_usage``), when the provider ran in this process."""


@dataclass(frozen=True)
class ReportFiles:
    csv: Path
    json: Path
    html: Path


def interval(essay: RankedEssay) -> tuple[float, float]:
    """The 95% interval of an essay's score: score ± 1.96·SE."""
    return essay.score - Z95 * essay.se, essay.score + Z95 * essay.se


def run_summary(result: CJAssessmentCompletedV1, context: RunContext) -> dict[str, Any]:
    """The run summary shared by ``ranking.json`` and ``report.html``."""
    made = result.comparisons_succeeded + result.comparisons_failed
    return {
        "cj_batch_id": result.cj_batch_id,
        "status": result.status,
        "stop_reason": result.stop_reason,
        "judge": context.judge,
        "provider": result.provider,
        "model": result.model,
        "batching_strategy": result.batching_strategy.value,
        "essays": sum(not e.is_anchor for e in result.ranking),
        "anchors": sum(e.is_anchor for e in result.ranking),
        "rounds": result.rounds,
        "comparisons_requested": result.comparisons_requested,
        "comparisons_made": made,
        "comparisons_succeeded": result.comparisons_succeeded,
        "comparisons_failed": result.comparisons_failed,
        "provider_calls": result.provider_calls,
        "comparisons_per_provider_call": (
            round(made / result.provider_calls, 2) if result.provider_calls else None
        ),
        "tokens": result.token_usage.model_dump(),
        "cost_estimate": round(result.cost_estimate, 6),
        "scale_separation_reliability": result.scale_separation_reliability,
        "split_half_reliability": result.split_half_reliability,
        "source": context.source,
        "finished_at": context.finished_at.isoformat(),
        "cjllm_version": __version__,
        "message": result.message,
        **_provider_usage(context),
    }


def _provider_usage(context: RunContext) -> dict[str, Any]:
    """Every request sent to the provider, 429s included, and the time spent waiting for
    its rate limit (``provider_calls`` then counts them all; the comparisons per call stay
    those of the answered calls)."""
    usage = context.provider_usage
    if not usage:
        return {}
    requests = {k: int(v) for k, v in sorted(usage.get("requests", {}).items())}
    return {
        "provider_calls": sum(requests.values()),
        "provider_calls_by_outcome": requests,
        "rate_limit_wait_seconds": round(float(usage.get("rate_limit_wait_seconds", 0.0)), 1),
    }


def ranking_rows(result: CJAssessmentCompletedV1) -> list[dict[str, Any]]:
    """One row per ranked essay, best first, with its 95% interval."""
    rows = []
    for essay in sorted(result.ranking, key=lambda e: e.rank):
        lower, upper = interval(essay)
        rows.append(
            {
                "rank": essay.rank,
                "essay_id": essay.essay_id,
                "score": round(essay.score, 4),
                "se": round(essay.se, 4),
                "lower95": round(lower, 4),
                "upper95": round(upper, 4),
                "comparisons": essay.comparisons,
                "wins": essay.wins,
                "is_anchor": essay.is_anchor,
                "projected_grade": essay.projected_grade,
                "grade_probability": (
                    None if essay.grade_probability is None else round(essay.grade_probability, 4)
                ),
            }
        )
    return rows


def write_report(
    out_dir: Path, result: CJAssessmentCompletedV1, context: RunContext
) -> ReportFiles:
    """Write the three files into ``out_dir`` (each atomically: temp file, then rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = ranking_rows(result)
    summary = run_summary(result, context)
    files = ReportFiles(out_dir / CSV_NAME, out_dir / JSON_NAME, out_dir / HTML_NAME)
    _write_atomic(files.csv, _csv_text(rows))
    _write_atomic(
        files.json,
        json.dumps({"ranking": rows, "summary": summary}, indent=2, ensure_ascii=False) + "\n",
    )
    _write_atomic(files.html, render_html(result, context))
    return files


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    columns = ["rank", "essay_id", "score", "se", "lower95", "upper95", "comparisons", "wins"]
    if any(r["is_anchor"] for r in rows):
        columns.append("is_anchor")
    if any(r["projected_grade"] is not None for r in rows):
        columns += ["projected_grade", "grade_probability"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --------------------------------------------------------------------------- HTML


def render_html(result: CJAssessmentCompletedV1, context: RunContext) -> str:
    """The self-contained report page."""
    rows = ranking_rows(result)
    summary = run_summary(result, context)
    esc = html.escape
    return _PAGE.format(
        title=esc(context.title),
        style=_STYLE,
        heading=esc(context.title),
        lede=esc(
            f"{summary['essays']} essays ranked by comparative judgement: "
            f"{summary['comparisons_made']} comparisons, judged by {context.judge}."
        ),
        plot=render_plot(rows),
        table=_table(rows),
        summary=_summary_list(summary),
        version=esc(__version__),
    )


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}".replace("-", "−")


def _table(rows: Sequence[dict[str, Any]]) -> str:
    grades = any(r["projected_grade"] is not None for r in rows)
    head = ["Rank", "Essay", "Score", "SE", "95% interval", "Comparisons", "Wins"]
    if grades:
        head += ["Projected grade", "P(grade)"]
    out = ['<table id="ranking">', "<thead><tr>"]
    out += [f'<th scope="col">{h}</th>' for h in head]
    out.append("</tr></thead><tbody>")
    for r in rows:
        anchor = ' class="anchor"' if r["is_anchor"] else ""
        cells = [
            str(r["rank"]),
            html.escape(r["essay_id"]) + (" <small>(anchor)</small>" if r["is_anchor"] else ""),
            _fmt(r["score"]),
            _fmt(r["se"]),
            f"{_fmt(r['lower95'])} to {_fmt(r['upper95'])}",
            str(r["comparisons"]),
            str(r["wins"]),
        ]
        if grades:
            prob = r["grade_probability"]
            cells += [
                html.escape(r["projected_grade"] or "—"),
                "—" if prob is None else f"{prob:.2f}",
            ]
        out.append(
            f'<tr{anchor} data-essay-id="{html.escape(r["essay_id"], quote=True)}">'
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    out.append("</tbody></table>")
    return "\n".join(out)


_SUMMARY_LABELS = (
    ("judge", "Judge"),
    ("model", "Model"),
    ("batching_strategy", "Batching strategy"),
    ("essays", "Essays"),
    ("anchors", "Anchors"),
    ("rounds", "Rounds"),
    ("comparisons_made", "Comparisons made"),
    ("comparisons_failed", "Comparisons failed"),
    ("provider_calls", "Provider calls"),
    ("comparisons_per_provider_call", "Comparisons per provider call"),
    ("tokens", "Tokens"),
    ("cost_estimate", "Estimated cost (USD)"),
    ("scale_separation_reliability", "Scale separation reliability"),
    ("split_half_reliability", "Split-half reliability"),
    ("stop_reason", "Stopped because"),
    ("status", "Status"),
    ("source", "Input"),
    ("cj_batch_id", "CJ batch"),
    ("finished_at", "Finished"),
)


def _summary_value(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if key == "tokens":
        return (
            f"{value['total_tokens']:,} ({value['prompt_tokens']:,} prompt, "
            f"{value['completion_tokens']:,} completion)"
        )
    if key == "cost_estimate":
        return f"${value:.4f}"
    if key == "comparisons_per_provider_call":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _summary_list(summary: dict[str, Any]) -> str:
    items = []
    for key, label in _SUMMARY_LABELS:
        if key == "anchors" and not summary[key]:
            continue
        items.append(f"<dt>{label}</dt><dd>{_summary_value(key, summary[key])}</dd>")
    if summary.get("message"):
        items.append(f"<dt>Note</dt><dd>{html.escape(str(summary['message']))}</dd>")
    return '<dl id="summary">' + "".join(items) + "</dl>"


def _ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    span = hi - lo
    raw = span / max(1, target)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def render_plot(rows: Sequence[dict[str, Any]]) -> str:
    """An inline SVG: one row per essay (best at the top), its score and 95% interval."""
    label_w, right, top, bottom, row_h, width = 170, 24, 34, 44, 22, 820
    height = top + bottom + row_h * max(1, len(rows))
    lows: list[float] = [float(r["lower95"]) for r in rows] or [-1.0]
    highs: list[float] = [float(r["upper95"]) for r in rows] or [1.0]
    lo, hi = min(*lows, 0.0), max(*highs, 0.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    pad = 0.04 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    plot_w = width - label_w - right

    def x(value: float) -> float:
        return round(label_w + (value - lo) / (hi - lo) * plot_w, 2)

    parts = [
        f'<svg id="score-plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}"'
        f' width="{width}" height="{height}" role="img"'
        ' aria-labelledby="plot-title plot-desc">',
        '<title id="plot-title">Essay scores with 95% intervals</title>',
        '<desc id="plot-desc">One row per essay, best first: a dot at the Bradley-Terry score '
        "and a bar from score − 1.96·SE to score + 1.96·SE.</desc>",
    ]
    axis_y = height - bottom
    for tick in _ticks(lo, hi):
        tx = x(tick)
        parts.append(
            f'<line class="grid" x1="{tx}" y1="{top - 8}" x2="{tx}" y2="{axis_y}"/>'
            f'<text class="tick" x="{tx}" y="{axis_y + 16}" text-anchor="middle">'
            f"{_fmt(tick, 1 if abs(tick) < 100 else 0)}</text>"
        )
    parts.append(f'<line class="zero" x1="{x(0.0)}" y1="{top - 8}" x2="{x(0.0)}" y2="{axis_y}"/>')
    parts.append(
        f'<text class="axis-label" x="{label_w + plot_w / 2}" y="{height - 8}" '
        'text-anchor="middle">score (log-odds), bar = 95% interval</text>'
    )
    for i, r in enumerate(rows):
        cy = top + row_h * i + row_h / 2
        css = "essay anchor" if r["is_anchor"] else "essay"
        name = html.escape(r["essay_id"])
        tip = html.escape(
            f"#{r['rank']} {r['essay_id']}: {r['score']:.2f} "
            f"(95% {r['lower95']:.2f} to {r['upper95']:.2f})"
        )
        parts.append(
            f'<g class="{css}" data-essay-id="{html.escape(r["essay_id"], quote=True)}">'
            f"<title>{tip}</title>"
            f'<text class="label" x="{label_w - 10}" y="{cy + 4}" text-anchor="end">'
            f"{r['rank']}. {name}</text>"
            f'<line class="ci" x1="{x(r["lower95"])}" y1="{cy}" x2="{x(r["upper95"])}" y2="{cy}"/>'
            f'<circle class="score" cx="{x(r["score"])}" cy="{cy}" r="4.5"/>'
            "</g>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


_STYLE = """
:root { color-scheme: light; --ink: #1d2733; --muted: #5b6776; --accent: #2a62b8;
  --anchor: #b8612a; --rule: #d9dee5; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); margin: 0 auto; max-width: 900px; padding: 24px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.15em; margin: 28px 0 8px; border-bottom: 1px solid var(--rule); }
.lede { color: var(--muted); margin: 0 0 16px; }
figure { margin: 0; overflow-x: auto; }
figcaption { color: var(--muted); font-size: 0.9em; }
svg text { font: 12px system-ui, sans-serif; fill: var(--ink); }
svg .tick, svg .axis-label { fill: var(--muted); }
svg .grid { stroke: var(--rule); stroke-width: 1; }
svg .zero { stroke: #9aa5b1; stroke-dasharray: 3 3; }
svg .ci { stroke: var(--accent); stroke-width: 2.5; stroke-linecap: round; opacity: 0.55; }
svg .score { fill: var(--accent); }
svg .anchor .ci, svg .anchor .score { stroke: var(--anchor); fill: var(--anchor); }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--rule); text-align: right;
  white-space: nowrap; }
td:nth-child(2) { white-space: normal; overflow-wrap: anywhere; }
th:nth-child(2), td:nth-child(2) { text-align: left; }
tr.anchor td { color: var(--anchor); }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; }
footer { color: var(--muted); font-size: 0.85em; margin-top: 32px; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header>
<h1>{heading}</h1>
<p class="lede">{lede}</p>
</header>
<section>
<h2>Scores</h2>
<figure>
{plot}
<figcaption>Bradley-Terry scores (log-odds scale; a difference of 1 means about 73% odds of
winning a comparison). Bars are 95% intervals (score ± 1.96·SE): essays whose bars overlap
are not reliably separated.</figcaption>
</figure>
</section>
<section>
<h2>Ranking</h2>
{table}
</section>
<section>
<h2>Run summary</h2>
{summary}
</section>
<footer>Generated by cjllm {version}.</footer>
</body>
</html>
"""
