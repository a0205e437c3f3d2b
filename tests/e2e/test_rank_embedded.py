"""`cjllm rank` end to end in one process: mock judge, SQLite queue and database, resume."""

from __future__ import annotations

import csv
import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from scipy.stats import spearmanr

from tests.e2e.cli import CJLLM, EXAMPLES, REPO, comparison_rows, env, run


def manifest_quality() -> dict[str, float]:
    manifest = json.loads((EXAMPLES / "manifest.json").read_text(encoding="utf-8"))
    return {e["essay_id"]: float(e["quality"]) for e in manifest["essays"]}


def test_rank_examples_recovers_the_manifest_order_in_few_provider_calls(tmp_path: Path) -> None:
    out = tmp_path / "results"
    # 30 comparisons per essay, and a reliability target it cannot reach first, so the run
    # spends its whole budget: Spearman then stays far above 0.9 whatever the random draws
    # (with the default 10 per essay it averages about 0.94 on these essays).
    proc = run(
        "rank",
        str(EXAMPLES),
        "--out",
        str(out),
        "--comparisons-per-essay",
        "30",
        extra_env={"CJLLM_TARGET_RELIABILITY": "0.999"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Judge: mock (simulated judge)" in proc.stdout
    assert "simulation feature" in proc.stdout

    data = json.loads((out / "ranking.json").read_text(encoding="utf-8"))
    summary = data["summary"]
    quality = manifest_quality()
    assert sorted(r["essay_id"] for r in data["ranking"]) == sorted(quality)
    rho = spearmanr(
        [quality[r["essay_id"]] for r in data["ranking"]], [r["score"] for r in data["ranking"]]
    ).statistic
    assert rho >= 0.9, data["ranking"]

    assert summary["batching_strategy"] == "serial_round"
    assert summary["comparisons_made"] == 270  # ⌈30·18/2⌉
    assert summary["comparisons_failed"] == 0
    # serial_round: one bundle per round, split only by the provider's 25-items-per-call cap
    assert 0 < summary["provider_calls"] <= summary["comparisons_made"] / 10
    assert summary["judge"] == "mock (simulated judge)"
    assert summary["model"] == "mock-judge-1"
    assert summary["scale_separation_reliability"] > 0.8
    assert f"provider calls {summary['provider_calls']}" in proc.stdout

    with (out / "ranking.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:4] == ["rank", "essay_id", "score", "se"]
    assert [r["essay_id"] for r in rows] == [r["essay_id"] for r in data["ranking"]]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert '<svg id="score-plot"' in page and '<table id="ranking">' in page

    # running it again finds the finished batch: same result, no new comparisons
    again = run(
        "rank",
        str(EXAMPLES),
        "--out",
        str(out),
        "--comparisons-per-essay",
        "30",
        extra_env={"CJLLM_TARGET_RELIABILITY": "0.999"},
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Resuming batch" in again.stdout
    redo = json.loads((out / "ranking.json").read_text(encoding="utf-8"))
    assert redo["ranking"] == data["ranking"]
    assert len(comparison_rows(out / "cj.sqlite")) == 270


def test_per_request_makes_one_provider_call_per_comparison(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = run(
        "rank", str(EXAMPLES), "--out", str(out), "--strategy", "per_request", "--budget", "24"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "ranking.json").read_text(encoding="utf-8"))["summary"]
    assert summary["batching_strategy"] == "per_request"
    assert summary["comparisons_made"] == 24
    assert summary["provider_calls"] == 24


def test_csv_input_and_serial_override_bundle_size(tmp_path: Path) -> None:
    essays = tmp_path / "essays.csv"
    with essays.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["essay_id", "text"])
        for path in sorted(EXAMPLES.glob("*.txt"))[:8]:
            writer.writerow([path.stem, path.read_text(encoding="utf-8")])
    out = tmp_path / "results"
    proc = run(
        "rank",
        str(essays),
        "--out",
        str(out),
        "--strategy",
        "serial_override",
        "--bundle-size",
        "4",
        "--comparisons-per-essay",
        "4",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "ranking.json").read_text(encoding="utf-8"))["summary"]
    assert summary["essays"] == 8
    assert summary["comparisons_made"] == 16
    assert summary["provider_calls"] >= 4  # at most 4 comparisons per call
    assert "heuristic" in proc.stdout  # no manifest next to a CSV: the judge says how it decides


def test_bad_input_is_refused_before_anything_runs(tmp_path: Path) -> None:
    folder = tmp_path / "essays"
    folder.mkdir()
    (folder / "only.txt").write_text("A lonely essay.", encoding="utf-8")
    out = tmp_path / "results"
    proc = run("rank", str(folder), "--out", str(out))
    assert proc.returncode == 2
    assert "at least 2" in proc.stdout and str(folder) in proc.stdout
    assert not out.exists()

    (folder / "bad.txt").write_bytes(b"caf\xe9")
    proc = run("rank", str(folder), "--out", str(out))
    assert proc.returncode == 2
    assert "bad.txt" in proc.stdout and "not UTF-8" in proc.stdout
    assert not out.exists()


def test_other_essays_in_a_used_out_folder_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "essays"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.txt").write_text(f"Essay {name} says something.", encoding="utf-8")
    out = tmp_path / "results"
    assert run("rank", str(folder), "--out", str(out), "--budget", "3").returncode == 0
    (folder / "d.txt").write_text("A fourth essay arrives late.", encoding="utf-8")
    proc = run("rank", str(folder), "--out", str(out), "--budget", "3")
    assert proc.returncode == 2
    assert "different essay_count, essays" in proc.stdout and "another --out" in proc.stdout


def _succeeded(database: Path) -> dict[str, str | None]:
    if not database.exists():
        return {}
    try:
        rows = comparison_rows(database)
    except sqlite3.OperationalError:  # not created yet
        return {}
    return {cid: winner for cid, status, winner in rows if status == "succeeded"}


def _interrupt_and_resume(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "results"
    args = ["rank", str(EXAMPLES), "--out", str(out), "--comparisons-per-essay", "16"]
    slow = {
        "CJLLM_MOCK_LATENCY_SECONDS": "0.4",
        "MAX_CONCURRENT_COMPARISONS": "24",
        "CJLLM_TARGET_RELIABILITY": "0.999",
    }
    child = subprocess.Popen(
        [*CJLLM, *args],
        cwd=REPO,
        env=env(slow),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while len(_succeeded(out / "cj.sqlite")) < 30:
            assert child.poll() is None, child.communicate()[0]
            assert time.monotonic() < deadline, "no progress within 120 s"
            time.sleep(0.1)
        child.send_signal(sig)
        output, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    before = _succeeded(out / "cj.sqlite")
    assert 30 <= len(before) < 144, "the run must stop mid-way"
    if sig is signal.SIGINT:
        assert child.returncode == 130, output
        assert "Interrupted" in output and "run the same command again" in output
    else:
        assert child.returncode == -signal.SIGKILL
    assert not (out / "ranking.json").exists()

    resumed = run(*args, extra_env={"CJLLM_TARGET_RELIABILITY": "0.999"})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming batch" in resumed.stdout
    rows = comparison_rows(out / "cj.sqlite")
    after = {cid: winner for cid, status, winner in rows if status == "succeeded"}
    # what was judged before the interruption is kept as it was, not asked again
    assert {cid: after.get(cid) for cid in before} == before
    # every comparison is accounted for: the budget exactly, none left pending
    assert len(rows) == 144
    assert all(status in ("succeeded", "failed") for _, status, _ in rows)
    summary = json.loads((out / "ranking.json").read_text(encoding="utf-8"))["summary"]
    assert summary["status"] == "completed"
    assert summary["comparisons_made"] == 144


def test_interrupted_run_resumes_without_redoing_comparisons(tmp_path: Path) -> None:
    _interrupt_and_resume(tmp_path, signal.SIGINT)


@pytest.mark.slow
def test_killed_run_resumes_with_every_comparison_accounted_for(tmp_path: Path) -> None:
    _interrupt_and_resume(tmp_path, signal.SIGKILL)
