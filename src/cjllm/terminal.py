"""What ``cjllm rank`` and ``cjllm submit`` show in the terminal (rich).

A live progress line while a batch runs (round, comparisons done and failed, provider calls,
tokens, running cost, reliability), a line per round, and at the end the ranking table and
the run summary.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from cjllm.cj.records import BatchProgress
from cjllm.cj.workflow import ProgressEvent
from cjllm.contracts import CJAssessmentCompletedV1
from cjllm.judges import Judging
from cjllm.provider.limiter import Pacing
from cjllm.rank import Hooks, RankInputs
from cjllm.report import ReportFiles, interval


class LiveProgress:
    """A rich progress bar over the batch's comparison budget, fed by ticks and events."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.completed:.0f}/{task.total:.0f} comparisons"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task: TaskID | None = None
        self.last: BatchProgress | None = None
        self.pacing: Pacing | None = None

    @contextmanager
    def running(self) -> Iterator[LiveProgress]:
        with self.progress:
            self.task = self.progress.add_task("Starting", total=1, detail="")
            yield self

    def hooks(self) -> Hooks:
        return Hooks(
            on_start=self.start, on_event=self.event, on_tick=self.tick, on_pacing=self.pace
        )

    def pace(self, pacing: Pacing) -> None:
        self.pacing = pacing

    def judge(self, judging: Judging) -> None:
        self.console.print(f"[bold]Judge:[/] {judging.label}", highlight=False)
        self.console.print(f"  {judging.note}", highlight=False)

    def start(self, batch_id: str, judging: Judging, inputs: RankInputs, resumed: bool) -> None:
        anchors = f" and {len(inputs.anchors)} anchors" if inputs.anchors else ""
        verb = "Resuming" if resumed else "Starting"
        self.console.print(
            f"{verb} batch {batch_id}: {len(inputs.essays)} essays{anchors}", highlight=False
        )

    def tick(self, p: BatchProgress) -> None:
        self.last = p
        if self.task is None:
            return
        done = p.succeeded + p.failed
        self.progress.update(
            self.task,
            description=f"Round {p.rounds}",
            completed=done,
            total=done if p.status.value != "running" else max(done, p.budget or 1),
            detail=detail_line(p) + waiting_note(self.pacing),
        )

    def event(self, event: ProgressEvent) -> None:
        if event.kind == "round_started":
            self.console.print(
                f"  round {event.round_number}: {event.planned} comparisons sent to the judge",
                highlight=False,
            )


def detail_line(p: BatchProgress) -> str:
    parts = [
        f"failed {p.failed}",
        f"pending {p.pending}",
        f"provider calls {p.provider_calls}",
        f"tokens {p.total_tokens:,}",
        f"cost ${p.cost_estimate:.4f}",
    ]
    if p.reliability is not None:
        parts.append(f"reliability {p.reliability:.2f}")
    return " · ".join(parts)


def waiting_note(pacing: Pacing | None, now: datetime | None = None) -> str:
    """While the provider's rate limit holds work back: say so, with the finish time the
    limits allow (when known)."""
    if pacing is None or not pacing.waiting:
        return ""
    note = " · waiting for the provider's rate limit"
    if pacing.finish_in is not None:
        finish = (now or datetime.now()) + timedelta(seconds=pacing.finish_in)
        note += f", done about {finish:%H:%M}"
    return note


def provider_notes(pacing: Pacing | None) -> list[str]:
    """After a run: the requests the provider refused and the waiting, and in one line an
    account out of credit."""
    if pacing is None:
        return []
    lines = []
    refused = sum(n for k, n in pacing.requests.items() if k in ("rate_limited", "overloaded"))
    if refused or pacing.held_back_seconds >= 1:
        lines.append(
            f"Rate limits: {pacing.requests_sent} requests sent, {refused} refused "
            f"(rate limited or overloaded); waited {pacing.held_back_seconds:.0f}s for them"
        )
    if pacing.out_of_quota:
        lines.append(
            "The provider account is out of credit or quota (insufficient_quota): "
            f"{pacing.out_of_quota} — add credit or raise its spend limit, then run the "
            "same command again to resume."
        )
    return lines


def ranking_table(result: CJAssessmentCompletedV1) -> Table:
    grades = any(e.projected_grade is not None for e in result.ranking)
    table = Table(title="Ranking", title_justify="left", header_style="bold")
    for name in ("Rank", "Essay", "Score", "SE", "95% interval", "Comparisons", "Wins"):
        table.add_column(name, justify="left" if name == "Essay" else "right")
    if grades:
        table.add_column("Grade", justify="right")
    for e in sorted(result.ranking, key=lambda x: x.rank):
        lo, hi = interval(e)
        row = [
            str(e.rank),
            e.essay_id + (" (anchor)" if e.is_anchor else ""),
            f"{e.score:.2f}",
            f"{e.se:.2f}",
            f"{lo:.2f} to {hi:.2f}",
            str(e.comparisons),
            str(e.wins),
        ]
        if grades:
            row.append(e.projected_grade or "")
        table.add_row(*row)
    return table


def summary_lines(result: CJAssessmentCompletedV1, judge: str) -> list[str]:
    made = result.comparisons_succeeded + result.comparisons_failed
    per_call = f" ({made / result.provider_calls:.1f} per call)" if result.provider_calls else ""
    rel = result.scale_separation_reliability
    lines = [
        f"Judge: {judge}",
        f"Strategy: {result.batching_strategy.value} · rounds {result.rounds}",
        f"Comparisons: {made} made, {result.comparisons_failed} failed · provider calls "
        f"{result.provider_calls}{per_call}",
        f"Tokens: {result.token_usage.total_tokens:,} · estimated cost ${result.cost_estimate:.4f}",
        "Reliability (scale separation): " + ("n/a" if rel is None else f"{rel:.2f}"),
        f"Stopped: {result.stop_reason}" + (f" — {result.message}" if result.message else ""),
    ]
    return lines


def print_result(
    console: Console, result: CJAssessmentCompletedV1, judge: str, files: ReportFiles | None
) -> None:
    if result.ranking:
        console.print(ranking_table(result))
    for line in summary_lines(result, judge):
        console.print(line)
    if files is not None:
        console.print(
            f"Wrote {_show(files.csv)}, {_show(files.json)} and {_show(files.html)}",
            highlight=False,
        )


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
