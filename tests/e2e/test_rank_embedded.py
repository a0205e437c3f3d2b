"""`cjllm rank` end to end in one process: mock judge, SQLite queue and database, resume."""

from __future__ import annotations

import csv
import json
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from scipy.stats import spearmanr

from tests.e2e.cli import EXAMPLES, INTERRUPTIBLE_CJLLM, REPO, comparison_rows, env, run


def words(text: str) -> str:
    """Terminal output with every run of whitespace (line breaks included) as one space."""
    return " ".join(text.split())


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
    said = words(proc.stdout)  # whatever the terminal width and the checkout path
    assert "Judge: mock (simulated judge)" in said
    assert "simulation feature" in said

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
    assert f"provider calls {summary['provider_calls']}" in said
    assert summary["judge_mode"] == "manifest"

    # the estimate made beforehand (no judge called) matches what the run spent
    ahead = run(
        "rank",
        str(EXAMPLES),
        "--out",
        str(tmp_path / "never"),
        "--comparisons-per-essay",
        "30",
        "--estimate",
    )
    assert ahead.returncode == 0, ahead.stdout + ahead.stderr
    planned = {
        key: int(value.replace(",", ""))
        for key, value in re.findall(
            r"(comparisons|provider calls|input tokens) +(?:at most )?([\d,]+)", ahead.stdout
        )
    }
    assert planned["comparisons"] == summary["comparisons_made"]
    assert planned["provider calls"] <= summary["provider_calls"]
    spent = summary["tokens"]["prompt_tokens"]
    assert abs(planned["input tokens"] - spent) <= 0.1 * spent, (planned, spent)

    with (out / "ranking.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:4] == ["rank", "essay_id", "score", "se"]
    assert [r["essay_id"] for r in rows] == [r["essay_id"] for r in data["ranking"]]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="score-plot"' in page and '<table id="ranking"' in page
    assert 'id="simulated-banner"' in page and page.count('<article class="essay"') == 18
    with (out / "comparisons.csv").open(encoding="utf-8", newline="") as handle:
        judged = list(csv.DictReader(handle))
    assert len(judged) == 270 and all(
        j["winner"] in (j["essay_a_id"], j["essay_b_id"]) for j in judged
    )

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
    summary_mode = json.loads((out / "ranking.json").read_text(encoding="utf-8"))["summary"]
    assert summary_mode["judge_mode"] == "heuristic"


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
    said = words(proc.stdout)
    assert "different essay_count, essays" in said and "another --out" in said


def test_the_same_texts_judged_another_way_are_not_resumed(tmp_path: Path) -> None:
    """A CSV of the example texts has no manifest beside it, so its simulated judge decides by
    text heuristic: not the run recorded in --out, whose judge used the manifest."""
    out = tmp_path / "results"
    # completed, or failed on a disconnected graph at this small budget: either way the
    # run is recorded in --out, which is all this test needs
    first = run("rank", str(EXAMPLES), "--out", str(out), "--budget", "40")
    assert first.returncode in (0, 1), first.stdout + first.stderr
    table = tmp_path / "essays.csv"
    with table.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["essay_id", "text"])
        for path in sorted(EXAMPLES.glob("*.txt")):
            writer.writerow([path.stem, path.read_text(encoding="utf-8")])
    rows_before = comparison_rows(out / "cj.sqlite")
    proc = run("rank", str(table), "--out", str(out), "--budget", "40")
    assert proc.returncode == 2, proc.stdout
    said = words(proc.stdout)
    assert (
        "with different judge" in said
        and "manifest" in said
        and "resumes only the same run" in said
    )
    assert comparison_rows(out / "cj.sqlite") == rows_before


