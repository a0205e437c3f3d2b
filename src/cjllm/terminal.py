"""What ``cjllm rank`` and ``cjllm submit`` show in the terminal (rich).

While a batch runs: a line per round, and a live two-line display whose first line holds the
essentials — round, bar, comparisons done of the budget, elapsed time — within 80 columns,
and whose second line adds detail (provider calls, cost, reliability, failures, tokens) cut
to the terminal's width. Each detail is one entry of :func:`detail_parts`. At the end: the
ranking table and the run summary, read from the same summary data as the report. With the
batch-job strategies, a line whenever a provider batch job changes state.

Everything that comes from the run — essay ids, paths, error messages — is printed as text,
never as rich markup (an id such as ``[/bold]`` is shown as written).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cjllm.strategies import BATCH_JOB_STRATEGIES

if TYPE_CHECKING:
    # imported where used: the error paths of the command line must stay light
    from cjllm.cj.progress import ProgressEvent
    from cjllm.cj.records import BatchProgress
    from cjllm.contracts import CJAssessmentCompletedV1
    from cjllm.judges import Judging
    from cjllm.provider.jobs import BatchJob
    from cjllm.provider.limiter import Pacing
    from cjllm.rank import Hooks, RankInputs
    from cjllm.report import ReportFiles, RunContext


def say(console: Console, message: str, style: str | None = None) -> None:
    """Print a message as plain text (no markup), unwrapped: the terminal wraps it."""
    console.print(Text(message, style=style or ""), soft_wrap=True, highlight=False)


def error(console: Console, message: str) -> None:
    console.print(Text.assemble(("Error: ", "bold red"), message), soft_wrap=True, highlight=False)


def warn(console: Console, message: str) -> None:
    console.print(
        Text.assemble(("Warning: ", "bold yellow"), message), soft_wrap=True, highlight=False
    )


class _Display(Progress):
    """A rich progress bar with a second line of detail under it."""

    detail: str = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.detail:
            yield Text("  " + self.detail, style="dim", no_wrap=True, overflow="ellipsis")


class LiveProgress:
    """The live display over the batch's comparison budget, fed by ticks and events."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = _Display(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=20),
            TextColumn("{task.fields[count]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task: TaskID | None = None
        self.last: BatchProgress | None = None
        self.pacing: Pacing | None = None
        self.job_states: dict[str, str] = {}

    @contextmanager
    def running(self) -> Iterator[LiveProgress]:
        with self.progress:
            self.task = self.progress.add_task("Starting", total=None, count="")
            yield self

    def hooks(self) -> Hooks:
        from cjllm.rank import Hooks

        return Hooks(
            on_start=self.start,
            on_event=self.event,
            on_tick=self.tick,
            on_pacing=self.pace,
            on_jobs=self.jobs,
        )

    def pace(self, pacing: Pacing) -> None:
        self.pacing = pacing

    def judge(self, judging: Judging) -> None:
        self.console.print(
            Text.assemble(("Judge: ", "bold"), judging.label), soft_wrap=True, highlight=False
        )
        say(self.console, f"  {judging.note}")

    def start(self, batch_id: str, judging: Judging, inputs: RankInputs, resumed: bool) -> None:
        anchors = f" and {len(inputs.anchors)} anchors" if inputs.anchors else ""
        verb = "Resuming" if resumed else "Starting"
        say(self.console, f"{verb} batch {batch_id}: {len(inputs.essays)} essays{anchors}")

    def tick(self, p: BatchProgress) -> None:
        self.last = p
        if self.task is None:
            return
        done = p.succeeded  # the budget counts judgements; failures show in the detail
        running = p.status.value == "running"
        total = max(done, p.budget or 0) if running else done
        waiting = waiting_note(self.pacing)
        self.progress.detail = " · ".join([*([waiting] if waiting else []), *detail_parts(p)])
        self.progress.update(
            self.task,
            description=f"Round {p.rounds}" if p.rounds else "Starting",
            completed=done,
            total=total or None,
            count=f"{done:,}/{total:,} comparisons" if total else "",
        )

    def event(self, event: ProgressEvent) -> None:
        if event.kind == "round_started":
            say(
                self.console,
                f"  round {event.round_number}: {event.planned} comparisons sent to the judge",
            )

    def jobs(self, jobs: list[BatchJob]) -> None:
        """A line for each provider batch job whose state changed since the last look."""
        for job in jobs:
            line = job_line(job)
            if self.job_states.get(job.job_id) != line:
                self.job_states[job.job_id] = line
                say(self.console, f"  {line}")


def job_line(job: BatchJob) -> str:
    """``job 1a2b3c4d (anthropic msgbatch_…): in_progress — 45 comparisons in 5 lines``."""
    state = job.vendor_status or job.state.value
    if job.state.value == "settled":
        state = f"settled ({job.vendor_status})" if job.vendor_status else "settled"
    where = f"{job.provider} {job.vendor_id}" if job.vendor_id else job.provider
    counts = ", ".join(f"{name} {n}" for name, n in job.counts.items() if n and name != "total")
    tail = f" [{counts}]" if counts else ""
    return (
        f"job {job.job_id[:8]} ({where}): {state} — {job.n_items} comparisons in "
        f"{job.n_lines} lines{tail}"
    )


def detail_parts(p: BatchProgress) -> list[str]:
    """The second line of the live display, most telling first (cut at the terminal's
    width). Reliability appears once it counts for stopping (``p.reliability`` is None
    before: too few comparisons per essay for it to mean anything)."""
    parts = [f"provider calls {p.provider_calls}", f"cost ${p.cost_estimate:.4f}"]
    if p.reliability is not None:
        parts.append(f"reliability {p.reliability:.2f}")
    if p.failed:
        parts.append(f"failed {p.failed}")
    parts.append(f"pending {p.pending}")
    parts.append(f"tokens {p.total_tokens:,}")
    return parts


def waiting_note(pacing: Pacing | None, now: datetime | None = None) -> str:
    """While the provider's rate limit holds work back: say so, with the finish time the
    limits allow (when known). Shown first on the detail line."""
    if pacing is None or not pacing.waiting:
        return ""
    note = "waiting for the provider's rate limit"
    if pacing.finish_in is not None:
        # to the nearest minute
        finish = (now or datetime.now()) + timedelta(seconds=pacing.finish_in + 30)
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


TABLE_TOP, TABLE_BOTTOM = 30, 10  # a longer ranking shows its ends (the files hold it all)


def ranking_table(result: CJAssessmentCompletedV1, *, shorten: bool = False) -> Table:
    """The ranking as a table. ``shorten`` (when ranking.csv holds it all): beyond
    ``TABLE_TOP + TABLE_BOTTOM + 10`` essays, the top ``TABLE_TOP`` and the bottom
    ``TABLE_BOTTOM`` with a row saying how many are left out (drawing 10,000 rows took ~8 s
    and scrolled everything else away)."""
    from cjllm.report import interval

    grades = any(e.projected_grade is not None for e in result.ranking)
    table = Table(title="Ranking", title_justify="left", header_style="bold")
    for name in ("Rank", "Essay", "Score", "95% interval", "SE", "Comp.", "Wins"):
        table.add_column(name, justify="left" if name == "Essay" else "right")
    if grades:
        table.add_column("Grade", justify="right")
    ranked = sorted(result.ranking, key=lambda x: x.rank)
    left_out = len(ranked) - TABLE_TOP - TABLE_BOTTOM if shorten else 0
    if left_out > 10:
        ranked = [*ranked[:TABLE_TOP], *ranked[-TABLE_BOTTOM:]]
    for k, e in enumerate(ranked):
        if left_out > 10 and k == TABLE_TOP:
            table.add_row("…", Text(f"{left_out:,} more essays: see ranking.csv", style="dim"))
        lo, hi = interval(e)
        row: list[Text] = [
            Text(str(e.rank)),
            Text(e.essay_id + (" (anchor)" if e.is_anchor else ""), overflow="fold"),
            Text(f"{e.score:.2f}"),
            Text(f"{lo:.2f} to {hi:.2f}"),
            Text(f"{e.se:.2f}"),
            Text(str(e.comparisons)),
            Text(str(e.wins)),
        ]
        if grades:
            row.append(Text(e.projected_grade or ""))
        table.add_row(*row)
    return table


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The run summary in a few lines, from :func:`cjllm.report.run_summary`."""
    from cjllm.report import explain
    from cjllm.report.judgement import judgement_lines

    made, calls = summary["comparisons_made"], summary["provider_calls"]
    ratio = summary["comparisons_per_provider_call"]
    per_call = f" ({ratio:.1f} comparisons per answered call)" if ratio else ""
    tokens = summary["tokens"]["total_tokens"]
    return [
        f"Judge: {summary['judge']}",
        f"Strategy: {summary['batching_strategy']}"
        + (f" · {summary['bundle_layout']} layout" if summary.get("bundle_layout") else "")
        + f" · rounds {summary['rounds']}",
        f"Comparisons: {made} made, {summary['comparisons_failed']} failed · provider calls "
        f"{calls}{per_call}",
        f"Tokens: {tokens:,} · estimated cost ${summary['cost_estimate']:.4f}"
        + (" at the batch price" if summary["batching_strategy"] in BATCH_JOB_STRATEGIES else ""),
        *(
            [
                f"Structured output: {summary.get('output_mode') or 'n/a'} · bundle size "
                f"settled at {summary.get('bundle_size') or 'n/a'}"
            ]
            if summary.get("output_mode") or summary.get("bundle_size")
            else []
        ),
        *judgement_lines(summary),
        f"Stopped: {explain.stop_reason(summary['stop_reason'])} ({summary['stop_reason']})",
        *([f"Note: {summary['message']}"] if summary.get("message") else []),
    ]


def print_result(
    console: Console,
    result: CJAssessmentCompletedV1,
    context: RunContext,
    files: ReportFiles | None,
) -> None:
    from cjllm.report import run_summary

    if context.simulated:
        say(console, "Simulated judge: no LLM read these essays.", style="bold yellow")
    if result.ranking:
        console.print(ranking_table(result, shorten=files is not None))
    for line in summary_lines(run_summary(result, context)):
        say(console, line)
    if files is not None:
        shown = [files.csv, *([files.comparisons] if files.comparisons else []), files.json]
        say(
            console,
            f"Wrote {', '.join(_show(p) for p in shown)} and {_show(files.html)}",
        )


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
