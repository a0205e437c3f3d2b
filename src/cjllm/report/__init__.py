"""The files a ranking run leaves behind: ``ranking.csv``, ``comparisons.csv``,
``ranking.json`` and ``report.html``.

All are written from the CJ service's completion event (:class:`CJAssessmentCompletedV1`),
a little run context (:class:`RunContext`: which judge and how it decided, the prompts, the
input) and the evidence (:class:`Evidence`: essay texts and every comparison). The parts:
:mod:`.summary` (the data), :mod:`.sheets` (the CSV files), :mod:`.page` and :mod:`.plot`
(the HTML page), :mod:`.explain` (the figures in plain words).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cjllm.contracts import CJAssessmentCompletedV1
from cjllm.report import explain
from cjllm.report.page import render_html
from cjllm.report.sheets import comparisons_csv, ranking_csv
from cjllm.report.summary import Evidence, RunContext, interval, ranking_rows, run_summary

CSV_NAME = "ranking.csv"
COMPARISONS_NAME = "comparisons.csv"
JSON_NAME = "ranking.json"
HTML_NAME = "report.html"

__all__ = [
    "Evidence",
    "ReportFiles",
    "RunContext",
    "explain",
    "interval",
    "ranking_rows",
    "render_html",
    "run_summary",
    "write_report",
]


@dataclass(frozen=True)
class ReportFiles:
    csv: Path
    json: Path
    html: Path
    comparisons: Path | None = None


def write_report(
    out_dir: Path,
    result: CJAssessmentCompletedV1,
    context: RunContext,
    evidence: Evidence | None = None,
) -> ReportFiles:
    """Write the files into ``out_dir``, each atomically (temp file, then rename);
    ``comparisons.csv`` only when the evidence is known."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = ranking_rows(result)
    files = ReportFiles(
        out_dir / CSV_NAME,
        out_dir / JSON_NAME,
        out_dir / HTML_NAME,
        out_dir / COMPARISONS_NAME if evidence is not None else None,
    )
    _write_atomic(files.csv, ranking_csv(rows))
    if files.comparisons is not None and evidence is not None:
        _write_atomic(files.comparisons, comparisons_csv(evidence.judgements))
    data = {
        "ranking": rows,
        "summary": run_summary(result, context),
        "prompts": {"instructions": context.instructions, "rubric": context.rubric},
    }
    _write_atomic(files.json, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    _write_atomic(files.html, render_html(result, context, evidence))
    return files


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
