"""`cjllm rank` against a real open model on a real local server (llama-cpp-python serving
Gemma 3 270M, installed from the package registry; tests/models/NOTICE.md).

A 270M model is a poor judge and a sloppy JSON writer: the point is that the run completes
on the server's own structured-output dialect and every comparison is accounted for. Three
short essays and three comparisons keep it to a minute or two on two shared cores (the
model generates about 8 tokens a second there).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.e2e.cli import run
from tests.services import LOCAL_MODEL

ESSAYS = {
    "uniforms-for": "School uniforms help pupils focus on learning. They cost families less "
    "than fashionable clothes, and they stop teasing about brands. A school that looks alike "
    "feels like a team, so uniforms should stay.",
    "uniforms-against": "Uniforms are bad. They are boring and I do not like them.",
    "uniforms-mixed": "Uniforms have good and bad sides. They save money for some families "
    "and reduce teasing, but they limit self-expression. A simple dress code could keep the "
    "benefits while letting pupils choose.",
}


# generation is CPU-bound: about ten minutes when the two cores are shared with other
# work (593s in a suite run beside two busy loops, one call 199s); the guards are for a
# hang, not a measure of speed
@pytest.mark.timeout(1500)
def test_rank_with_a_real_open_model_on_a_local_server(
    local_model_url: str, tmp_path: Path
) -> None:
    essays = tmp_path / "essays"
    essays.mkdir()
    for name, text in ESSAYS.items():
        (essays / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
    out = tmp_path / "results"
    proc = run(
        "rank",
        str(essays),
        "--provider",
        "openai",
        "--model",
        LOCAL_MODEL,
        "--out",
        str(out),
        "--comparisons-per-essay",
        "2",
        extra_env={
            "OPENAI_BASE_URL": local_model_url,
            "CJLLM_MAX_OUTPUT_TOKENS_PER_ITEM": "120",
            "CJLLM_CALL_TIMEOUT_SECONDS": "900",
            "CJLLM_RETRY_BASE_SECONDS": "0.2",
            "CJLLM_MAX_ATTEMPTS": "3",
            "CJLLM_TEMPERATURE": "0",
        },
        timeout=1440,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((out / "ranking.json").read_text(encoding="utf-8"))
    summary, ranking = data["summary"], data["ranking"]
    # llama-cpp-python refuses json_schema (HTTP 500): the run settled on its json_object
    # + schema dialect, which it enforces with a grammar
    assert summary["output_mode"] == "json_object_schema"
    assert isinstance(summary["bundle_size"], int) and summary["bundle_size"] >= 1
    assert "Structured output: json_object_schema" in proc.stdout
    assert sorted(r["essay_id"] for r in ranking) == sorted(ESSAYS)
    # every comparison accounted for: a success, or an error callback with a reason
    with sqlite3.connect(out / "cj.sqlite") as db:
        rows = db.execute(
            "SELECT status, winner, error_code, error_message FROM cj_comparisons"
        ).fetchall()
    assert rows and len(rows) == summary["comparisons_made"], rows
    for status, winner, code, message in rows:
        assert status in ("succeeded", "failed"), rows
        if status == "succeeded":
            assert winner in ("Essay A", "Essay B")
        else:
            assert code and message, rows
    assert summary["comparisons_succeeded"] + summary["comparisons_failed"] == len(rows)
