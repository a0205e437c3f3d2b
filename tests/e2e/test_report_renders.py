"""report.html in headless Chromium at 1280 and 400 px wide, with 18 and 500 essays.

A probe script, added to a copy of the page (the report itself has none), scrolls where the
scenario says and records where the plot, its axis, the ranking and the evidence are and
whether anything overflows; a screenshot taken in the same state is then checked at those
places for ink (text, dots, bars), so "present" also means "visible".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cjllm.report import write_report
from tests.e2e.chromium import Image, read_png, run_chromium
from tests.test_report import CONTEXT, completed, evidence_for

# The page is shown in a frame of the scenario's width: headless Chromium will not make its
# window narrower than 500 px when dumping the DOM, but a frame can be any width, and the
# frame's own width is what the page's layout and media queries see.
FRAME = """<!DOCTYPE html><html><body style="margin:0">
<iframe src="%(page)s" width="%(width)d" height="900" style="border:0;display:block"></iframe>
<pre id="probe" style="display:none"></pre></body></html>"""

PROBE = """
<script>
(() => {
  const target = %(target)s;
  if (target) document.querySelector(target).scrollIntoView({block: "center"});
  const box = (el) => {
    if (!el) return null;
    const r = el.getBoundingClientRect();
    return {left: r.left, top: r.top, right: r.right, bottom: r.bottom};
  };
  const lines = (el) => { const r = document.createRange(); r.selectNodeContents(el);
    return new Set([...r.getClientRects()].map((q) => Math.round(q.top))).size; };
  const inView = (r) => r && r.bottom > 0 && r.top < innerHeight
    && r.right > 0 && r.left < innerWidth;
  const axis = document.querySelector(".plot-axis");
  const ticks = [...axis.querySelectorAll(".tick")]
    .filter((t) => getComputedStyle(t).display !== "none");
  const rows = [...document.querySelectorAll(".plot-row")];
  const visibleDots = rows.map((r) => box(r.querySelector(".dot"))).filter(inView);
  parent.document.getElementById("probe").textContent = JSON.stringify({
    viewport: innerWidth, scrollWidth: document.documentElement.scrollWidth,
    plot: box(document.getElementById("score-plot")),
    axis: box(axis), ticks: ticks.map(box),
    rows: rows.length, dots: visibleDots.slice(0, 40),
    labels: rows.slice(0, 50).map((r) => { const l = r.querySelector(".plot-label");
      return {clipped: l.scrollWidth > l.clientWidth + 1, lines: lines(l)}; }),
    idLines: [...document.querySelectorAll("#ranking td.id a")].slice(0, 50).map(lines),
    banner: box(document.getElementById("simulated-banner")),
    ranking: box(document.getElementById("ranking")),
    evidence: box(document.querySelector("#evidence h2")),
    articles: document.querySelectorAll("#evidence article.essay").length,
    firstArticle: box(document.querySelector("#evidence article.essay h3")),
  });
})();
</script>
"""


def render(
    tmp_path: Path, essays: int, width: int, target: str | None
) -> tuple[dict[str, Any], Image]:
    result = completed(essays)
    files = write_report(tmp_path, result, CONTEXT, evidence_for(result, partners=5))
    page = tmp_path / f"probed-{width}.html"
    probe = PROBE % {"target": json.dumps(target)}
    page.write_text(files.html.read_text("utf-8").replace("</body>", probe + "</body>"), "utf-8")
    frame = tmp_path / f"frame-{width}.html"
    frame.write_text(FRAME % {"page": page.name, "width": width}, "utf-8")
    size = f"--window-size={max(width, 500)},900"
    shot = tmp_path / f"shot-{width}.png"
    # one load: the DOM (with the probe's findings) and the screenshot of the same state
    dom = run_chromium(
        frame, "--dump-dom", f"--screenshot={shot}", "--allow-file-access-from-files", size
    )
    found = re.search(r'<pre id="probe"[^>]*>(.*?)</pre>', dom, re.S)
    assert found and found.group(1), "the probe did not run"
    return json.loads(found.group(1)), read_png(shot.read_bytes())


def has_ink(image: Image, box: dict[str, float]) -> bool:
    """Something is drawn in the box: pixels darker than the page's white background."""
    return any(
        sum(p) < 600 for p in image.region(box["left"], box["top"], box["right"], box["bottom"])
    )


def is_blue(image: Image, box: dict[str, float]) -> bool:
    x, y = int((box["left"] + box["right"]) / 2), int((box["top"] + box["bottom"]) / 2)
    r, _, b = image.pixel(x, y)
    return b > r + 60 and b > 120


def fits(m: dict[str, Any], box: dict[str, float] | None) -> bool:
    return box is not None and box["left"] >= -0.5 and box["right"] <= m["viewport"] + 0.5


@pytest.mark.parametrize("width", [1280, 400])
def test_top_of_the_page_shows_banner_plot_and_axis(tmp_path: Path, width: int) -> None:
    m, image = render(tmp_path, 18, width, None)
    assert m["scrollWidth"] <= m["viewport"], "the page scrolls sideways"
    assert m["rows"] == 18 and fits(m, m["plot"]) and fits(m, m["axis"])
    assert len(m["ticks"]) >= 3 and all(fits(m, t) for t in m["ticks"])
    assert all(has_ink(image, t) for t in m["ticks"])
    assert has_ink(image, m["banner"]) and m["banner"]["top"] < m["plot"]["top"]
    dots = m["dots"]
    assert len(dots) >= 5 and all(is_blue(image, d) for d in dots)
    # labels are whole words on one line (cut with an ellipsis if need be, never broken)
    assert all(label["lines"] == 1 for label in m["labels"])
    assert m["articles"] == 18


@pytest.mark.parametrize("width", [1280, 400])
def test_ranking_table_and_evidence_keep_their_content_at_any_width(
    tmp_path: Path, width: int
) -> None:
    m, image = render(tmp_path, 18, width, "#evidence h2")
    assert m["scrollWidth"] <= m["viewport"]
    assert fits(m, m["ranking"])
    assert all(n == 1 for n in m["idLines"]), "an essay id broke across lines"
    assert m["evidence"] is not None and has_ink(image, m["evidence"])
    assert m["firstArticle"] is not None and has_ink(image, m["firstArticle"])


@pytest.mark.parametrize("width", [1280, 400])
def test_with_500_essays_the_axis_stays_in_view_mid_plot(tmp_path: Path, width: int) -> None:
    m, image = render(tmp_path, 500, width, ".plot-row:nth-child(250)")
    assert m["rows"] == 500 and m["scrollWidth"] <= m["viewport"]
    assert m["plot"]["top"] < -1000  # scrolled deep into the plot
    axis = m["axis"]
    assert abs(axis["top"]) <= 1, axis  # stuck to the top of the window
    assert len(m["ticks"]) >= 3 and all(fits(m, t) and has_ink(image, t) for t in m["ticks"])
    dots = [d for d in m["dots"] if d["top"] > axis["bottom"]]  # the axis covers the rest
    assert len(dots) >= 20 and all(is_blue(image, d) for d in dots)
    assert m["articles"] == 500
