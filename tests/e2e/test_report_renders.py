"""report.html renders in headless Chromium with its plot, table and summary, offline."""

from __future__ import annotations

import re
from pathlib import Path

from cjllm.report import write_report
from tests.e2e.chromium import run_chromium
from tests.test_report import CONTEXT, completed


def test_report_page_renders_plot_and_table_in_chromium(tmp_path: Path) -> None:
    files = write_report(tmp_path, completed(6, anchors=True), CONTEXT)
    dom = run_chromium(files.html, "--dump-dom")
    assert '<svg id="score-plot"' in dom
    assert len(re.findall(r'<circle class="score"', dom)) == 6
    assert len(re.findall(r'<line class="ci"', dom)) == 6
    table = dom[dom.index('<table id="ranking">') : dom.index("</table>")]
    assert len(re.findall(r"<tr[ >]", table)) == 1 + 6  # header + one row per essay
    assert "essay-0" in table and "&lt;b&gt;&amp;odd id&lt;/b&gt;" in table
    assert "mock (simulated judge)" in dom[dom.index('<dl id="summary">') :]


def test_report_page_screenshot_is_not_blank(tmp_path: Path) -> None:
    files = write_report(tmp_path, completed(6), CONTEXT)
    shot = tmp_path / "report.png"
    run_chromium(files.html, f"--screenshot={shot}", "--window-size=1000,1400")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # a blank page compresses to a few kilobytes
