"""The score plot of ``report.html``: one row per essay, best first, a dot at its score and a
bar over its 95% interval, on a shared axis.

Drawn in HTML and CSS rather than one big SVG so it reflows: text keeps its size at any
width (a scaled SVG shrinks its labels to nothing on a phone), long ids are cut with an
ellipsis (the full id is in the row's tooltip), and the axis row is sticky, so with 500
essays the scale is in view wherever the reader is. Positions are percentages of the track.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

DENSE_ROWS = 60  # above this many essays, rows are packed tighter


def fmt(value: float, digits: int = 2) -> str:
    """A number as the page shows it, with a true minus sign."""
    return f"{value:.{digits}f}".replace("-", "−")


def ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values covering [lo, hi], about ``target`` of them."""
    span = hi - lo
    raw = span / max(1, target)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    value = math.ceil(lo / step) * step
    out = []
    while value <= hi + 1e-9:
        out.append(round(value, 10))
        value += step
    return out


def extent(rows: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """The axis range: every interval and zero, with a little room either side."""
    lows = [float(r["lower95"]) for r in rows] or [-1.0]
    highs = [float(r["upper95"]) for r in rows] or [1.0]
    lo, hi = min(*lows, 0.0), max(*highs, 0.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    pad = 0.04 * (hi - lo)
    return lo - pad, hi + pad


def render_plot(rows: Sequence[dict[str, Any]], anchor_of: dict[str, str] | None = None) -> str:
    """The plot as an HTML fragment. ``anchor_of`` maps an essay id to the page anchor of its
    evidence (its label links there)."""
    lo, hi = extent(rows)

    def pct(value: float) -> str:
        return f"{(value - lo) / (hi - lo) * 100:.3f}%"

    marks = ticks(lo, hi)
    step = marks[1] - marks[0] if len(marks) > 1 else 1.0
    digits = 0 if abs(step - round(step)) < 1e-9 else 1
    grid = ", ".join(
        f"linear-gradient(to right, transparent calc({pct(t)} - 0.5px), "
        f"var({'--zero' if t == 0 else '--rule'}) calc({pct(t)} - 0.5px), "
        f"var({'--zero' if t == 0 else '--rule'}) calc({pct(t)} + 0.5px), "
        f"transparent calc({pct(t)} + 0.5px))"
        for t in marks
    )
    # on narrow screens every other tick is hidden (never 0), when there are many
    tick_html = "".join(
        f'<span class="tick{" minor" if len(marks) > 4 and round(t / step) % 2 else ""}" '
        f'style="left:{pct(t)}">{fmt(t, digits)}</span>'
        for t in marks
    )
    axis = (
        '<div class="plot-axis" aria-hidden="true"><span class="plot-axis-name">score</span>'
        f'<div class="track">{tick_html}</div></div>'
    )
    dense = " dense" if len(rows) > DENSE_ROWS else ""
    out = [
        f'<figure id="score-plot" class="plot{dense}" style="--grid: {grid}" '
        'aria-label="Essay scores with 95% intervals, best first">',
        axis,
        '<ol class="plot-rows">',
    ]
    for r in rows:
        essay_id = str(r["essay_id"])
        name = html.escape(essay_id)
        tip = html.escape(
            f"#{r['rank']} {essay_id}: {fmt(r['score'])} "
            f"(95% interval {fmt(r['lower95'])} to {fmt(r['upper95'])})",
            quote=True,
        )
        label = f"{r['rank']}. {name}"
        target = (anchor_of or {}).get(essay_id)
        label_html = (
            f'<a class="plot-label" href="#{target}">{label}</a>'
            if target
            else f'<span class="plot-label">{label}</span>'
        )
        left, right = float(r["lower95"]), float(r["upper95"])
        width = (right - left) / (hi - lo) * 100
        out.append(
            f'<li class="plot-row{" anchor" if r["is_anchor"] else ""}" '
            f'data-essay-id="{html.escape(essay_id, quote=True)}" title="{tip}">{label_html}'
            f'<span class="track"><span class="ci" style="left:{pct(left)};width:{width:.3f}%">'
            f'</span><span class="dot" style="left:{pct(float(r["score"]))}"></span></span></li>'
        )
    out.append("</ol>")
    out.append(axis.replace('class="plot-axis"', 'class="plot-axis bottom"'))
    out.append(
        "<figcaption>Dot: the essay's score; bar: its 95% interval. Higher is better; "
        "the darker line marks 0, the average essay.</figcaption></figure>"
    )
    return "\n".join(out)
