"""The ``cjllm`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cjllm import __version__
from cjllm.serve_commands import serve_app, sim
from cjllm.strategies import BatchingStrategy

app = typer.Typer(
    name="cjllm",
    help="Rank essays by comparative judgement with an LLM judge.",
    no_args_is_help=True,
    add_completion=False,
)


# options shared by `rank` and `submit`
InstructionsOption = Annotated[
    Path | None,
    typer.Option("--instructions", help="The assignment / judging instructions (text file)."),
]
RubricOption = Annotated[Path | None, typer.Option("--rubric", help="The rubric (text file).")]
AnchorsOption = Annotated[
    Path | None,
    typer.Option(
        "--anchors", help="Anchor essays with known grades: CSV/JSONL essay_id,text,grade."
    ),
]
GradeScaleOption = Annotated[
    str | None,
    typer.Option(
        "--grade-scale",
        help="Anchor grades in order, lowest first, comma-separated (e.g. E,D,C,B,A); not "
        "needed when every grade is a number.",
        show_default=False,
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cjllm {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Rank essays by comparative judgement with an LLM judge."""


@app.command()
def rank(
    path: Annotated[
        Path,
        typer.Argument(
            help="A folder of .txt/.md/.docx/.pdf essays (essay id = file stem), or a "
            "CSV/JSONL file with essay_id,text.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for results and run state (resumable).")
    ] = Path("cjllm-results"),
    provider: Annotated[
        str | None,
        typer.Option(
            "--provider",
            help="mock, anthropic or openai. Default: the first whose API key is set "
            "(ANTHROPIC_API_KEY, OPENAI_API_KEY), else mock.",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Model name (default: the provider's default).", show_default=False
        ),
    ] = None,
    strategy: Annotated[
        BatchingStrategy,
        typer.Option(
            "--strategy",
            help="serial_round (one bundle per round), serial_override (--bundle-size per "
            "call), per_request (one provider call per comparison), async_batch (the "
            "vendor's batch API: half price, results within 24 h) or nightly_batch "
            "(async_batch, submitted once enough has accumulated).",
        ),
    ] = BatchingStrategy.SERIAL_ROUND,
    bundle_size: Annotated[
        int | None,
        typer.Option(
            "--bundle-size",
            help="Comparisons per provider call: the override with serial_override; the "
            "round size cap (MAX_CONCURRENT_COMPARISONS) with serial_round; comparisons per "
            "batch-job line with async_batch and nightly_batch (1: one per line).",
            show_default=False,
        ),
    ] = None,
    comparisons_per_essay: Annotated[
        float | None,
        typer.Option(
            "--comparisons-per-essay",
            help="Comparisons to judge per essay, K (total ⌈K·n/2⌉). Default 10 unless "
            "--budget is given; with both, the smaller applies and the run says which.",
            show_default=False,
        ),
    ] = None,
    budget: Annotated[
        int | None,
        typer.Option(
            "--budget",
            help="Total comparisons to judge (failed ones are not counted).",
            show_default=False,
        ),
    ] = None,
    instructions: InstructionsOption = None,
    rubric: RubricOption = None,
    anchors: AnchorsOption = None,
    grade_scale: GradeScaleOption = None,
    seed: Annotated[
        int,
        typer.Option("--seed", help="Seed of the simulated judge's draws and of the pairing."),
    ] = 0,
    pairing: Annotated[
        str | None,
        typer.Option(
            "--pairing",
            help="adaptive (default: partners chosen for information) or random (the "
            "classical balanced random design).",
            show_default=False,
        ),
    ] = None,
    estimate: Annotated[
        bool,
        typer.Option(
            "--estimate",
            help="Print the planned comparisons, provider calls, tokens and cost (list and "
            "batch prices) without calling the LLM, and exit.",
        ),
    ] = False,
) -> None:
    """Rank essays by comparative judgement, all in this process; --out is resumable."""
    # Options, inputs and credentials are checked before anything heavy is imported, so a
    # mistake is reported at once (cjllm.preflight); the services load only after that.
    from rich.console import Console

    from cjllm.essays import EssayInputError
    from cjllm.preflight import RankError, RankRequest, preflight
    from cjllm.terminal import error, say, warn

    console = Console()
    request = RankRequest(
        path=path,
        out_dir=out,
        provider=provider,
        model=model,
        strategy=strategy,
        bundle_size=bundle_size,
        comparisons_per_essay=comparisons_per_essay,
        budget=budget,
        instructions=instructions,
        rubric=rubric,
        anchors=anchors,
        grade_scale=[g.strip() for g in grade_scale.split(",")] if grade_scale else None,
        seed=seed,
        pairing=pairing,
    )
    try:
        checked = preflight(request, credentials=not estimate)
    except (EssayInputError, RankError) as exc:
        error(console, str(exc))
        raise typer.Exit(2) from None
    if checked.budget_warning is not None:
        warn(console, checked.budget_warning)
    if estimate:
        from cjllm.estimate import estimate_run

        try:
            figures = estimate_run(checked)
        except RankError as exc:
            error(console, str(exc))
            raise typer.Exit(2) from None
        for line in figures.lines():
            say(console, line)
        return

    import logging

    from cjllm.rank import budget_note, prepare, run_context, run_until_done
    from cjllm.terminal import LiveProgress, print_result, provider_notes

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        prepared = prepare(checked)
        live = LiveProgress(console)
        live.judge(prepared.judging)
        console.print(budget_note(prepared), highlight=False)
        with live.running():
            outcome = run_until_done(prepared, live.hooks())
    except (EssayInputError, RankError) as exc:
        error(console, str(exc))
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        say(
            console,
            f"\nInterrupted. Judged comparisons are saved in {out}; run the same command "
            "again to resume.",
        )
        raise typer.Exit(130) from None
    print_result(console, outcome.result, run_context(prepared, out, outcome.facts), outcome.files)
    for line in provider_notes(outcome.pacing):
        say(console, line)
    if outcome.result.status != "completed":
        raise typer.Exit(1)


@app.command()
def submit(
    path: Annotated[
        Path,
        typer.Argument(
            help="A folder of .txt/.md/.docx/.pdf essays, or a CSV/JSONL file with essay_id,text.",
            show_default=False,
        ),
    ],
    cj_url: Annotated[
        str,
        typer.Option(
            "--cj-url", envvar="CJLLM_CJ_URL", help="Base URL of a running `cjllm serve cj`."
        ),
    ] = "http://127.0.0.1:8081",
    cj_token: Annotated[
        str | None,
        typer.Option(
            "--cj-token",
            envvar="CJLLM_CJ_API_TOKEN",
            help="Bearer token of the CJ service's API, when it has one.",
            show_default=False,
        ),
    ] = None,
    instructions: InstructionsOption = None,
    rubric: RubricOption = None,
    anchors: AnchorsOption = None,
    grade_scale: GradeScaleOption = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for the result and show it.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="With --wait: write ranking.csv/json and report.html here."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="With --wait: give up after this many seconds."),
    ] = None,
) -> None:
    """Start an assessment on a running CJ service (distributed shape); prints its batch id.

    The result lands in the service's database and as a CJAssessmentCompletedV1 event on
    its completion topic; --wait also polls for it here.
    """
    from datetime import UTC, datetime

    from rich.console import Console

    from cjllm.essays import EssayInputError
    from cjllm.terminal import error, say

    console = Console()
    try:
        from cjllm.submit import SubmitRequest, assessment_body

        request = SubmitRequest(
            path=path,
            cj_url=cj_url,
            instructions=instructions,
            rubric=rubric,
            anchors=anchors,
            grade_scale=[g.strip() for g in grade_scale.split(",")] if grade_scale else None,
        )
        body = assessment_body(request)
    except EssayInputError as exc:
        error(console, str(exc))
        raise typer.Exit(2) from None

    import httpx

    from cjllm.cj.records import BatchProgress
    from cjllm.cj.tables import BatchStatus
    from cjllm.report import Evidence, RunContext, write_report
    from cjllm.report.summary import LLM, SIMULATED
    from cjllm.submit import SubmitError, judgements
    from cjllm.submit import submit as send
    from cjllm.submit import wait as wait_for
    from cjllm.terminal import LiveProgress, print_result

    try:
        auth = {"Authorization": f"Bearer {cj_token}"} if cj_token else {}
        with httpx.Client(timeout=120.0, headers=auth) as client:
            batch_id = send(request, client, body)
            say(console, f"Submitted batch {batch_id} to {cj_url}")
            if not wait:
                typer.echo(batch_id)
                return
            live = LiveProgress(console)

            def show(data: dict[str, Any]) -> None:
                p = data["progress"]
                live.tick(
                    BatchProgress(
                        batch_id=batch_id,
                        status=BatchStatus(str(data["status"])),
                        prompt_tokens=0,
                        completion_tokens=0,
                        **p,
                    )
                )

            with live.running():
                result = wait_for(cj_url, batch_id, client, timeout=timeout, on_status=show)
            evidence = None
            if out is not None and result.ranking:
                texts = {e["essay_id"]: e["text"] for e in (*body["essays"], *body["anchors"])}
                evidence = Evidence(texts, judgements(cj_url, batch_id, client))
    except (SubmitError, TimeoutError) as exc:
        error(console, str(exc))
        raise typer.Exit(1) from None
    context = RunContext(
        judge=f"{result.provider} / {result.model}",
        source=str(path),
        finished_at=datetime.now(UTC),
        judge_mode=SIMULATED if result.provider == "mock" else LLM,
        instructions=body["instructions"],
        rubric=body["rubric"],
    )
    files = None
    if out is not None and result.ranking:
        files = write_report(out, result, context, evidence)
    print_result(console, result, context, files)
    if result.status != "completed":
        raise typer.Exit(1)


# after rank and submit, so `cjllm --help` lists the main command first
app.command()(sim)
app.add_typer(serve_app, name="serve")
