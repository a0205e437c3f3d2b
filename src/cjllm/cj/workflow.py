"""The life of a CJ batch: start → rounds → stop → completion event.

Event-driven: the callback that resolves a round's last comparison closes the round (one
conditional update, so exactly one caller wins), refits Bradley-Terry and either starts the
next round or finishes the batch, all before it returns. Nothing polls to move a batch on.
:meth:`CJWorkflow.resume` picks a batch up after a crash at any point. What follows a round
is decided in :mod:`cjllm.cj.round_decision`; the completion is built, stored and published by
:mod:`cjllm.cj.completion`. Fitting, planning and split-half reliability run in worker threads,
so the event loop (bus heartbeats, HTTP) stays responsive while a large batch is scored.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from concurrent.futures import BrokenExecutor
from dataclasses import replace

from sqlalchemy.exc import SQLAlchemyError

from cjllm.bus import BusError, EventBus
from cjllm.cj import rounds, stopping
from cjllm.cj.callbacks import CallbackCounts, apply_callbacks
from cjllm.cj.completion import build_completion, publish_completion, store_completion
from cjllm.cj.inputs import EssayInput, checked_essays
from cjllm.cj.llm_client import ProviderClient
from cjllm.cj.options import BatchOptions, InvalidBatch
from cjllm.cj.progress import ProgressEvent, ProgressHook
from cjllm.cj.ranking import BatchFit
from cjllm.cj.records import BatchProgress, BatchRecord, EssayRecord, NewComparison
from cjllm.cj.round_decision import Stop, decide
from cjllm.cj.round_rows import RoundExists
from cjllm.cj.store import Store
from cjllm.cj.tables import Batch, BatchStatus, ComparisonStatus, RoundStatus
from cjllm.contracts import CJAssessmentCompletedV1, EventEnvelope
from cjllm.settings import CJSettings

__all__ = ["CJWorkflow", "EssayInput"]

log = logging.getLogger(__name__)

CANCELLED = "cancelled"
"""The stop reason of a batch cancelled by request (and the error code of its pending rows)."""


class CJWorkflow:
    """Runs batches against one store, one provider client and one bus (all passed in)."""

    def __init__(
        self,
        store: Store,
        client: ProviderClient,
        bus: EventBus,
        settings: CJSettings,
        on_progress: ProgressHook | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.bus = bus
        self.settings = settings
        self.on_progress = on_progress
        self.callbacks = CallbackCounts()
        self._finished: dict[str, asyncio.Event] = {}
        self._essay_cache: dict[str, list[EssayRecord]] = {}

    # ---------------------------------------------------------------- public API

    async def start_batch(
        self,
        essays: Sequence[EssayInput],
        *,
        instructions: str,
        rubric: str | None = None,
        anchors: Sequence[EssayInput] = (),
        grade_scale: Sequence[str] | None = None,
        options: BatchOptions | None = None,
        bos_batch_id: str | None = None,
        batch_id: str | None = None,
    ) -> str:
        """Store the batch, send its first round, and return its id (a UUID string).

        ``anchors`` carry a ``grade``; ``grade_scale`` lists the grades lowest first (needed
        with anchors unless every grade is a number). Raises :class:`InvalidBatch` before
        anything is stored, and :class:`~cjllm.cj.store.BatchExists` if ``batch_id`` is taken.
        """
        options = options or BatchOptions.from_settings(self.settings)
        options.validate()
        all_essays, scale = checked_essays(essays, anchors, grade_scale)
        if not instructions.strip():
            raise InvalidBatch("the assignment instructions are empty")
        batch_id = str(uuid.UUID(batch_id)) if batch_id else str(uuid.uuid4())
        await self.store.create_batch(
            Batch(
                id=batch_id,
                bos_batch_id=bos_batch_id,
                status=BatchStatus.RUNNING,
                batching_strategy=options.batching_strategy.value,
                provider=self.settings.llm_provider,
                model=self.settings.llm_model,
                temperature=self.settings.temperature,
                instructions=instructions,
                rubric=rubric,
                grade_scale=scale,
                options=options.to_json(len(all_essays)),
                ignored_callbacks=0,
                completion_published=False,
            ),
            all_essays,
        )
        self._essay_cache[batch_id] = [  # as stored: not read back
            EssayRecord(e.essay_id, i, e.text, e.anchor_grade) for i, e in enumerate(all_essays)
        ]
        log.info("CJ batch %s: %d essays, %s", batch_id, len(all_essays), options)
        await self._run_from(batch_id, None)
        return batch_id

    async def resume(self, batch_id: str) -> None:
        """Continue a batch after a crash: send rows never accepted, close a finished round,
        advance past a closed one, re-publish an unpublished completion. Safe to repeat."""
        batch = await self.store.batch(batch_id)
        if batch.status is not BatchStatus.RUNNING:
            if not batch.completion_published and batch.result is not None:
                event = CJAssessmentCompletedV1.model_validate(batch.result)
                await publish_completion(self.bus, self.store, self.settings, event)
            self._event(batch_id).set()
            return
        latest = await self.store.latest_round(batch_id)
        if latest is None:
            await self._run_from(batch_id, None)
        elif latest.status is RoundStatus.CLOSED:
            await self._run_from(batch_id, latest.round_number)
        else:
            rows = await self.store.unsubmitted(batch_id)
            if rows:
                log.info("batch %s: re-submitting %d unsent comparisons", batch_id, len(rows))
                job = await self._submission(batch, latest.preferred_bundle_size)
                await rounds.submit(self.store, self.client, job, rows)
            await self._drive(batch_id, latest.round_number)

    async def resume_all(self) -> list[str]:
        """Resume every running batch and re-publish unpublished completions."""
        ids = await self.store.running_batch_ids() + await self.store.unpublished_batch_ids()
        for batch_id in ids:
            await self.resume(batch_id)
        return ids

    async def handle_callback(self, envelope: EventEnvelope) -> None:
        """Bus handler for one callback."""
        await self.handle_callbacks([envelope])

    async def handle_callbacks(self, envelopes: Sequence[EventEnvelope]) -> None:
        """Bus handler for the callback topic: record the group in one transaction, then
        move on each round it touched (once per round, not once per callback)."""
        applied = await apply_callbacks(self.store, envelopes, self.callbacks)
        touched: dict[tuple[str, int], None] = {}
        for outcome, result in applied:
            if outcome.batch_id is None or outcome.round_number is None:
                continue
            if outcome.kind in ("applied", "mismatch"):
                md = result.request_metadata if result is not None else {}
                self._emit(
                    ProgressEvent(
                        outcome.batch_id,
                        "comparison_finished",
                        outcome.round_number,
                        succeeded=outcome.kind == "applied" and bool(result and result.is_success),
                        bundle_id=str(md["bundle_id"]) if md.get("bundle_id") else None,
                        tokens=result.token_usage.total_tokens if result else 0,
                        cost=result.cost_estimate if result else 0.0,
                    )
                )
            # also after an ignored (e.g. redelivered) callback: if an earlier attempt to move
            # the batch on failed, this retries it; the conditional close keeps it single.
            # A round seen with a pending row at the group's commit is not due yet (the
            # callback that resolves its last row will see none).
            if outcome.round_open is not True:
                touched[(outcome.batch_id, outcome.round_number)] = None
        for batch_id, round_number in touched:
            await self._drive(batch_id, round_number)

    async def cancel(self, batch_id: str) -> bool:
        """Cancel a running batch. Its pending comparisons fail (``cancelled``), the batch
        finishes as failed with stop reason ``cancelled``, and the provider is asked to cancel
        its batch-mode comparisons and the batch jobs left with nothing else to answer.
        False when the batch had already finished."""
        batch = await self.store.batch(batch_id)
        if batch.status is not BatchStatus.RUNNING:
            return False
        await self._fail_pending(batch_id)
        await self._fail(batch_id, CANCELLED, "cancelled by request")
        await self._fail_pending(batch_id)  # rows a round started meanwhile may have written
        await self.client.cancel(batch_id)
        return True

    async def _fail_pending(self, batch_id: str) -> None:
        for row in await self.store.comparisons(batch_id):
            if row.status == ComparisonStatus.PENDING:
                await self.store.fail_pending(
                    row.request_correlation_id, CANCELLED, "the assessment was cancelled"
                )

    async def progress(self, batch_id: str) -> BatchProgress:
        """The batch's counters. Reliability is given only once it counts for stopping (enough
        successful comparisons per essay); before that it is noise, often far below zero."""
        batch = await self.store.batch(batch_id)
        progress = await self.store.progress(batch_id, batch)
        if progress.reliability is None:
            return progress
        options = BatchOptions.from_json(batch.options)
        essays = self._essay_cache.get(batch_id)  # (a finished batch's are dropped: count them)
        n = len(essays) if essays is not None else await self.store.essay_count(batch_id)
        needed = stopping.min_successes_for_targets(options, n)
        if progress.succeeded < needed:
            return replace(progress, reliability=None)
        return progress

    async def result(self, batch_id: str) -> CJAssessmentCompletedV1 | None:
        """The completion event of a finished batch (None while it runs)."""
        batch = await self.store.batch(batch_id)
        if batch.result is None:
            return None
        return CJAssessmentCompletedV1.model_validate(batch.result)

    async def wait_for_completion(
        self, batch_id: str, timeout: float | None = None, check_every: float = 1.0
    ) -> CJAssessmentCompletedV1:
        """Wait until the batch finishes here or in another process (read from its row).

        Raises ``TimeoutError`` after ``timeout`` seconds. Waiting never moves the batch on.
        """
        async with asyncio.timeout(timeout):
            while True:
                done = await self.result(batch_id)
                if done is not None:
                    return done
                event = self._event(batch_id)
                try:
                    await asyncio.wait_for(event.wait(), check_every)
                except TimeoutError:
                    pass

    # ---------------------------------------------------------------- the round loop

    async def _drive(self, batch_id: str, round_number: int) -> None:
        """Close ``round_number`` if nothing in it is pending; then advance; repeat while
        a freshly started round is already resolved (e.g. every submission failed)."""
        current: int | None = round_number
        while current is not None:
            if not await self.store.close_round_if_done(batch_id, current):
                return
            self._emit(ProgressEvent(batch_id, "round_closed", current))
            current = await self._advance(batch_id, current)

    async def _run_from(self, batch_id: str, closed_round: int | None) -> None:
        started = await self._advance(batch_id, closed_round)
        if started is not None:
            await self._drive(batch_id, started)

    async def _advance(self, batch_id: str, closed_round: int | None) -> int | None:
        """After ``closed_round`` (None: before the first): finish the batch, or start the
        next round and return its number.

        If deciding fails on the database or the bus (or is cancelled), the round is reopened
        and the error raised, so the redelivered callback, or :meth:`resume`, tries again.
        A dead helper process of the final fit (:mod:`cjllm.cj.chain_process`) counts as
        such a failure: the retry starts a fresh one. Any other error would fail the same way
        on every retry (a redelivery loop), so the
        batch is failed at once with the error as its message.
        """
        try:
            plan = await self._decide(batch_id, closed_round)
        except (SQLAlchemyError, BusError, OSError, BrokenExecutor, asyncio.CancelledError):
            if closed_round is not None:
                await self.store.reopen_round(batch_id, closed_round)
            raise
        except Exception as exc:
            log.exception("batch %s: deciding after round %s failed", batch_id, closed_round)
            await self._fail(batch_id, stopping.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            return None
        if plan is None:
            return None
        job, number, pairs = plan
        try:
            rows = await rounds.perform_comparisons(self.store, self.client, job, number, pairs)
        except RoundExists:
            log.info("batch %s: round %d was started by another worker", batch_id, number)
            return None
        self._emit(ProgressEvent(batch_id, "round_started", number, planned=len(rows)))
        return number

    async def _decide(
        self, batch_id: str, closed_round: int | None
    ) -> tuple[rounds.Submission, int, list[NewComparison]] | None:
        """The next round to start (None: the batch is finished, here or already)."""
        batch = await self.store.batch(batch_id)
        if batch.status is not BatchStatus.RUNNING:
            return None
        options = BatchOptions.from_json(batch.options)
        essays = await self._essays(batch_id)
        step = await decide(self.store, batch, options, essays, closed_round)
        if isinstance(step, Stop):
            await self._finish(batch, options, step.fit, step.counts, step.reason, step.error)
            return None
        job = await self._submission(batch, options.preferred_bundle_size(len(step.pairs)))
        return job, step.number, step.pairs

    async def _fail(self, batch_id: str, reason: str, error: str) -> None:
        batch = await self.store.batch(batch_id)
        if batch.status is BatchStatus.RUNNING:
            outcomes = await self.store.outcomes(batch_id)
            options = BatchOptions.from_json(batch.options)
            await self._finish(batch, options, None, stopping.tally(outcomes), reason, error)

    async def _submission(self, batch: BatchRecord, bundle_size: int) -> rounds.Submission:
        essays = await self._essays(batch.id)
        return rounds.Submission(
            batch=batch,
            options=BatchOptions.from_json(batch.options),
            texts={e.essay_id: e.text for e in essays},
            preferred_bundle_size=bundle_size,
            callback_topic=self.settings.callback_topic,
        )

    # ---------------------------------------------------------------- completion

    async def _finish(
        self,
        batch: BatchRecord,
        options: BatchOptions,
        fit: BatchFit | None,
        counts: stopping.Tally,
        reason: str,
        error: str | None,
    ) -> None:
        essays = await self._essays(batch.id)
        done = await build_completion(
            self.store, batch, options, essays, fit, counts, reason, error
        )
        event = await store_completion(self.store, batch.id, done)
        if event is None:  # finished already, by another caller
            return
        self._essay_cache.pop(batch.id, None)
        log.info("CJ batch %s %s: %s", batch.id, event.status, event.message)
        await publish_completion(self.bus, self.store, self.settings, event)
        self._event(batch.id).set()
        self._emit(ProgressEvent(batch.id, "batch_finished", status=event.status))

    # ---------------------------------------------------------------- helpers

    async def _essays(self, batch_id: str) -> list[EssayRecord]:
        """A batch's essays (they never change once stored, so they are read once)."""
        cached = self._essay_cache.get(batch_id)
        if cached is None:
            cached = self._essay_cache[batch_id] = await self.store.essays(batch_id)
        return cached

    def _event(self, batch_id: str) -> asyncio.Event:
        return self._finished.setdefault(batch_id, asyncio.Event())

    def _emit(self, event: ProgressEvent) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(event)
        except Exception:  # a broken progress display must not stall the batch
            log.exception("progress hook failed on %s", event)