def test_an_essay_id_that_looks_like_markup_is_shown_as_written(tmp_path: Path) -> None:
    """Ids reach the terminal and the report as text: `[/bold]` must not crash rich after
    every comparison is paid, nor `[link=…]` become a hyperlink; `=…` must not become a
    spreadsheet formula."""
    table = tmp_path / "essays.csv"
    ids = ["[/bold]", "[link=http://example.invalid]click[/link]", "=1+1", "plain"]
    with table.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["essay_id", "text"])
        for i, essay_id in enumerate(ids):
            writer.writerow([essay_id, f"Essay number {i} has {'many ' * i}words."])
    out = tmp_path / "results"
    proc = run("rank", str(table), "--out", str(out), "--budget", "6")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = words(proc.stdout)
    assert "[/bold]" in said and "[link=http://example.invalid]click[/link]" in said
    assert "\x1b]8;" not in proc.stdout  # no terminal hyperlink
    with (out / "ranking.csv").open(encoding="utf-8", newline="") as handle:
        shown = {r["essay_id"] for r in csv.DictReader(handle)}
    assert shown == {"[/bold]", "[link=http://example.invalid]click[/link]", "'=1+1", "plain"}


def _succeeded(database: Path) -> dict[str, str | None]:
    if not database.exists():
        return {}
    try:
        rows = comparison_rows(database)
    except sqlite3.OperationalError:  # not created yet
        return {}
    return {cid: winner for cid, status, winner in rows if status == "succeeded"}


def _descendants(pid: int) -> set[int]:
    """The running processes below ``pid`` (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found |= {child} | _descendants(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _interrupt_and_resume(
    tmp_path: Path, sig: signal.Signals, extra: dict[str, str] | None = None
) -> None:
    out = tmp_path / "results"
    args = ["rank", str(EXAMPLES), "--out", str(out), "--comparisons-per-essay", "16"]
    slow = {
        "CJLLM_MOCK_LATENCY_SECONDS": "0.4",
        "MAX_CONCURRENT_COMPARISONS": "24",
        "CJLLM_TARGET_RELIABILITY": "0.999",
        **(extra or {}),
    }
    child = subprocess.Popen(
        [*INTERRUPTIBLE_CJLLM, *args],
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
        helpers = _descendants(child.pid)
        if extra:  # the worker process is one of them
            assert helpers, "no worker process"
        child.send_signal(sig)
        output, _ = child.communicate(timeout=60)
        # no helper process (the worker process, the chain helper) outlives the run
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in helpers):
            assert time.monotonic() < deadline, f"left running: {helpers}"
            time.sleep(0.1)
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

    resumed = run(*args, extra_env={"CJLLM_TARGET_RELIABILITY": "0.999", **(extra or {})})
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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_run_with_the_worker_process_stops_leaves_no_helper_and_resumes(
    tmp_path: Path, sig: signal.Signals
) -> None:
    _interrupt_and_resume(tmp_path, sig, {"CJLLM_EMBEDDED_WORKER": "child_process"})


def test_the_same_command_and_seed_give_the_same_ranking(tmp_path: Path) -> None:
    def ranking(out: str, seed: str) -> list[tuple[str, float, int]]:
        args = ("rank", str(EXAMPLES), "--out", str(tmp_path / out), "--budget", "40")
        proc = run(*args, "--seed", seed, extra_env={"CJLLM_MOCK_NOISE": "3.0"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data = json.loads((tmp_path / out / "ranking.json").read_text(encoding="utf-8"))
        return [(r["essay_id"], r["score"], r["wins"]) for r in data["ranking"]]

    first = ranking("one", "3")
    assert ranking("two", "3") == first  # another folder, the same command: the same ranking
    assert ranking("three", "4") != first  # another seed: other draws of the noisy judge
    rows = [comparison_rows(tmp_path / out / "cj.sqlite") for out in ("one", "two")]
    assert rows[0] == rows[1]


def test_a_total_budget_alone_is_judged_in_full_and_named_as_the_stop(tmp_path: Path) -> None:
    # 18 essays: the default 10 per essay would allow 90; --budget 100 is the only limit given
    out = tmp_path / "results"
    proc = run(
        "rank", str(EXAMPLES), "--out", str(out), "--budget", "100",
        extra_env={"CJLLM_TARGET_RELIABILITY": "0.999"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Budget: 100 comparisons (the total budget)." in proc.stdout
    summary = json.loads((out / "ranking.json").read_text(encoding="utf-8"))["summary"]
    assert summary["comparisons_made"] == 100 and summary["stop_reason"] == "budget_spent"
    assert summary["reliability"] is not None and summary["judge_model"]["order_effect"]
