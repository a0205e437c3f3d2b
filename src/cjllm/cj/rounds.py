"""One comparison round: plan the pairs, write the rows, send one request per comparison.

Rows are written (``pending``, not submitted) before any request leaves, so a crash between
the two loses nothing: :func:`submit` on restart sends whatever the provider never accepted.
A submission that finally fails marks its row ``failed`` at once; no round waits for a
callback that can never come.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cjllm.cj.group_pairs import group_labels
from cjllm.cj.groups import plan_groups
from cjllm.cj.llm_client import Accepted, ProviderClient, Refused
from cjllm.cj.options import ROUND_BUNDLE_SIZE, BatchOptions
from cjllm.cj.pairing import plan_round
from cjllm.cj.prompts import comparison_request, shared_blocks
from cjllm.cj.ranking import BatchFit, seed_for
from cjllm.cj.records import (
    BatchRecord,
    EssayRecord,
    NewComparison,
    PairOutcome,
    PendingComparison,
)
from cjllm.cj.store import Store
from cjllm.cj.tables import ComparisonStatus
from cjllm.cj.uncertainty import EXACT_LIMIT
from cjllm.contracts import BATCH_JOB_STRATEGIES


def retry_pairs(
    outcomes: Sequence[PairOutcome], max_pair_retries: int, limit: int
) -> list[NewComparison]:
    """Failed comparisons that deserve another try, in the order they failed.

    A failed row of attempt ``k`` is retried (same essays, same A/B order, attempt ``k + 1``)
    while ``k <= max_pair_retries``, unless it was retried already or the pair has since
    succeeded. At most ``limit`` are returned; the rest wait for a later round.
    """
    failed = [
        o for o in outcomes if o.status is ComparisonStatus.FAILED and o.attempt <= max_pair_retries
    ]
    if not failed or limit <= 0:  # (the sets below cost ~0.1 s a round at 50,000 outcomes)
        return []
    tried = {(o.essay_a_id, o.essay_b_id, o.attempt) for o in outcomes}
    won = {
        frozenset((o.essay_a_id, o.essay_b_id))
        for o in outcomes
        if o.status is ComparisonStatus.SUCCEEDED
    }
    out: list[NewComparison] = []
    for o in failed:
        if len(out) >= limit:
            break
        if (o.essay_a_id, o.essay_b_id, o.attempt + 1) not in tried and frozenset(
            (o.essay_a_id, o.essay_b_id)
        ) not in won:
            out.append(NewComparison(o.essay_a_id, o.essay_b_id, o.attempt + 1))
    return out


def both_orders_checks(
    outcomes: Sequence[PairOutcome], round_number: int, fraction: float,
    rng: np.random.Generator,
) -> list[NewComparison]:  # fmt: skip
    """Reversed repeats of a ``fraction`` of the previous round's judged pairs (chosen at
    random, rounded down), each pair once: the same two essays with the positions swapped,
    judged in a different call, to measure position consistency."""
    if fraction <= 0.0:
        return []
    asked = {(o.essay_a_id, o.essay_b_id) for o in outcomes}
    candidates = [
        o for o in outcomes
        if o.round_number == round_number - 1 and o.status is ComparisonStatus.SUCCEEDED
        and (o.essay_b_id, o.essay_a_id) not in asked
    ]  # fmt: skip
    chosen = rng.permutation(len(candidates))[: int(fraction * len(candidates))]
    return [NewComparison(candidates[k].essay_b_id, candidates[k].essay_a_id) for k in chosen]


def _within_cap(
    pairs: list[NewComparison], counts: dict[str, int], cap: int | None
) -> list[NewComparison]:
    if cap is None:
        return pairs
    kept = []
    for p in pairs:
        if counts[p.essay_a_id] < cap and counts[p.essay_b_id] < cap:
            counts[p.essay_a_id] += 1
            counts[p.essay_b_id] += 1
            kept.append(p)
    return kept


LARGE_BATCH = EXACT_LIMIT
"""Above this many essays a round gives every essay :data:`LARGE_ROUND_PASSES` comparisons."""
LARGE_ROUND_PASSES = 2
"""Comparisons per essay in one round of a large batch (docs/cj.md, "Rounds"): each round
costs a refit and a plan (about a second at 10,000 essays, while the provider waits) and the
drain of its last bundles; above :data:`LARGE_BATCH` the planner has no covariance to
spend the budget with and pairs every essay once per pass, so a round of two passes halves
those costs for ranks measured to be as good (``bench/round_passes.py``)."""


def round_size(options: BatchOptions, n_essays: int, left: int) -> int:
    """Comparisons in the next round: as many as the pairing design allows (every essay at
    most once: ⌊n/2⌋ pairs, twice above :data:`LARGE_BATCH` essays; in grouped rounds,
    ``pool_pairs_per_essay`` times, in one group) but at least one full provider call
    (:data:`ROUND_BUNDLE_SIZE`: a few essays do not pay a round — a call's latency and a
    refit — for a handful of comparisons), no more than the budget ``left``, nor than
    ``MAX_CONCURRENT_COMPARISONS`` when it is set. A round is all in flight at once: the
    provider's queue holds it and its rate limiter paces it, so a round sized by the design
    keeps the provider as busy as its limits allow with the fewest rounds (and fits). With a
    batch-job strategy a round is at least :func:`_batch_job_round` (fewer, larger rounds)."""
    if options.plans_groups:  # pool: groups
        per_essay = options.pool_pairs_per_essay
    else:
        per_essay = LARGE_ROUND_PASSES if n_essays > LARGE_BATCH else 1
    size = max(n_essays * per_essay // 2, ROUND_BUNDLE_SIZE)
    if options.batching_strategy in BATCH_JOB_STRATEGIES:
        size = max(size, _batch_job_round(options, n_essays, left))
    size = min(size, left)
    if options.max_concurrent_comparisons is not None:
        size = min(size, options.max_concurrent_comparisons)
    return max(size, 0)


def _batch_job_round(options: BatchOptions, n_essays: int, left: int) -> int:
    """With a batch-job strategy each round costs a job's turnaround (minutes to a day), so
    rounds are fewer and larger: half the budget still unspent, and the first one enough
    for every essay to reach the minimum the stopping rule waits for."""
    size = math.ceil(left / 2)
    if left >= options.budget(n_essays):  # nothing asked for yet: the first round
        size = max(size, math.ceil(options.min_comparisons_per_essay_before_stop * n_essays / 2))
    return size


def plan_next_round(
    batch_id: str,
    round_number: int,
    options: BatchOptions,
    essays: Sequence[EssayRecord],
    outcomes: Sequence[PairOutcome],
    fit: BatchFit,
) -> list[NewComparison]:
    """The pairs of the next round: due retries first, then both-orders checks (reversed
    repeats of a ``both_orders_fraction`` of the last round's pairs), then new pairs from the
    planner.

    Size: :func:`round_size`, within the budget left. The budget counts judgements, succeeded
    or pending: a failed comparison is not one, so the round may replace it (a retry of the
    same pair first, see :func:`retry_pairs`). The planner still sees every comparison asked,
    failed ones included, so a pair that keeps failing is not asked again before the others,
    and ``max_comparisons_per_essay`` caps the requests an essay is in.
    """
    live = [o for o in outcomes if o.status is not ComparisonStatus.FAILED]
    size = round_size(options, len(essays), options.budget(len(essays)) - len(live))
    if size <= 0:
        return []
    counts = {e.essay_id: 0 for e in essays}
    for o in outcomes:
        counts[o.essay_a_id] += 1
        counts[o.essay_b_id] += 1
    rng = np.random.default_rng(seed_for(batch_id, round_number))
    retries = _within_cap(
        retry_pairs(outcomes, options.max_pair_retries, size),
        counts,
        options.max_comparisons_per_essay,
    )
    checks = both_orders_checks(outcomes, round_number, options.both_orders_fraction, rng)
    retries += _within_cap(checks[: size - len(retries)], counts, options.max_comparisons_per_essay)
    index = {e.essay_id: e.position for e in essays}
    ids = [e.essay_id for e in essays]
    history = [
        *((o.essay_a_id, o.essay_b_id) for o in outcomes),
        *((p.essay_a_id, p.essay_b_id) for p in retries),
    ]
    first = np.array([index[a] for a, _ in history], dtype=np.intp)
    second = np.array([index[b] for _, b in history], dtype=np.intp)
    known = fit.successes > 0 and options.pairing == "adaptive"
    theta, se = (fit.theta, fit.se) if known else (None, None)
    random_fraction = options.pairing_random_fraction if known else 1.0
    if options.plans_groups:  # retried pairs travel on their own: their essays sit out
        groups = plan_groups(
            len(essays),
            first,
            second,
            theta,
            se,
            size - len(retries),
            rng,
            group_size=options.pool_group_size,
            pairs_per_item=options.pool_pairs_per_essay,
            random_fraction=random_fraction,
            max_per_item=options.max_comparisons_per_essay,
            exclude={index[e] for p in retries for e in (p.essay_a_id, p.essay_b_id)},
        )
        planned = [pair for group in groups for pair in group]
    else:
        planned = plan_round(
            len(essays),
            first,
            second,
            theta,
            se,
            size - len(retries),
            rng,
            random_fraction=random_fraction,
            max_per_item=options.max_comparisons_per_essay,
            covariance=fit.model.covariance if known and fit.model is not None else None,
            probe_fraction=options.pairing_probe_fraction,
        )
    return [*retries, *(NewComparison(ids[a], ids[b]) for a, b in planned)]


@dataclass(frozen=True)
class Submission:
    """What a round's submissions need besides the rows themselves."""

    batch: BatchRecord
    options: BatchOptions
    texts: dict[str, str]
    preferred_bundle_size: int
    callback_topic: str


async def submit(
    store: Store, client: ProviderClient, job: Submission, rows: Sequence[PendingComparison]
) -> int:
    """Send one request per row (:meth:`~cjllm.cj.llm_client.ProviderClient.submit_many`:
    concurrently over HTTP, in hand-overs of a few hundred in process), then record every
    queue id in one transaction; returns how many were refused (their rows fail at once).

    In a grouped round each group (a connected component of the rows' pairs, see
    :func:`cjllm.cj.groups.group_labels`) gets its own ``bundle_group``, sized to the group.
    A crash before the queue ids are recorded loses nothing: the rows are still unsubmitted,
    so :meth:`~cjllm.cj.workflow.CJWorkflow.resume` posts them again under the same
    correlation ids, and the provider answers with the comparisons it already holds."""
    shared = shared_blocks(job.batch.instructions, job.batch.rubric)
    labels: list[str | None] = [None] * len(rows)
    if job.options.plans_groups:
        labels = list(group_labels([(r.essay_a_id, r.essay_b_id) for r in rows]))
    sizes = Counter(labels)

    size = job.preferred_bundle_size
    requests = [
        comparison_request(
            job.batch,
            job.options,
            row,
            shared,
            job.texts,
            size if group is None else min(size, sizes[group]),
            job.callback_topic,
            group,
        )
        for row, group in zip(rows, labels, strict=True)
    ]
    outcomes = await client.submit_many(requests)
    await store.mark_submitted(
        [
            (row.request_correlation_id, outcome.queue_id)
            for row, outcome in zip(rows, outcomes, strict=True)
            if isinstance(outcome, Accepted)
        ]
    )
    refused = [(r, o) for r, o in zip(rows, outcomes, strict=True) if isinstance(o, Refused)]
    for row, outcome in refused:
        await store.fail_pending(row.request_correlation_id, outcome.error_code, outcome.message)
    return len(refused)


async def perform_comparisons(
    store: Store,
    client: ProviderClient,
    job: Submission,
    round_number: int,
    pairs: Sequence[NewComparison],
) -> list[PendingComparison]:
    """Write round ``round_number`` and its rows, then submit every row.

    Raises :class:`~cjllm.cj.store.RoundExists` (nothing sent) when another worker has
    already started this round.
    """
    rows = await store.add_round(job.batch.id, round_number, job.preferred_bundle_size, pairs)
    await submit(store, client, job, rows)
    return rows
