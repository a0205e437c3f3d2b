"""``cjllm rank``: rank a folder (or CSV/JSONL) of essays end to end, in one process.

The job: check every input (:mod:`cjllm.preflight`, before anything heavy loads), build
the judge, reuse or start the batch recorded in ``--out``, run the embedded provider and CJ
services until the batch finishes, then write the report files (:mod:`cjllm.report`).

Resuming: :mod:`cjllm.run_identity`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cjllm import collector
from cjllm.cj.evidence import SettledEvidence
from cjllm.cj.options import BatchOptions, InvalidBatch
from cjllm.cj.progress import ProgressEvent
from cjllm.cj.records import BatchProgress
from cjllm.cj.store import BatchNotFound
from cjllm.cj.workflow import CJWorkflow, EssayInput
from cjllm.contracts import (
    BATCH_JOB_STRATEGIES,
    BatchingStrategy,
    BundleLayout,
    CJAssessmentCompletedV1,
)
from cjllm.embedded import EmbeddedServices, embedded_services
from cjllm.judges import JudgeUnavailable, Judging, make_judge
from cjllm.out_dir import (
    OutDirError,
    forget_run,
    locked_out_dir,
    read_run_file,
    write_run_file,
)
from cjllm.preflight import Checked, RankError, RankInputs, RankRequest, preflight
from cjllm.provider.jobs import BatchJob, JobTable
from cjllm.provider.limiter import Pacing
from cjllm.provider.worker_process import WorkerProcessFailed
from cjllm.report import Evidence, ReportFiles, RunContext, write_report
from cjllm.run_identity import batch_for
from cjllm.settings import CJSettings, ProviderSettings

__all__ = ["Hooks", "PreparedRun", "RankError", "RankInputs", "RankOutcome", "RankRequest"]


@dataclass(frozen=True)
class JudgeFacts:
    """What the provider learned about the judge during the run."""

    output_mode: str | None = None
    bundle_size: int | None = None


@dataclass
class RankOutcome:
    result: CJAssessmentCompletedV1
    files: ReportFiles | None
    resumed: bool
    judge: Judging
    pacing: Pacing | None = None
    facts: JudgeFacts = JudgeFacts()


@dataclass
class Hooks:
    """What the terminal shows: the start (batch id, judge, inputs, resumed?), events as
    they happen, the batch's counters and the rate limiter's state a few times a second,
    and with the batch-job strategies its provider batch jobs. All optional."""

    on_start: Callable[[str, Judging, RankInputs, bool], None] | None = None
    on_event: Callable[[ProgressEvent], None] | None = None
    on_tick: Callable[[BatchProgress], None] | None = None
    on_pacing: Callable[[Pacing], None] | None = None
    on_jobs: Callable[[list[BatchJob]], None] | None = None


# --------------------------------------------------------------------------- settings


def cj_settings_for(request: RankRequest, provider: str, model: str) -> CJSettings:
    """CJ settings from the environment, overridden by the command line."""
    base = CJSettings()
    update: dict[str, Any] = {
        "llm_provider": provider,
        "llm_model": model,
        "llm_batching_strategy": request.strategy,
    }
    if request.bundle_size is not None:
        if request.strategy is BatchingStrategy.SERIAL_OVERRIDE:
            update["serial_override_bundle_size"] = request.bundle_size
        elif request.strategy not in BATCH_JOB_STRATEGIES:  # those: per line, provider side
            update["max_concurrent_comparisons"] = request.bundle_size
    if request.comparisons_per_essay is not None:
        update["comparisons_per_essay"] = request.comparisons_per_essay
    if request.budget is not None:
        update["max_comparisons_total"] = request.budget
    if request.pairing is not None:
        update["pairing"] = request.pairing
    settings = base.model_copy(update=update)
    try:
        BatchOptions.from_settings(settings).validate()
    except InvalidBatch as exc:
        raise RankError(str(exc)) from exc
    return settings


def budget_note(run: PreparedRun) -> str:
    """How many comparisons the run will judge, and which option says so."""
    n = len(run.inputs.essays) + len(run.inputs.anchors)
    return BatchOptions.from_settings(run.cj_settings).budget_note(n)


CHILD_WORKER_FROM_ESSAYS = 1_000
"""From this many essays ``CJLLM_EMBEDDED_WORKER=auto`` runs the provider's worker in a child
process (the second core pays off; below it the child's start-up does not: docs/performance.md,
issue 15)."""


def provider_settings_for(request: RankRequest) -> ProviderSettings:
    update: dict[str, Any] = {"mock_seed": request.seed}
    if request.bundle_size is not None and request.strategy in BATCH_JOB_STRATEGIES:
        update["batch_items_per_line"] = request.bundle_size
    return ProviderSettings().model_copy(update=update)


# --------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class PreparedRun:
    """A request whose inputs are read and checked, with its judge and settings."""

    request: RankRequest
    inputs: RankInputs
    judging: Judging
    cj_settings: CJSettings
    provider_settings: ProviderSettings


def prepare(request: RankRequest | Checked) -> PreparedRun:
    """Everything that can fail before a single comparison: the checks of
    :func:`cjllm.preflight.preflight` (unless already passed), the judge, the settings."""
    checked = request if isinstance(request, Checked) else preflight(request)
    request, inputs, provider = checked.request, checked.inputs, checked.provider
    psettings = provider_settings_for(request)
    if psettings.embedded_worker == "auto":
        large = len(inputs.essays) >= CHILD_WORKER_FROM_ESSAYS
        worker = "child_process" if large else "in_process"
        psettings = psettings.model_copy(update={"embedded_worker": worker})
    try:
        judging = make_judge(
            provider,
            request.model,
            psettings,
            seed=request.seed,
            manifest=inputs.manifest,
            texts=[e.text for e in inputs.essays],
        )
    except JudgeUnavailable as exc:
        raise RankError(str(exc)) from None
    return PreparedRun(
        request,
        inputs,
        judging,
        cj_settings_for(request, judging.provider, judging.model),
        psettings,
    )


async def run_rank(run: PreparedRun, hooks: Hooks | None = None) -> RankOutcome:
    """Run (or resume) the ranking job in ``--out``; see the module docstring."""
    try:
        with locked_out_dir(run.request.out_dir) as out_dir:
            return await _run_locked(run, out_dir, hooks or Hooks())
    except OutDirError as exc:
        raise RankError(str(exc)) from None
    finally:
        await run.judging.adapter.aclose()


async def _run_locked(run: PreparedRun, out_dir: Path, hooks: Hooks) -> RankOutcome:
    batch_id = batch_for(run.request, run.inputs, run.judging, out_dir)
    result, resumed, pacing, evidence, facts = await _drive(run, out_dir, batch_id, hooks)
    files = None
    if result.ranking:
        files = write_report(out_dir, result, run_context(run, out_dir, facts), evidence)
    return RankOutcome(
        result=result,
        files=files,
        resumed=resumed,
        judge=run.judging,
        pacing=pacing,
        facts=facts,
    )


def _usage(out_dir: Path) -> dict[str, Any] | None:
    """The provider requests and rate-limit waiting of every run in ``out_dir``."""
    run_file = read_run_file(out_dir) or {}
    usage: dict[str, Any] | None = run_file.get("provider_usage")
    return usage


def _add_usage(out_dir: Path, pacing: Pacing) -> None:
    """Add this process's provider requests and waiting to those ``run.json`` holds.
    Batch-job lines do not pass the rate limiter: a batch-job run records nothing here,
    and its summary counts the lines as its provider calls."""
    run_file = read_run_file(out_dir)
    if run_file is None or not (pacing.requests or pacing.held_back_seconds):
        return
    usage = run_file.get("provider_usage") or {"requests": {}, "rate_limit_wait_seconds": 0.0}
    requests = dict(usage["requests"])
    for outcome, n in pacing.requests.items():
        requests[outcome] = requests.get(outcome, 0) + n
    usage = {
        "requests": requests,
        "rate_limit_wait_seconds": round(
            usage["rate_limit_wait_seconds"] + pacing.held_back_seconds, 3
        ),
    }
    write_run_file(out_dir, {**run_file, "provider_usage": usage})


def run_context(
    run: PreparedRun, out_dir: Path | None = None, facts: JudgeFacts | None = None
) -> RunContext:
    """What the report needs to know about the run besides its result (with ``out_dir``:
    the provider requests and rate-limit waiting of every run recorded there; with
    ``facts``: the output mode and bundle size the provider settled at)."""
    facts = facts or JudgeFacts()
    return RunContext(
        judge=run.judging.label,
        source=str(run.request.path),
        finished_at=datetime.now(UTC),
        judge_mode=run.judging.mode,
        judge_note=run.judging.note,
        instructions=run.inputs.instructions,
        rubric=run.inputs.rubric,
        provider_usage=_usage(out_dir) if out_dir is not None else None,
        output_mode=facts.output_mode,
        bundle_size=facts.bundle_size,
        bundle_layout=bundle_layout(run),
    )


def bundle_layout(run: PreparedRun) -> str | None:
    """The layout the run's bundles use: ``pool`` when the CJ side asks for it (it then
    plans grouped rounds), else the provider's default; None when a call holds one
    comparison (``per_request``), where there is nothing to lay out."""
    if run.request.strategy is BatchingStrategy.PER_REQUEST:
        return None
    if run.cj_settings.bundle_layout is BundleLayout.POOL:
        return BundleLayout.POOL.value
    return run.provider_settings.bundle_layout.value


async def _drive(
    run: PreparedRun, out_dir: Path, batch_id: str, hooks: Hooks
) -> tuple[CJAssessmentCompletedV1, bool, Pacing, Evidence, JudgeFacts]:
    """Run both services until the batch has a result; start the batch if it is new.
    The provider's requests and rate-limit waiting are added to ``run.json`` even when
    the run is interrupted. Also returns what the provider learned about the judge.
    The report's evidence is read round by round as rounds close
    (:class:`~cjllm.cj.evidence.SettledEvidence`), while the batch is fitted and planned."""
    judging = run.judging
    settled = SettledEvidence(batch_id)

    def on_progress(event: ProgressEvent) -> None:
        if event.kind == "round_closed" and event.round_number is not None:
            settled.round_closed(event.batch_id, event.round_number)
        if hooks.on_event is not None:
            hooks.on_event(event)

    async with embedded_services(
        out_dir,
        run.provider_settings,
        run.cj_settings,
        adapters={judging.provider: judging.adapter},
        on_progress=on_progress,
    ) as services:
        settled.attach(services.cj.store)
        try:
            jobs = services.provider.jobs.table
            result, resumed, pacing, evidence = await _until_done(
                run, out_dir, batch_id, hooks, services, jobs, settled
            )
        finally:
            await settled.aclose()
            _add_usage(out_dir, services.pacing())
        facts = JudgeFacts(
            output_mode=judging.adapter.output_mode(judging.model),
            bundle_size=services.provider.worker.sizes.known(judging.provider, judging.model),
        )
        return result, resumed, pacing, evidence, facts


async def _until_done(
    run: PreparedRun,
    out_dir: Path,
    batch_id: str,
    hooks: Hooks,
    services: EmbeddedServices,
    jobs: JobTable,
    settled: SettledEvidence,
) -> tuple[CJAssessmentCompletedV1, bool, Pacing, Evidence]:
    inputs, judging, cj = run.inputs, run.judging, services.cj
    try:
        await cj.store.batch(batch_id)
        resumed = True
    except BatchNotFound:
        resumed = False
    if hooks.on_start is not None:
        hooks.on_start(batch_id, judging, inputs, resumed)
    if not resumed:
        try:
            await cj.start_batch(
                [EssayInput(e.essay_id, e.text) for e in inputs.essays],
                instructions=inputs.instructions,
                rubric=inputs.rubric,
                anchors=[EssayInput(a.essay_id, a.text, a.grade) for a in inputs.anchors],
                grade_scale=list(run.request.grade_scale) if run.request.grade_scale else None,
                batch_id=batch_id,
            )
        except InvalidBatch as exc:
            forget_run(out_dir)
            raise RankError(str(exc)) from exc
    tick = hooks.on_tick
    poller = (
        asyncio.create_task(_poll(tick, hooks, cj, services.pacing, jobs, batch_id))
        if tick is not None
        else None
    )
    try:
        result = await services.until(cj.wait_for_completion(batch_id, check_every=0.5))
    except WorkerProcessFailed as exc:
        raise RankError(str(exc)) from exc
    finally:
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
    if tick is not None:
        tick(await cj.progress(batch_id))  # the display ends on the final counts
    if hooks.on_jobs is not None:
        hooks.on_jobs(await jobs.jobs(cj_batch_id=batch_id))
    texts = {e.essay_id: e.text for e in (*inputs.essays, *inputs.anchors)}
    evidence = Evidence(texts=texts, judgements=await settled.judgements())
    return result, resumed, services.pacing(), evidence


async def _poll(
    tick: Callable[[BatchProgress], None],
    hooks: Hooks,
    cj: CJWorkflow,
    pacing: Callable[[int | None], Pacing],
    jobs: JobTable,
    batch_id: str,
) -> None:
    while True:
        progress = await cj.progress(batch_id)
        if hooks.on_pacing is not None:  # before the tick, which draws both
            left = (progress.budget or 0) - progress.succeeded - progress.failed
            hooks.on_pacing(pacing(max(progress.pending, left)))
        tick(progress)
        if hooks.on_jobs is not None:
            hooks.on_jobs(await jobs.jobs(cj_batch_id=batch_id))
        await asyncio.sleep(0.25)


def run_until_done(run: PreparedRun, hooks: Hooks | None = None) -> RankOutcome:
    """Run the job in a fresh event loop; SIGTERM stops it as cleanly as Ctrl-C does."""

    outcome: list[RankOutcome] = []

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            try:
                loop.add_signal_handler(signal.SIGTERM, task.cancel)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        # handed out through ``outcome``, not as the task's result: on the way out
        # asyncio.run reprs the main task (inside its SIGINT handler) and with it the
        # result — seconds of CPU for a large run's outcome
        outcome.append(await run_rank(run, hooks))

    collector.relax()
    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    return outcome[0]
